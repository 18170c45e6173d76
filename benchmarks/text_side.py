"""The text side of a training step — the frozen text encoder forward and backward over every
class prompt — with each class stopping at its own EOT (what `pini.encode_text_shared_prefix`
does) against every class padded to the longest name (what it did before).

The padded run is the same function given prompts whose EOT is moved to the longest suffix's
last position: the same work as padding every name to the longest, the same shapes, other
tokens pooled (its features are not used; only its time). Class names are ImageNet's (real
token lengths). A script, not a test: it prints seconds per step and the ratio, measured in one run.

    python benchmarks/text_side.py                       # small CLIP, 100 and 1000 classes, CPU
    python benchmarks/text_side.py --model ViT-B-16 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import pini  # noqa: E402
from train_step import build, class_names, seconds_per_call  # noqa: E402


def padded(tokens: torch.Tensor) -> torch.Tensor:
    """The same prompts with every EOT moved to the last position any prompt needs."""
    eot = tokens.max()
    last = int(tokens.argmax(-1).max())
    moved = tokens.clone()
    moved[moved == eot] = 0  # 0 is "!": any non-EOT token does
    moved[:, last] = eot
    return moved


def seconds_per_step(model: pini.PiNI, suffix_tokens: torch.Tensor, steps: int, device) -> float:
    P = model.noise_end

    def step():
        noise = model.text_injector().sample(1)  # (1, n, W)
        prefix = model.prompt_embeddings[:1, :P] + torch.nn.functional.pad(noise, (0, 0, model.noise_start, 0))
        text = pini.encode_text_shared_prefix(model.clip, prefix, model.prompt_embeddings[:, P:], suffix_tokens)
        text.float().sum().backward()

    return seconds_per_call(step, steps, device)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", help="'small' (CPU-sized) or an open_clip name, e.g. ViT-B-16")
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; model: {args.model} (random weights), fp32; text forward + backward per step")
    print(f"{'classes':>8} {'suffix tokens (mean/max)':>25} {'own EOT (s)':>12} {'padded (s)':>11} {'ratio':>7}")
    ratios = {}
    for C in args.classes:
        clip, tokenizer, _, _ = build(args.model, device)
        model = pini.PiNI(clip, tokenizer, class_names(C)).to(device)
        tokens = model.prompt_tokens[:, model.noise_end:]
        lengths = (tokens.argmax(-1) + 1).float()
        own = seconds_per_step(model, tokens, args.steps, device)
        pad = seconds_per_step(model, padded(tokens), args.steps, device)
        ratios[C] = pad / own
        print(f"{C:>8} {lengths.mean():>19.1f} / {lengths.max():>3.0f} {own:>12.3f} {pad:>11.3f} {ratios[C]:>6.2f}x")
    return ratios


if __name__ == "__main__":
    main()
