"""Training-step speed: this project's PiNI step against a re-implementation of the authors' step.

Both steps train the same injectors (text noise on "X×16 + template" embeddings, cross-attention
image noise) on the same frozen CLIP with the same batch; they differ only in how the work is done:

  authors' step   the whole CLIP in fp16 (on CUDA; fp32 on CPU), every class prompt run through
                  the text transformer over the full 77-token context
  this project    autocast (CUDA) / fp32 (CPU), the text transformer run once on the shared prompt
                  prefix and then only on each class's own tokens, up to the last EOT

Both are measured in one run, for each number of classes; the script prints steps/s, peak GPU
memory and the ratio. It is a script, not a test: numbers depend on the machine.

    python benchmarks/train_step.py                         # CPU-sized model, C = 100 and 1000
    python benchmarks/train_step.py --model ViT-B-16        # ViT-B/16 (random weights), e.g. on CUDA
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pini  # noqa: E402

SMALL_CONFIG = {  # a CLIP small enough for a CPU minute, with CLIP's real text tower shape (77, BPE)
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 256, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}


class AuthorsStep(torch.nn.Module):
    """The authors' forward (trainers/clip_vpn.py), written against open_clip: prompts assembled as
    [SOS | template + noise | class name, '.', EOT, padding] over the full context, every layer
    run on all C × 77 positions, fp16 weights on CUDA. Uses the injectors of a `pini.PiNI`."""

    def __init__(self, model: pini.PiNI, tokenizer, classnames, template):
        super().__init__()
        self.model = model
        prompts = pini.build_prompts(tokenizer, classnames, template)
        self.register_buffer("tokens", prompts.tokens.to(model.prompt_tokens.device))  # (C, 77): full context
        with torch.no_grad():
            self.register_buffer("embeddings", model.clip.token_embedding(self.tokens))

    def forward(self, images):
        clip, m = self.model.clip, self.model
        noise = m.text_injector().sample(1)[0]  # (n, W)
        x = self.embeddings.clone()
        x[:, m.noise_start:m.noise_end] = x[:, m.noise_start:m.noise_end] + noise.to(x.dtype)
        x = x + clip.positional_embedding.to(x.dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask.to(x.dtype))
        x = clip.ln_final(x)
        text = x[torch.arange(len(x)), self.tokens.argmax(-1)] @ clip.text_projection  # (C, D)
        with torch.no_grad():
            image = clip.encode_image(images.to(x.dtype))  # (B, D)
        image_noise, _ = m.image_injector(image, text.unsqueeze(0))
        image = F.normalize(image + image_noise.sample(1)[0, 0], dim=-1)
        return clip.logit_scale.exp() * image @ F.normalize(text, dim=-1).T  # (B, C)


def class_names(C: int) -> list:
    """C real class names, of real token lengths: ImageNet's (OpenAI's list, shipped with open_clip),
    repeated with a number when C > 1000. The text side's cost depends on how long the names are."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return [IMAGENET_CLASSNAMES[i % 1000] + (f" {i // 1000}" if i >= 1000 else "") for i in range(C)]


def build(model_name: str, device):
    if model_name == "small":
        path = Path(tempfile.mkdtemp()) / "bench-small.json"
        path.write_text(json.dumps(SMALL_CONFIG))
        model_name = str(path)
    torch.manual_seed(0)
    return pini.load_clip(model_name, pretrained="none", device=device)


def synchronise(device):
    """Wait for the kernels queued on a GPU (they run asynchronously: a clock read without this
    would time their launch, not their work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(work, calls: int, device) -> float:
    """Mean wall-clock seconds of work() over `calls` calls, after one untimed warm-up call
    (allocations, kernels); peak GPU memory is counted from the timed calls only."""
    work()
    synchronise(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(calls):
        work()
    synchronise(device)
    return (time.perf_counter() - started) / calls


def time_steps(step, parameters, images, labels, steps: int, device, autocast_dtype) -> tuple:
    optimizer = torch.optim.SGD(parameters, lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None

    def one():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(step(images).float(), labels)
        optimizer.zero_grad()
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    seconds = seconds_per_call(one, steps, device)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return 1 / seconds, memory


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", help="'small' (CPU-sized) or an open_clip name, e.g. ViT-B-16")
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp16", "bf16"], default="fp16", help="this project's autocast on CUDA")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device: {name}; model: {args.model} (random weights); batch {args.batch_size}; {args.steps} timed steps")
    print(f"{'classes':>8} {'this (steps/s)':>15} {'authors (steps/s)':>18} {'ratio':>7} "
          f"{'this mem GiB':>13} {'authors mem GiB':>16}")
    ratios = {}
    for C in args.classes:
        classnames = class_names(C)
        clip, tokenizer, _, _ = build(args.model, device)
        size = clip.visual.preprocess_cfg["size"]
        size = size if isinstance(size, int) else size[0]
        images = torch.randn(args.batch_size, 3, size, size, device=device)
        labels = torch.randint(0, C, (args.batch_size,), device=device)

        ours = pini.PiNI(clip, tokenizer, classnames).to(device)
        autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision] if cuda else None
        ours_speed, ours_mem = time_steps(lambda x: ours(x).logits[0], ours.trainable_parameters(), images, labels,
                                          args.steps, device, autocast)

        theirs = pini.PiNI(clip, tokenizer, classnames).to(device)
        if cuda:
            theirs.half()  # the authors keep CLIP's fp16 weights and cast the injectors to them
        step = AuthorsStep(theirs, tokenizer, classnames, "a photo of a")
        their_speed, their_mem = time_steps(step, theirs.trainable_parameters(), images, labels, args.steps,
                                            device, None)
        ratios[C] = ours_speed / their_speed
        print(f"{C:>8} {ours_speed:>15.3f} {their_speed:>18.3f} {ratios[C]:>6.2f}x {ours_mem:>13.2f} {their_mem:>16.2f}")
        del clip, ours, theirs, step
        if cuda:
            torch.cuda.empty_cache()
    return ratios


if __name__ == "__main__":
    main()
