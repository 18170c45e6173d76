"""Per-batch time of the --augment tensor path: the whole transform image by image (then stacked)
against image_data.BatchAugmentation (crop and resize per image; flip, convert and normalise once
per batch, mean and std kept on the device). Both give the same batch bit for bit
(tests/test_image_data.py); both run in one call and the script prints the ratio.

    python benchmarks/augment.py                         # CPU, batch 32, 500×375 photos -> 224×224
    python benchmarks/augment.py --device cuda           # the images kept on the GPU, as train.py does
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import datasets  # noqa: E402
from experiments import image_data  # noqa: E402
import pini  # noqa: E402
from train_step import seconds_per_call  # noqa: E402

CLIP_CFG = {"size": 224, "interpolation": "bicubic", "mean": (0.48145466, 0.4578275, 0.40821073),
            "std": (0.26862954, 0.26130258, 0.27577711)}  # ViT-B/16's preprocessing


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--batches", type=int, default=5, help="timed batches (after one warm-up batch)")
    p.add_argument("--device", default="cpu")
    return p


def main(argv=None) -> float:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8, generator=generator).to(device)
              for _ in range(args.batch_size)]
    items = [datasets.Item(str(i), 0, "a") for i in range(args.batch_size)]
    transform = pini.train_transform(CLIP_CFG)
    augment = image_data.BatchAugmentation(transform, device)
    per_image = image_data.ImageDataset(items, transform, load=lambda path: images[int(path)])
    batched = image_data.ImageDataset(items, augment, load=lambda path: images[int(path)])
    seed = iter(range(10**9))

    def one_by_one():
        s = next(seed)
        return torch.stack([per_image[(s, i)][0] for i in range(len(items))])

    def by_batch():
        s = next(seed)
        pixels, flips = zip(*[batched[(s, i)][0] for i in range(len(items))])
        return augment.finish(torch.stack(pixels), torch.stack(flips))

    seed = iter(range(10**9))
    before = seconds_per_call(one_by_one, args.batches, device)
    seed = iter(range(10**9))  # the same seeds: the same crops for both
    after = seconds_per_call(by_batch, args.batches, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"augmentation of one batch: {args.batch_size} images of {args.width}×{args.height} px (uint8, kept on "
          f"the {name}) -> {CLIP_CFG['size']}×{CLIP_CFG['size']}, bicubic, {args.batches} timed batches")
    print(f"  per image, stacked        {1000 * before:8.1f} ms/batch")
    print(f"  crop per image, rest once {1000 * after:8.1f} ms/batch")
    print(f"  ratio (per image / batched): {before / after:.2f}x")
    return before / after


if __name__ == "__main__":
    main()
