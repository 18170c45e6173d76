#!/usr/bin/env bash
# The figures no CPU can give: ViT-B/16 on a CUDA GPU (random weights), for docs/speed.md.
#   bash benchmarks/gpu_check.sh            (about 8 minutes; results also under $OUT, default /tmp/out)
# Prints the card, then:
#   1. the training step against the authors' at 100 and 1000 classes, fp16 and bf16 (steps/s, peak memory);
#   2. a real epoch on generated 500x375 JPEGs, 16 shots, 100 and 1000 classes, fp16 and bf16: this
#      project (images decoded once, cropped on the GPU) against the authors' data path and step, its
#      parts, the image-tower floor, peak memory;
#   3. the same epoch with the PIL data path (--augment pil), to show what the tensor path saves;
#   4. the tensor augmentation's time per batch, image by image against a batch at once;
#   5. host syncs (read by the step, and reported by CUDA) and aten operators per training step;
#   6. aten operators and cast kernels per training step, CLIP's weights fp32 against cast once.
# open_clip_torch and ftfy (+ wcwidth) must be importable; on a machine without a registry, install
# their wheels first, e.g. pip install --no-index --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -o pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)" | tee -a "$OUT/gpu.txt"
WORKERS=$(( $(nproc) < 8 ? $(nproc) : 8 ))
for precision in fp16 bf16; do
  timeout 150 python3 benchmarks/train_step.py --model ViT-B-16 --classes 100 1000 --steps 20 \
    --precision "$precision" --device cuda 2>&1 | grep -v WARNING | tee "$OUT/step_$precision.txt"
done
timeout 300 python3 benchmarks/epoch.py --model ViT-B-16 --device cuda --classes 100 1000 --batches 100 \
  --authors-batches 20 --precision fp16 bf16 --workers "$WORKERS" 2>&1 | grep -v WARNING | tee "$OUT/epoch.txt"
timeout 120 python3 benchmarks/epoch.py --model ViT-B-16 --device cuda --classes 100 --batches 50 \
  --authors-batches 5 --augment pil --workers "$WORKERS" 2>&1 | grep -v WARNING | tee "$OUT/epoch_pil.txt"
timeout 90 python3 benchmarks/augment.py --device cuda --batch-size 32 --batches 10 2>&1 | tee "$OUT/augment.txt"
for precision in fp16 bf16; do
  timeout 120 python3 benchmarks/step_syncs.py --model ViT-B-16 --device cuda --classes 100 1000 \
    --precision "$precision" 2>&1 | grep -v -e WARNING -e USDT -e ERROR | tee "$OUT/syncs_$precision.txt"
done
for precision in fp16 bf16; do
  timeout 120 python3 benchmarks/casts.py --model ViT-B-16 --device cuda --classes 100 1000 \
    --precision "$precision" 2>&1 | grep -v -e WARNING -e USDT -e ERROR | tee "$OUT/casts_$precision.txt"
done
