"""Where an epoch's time goes: a real training epoch on full-size JPEGs, this project against the
authors' data path and step, split into its parts, with the frozen image tower as the floor.

The training set is a generated tree of 500×375 JPEGs (photograph-sized, as in the datasets),
`--shots` per class. For each number of classes the script measures, in one run:

  this project   train.py's own epoch (`epochs.epoch_batches` + `epochs.train_epoch`): the data
                 path `--augment` picks (auto: images decoded once and cropped by tensor ops on
                 the training device when they fit in memory), autocast, the shared-prefix text
                 path
  authors'       Dassl's data path (a DataLoader whose --workers processes decode and crop every
                 image with PIL, started again each epoch) and the authors' step
                 (benchmarks/train_step.py's AuthorsStep: fp16 CLIP on CUDA, 77-token prompts)

and splits this project's step into data loading, the image tower, the text side (forward and
backward), the injectors with the loss and their backward, and the optimiser, by timing each
part on the first batches of another epoch (its own seed) with the device synchronised between
them; shares are of the summed parts, which came within ~12 % of the epoch's time. The image
tower is the floor: no change to the trained parts can make an epoch faster than the frozen
tower's forward pass over its images.

With --batches N only the first N batches of each epoch are timed and the epoch time is
projected (mean batch time × batches per epoch); the script says which. It is a script, not a
test: numbers depend on the machine, and every line names the model, image size, classes, batch
and device behind it.

    python benchmarks/epoch.py                                   # small CLIP, CPU-sized
    python benchmarks/epoch.py --model ViT-B-16 --batches 2      # ViT-B/16, projected from 2 batches
    python benchmarks/epoch.py --model ViT-B-16 --device cuda --precision fp16 bf16
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from experiments import datasets  # noqa: E402
from experiments import epochs  # noqa: E402
from experiments import image_data  # noqa: E402
import pini  # noqa: E402
from train_step import AuthorsStep, build, class_names, synchronise  # noqa: E402

PARTS = ("data", "image tower", "text side", "injectors + backward", "optimiser")


# -----------------------------------------------------------------------------------------
# The generated training set
# -----------------------------------------------------------------------------------------

def photo_jpeg(seed: int, width=500, height=375) -> bytes:
    """A photograph-sized JPEG of smooth shapes and grain (a real photograph, with more detail,
    may take longer to decode: the data figures are a lower bound)."""
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray((rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8))
    pixels = np.asarray(smooth.resize((width, height), Image.BICUBIC)).astype(np.int16)
    pixels = np.clip(pixels + rng.integers(-12, 13, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def training_set(folder: Path, classes: int, shots: int, distinct: int = 64) -> list:
    """classes × shots Items over a tree folder/class_i/j.jpg of `distinct` different JPEGs
    (written once; a later run reuses the tree), named with ImageNet's class names."""
    blobs, names = None, class_names(classes)
    items = []
    for c in range(classes):
        for j in range(shots):
            path = folder / f"class_{c:04d}" / f"{j}.jpg"
            if not path.is_file():
                blobs = blobs or [photo_jpeg(seed) for seed in range(distinct)]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blobs[(c * shots + j) % distinct])
            items.append(datasets.Item(str(path), c, names[c]))
    return items


# -----------------------------------------------------------------------------------------
# Timing
# -----------------------------------------------------------------------------------------

class Clock:
    """Wall-clock seconds per part, with the device synchronised at every reading (kernels on a GPU
    run asynchronously: without it a part's time would land in the next part)."""

    def __init__(self, device):
        self.device, self.seconds = device, dict.fromkeys(PARTS, 0.0)
        self.last = None

    def start(self):
        synchronise(self.device)
        self.last = time.perf_counter()

    def lap(self, part: str):
        synchronise(self.device)
        now = time.perf_counter()
        self.seconds[part] += now - self.last
        self.last = now


def take(batches, n: int):
    return itertools.islice(batches, n) if n else batches


def marked(batches, n: int, marks: list):
    """The first n batches of `batches`, with the time at which each one after the first, and then
    the one after the last, is asked for appended to `marks` (the caller marks the start before
    the loader starts; train.py's step and Dassl's both read the loss every step, so the device is
    idle at each mark)."""
    for batch in take(batches, n):
        yield batch
        marks.append(time.perf_counter())


def intervals(marks: list) -> list:
    """Seconds per batch: loading it (the first: with the loader's start) and its step."""
    return [b - a for a, b in zip(marks, marks[1:])]


def our_epoch(model, batches_of, optimizer, scaler, options, ctx, n: int, seed: int) -> list:
    """Seconds per batch of train.py's own epoch (its first n batches when n > 0)."""
    synchronise(ctx.device)
    marks = [time.perf_counter()]  # before batches_of: it starts the loader's iteration
    epochs.train_epoch(model, marked(batches_of(seed), n, marks), optimizer, scaler, options, ctx)
    return intervals(marks)


def our_parts(model, batches_of, optimizer, scaler, options, ctx, n: int, seed: int) -> tuple:
    """The same step as epochs.train_epoch, cut into PARTS. The backward pass is split exactly by
    the chain rule: first from the loss to the injectors and to the text features (held as a
    leaf), then from the text features through the text encoder to the text noise parameters."""
    clock, count = Clock(ctx.device), 0
    model.train()
    clock.start()
    for images, _, labels in take(batches_of(seed), n):
        images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        clock.lap("data")
        with torch.no_grad(), ctx.autocast():
            features = model.encode_images(images)  # (B, D)
        clock.lap("image tower")
        with ctx.autocast():
            text, text_noise = model._noisy_text(options.noise_samples, use_mean=False)  # (K, C, D)
        clock.lap("text side")
        leaf = text.detach().requires_grad_()
        with ctx.autocast():
            output = model(None, options.noise_samples, image_features=features, text_features=leaf)
            output.noise["text"] = text_noise
            loss = pini.pini_objective(output, labels, options.ce_weight, options.kl_weight, options.prior_std)["loss"]
        optimizer.zero_grad(set_to_none=True)
        # retain_graph: with a KL term the loss also reaches the text noise's μ, σ directly, and the
        # second backward below runs through the same μ, σ
        (scaler.scale(loss) if scaler else loss).backward(retain_graph=True)
        clock.lap("injectors + backward")
        text.backward(leaf.grad)
        clock.lap("text side")
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        clock.lap("optimiser")
        count += 1
    return clock.seconds, count


def authors_epoch(step, optimizer, items, transform, options, device, n: int, seed: int) -> list:
    """Seconds per batch of the authors' epoch: Dassl's loader (workers started for each epoch,
    PIL decoding and cropping every image) feeding the authors' step."""
    torch.manual_seed(seed)
    synchronise(device)
    marks = [time.perf_counter()]
    loader = torch.utils.data.DataLoader(image_data.ImageDataset(items, transform), batch_size=options.batch_size,
                                         shuffle=True, drop_last=True, num_workers=options.workers,
                                         pin_memory=device.type == "cuda")
    for images, labels in marked(loader, n, marks):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(step(images).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # Dassl logs the loss every step
    return intervals(marks)


def epoch_seconds(batch_seconds: list, per_epoch: int) -> float:
    """An epoch's time from its first timed batches: the first (which pays for starting the loader)
    plus the mean of the others for each remaining batch."""
    if len(batch_seconds) == per_epoch or len(batch_seconds) == 1:
        return sum(batch_seconds) / len(batch_seconds) * per_epoch
    rest = batch_seconds[1:]
    return batch_seconds[0] + sum(rest) / len(rest) * (per_epoch - 1)


# -----------------------------------------------------------------------------------------
# One number of classes
# -----------------------------------------------------------------------------------------

def sgd(parameters):  # train.py's optimiser and defaults
    return torch.optim.SGD(parameters, lr=1e-3, momentum=0.9, weight_decay=5e-4)


def measure(args, C: int, precision: str, folder: Path) -> dict:
    """This project's epoch, its parts and the authors' epoch, for C classes, in one run."""
    device = torch.device(args.device)
    items = training_set(folder, C, args.shots)
    per_epoch = len(items) // args.batch_size  # no ragged last batch, as train.py and Dassl
    n = min(args.batches, per_epoch) if args.batches else per_epoch
    clip, tokenizer, train_tf, _ = build(args.model, device)
    classnames = class_names(C)
    ours = measure_ours(args, items, clip, tokenizer, train_tf, classnames, precision, n)
    result = {**ours, "classes": C, "precision": precision, "per_epoch": per_epoch,
              "ours": epoch_seconds(ours["batches"], per_epoch), "timed": len(ours["batches"]),
              "parts": {k: v / ours["part_batches"] * per_epoch for k, v in ours["parts"].items()}}
    if args.no_authors:
        return result
    theirs_model = pini.PiNI(clip, tokenizer, classnames).to(device)  # after ours: .half() below casts the CLIP
    if device.type == "cuda":
        theirs_model.half()  # the authors keep CLIP's fp16 weights and cast the injectors to them
    step = AuthorsStep(theirs_model, tokenizer, classnames, "a photo of a")
    their_optimizer = sgd(theirs_model.trainable_parameters())
    options = SimpleNamespace(batch_size=args.batch_size, workers=args.workers)
    if device.type == "cuda":  # warm-up: kernels and allocator (on the CPU a batch can take minutes)
        authors_epoch(step, their_optimizer, items, train_tf, options, device, 1, seed=0)
    n_theirs = min(n, args.authors_batches) if args.authors_batches else n
    theirs = authors_epoch(step, their_optimizer, items, train_tf, options, device, n_theirs, seed=1)
    del theirs_model, step, clip
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**result, "theirs": epoch_seconds(theirs, per_epoch), "their_timed": len(theirs)}


def measure_ours(args, items, clip, tokenizer, train_tf, classnames, precision: str, n: int) -> dict:
    device = torch.device(args.device)
    ctx = epochs.Context(clip, tokenizer, train_tf, None, device, precision)
    options = SimpleNamespace(batch_size=args.batch_size, workers=args.workers, augment=args.augment, cache_views=0,
                              noise_samples=1, ce_weight=1.0, kl_weight=0.0, prior_std=1.0,
                              test_batch_size=args.batch_size)
    model = pini.PiNI(clip, tokenizer, classnames).to(device)
    optimizer = sgd(model.trainable_parameters())
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    started = time.perf_counter()
    batches_of, path = epochs.epoch_batches(model, items, options, ctx)  # "tensor": decodes every image here
    decode_once = time.perf_counter() - started
    if device.type == "cuda":  # warm-up: kernels and allocator (on the CPU a batch can take minutes)
        our_epoch(model, batches_of, optimizer, scaler, options, ctx, 1, seed=0)
        torch.cuda.reset_peak_memory_stats(device)
    batches = our_epoch(model, batches_of, optimizer, scaler, options, ctx, n, seed=1)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    parts, part_batches = our_parts(model, batches_of, optimizer, scaler, options, ctx, n, seed=2)
    steady = batches[1:] or batches  # after the first batch: the step rate once the loader runs
    image_data.DECODED.clear()  # the authors' measurement comes next
    return {"augment": path, "batches": batches, "parts": parts, "part_batches": part_batches,
            "memory": memory, "decode_once": decode_once, "steps_per_s": len(steady) / sum(steady)}


def report(r: dict, args, size: int, device_name: str):
    projected = "" if r["timed"] == r["per_epoch"] else f", projected from {r['timed']} timed batches"
    print(f"\n{args.model} ({size}×{size} px), {r['classes']} classes × {args.shots} shots, batch "
          f"{args.batch_size}, {device_name}, {r['precision']}; epoch = {r['per_epoch']} batches{projected}")
    print(f"  this project (--augment {r['augment']}): {r['ours']:9.1f} s/epoch  ({r['steps_per_s']:.3f} steps/s"
          + (f", peak GPU memory {r['memory']:.2f} GiB)" if r["memory"] == r["memory"] else ")"))
    if "theirs" in r:
        their_note = "" if r["their_timed"] == r["timed"] else f" (from {r['their_timed']} timed batches)"
        print(f"  authors' data path + step:    {r['theirs']:9.1f} s/epoch{their_note}")
    total = sum(r["parts"].values())
    print(f"    parts, timed on another epoch's batches: {total:.1f} s ({total / r['ours']:.2f}x the epoch)")
    for part in PARTS:
        print(f"    {part:<22} {r['parts'][part]:9.1f} s  {100 * r['parts'][part] / total:5.1f} %")
    if r["augment"] == "tensor":
        print(f"    (decoding every training image once, paid once per call, not per epoch: {r['decode_once']:.1f} s)")
    floor, text = r["parts"]["image tower"], r["parts"]["text side"]
    print(f"  epoch / image-tower floor: {r['ours'] / floor:.2f}x   (goal ≤ 1.3)")
    print(f"  epoch / (image tower + text side, the work every step needs): {r['ours'] / (floor + text):.2f}x")
    if "theirs" in r:
        print(f"  authors' epoch / ours:     {r['theirs'] / r['ours']:.2f}x")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", help="'small' (CPU-sized, 64-px images) or an open_clip name, e.g. ViT-B-16")
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=0, help="time only the first N batches of each epoch (0: all)")
    p.add_argument("--authors-batches", type=int, default=0,
                   help="time at most N batches of the authors' epoch (0: as many as ours); it is the slow one")
    p.add_argument("--no-authors", action="store_true",
                   help="skip the authors' epoch (at 1000 classes in fp32 their step needs more than 24 GB)")
    p.add_argument("--workers", type=int, default=min(8, torch.get_num_threads()), help="data-loading processes")
    p.add_argument("--augment", choices=epochs.AUGMENT, default="auto", help="this project's data path (train.py's flag)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", nargs="+", choices=["fp32", "fp16", "bf16"], default=None,
                   help="this project's autocast precisions (default: fp16 on CUDA, fp32 on the CPU)")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "pini-epoch-bench"),
                   help="where the generated JPEG tree is written (reused by later runs)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    precisions = args.precision or ["fp16" if device.type == "cuda" else "fp32"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    size = build(args.model, "cpu")[0].visual.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    print(f"device: {name}; model: {args.model} (random weights), {size}×{size} px; 500×375 JPEGs; "
          f"{args.workers} loader workers")
    results = []
    for C in args.classes:
        for precision in precisions:
            results.append(measure(args, C, precision, Path(args.data)))
            report(results[-1], args, size, name)
    return results


if __name__ == "__main__":
    main()
