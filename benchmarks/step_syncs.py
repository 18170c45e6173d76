"""Host syncs and aten operators per training step (`epochs.train_step`), at each number of classes.

A host sync is a read of a tensor's value on the CPU (`.item()`, `.tolist()`, `nonzero()`, ...): on a
GPU it waits for every queued kernel, so the CPU cannot queue the next batch meanwhile. Counted two
ways: the Tensor methods that read values (any device), and on CUDA the syncs torch itself reports
(torch.cuda.set_sync_debug_mode("warn")). aten operators (nested ones included) come from the
profiler: on a GPU each is roughly one kernel launch.

    python benchmarks/step_syncs.py                                  # CPU-sized model, C = 100 and 1000
    python benchmarks/step_syncs.py --model ViT-B-16 --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import epochs  # noqa: E402
import pini  # noqa: E402
from train_step import build, class_names  # noqa: E402

READS = ["item", "tolist", "nonzero", "unique", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"]


@contextmanager
def counting_reads(counts: dict):
    def counted(name, real):
        def method(self, *args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return real(self, *args, **kwargs)
        return method

    with mock.patch.multiple(torch.Tensor, **{name: counted(name, getattr(torch.Tensor, name)) for name in READS}):
        yield counts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", help="'small' (CPU-sized) or an open_clip name, e.g. ViT-B-16")
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    options = SimpleNamespace(noise_samples=1, ce_weight=1.0, kl_weight=0.0, prior_std=1.0)
    print(f"device: {name}; model: {args.model} (random weights); batch {args.batch_size}; {args.precision}; "
          f"per training step (epochs.train_step), mean of {args.steps}")
    print(f"{'classes':>8} {'host reads':>11} {'CUDA syncs':>11} {'aten ops':>9}")
    results = {}
    for C in args.classes:
        clip, tokenizer, _, _ = build(args.model, device)
        size = clip.visual.preprocess_cfg["size"]
        model = pini.PiNI(clip, tokenizer, class_names(C))
        ctx = epochs.Context(clip, tokenizer, None, None, device, args.precision)
        pini.freeze_in_dtype(clip, ctx.amp_dtype)  # as train.py: CLIP's matrices in the autocast dtype
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None
        size = (size, size) if isinstance(size, int) else tuple(size)
        images = torch.randn(args.batch_size, 3, *size, device=device)
        labels = torch.randint(C, (args.batch_size,), device=device)

        def step():
            epochs.train_step(model, images, None, labels, optimizer, scaler, options, ctx)

        step()  # warm-up: the optimiser's state, the scaler's first scale
        reads, syncs = {}, 0
        with counting_reads(reads), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.set_sync_debug_mode("warn")
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
            syncs = sum("synchroniz" in str(w.message) for w in caught)
        with torch.profiler.profile() as profile:
            step()
        ops = sum(1 for event in profile.events() if event.name.startswith("aten::"))
        results[C] = {"reads": sum(reads.values()) / args.steps, "syncs": syncs / args.steps, "ops": ops}
        print(f"{C:>8} {results[C]['reads']:>11.1f} {results[C]['syncs'] if cuda else 'n/a':>11} {ops:>9}")
    return results


if __name__ == "__main__":
    main()
