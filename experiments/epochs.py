"""The training epoch and the test pass: loaders, the learning-rate schedule, the feature cache.

Everything here is a function of its arguments and of the seeds it is given: the same seed gives
the same batches, augmentations and noise whatever the number of data-loading workers.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from experiments import image_data
import pini
from experiments.files import human_size
from experiments.runs import UsageError


# -----------------------------------------------------------------------------------------
# The machine: device, precision, output folder
# -----------------------------------------------------------------------------------------


def seed_everything(seed: int):
    """Seed Python's and torch's generators: the few-shot draw, the injectors' initial values and the noise."""
    random.seed(seed)
    torch.manual_seed(seed)

def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("warning: no GPU found, running on the CPU (slow for full-size CLIP models)", file=sys.stderr)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for a GPU, but torch sees none (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {name}: torch sees {count} GPU{'s' if count != 1 else ''}, "
                         f"use cuda:0 to cuda:{count - 1} (or cuda)")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "authors-fp16" and device.type != "cuda":
        print("warning: --precision authors-fp16 on the CPU: fp16 arithmetic is slow here", file=sys.stderr)
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; on the CPU use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda":
        # Before compute capability 8 (Ampere) bf16 is emulated: slow, and not what the figures measure.
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} (compute capability "
                             f"{major}.{minor}) has no native bf16 (it needs 8.0 or newer); use fp16 or fp32")
    return precision


def writable_output(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}-{time.time_ns()}"  # one per process: shards start together
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to the output folder {path}: {error.strerror or error}") from None
    return path


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "authors-fp16": None}
# "authors-fp16" is the authors' PREC: fp16 — CLIP and both injectors stored in fp16, SGD updating
# fp16 parameters and fp16 momentum buffers, no autocast, no GradScaler. An update lr·grad below
# half of fp16's spacing (≈1.5e-5 near 0.02) is rounded away (tests/test_precision.py).
PARAMETER_DTYPE = {"authors-fp16": torch.float16}


@dataclass
class Context:
    """What every job of a call shares: the frozen CLIP, its transforms, device and precision."""
    clip: object
    tokenizer: object
    train_tf: object
    eval_tf: object
    device: torch.device
    precision: str

    @property
    def amp_dtype(self):
        return AUTOCAST[self.precision]

    @property
    def param_dtype(self):
        """The dtype CLIP's and the injectors' parameters are stored in: None = as built (fp32)."""
        return PARAMETER_DTYPE.get(self.precision)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Images or features on the device, in the parameters' dtype (the authors' images.type(dtype))."""
        dtype = self.param_dtype if self.param_dtype is not None and x.is_floating_point() else x.dtype
        return x.to(self.device, dtype=dtype, non_blocking=True)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def loader(items, transform, batch_size, workers, shuffle=False, seed=0, load=None, device=None):
    """A DataLoader whose augmentation of image i depends on (seed, i) only — not on `workers` —
    and whose order depends on `seed` only. `loader.sampler.set_epoch(s)` moves it to epoch s;
    its workers stay alive across epochs (the seed travels with each index: image_data.EpochSampler).
    load: how a path becomes the transform's input (default: decoded from disk by PIL).
    device: where the batches go; pinned (page-locked) memory only for a GPU: pinning initialises
    CUDA, which a --device cpu run on a GPU machine must not do."""
    return torch.utils.data.DataLoader(
        image_data.ImageDataset(items, transform, load), batch_size=batch_size, num_workers=workers,
        sampler=image_data.EpochSampler(len(items), shuffle, seed),
        drop_last=shuffle and len(items) >= batch_size,  # as Dassl: no ragged last training batch
        generator=torch.Generator(),  # the workers' base seed: never drawn from the global generator
        persistent_workers=workers > 0,
        pin_memory=load is None and device is not None and torch.device(device).type == "cuda")


AUGMENT = ("auto", "pil", "tensor")


def available_memory() -> Optional[int]:
    """Bytes of memory the system can still give (Linux's MemAvailable); None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def on_gpu(needed: int, device: torch.device) -> bool:
    """Whether decoded images of `needed` bytes are kept on the GPU: at most half its free memory
    (counting the blocks torch's allocator holds but does not use as free)."""
    if device.type != "cuda":
        return False
    torch.cuda.empty_cache()
    return needed <= 0.5 * torch.cuda.mem_get_info(device)[0]


def in_memory(needed: int) -> bool:
    """Whether `needed` bytes fit within 80 % of the memory the system can still give (when known)."""
    available = available_memory()
    return available is None or needed <= 0.8 * available


def training_loader(items, options, ctx: Context) -> tuple:
    """(loader, path) for the training images, augmented by PIL in --workers processes (path "pil",
    the authors' data path) or, each image decoded once and kept (image_data.DECODED), by tensor
    ops on the training device in this process (path "tensor"). Both draw the same crop boxes and
    flips (pini.train_transform); the path an epoch used is recorded in the run's history.

    --augment tensor keeps the images on the GPU when it has room (no copies per batch), else in
    the CPU's memory, else stops with what to do; auto does the same but falls back to "pil"."""
    if options.augment != "pil":
        missing = image_data.DECODED.missing(items)  # drops images no job needs any more
        needed = image_data.decoded_bytes(missing)
        device = ctx.device if on_gpu(needed, ctx.device) else torch.device("cpu") if in_memory(needed) else None
        if device is not None:
            kept = image_data.DECODED.keep(items, options.workers, device=device)
            augment = image_data.BatchAugmentation(ctx.train_tf, ctx.device)  # crops per image, the rest per batch
            batches = loader(items, augment, options.batch_size, workers=0, shuffle=True,
                             load=lambda path: kept[path].to(ctx.device, non_blocking=True))
            return TensorBatches(batches, augment), "tensor"
        text = (f"the {len(missing)} training images take {human_size(needed)} decoded, "
                f"but {human_size(available_memory())} of memory is available")
        if options.augment == "tensor":
            raise UsageError(f"--augment tensor: {text}. Use --augment pil (decodes them from disk every epoch, "
                             "in --workers processes)")
        image_data.DECODED.clear()
        tqdm.write(f"--augment auto: {text}: decoding them from disk every epoch instead (pil)")
    return loader(items, ctx.train_tf, options.batch_size, options.workers, shuffle=True, device=ctx.device), "pil"


class TensorBatches:
    """The --augment tensor loader, each batch finished by `augment.finish` (flip, convert, normalise
    once per batch); it has the loader's `sampler` and length."""

    def __init__(self, batches, augment):
        self.batches, self.augment, self.sampler = batches, augment, batches.sampler

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return ((self.augment.finish(pixels, flips), labels) for (pixels, flips), labels in self.batches)


def lr_factor(epoch: int, epochs: int, warmup_epochs: int, warmup_lr: float, lr: float) -> float:
    """Dassl's schedule, as the authors' config builds it and Dassl steps it (once per epoch):
    ConstantWarmupScheduler around CosineAnnealingLR(T_max = epochs), WARMUP_RECOUNT = True.
    The first W epochs train at the warm-up lr; the cosine then starts counting from 0, so epoch
    e ≥ W trains at lr · ½(1 + cos(π (e − W) / E)): the full lr at epoch W, and the last epoch
    at ½(1 + cos(π (E − 1 − W) / E)) of it, not 0 (tests/test_dassl_loop.py)."""
    if epoch < warmup_epochs:
        return warmup_lr / lr
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def top1(scores, test_loader, ctx: Context, desc: str) -> float:
    """Top-1 accuracy (%) over the test loader of `scores(images) -> (B, C)`, under autocast.
    The count stays on the device until the end: no host sync per batch."""
    correct, total = torch.zeros((), dtype=torch.long, device=ctx.device), 0
    for images, labels in tqdm(test_loader, desc=desc, leave=False, dynamic_ncols=True):
        with torch.no_grad(), ctx.autocast():
            predicted = scores(ctx.inputs(images)).argmax(-1)
        correct += (predicted == labels.to(ctx.device, non_blocking=True)).sum()
        total += len(labels)
    return 100.0 * correct.item() / total


def evaluate(model: pini.PiNI, test_loader, ctx: Context, mode: str, samples: int) -> float:
    """Top-1 accuracy (%) of `model.predict` in the given inference mode."""
    model.eval()
    try:
        with ctx.autocast():
            text = model.mean_text_features() if mode == "mean" else None  # constant: encoded once
        return top1(lambda images: model.predict(images, mode, samples, text_features=text), test_loader, ctx, "test")
    except torch.OutOfMemoryError:
        raise out_of_memory("testing", len(model.classnames), test_loader.batch_size, ctx) from None


@torch.no_grad()
def zero_shot_accuracy(ctx: Context, classnames, template: str, test_loader) -> float:
    """CLIP's zero-shot accuracy (%) with one hand-crafted prompt per class (e.g. 'a photo of a {}.')."""
    return top1(zero_shot_scores(ctx, classnames, template), test_loader, ctx, "zero-shot")


@torch.no_grad()
def zero_shot_scores(ctx: Context, classnames, template: str):
    """scores(images) -> (B, C) cosine similarities of zero-shot CLIP, the class prompts encoded once."""
    with ctx.autocast():
        text = ctx.clip.encode_text(ctx.tokenizer([template.format(c) for c in classnames]).to(ctx.device))  # (C, D)
    # the cosine in fp32 (pini.cosine_logits): near-tied classes keep their order under autocast
    return lambda images: pini.cosine_logits(ctx.clip.encode_image(images), text, ctx.clip.logit_scale)


# Opt-in protocol option (--cache-views V): the image tower is frozen and the feature-level noise
# enters after it, so the features of V fixed augmented views per training image can be computed
# once and reused by every epoch (and by every run in this process that trains on the same
# images — other seeds, ablation variants). Each step then draws one of the V views per image.
# With V views instead of a fresh augmentation every epoch this is a different protocol, never the default.
VIEW_CACHE: dict = {}


def view_features(model: pini.PiNI, items, transform, options, ctx: Context) -> torch.Tensor:
    """(n, V, D) frozen image features of V augmented views of each training image (on the CPU)."""
    key = (options.model, options.pretrained, options.cache_views)
    missing = [item for item in items if (key, item.path) not in VIEW_CACHE]
    if missing:
        views = []
        for view in range(options.cache_views):  # view v: augmentation seeded by v, the same for every run
            batches = loader(missing, transform, options.test_batch_size, options.workers, seed=view,
                             device=ctx.device)
            with ctx.autocast():
                views.append(torch.cat([model.encode_images(ctx.inputs(images)).float().cpu()
                                        for images, _ in tqdm(batches, desc=f"caching view {view + 1}",
                                                              leave=False, dynamic_ncols=True)]))
        for item, features in zip(missing, torch.stack(views, dim=1)):
            VIEW_CACHE[(key, item.path)] = features
    return torch.stack([VIEW_CACHE[(key, item.path)] for item in items])


def epoch_batches(model, items, options, ctx: Context) -> tuple:
    """(batches_of, path): batches_of(epoch_seed) gives that epoch's batches of (images or None,
    features or None, labels) — augmented images from the loader, or (--cache-views) features of
    cached augmented views; path says which ("pil", "tensor" or "cached views")."""
    if options.cache_views:
        features = view_features(model, items, ctx.train_tf, options, ctx)  # (n, V, D)
        labels = torch.tensor([item.label for item in items])
        return lambda epoch_seed: cached_batches(features, labels, options.batch_size, epoch_seed), "cached views"
    train_loader, path = training_loader(items, options, ctx)

    def image_batches(epoch_seed):
        train_loader.sampler.set_epoch(epoch_seed)
        return ((pixels, None, labels) for pixels, labels in train_loader)

    return image_batches, path


def cached_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    """Shuffled batches of (None, features of one random view per image, labels); as the image
    loader, no ragged last batch when there is at least one full batch."""
    generator = torch.Generator().manual_seed(seed)
    n, views = features.shape[:2]
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if n >= batch_size else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        view = torch.randint(views, (len(index),), generator=generator)
        yield None, features[index, view], labels[index]


CHECK_EVERY = 50  # steps between finiteness checks of the running loss (each one waits for the device)


def train_step(model, images, features, labels, optimizer, scaler, options, ctx: Context) -> tuple:
    """One optimisation step on a batch already on the device. Returns (loss, correct) as 0-dim
    tensors on the device: nothing here reads a value on the host, so the CPU can queue the next
    batch while the GPU works (the caller reads the totals once in a while)."""
    with ctx.autocast():
        output = model(images, num_samples=options.noise_samples, image_features=features)
        losses = pini.pini_objective(output, labels, options.ce_weight, options.kl_weight, options.prior_std)
    optimizer.zero_grad(set_to_none=True)
    if scaler:
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses["loss"].backward()
        optimizer.step()
    correct = (output.logits.argmax(-1) == labels).float().mean(0).sum()  # averaged over the K samples
    return losses["loss"].detach(), correct


def train_epoch(model, batches, optimizer, scaler, options, ctx: Context, check_every: int = CHECK_EVERY) -> dict:
    """One pass over `batches` of (images or None, image features or None, labels).

    The loss and the correct count are summed on the device; the host reads the sums every
    `check_every` steps and at the end — once per epoch for a few-shot epoch — and stops on a
    non-finite loss (a sum is finite only if every term is), before the caller saves anything."""
    model.train()
    started, seen = time.time(), 0
    sums = torch.zeros(2, device=ctx.device)  # (Σ loss · batch size, Σ correct)
    for step, (images, features, labels) in enumerate(batches, 1):
        images = ctx.inputs(images) if images is not None else None
        features = ctx.inputs(features) if features is not None else None
        labels = labels.to(ctx.device, non_blocking=True)
        try:
            loss, correct = train_step(model, images, features, labels, optimizer, scaler, options, ctx)
        except torch.OutOfMemoryError:
            raise out_of_memory("training", len(model.classnames), options.batch_size, ctx,
                                options.noise_samples) from None
        sums += torch.stack([loss.float() * len(labels), correct])
        seen += len(labels)
        if step % check_every == 0:
            check_finite(sums[0].item(), options)
    total_loss, correct = sums.tolist()
    check_finite(total_loss, options)
    return {"loss": total_loss / max(seen, 1), "acc": 100.0 * correct / max(seen, 1),
            "seconds": time.time() - started}


def check_finite(loss: float, options):
    if not math.isfinite(loss):
        raise UsageError("the loss became non-finite; try --precision fp32 or bf16, a smaller --lr"
                         + (" or a smaller --kl-weight" if options.kl_weight else ""))


def out_of_memory(what: str, classes: int, batch_size: int, ctx: Context, noise_samples: int = 1) -> UsageError:
    """The one line a person sees when the GPU runs out of memory: what ran, how big, what to try.
    Decoded training images kept on the GPU (--augment tensor or auto) are let go first."""
    kept_on_gpu = any(pixels.is_cuda for pixels in image_data.DECODED.images.values())
    image_data.DECODED.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    hints = (["--augment pil (the training images were kept on the GPU)"] if kept_on_gpu else []) + [
        f"a smaller {'--batch-size' if what == 'training' else '--test-batch-size'} (now {batch_size})",
        "--precision fp16 (or bf16)" if ctx.precision == "fp32" else None,
        "fewer --noise-samples" if noise_samples > 1 else None]
    return UsageError(f"out of GPU memory while {what} ({classes} classes, batch {batch_size}); try "
                      + ", ".join(h for h in hints if h))
