"""Cast kernels and aten operators per training step (`epochs.train_step`) under autocast, with
CLIP's frozen weights left in fp32 (autocast casts each one again at every use: it caches casts only
for leaves that require grad) against cast once at load (`pini.freeze_in_dtype`, as train.py does).

Counted with the operator profiler over one step after a warm-up: aten operators (nested ones
included); the same without the operators that only make views or allocate (select, as_strided,
view, transpose, ...: no kernel on a GPU; the rest is roughly one launch each); cast kernels
(aten::_to_copy); and among those the casts of CLIP's own weights and buffers (a dispatch mode
compares each cast's input storage with theirs).

With the weights cast once, the image tower's residual stream and nn.MultiheadAttention's weights
share a dtype, so torch's fused inference path for it runs (the image tower runs without
gradients); on the CPU that path loops over the batch with views (aten::select): the first column
counts them, the second does not.

    python benchmarks/casts.py                                       # CPU-sized model, bf16, C = 100 and 1000
    python benchmarks/casts.py --model ViT-B-16 --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import epochs  # noqa: E402
import pini  # noqa: E402
from train_step import build, class_names  # noqa: E402

VIEWS = {"aten::" + name for name in [
    "select", "as_strided", "view", "_reshape_alias", "reshape", "transpose", "t", "permute", "expand",
    "slice", "narrow", "unsqueeze", "squeeze", "unflatten", "flatten", "split", "chunk", "unbind", "alias",
    "detach", "resolve_conj", "resolve_neg", "view_as", "expand_as", "contiguous", "lift_fresh", "empty",
    "empty_strided", "empty_like"]}  # views, metadata and allocations: no kernel launch on a GPU


class WeightCasts(TorchDispatchMode):
    """Counts the casts (aten::_to_copy) whose input is stored in one of `tensors`."""

    def __init__(self, tensors):
        super().__init__()
        self.storages = {t.untyped_storage().data_ptr() for t in tensors}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].untyped_storage().data_ptr() in self.storages:
            self.count += 1
        return func(*args, **(kwargs or {}))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", help="'small' (CPU-sized) or an open_clip name, e.g. ViT-B-16")
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp16", "bf16"], default="bf16", help="fp16 needs --device cuda")
    return p


def counts(args, C: int, cast_once: bool) -> dict:
    device = torch.device(args.device)
    clip, tokenizer, _, _ = build(args.model, device)
    ctx = epochs.Context(clip, tokenizer, None, None, device, args.precision)
    if cast_once:
        pini.freeze_in_dtype(clip, ctx.amp_dtype)
    model = pini.PiNI(clip, tokenizer, class_names(C))
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None
    size = clip.visual.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.randn(args.batch_size, 3, *size, device=device)
    labels = torch.randint(C, (args.batch_size,), device=device)
    options = SimpleNamespace(noise_samples=1, ce_weight=1.0, kl_weight=0.0, prior_std=1.0)

    return measure(lambda: epochs.train_step(model, images, None, labels, optimizer, scaler, options, ctx), clip)


def measure(step, clip) -> dict:
    """Operators of one call of `step` after a warm-up call (the optimiser's state, the scaler's first
    scale): aten ops, those that launch a kernel, cast kernels, and casts of `clip`'s own weights
    (tests/test_precision.py counts with this too)."""
    step()
    with torch.profiler.profile() as profile:
        step()
    names = [event.name for event in profile.events()]
    weights = WeightCasts([*clip.parameters(), *clip.buffers()])
    with weights:
        step()
    return {"weight casts": weights.count, "ops": sum(name.startswith("aten::") for name in names),
            "kernels": sum(name.startswith("aten::") and name not in VIEWS for name in names),
            "casts": names.count("aten::_to_copy")}


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; model: {args.model} (random weights); batch {args.batch_size}; {args.precision} "
          "autocast; per training step (epochs.train_step): CLIP's weights fp32 (cast at every use) "
          "-> cast once (pini.freeze_in_dtype)")
    print(f"{'classes':>8} {'aten ops':>17} {'ratio':>6} {'without views':>17} {'ratio':>6} "
          f"{'cast kernels':>15} {'ratio':>6} {'of CLIP weights':>15} {'ratio':>6}")
    results = {}
    for C in args.classes:
        before, after = counts(args, C, cast_once=False), counts(args, C, cast_once=True)
        results[C] = {"before": before, "after": after}
        print(f"{C:>8} " + " ".join(f"{before[k]:>7} -> {after[k]:>6} {after[k] / before[k]:>6.2f}"
                                    for k in ["ops", "kernels", "casts", "weight casts"]))
    return results


if __name__ == "__main__":
    main()
