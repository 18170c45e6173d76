"""Few-shot training and evaluation of PiNI from one command.

    python train.py --dataset caltech101 --shots 16
    python train.py --dataset all --shots 1 2 4 8 16 --seeds 1 2 3      # the paper's tables
    python train.py --dataset caltech101 --zero-shot                     # the CLIP baseline
    python train.py --dataset path/to/my_images --shots 4                # your own data

Defaults reproduce the authors' protocol: ViT-B/16 with OpenAI weights, SGD (momentum 0.9,
weight decay 5e-4) lr 1e-3, 100 epochs, cosine schedule after 1 warm-up epoch at 1e-5,
batch 32, random resized crop + flip, the last epoch tested. Each run writes
<output-dir>/<dataset>/shots_<k>/seed_<s>/result.json (+ checkpoint.pt, noise.png); every call
writes summary.md / summary.csv / accuracy_vs_shots.png over the runs it made or found.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files, never open windows
import matplotlib.pyplot as plt  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import datasets  # noqa: E402
import pini  # noqa: E402

CHECKPOINT, RESULT = "checkpoint.pt", "result.json"


class UsageError(Exception):
    """A problem with the command line or the environment, reported as one line."""


# -----------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (e.g. 1 2 4 8 16), not {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", nargs="+", default=["caltech101"],
                      help=f"one or more of {', '.join(datasets.DATASETS)}; 'all' for the 11 benchmark "
                           "datasets; or the path of a folder with one sub-folder per class")
    data.add_argument("--shots", nargs="+", type=positive_int, default=[16], help="images per class (1 2 4 8 16)")
    data.add_argument("--seeds", "--seed", nargs="+", type=int, default=[1], help="few-shot sample and training seeds")
    data.add_argument("--data-root", default=datasets.default_data_root(),
                      help="folder holding the datasets in CoOp's layout (default: $PINI_DATA or ./data)")
    data.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loading processes")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="ViT-B-16", help="open_clip model name or model-config .json path")
    model.add_argument("--pretrained", default="openai",
                       help="open_clip pretrained tag, local checkpoint file, or 'none' (random weights)")
    model.add_argument("--text-noise", choices=["tokens", "feature", "none"], default="tokens",
                       help="where text noise enters: the prompt's context-token embeddings (the paper's "
                            "PiNI), each class's text feature, or nowhere")
    model.add_argument("--text-generator", choices=pini.TEXT_GENERATORS, default="free",
                       help="free μ, σ (authors' code) or an MLP conditioned on the class text features")
    model.add_argument("--image-noise", choices=["cross-attention", "patch", "mlp", "pixel", "none"],
                       default="cross-attention",
                       help="image injector: cross-attention from the image feature to the class texts (the "
                            "paper's PiNI), per-patch cross-attention, an MLP on the image feature, a CNN on "
                            "pixels, or none")
    model.add_argument("--control", choices=["none", "no-sigma", "no-mu"], default="none",
                       help="controls: σ fixed at 0 (a learned shift) or μ fixed at 0 (pure noise)")
    model.add_argument("--n-ctx", type=int, default=16, help="placeholder context tokens before the template")
    model.add_argument("--reduction", type=int, default=1, help="image injector hidden size = D / reduction")
    model.add_argument("--pixel-level", type=float, default=0.1, help="RMS strength of pixel noise")

    objective = p.add_argument_group("objective (see pini.pini_objective)")
    objective.add_argument("--noise-samples", type=positive_int, default=1, help="K Monte-Carlo noise samples")
    objective.add_argument("--ce-weight", type=float, default=1.0, help="weight of the cross-entropy bound")
    objective.add_argument("--kl-weight", type=float, default=0.0,
                           help="β, weight of KL(p_θ(ε) ‖ N(0, s²I)); 0 = the authors' code")
    objective.add_argument("--prior-std", type=float, default=1.0, help="s, the prior's standard deviation")

    optim = p.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=100)
    optim.add_argument("--lr", type=float, default=1e-3)
    optim.add_argument("--batch-size", type=positive_int, default=32)
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--weight-decay", type=float, default=5e-4)
    optim.add_argument("--warmup-epochs", type=int, default=1)
    optim.add_argument("--warmup-lr", type=float, default=1e-5)
    optim.add_argument("--cache-views", type=int, default=0, metavar="V",
                       help="protocol option (off by default): encode V augmented views of each training "
                            "image once and reuse them every epoch (feature-level injectors only)")
    optim.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="autocast precision; auto = fp16 on CUDA (as the authors), fp32 on CPU")
    optim.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    run = p.add_argument_group("evaluation and runs")
    run.add_argument("--inference", choices=["mean", "sample", "average"], default="mean",
                     help="noise at test time: its mean (default), one sample (authors), or K-sample average")
    run.add_argument("--inference-samples", type=positive_int, default=8, help="K for --inference average")
    run.add_argument("--test-batch-size", type=positive_int, default=128)
    run.add_argument("--zero-shot", action="store_true",
                     help="evaluate frozen CLIP with the dataset's hand-crafted prompt; no training")
    run.add_argument("--output-dir", default="runs")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs from their checkpoint")
    run.add_argument("--force", action="store_true", help="rerun runs that already have a result")
    run.add_argument("--ablation", action="store_true",
                     help="train every noise position / generator variant and the controls on the same "
                          "few-shot data and seeds; writes ablation.md/.csv/.png per dataset and shots")
    run.add_argument("--eval-only", action="store_true", help="evaluate saved injectors (--checkpoint)")
    run.add_argument("--checkpoint", help="checkpoint.pt of a trained run, for --eval-only")
    args = p.parse_args(argv)
    if args.eval_only and not args.checkpoint:
        p.error("--eval-only needs --checkpoint path/to/checkpoint.pt")
    if args.cache_views < 0:
        p.error(f"--cache-views must be 0 (off) or a positive number of views, not {args.cache_views}")
    if args.cache_views and args.image_noise in ("patch", "pixel") and not args.ablation:
        p.error(f"--cache-views caches image features, but --image-noise {args.image_noise} needs the images; "
                "use it with cross-attention, mlp or none")
    return args


# -----------------------------------------------------------------------------------------
# Set-up
# -----------------------------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("warning: no GPU found, running on the CPU (slow for full-size CLIP models)", file=sys.stderr)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for a GPU, but torch sees none (torch.cuda.is_available() is False)")
    return device


def autocast_dtype(precision: str, device: torch.device):
    """None for fp32, else the dtype to autocast to."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; on the CPU use fp32 or bf16")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def writable_output(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to the output folder {path}: {error.strerror or error}") from None
    return path


def seed_everything(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)


def loader(items, transform, batch_size, workers, shuffle=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        datasets.ImageDataset(items, transform), batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        drop_last=shuffle and len(items) >= batch_size,  # as Dassl: no ragged last training batch
        generator=generator, persistent_workers=False, pin_memory=torch.cuda.is_available())


def lr_factor(epoch: int, epochs: int, warmup_epochs: int, warmup_lr: float, lr: float) -> float:
    """Dassl's schedule: a constant warm-up lr, then cosine annealing over all epochs."""
    if epoch < warmup_epochs:
        return warmup_lr / lr
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs))


# -----------------------------------------------------------------------------------------
# Evaluation
# -----------------------------------------------------------------------------------------

def top1(scores, test_loader, device, amp_dtype, desc: str) -> float:
    """Top-1 accuracy (%) over the test loader of `scores(images) -> (B, C)`, under autocast."""
    correct = total = 0
    for images, labels in tqdm(test_loader, desc=desc, leave=False, dynamic_ncols=True):
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            predicted = scores(images.to(device)).argmax(-1).cpu()
        correct += (predicted == labels).sum().item()
        total += len(labels)
    return 100.0 * correct / total


def evaluate(model: pini.PiNI, test_loader, device, amp_dtype, mode: str, samples: int) -> float:
    """Top-1 accuracy (%) of `model.predict` in the given inference mode."""
    model.eval()
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        text = model.mean_text_features() if mode == "mean" else None  # constant: encoded once
    return top1(lambda images: model.predict(images, mode, samples, text_features=text),
                test_loader, device, amp_dtype, "test")


@torch.no_grad()
def zero_shot_accuracy(clip, tokenizer, classnames, template: str, test_loader, device, amp_dtype) -> float:
    """CLIP's zero-shot accuracy (%) with one hand-crafted prompt per class (e.g. 'a photo of a {}.')."""
    texts = [template.format(name) for name in classnames]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        text = clip.encode_text(tokenizer(texts).to(device), normalize=True)  # (C, D)
    return top1(lambda images: clip.encode_image(images, normalize=True) @ text.T,
                test_loader, device, amp_dtype, "zero-shot")


# -----------------------------------------------------------------------------------------
# Checkpoints
# -----------------------------------------------------------------------------------------

def injector_state(model: pini.PiNI) -> dict:
    """The trainable state only: the injectors (CLIP is never changed, so never saved)."""
    return {name: value for name, value in model.state_dict().items() if not name.startswith("clip.")}


def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, epoch: int, history: list, meta: dict):
    state = {"injectors": injector_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
             "epoch": epoch, "history": history, "meta": meta}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupt never leaves half a checkpoint


def load_injectors(model: pini.PiNI, state: dict, path):
    """Load saved injectors, or say in one line why they do not fit this model."""
    hint = (f"checkpoint {path} does not match the model (same --model, --text-noise, --image-noise, "
            "--text-generator, --n-ctx, dataset and template?)")
    expected = set(injector_state(model))
    if set(state) != expected:
        raise UsageError(f"{hint}: missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes differ
        raise UsageError(f"{hint}: {str(error).strip().splitlines()[-1].strip()}") from None


# -----------------------------------------------------------------------------------------
# One run
# -----------------------------------------------------------------------------------------

def run_one(args, clip, tokenizer, transforms, split, shots: int, seed: int, device, amp_dtype, out: Path) -> dict:
    """Train PiNI on one few-shot sample (dataset, shots, seed) and test it; returns the result."""
    out.mkdir(parents=True, exist_ok=True)
    train_tf, eval_tf = transforms
    train_items = [] if args.eval_only else datasets.few_shot(split, shots, seed)[0]
    datasets.check_files(train_items, f"{split.info.name} few-shot train")
    datasets.check_files(split.test, f"{split.info.name} test")
    test_loader = loader(split.test, eval_tf, args.test_batch_size, args.workers)

    seed_everything(seed)
    model = build_model(args, clip, tokenizer, split)
    params = model.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, args.epochs, args.warmup_epochs, args.warmup_lr, args.lr))
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    meta = {"dataset": split.info.name, "shots": shots, "seed": seed, "model": args.model,
            "variant": variant_name(args)}

    history, start_epoch, checkpoint_path = [], 0, out / CHECKPOINT
    if args.eval_only:
        state = torch.load(args.checkpoint, map_location=device, weights_only=False)
        load_injectors(model, state["injectors"], args.checkpoint)
        history, start_epoch = state.get("history", []), args.epochs
    elif args.resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        load_injectors(model, state["injectors"], checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        history, start_epoch = state["history"], state["epoch"] + 1
        tqdm.write(f"resuming {out} after epoch {start_epoch}")

    started = time.time()
    # the patch and pixel injectors need the images themselves: no feature cache for them
    cache_views = args.cache_views if args.image_noise not in ("patch", "pixel") else 0
    if start_epoch < args.epochs:
        batches_for = epoch_batches(model, train_items, train_tf, cache_views, args, device, amp_dtype)
    for epoch in tqdm(range(start_epoch, args.epochs), desc=f"{split.info.name} {shots}-shot seed {seed}",
                      initial=start_epoch, total=args.epochs, dynamic_ncols=True):
        # Each epoch's randomness (shuffle, augmentation, noise) is a function of (seed, epoch) alone,
        # so a run resumed from a checkpoint continues exactly as the uninterrupted run would.
        epoch_seed = seed * 100_003 + epoch
        seed_everything(epoch_seed)
        stats = train_epoch(model, batches_for(epoch_seed), optimizer, scaler, args, device, amp_dtype)
        stats.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"])
        scheduler.step()
        history.append(stats)
        tqdm.write(f"epoch {epoch + 1}/{args.epochs}  loss {stats['loss']:.4f}  train acc {stats['acc']:.1f}%  "
                   f"lr {stats['lr']:.2e}  {stats['seconds']:.1f}s")
        save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, epoch, history, meta)

    seed_everything(seed)  # the "sample" inference mode draws noise: make it repeatable
    accuracy = evaluate(model, test_loader, device, amp_dtype, args.inference, args.inference_samples)
    result = {**meta, "accuracy": accuracy, "inference": args.inference, "cache_views": cache_views,
              "history": history,
              "train_seconds": sum(h["seconds"] for h in history), "wall_seconds": time.time() - started,
              "n_train": len(train_items), "n_test": len(split.test), "n_classes": len(split.classnames),
              "trainable_parameters": sum(p.numel() for p in params), "device": str(device),
              "config": vars(args), "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__}}
    (out / RESULT).write_text(json.dumps(result, indent=1, default=str))
    plot_noise(model, test_loader, device, out / "noise.png")
    tqdm.write(f"{split.info.name} {shots}-shot seed {seed}: test accuracy {accuracy:.2f}%")
    return result


def build_model(args, clip, tokenizer, split) -> pini.PiNI:
    none = lambda value: None if value == "none" else value  # noqa: E731
    return pini.PiNI(clip, tokenizer, split.classnames, split.info.template, args.n_ctx,
                     text_noise=none(args.text_noise), image_noise=none(args.image_noise),
                     text_generator=args.text_generator, control=none(args.control.replace("-", "_")),
                     reduction=args.reduction, pixel_level=args.pixel_level).to(clip.logit_scale.device)


def variant_name(args) -> str:
    """A short name of the injector set-up, e.g. 'text:tokens/free + image:cross-attention'."""
    parts = []
    if args.text_noise != "none":
        parts.append(f"text:{args.text_noise}/{args.text_generator}")
    if args.image_noise != "none":
        parts.append(f"image:{args.image_noise}")
    name = " + ".join(parts) or "zero-shot (PiNI prompts)"
    return name if args.control == "none" else f"{name} [{args.control}]"


# Opt-in protocol option (--cache-views V): the image tower is frozen and the feature-level noise
# enters after it, so the features of V fixed augmented views per training image can be computed
# once and reused by every epoch (and by every run of this call that trains on the same images —
# other seeds, ablation variants). Each step then draws one of the V views per image. With V views
# instead of a fresh augmentation every epoch this is a different protocol, never the default.
VIEW_CACHE: dict = {}


def view_features(model: pini.PiNI, items, transform, args, device, amp_dtype) -> torch.Tensor:
    """(n, V, D) frozen image features of V augmented views of each training image (on the CPU)."""
    key = (args.model, args.pretrained, args.cache_views)
    missing = [item for item in items if (key, item.path) not in VIEW_CACHE]
    if missing:
        state = torch.get_rng_state()
        torch.manual_seed(0)  # the views are a fixed set: the same for every run and seed
        views = []
        for view in range(args.cache_views):
            batches = loader(missing, transform, args.test_batch_size, args.workers, seed=view)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                views.append(torch.cat([model.encode_images(images.to(device)).float().cpu()
                                        for images, _ in tqdm(batches, desc=f"caching view {view + 1}",
                                                              leave=False, dynamic_ncols=True)]))
        torch.set_rng_state(state)
        for item, features in zip(missing, torch.stack(views, dim=1)):
            VIEW_CACHE[(key, item.path)] = features
    return torch.stack([VIEW_CACHE[(key, item.path)] for item in items])


def epoch_batches(model, items, transform, cache_views: int, args, device, amp_dtype):
    """A function epoch_seed -> that epoch's batches of (images or None, features or None, labels):
    augmented images from the loader, or (--cache-views) features of cached augmented views."""
    if cache_views:
        features = view_features(model, items, transform, args, device, amp_dtype)  # (n, V, D)
        labels = torch.tensor([item.label for item in items])
        return lambda epoch_seed: cached_batches(features, labels, args.batch_size, epoch_seed)
    train_loader = loader(items, transform, args.batch_size, args.workers, shuffle=True)

    def image_batches(epoch_seed):
        train_loader.generator.manual_seed(epoch_seed)
        return ((images, None, labels) for images, labels in train_loader)

    return image_batches


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


def train_epoch(model, batches, optimizer, scaler, args, device, amp_dtype) -> dict:
    """One pass over `batches` of (images or None, image features or None, labels)."""
    model.train()
    started, total_loss, correct, seen = time.time(), 0.0, 0, 0
    for images, features, labels in batches:
        images = images.to(device, non_blocking=True) if images is not None else None
        features = features.to(device, non_blocking=True) if features is not None else None
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            output = model(images, num_samples=args.noise_samples, image_features=features)
            losses = pini.pini_objective(output, labels, args.ce_weight, args.kl_weight, args.prior_std)
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(losses["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            losses["loss"].backward()
            optimizer.step()
        loss = losses["loss"].item()
        if not math.isfinite(loss):
            raise UsageError("the loss became non-finite; try --precision fp32 or bf16, or a smaller --lr")
        total_loss += loss * len(labels)
        correct += (output.logits.argmax(-1) == labels).float().mean(0).sum().item()
        seen += len(labels)
    return {"loss": total_loss / max(seen, 1), "acc": 100.0 * correct / max(seen, 1),
            "seconds": time.time() - started}


# -----------------------------------------------------------------------------------------
# Plots and the summary table
# -----------------------------------------------------------------------------------------

@torch.no_grad()
def plot_noise(model: pini.PiNI, test_loader, device, path: Path):
    """What the injectors learned: the text noise per token position (or per class), the image
    noise's μ/σ statistics, and for the patch and pixel injectors μ/σ maps over test images."""
    panels = (["text"] if model.text_injector else []) + (["image"] if model.image_injector else [])
    if not panels:
        return
    images = next(iter(test_loader))[0][:4].to(device)
    out = model(images, use_mean=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.5), squeeze=False)
    for ax, name in zip(axes[0], panels):
        noise = out.noise[name]
        sigma, mu = noise.sigma.float().cpu(), noise.mu.float().cpu()  # matplotlib gets NumPy arrays below
        if name == "text":
            if model.text_noise == "tokens":  # (n, W), or (C, n, W) when conditioned: average the classes
                sigma, mu = sigma.reshape(-1, *sigma.shape[-2:]).mean(0), mu.reshape(-1, *mu.shape[-2:]).mean(0)
                ax.set_xlabel("noised token position (placeholders, then the template)")
            else:  # (C, D): one noise per class
                ax.set_xlabel("class")
            ax.bar(range(len(sigma)), sigma.flatten(1).mean(-1).numpy(), label="mean σ")
            ax.plot(mu.flatten(1).abs().mean(-1).numpy(), "k.-", label="mean |μ|")
            ax.set_ylabel("averaged over the embedding")
            ax.set_title(f"text noise ({model.text_noise})")
        else:
            ax.hist(mu.flatten().numpy(), bins=50, alpha=0.6, label="μ")
            ax.hist(sigma.flatten().numpy(), bins=50, alpha=0.6, label="σ")
            ax.set_xlabel(f"value per noise dimension ({len(images)} test images)")
            ax.set_ylabel("count")
            ax.set_title(f"image noise ({model.image_noise})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    if model.image_noise in ("patch", "pixel"):
        plot_noise_maps(images, out.noise["image"], model.image_noise, path.with_name("noise_maps.png"))


def plot_noise_maps(images, noise: pini.Gaussian, kind: str, path: Path):
    """Image, μ map, σ map side by side for a few test images (patch or pixel injector)."""
    if kind == "patch":  # (1, B, N, D): one μ, σ per patch -> |μ_p| and mean σ_p on the patch grid
        side = math.isqrt(noise.mu.shape[2])
        mu_map = noise.mu[0].float().norm(dim=-1).view(-1, side, side)
        sigma_map = noise.sigma[0].float().mean(-1).view(-1, side, side)
    else:  # (B, 3, H, W): average the colour channels
        mu_map, sigma_map = noise.mu.float().mean(1), noise.sigma.float().mean(1)
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 3 * len(images)), squeeze=False)
    for row, image in enumerate(images.float().cpu()):
        shown = (image - image.min()) / (image.max() - image.min() + 1e-8)
        axes[row, 0].imshow(shown.permute(1, 2, 0).numpy())
        for col, (values, title, cmap) in enumerate([(mu_map, "|μ|" if kind == "patch" else "μ", "coolwarm"),
                                                     (sigma_map, "σ", "magma")], start=1):
            im = axes[row, col].imshow(values[row].cpu().numpy(), cmap=cmap)
            fig.colorbar(im, ax=axes[row, col])
            axes[row, col].set_title(f"{title} per {'patch' if kind == 'patch' else 'pixel'}")
        axes[row, 0].set_title("test image")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(results: list, out: Path):
    """Mean ± std over seeds per dataset × shots (markdown + CSV), and accuracy vs. shots (PNG)."""
    cells = {}
    for r in results:
        column = "zero-shot" if r["shots"] == 0 else r["shots"]
        cells.setdefault(r["dataset"], {}).setdefault(column, []).append(r["accuracy"])
    columns = sorted({c for row in cells.values() for c in row}, key=lambda c: -1 if c == "zero-shot" else c)
    names = sorted(cells, key=lambda d: _benchmark_order(d))

    def fmt(values):
        if not values:
            return ""
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {std:.2f}"

    header = ["dataset"] + [c if c == "zero-shot" else f"{c}-shot" for c in columns]
    rows = [[name] + [fmt(cells[name].get(c, [])) for c in columns] for name in names]
    means = [[statistics.mean(cells[n][c]) for n in names if c in cells[n]] for c in columns]
    rows.append([f"average ({len(names)} datasets)"] + [f"{statistics.mean(m):.2f}" if m else "" for m in means])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    (out / "summary.md").write_text("Top-1 test accuracy (%), mean ± std over seeds.\n\n" + "\n".join(table) + "\n")
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "shots", "mean", "std", "n_seeds"])
        for name in names:
            for c in columns:
                values = cells[name].get(c)
                if values:
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    writer.writerow([name, 0 if c == "zero-shot" else c, f"{statistics.mean(values):.4f}",
                                     f"{std:.4f}", len(values)])
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        shots = [c for c in columns if c != "zero-shot" and c in cells[name]]
        if shots:
            ax.plot(shots, [statistics.mean(cells[name][c]) for c in shots], "o-", label=name)
        if "zero-shot" in cells[name]:
            ax.axhline(statistics.mean(cells[name]["zero-shot"]), ls=":", color="gray")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("PiNI few-shot accuracy (dotted: zero-shot CLIP)")
    if ax.get_lines() and any(not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_shots.png", dpi=100)
    plt.close(fig)
    return "\n".join(table)


def _benchmark_order(name: str):
    order = [datasets.DATASETS[a].name for a in datasets.BENCHMARK]
    return (order.index(name), name) if name in order else (len(order), name)


# -----------------------------------------------------------------------------------------
# Main
# -----------------------------------------------------------------------------------------

# The ablation: every noise position / generator the paper compares, and the controls. Each
# variant changes one thing of the default PiNI and shares everything else (data, schedule, seeds).
ABLATION = [
    ("PiNI: text tokens + image cross-attention", {}),
    ("text noise on the text feature", {"text_noise": "feature"}),
    ("text noise from a conditioned network", {"text_generator": "conditioned"}),
    ("image noise: patch-query cross-attention", {"image_noise": "patch"}),
    ("image noise: MLP on the image feature", {"image_noise": "mlp"}),
    ("image noise: CNN on pixels", {"image_noise": "pixel"}),
    ("text noise only", {"image_noise": "none"}),
    ("image noise only", {"text_noise": "none"}),
    ("control: σ = 0 (a learned shift)", {"control": "no-sigma"}),
    ("control: μ = 0 (pure noise)", {"control": "no-mu"}),
    ("control: zero-shot CLIP (hand-crafted prompt)", None),
]


def slug(text: str) -> str:
    """A folder name: 'control: σ = 0 (a learned shift)' -> 'control_sigma_0_a_learned_shift'."""
    text = text.lower().replace("σ", "sigma").replace("μ", "mu")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def cached(path: Path, args, compute):
    """The result at `path` if a finished run left one (and no --force), else compute it."""
    if path.is_file() and not (args.force or args.eval_only):
        tqdm.write(f"skipping {path.parent}: already finished (--force reruns it)")
        return json.loads(path.read_text())
    return compute()


def zero_shot_run(args, clip, tokenizer, eval_tf, split, device, amp_dtype, path: Path) -> dict:
    datasets.check_files(split.test, f"{split.info.name} test")
    test_loader = loader(split.test, eval_tf, args.test_batch_size, args.workers)
    accuracy = zero_shot_accuracy(clip, tokenizer, split.classnames, split.info.zero_shot, test_loader,
                                  device, amp_dtype)
    result = {"dataset": split.info.name, "shots": 0, "seed": 0, "accuracy": accuracy,
              "template": split.info.zero_shot, "model": args.model, "n_test": len(split.test)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    tqdm.write(f"{split.info.name} zero-shot: test accuracy {accuracy:.2f}%")
    return result


def write_ablation(rows: list, out: Path, title: str):
    """rows: (variant, [results over seeds]) -> ablation.md, ablation.csv, ablation.png in `out`."""
    table = ["| variant | accuracy (%) | trainable parameters | training time (s) |", "|---|---|---|---|"]
    with open(out / "ablation.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "mean", "std", "n_seeds", "trainable_parameters", "train_seconds"])
        for variant, results in rows:
            if not results:
                table.append(f"| {variant} | n/a (needs a ViT image tower) | | |")
                continue
            accs = [r["accuracy"] for r in results]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            params = results[0].get("trainable_parameters", 0)
            seconds = statistics.mean(r.get("train_seconds", 0.0) for r in results)
            table.append(f"| {variant} | {statistics.mean(accs):.2f} ± {std:.2f} | {params:,} | {seconds:.1f} |")
            writer.writerow([variant, f"{statistics.mean(accs):.4f}", f"{std:.4f}", len(accs), params,
                             f"{seconds:.2f}"])
    (out / "ablation.md").write_text(f"{title}: top-1 test accuracy, mean ± std over seeds.\n\n"
                                     + "\n".join(table) + "\n")
    measured = [(v, [r["accuracy"] for r in results]) for v, results in rows if results]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(measured) + 1.2))
    ax.barh([v for v, _ in measured], [statistics.mean(a) for _, a in measured],
            xerr=[statistics.stdev(a) if len(a) > 1 else 0 for _, a in measured], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=100)
    plt.close(fig)
    return "\n".join(table)


def run(args) -> list:
    out = writable_output(Path(args.output_dir))
    device = pick_device(args.device)
    amp_dtype = autocast_dtype(args.precision, device)
    names = datasets.BENCHMARK if args.dataset == ["all"] else [datasets.resolve_name(d) for d in args.dataset]
    splits = [datasets.load_dataset(name, args.data_root) for name in names]  # data problems first: cheap
    for split in splits:
        if split.info.test_only and not (args.eval_only or args.zero_shot):
            raise UsageError(f"{split.info.name} is a test-only set: evaluate a model trained on ImageNet with "
                             f"--eval-only --checkpoint runs/imagenet/shots_16/seed_1/checkpoint.pt, or use --zero-shot")
    torch.manual_seed(0)  # with --pretrained none: the same random CLIP on every call (resume, eval-only)
    clip, tokenizer, train_tf, eval_tf = pini.load_clip(args.model, args.pretrained, device)
    transforms = (train_tf, eval_tf)

    results = []
    for split in splits:
        folder = out / split.info.alias
        zero_shot_path = folder / "zero_shot" / RESULT
        if args.zero_shot:
            results.append(cached(zero_shot_path, args, lambda: zero_shot_run(
                args, clip, tokenizer, eval_tf, split, device, amp_dtype, zero_shot_path)))
            continue
        for shots in args.shots:
            rows = []
            for variant, overrides in (ABLATION if args.ablation else [(None, {})]):
                if overrides is None:  # the zero-shot control: no training, no seed
                    rows.append((variant, [cached(zero_shot_path, args, lambda: zero_shot_run(
                        args, clip, tokenizer, eval_tf, split, device, amp_dtype, zero_shot_path))]))
                    continue
                variant_args = argparse.Namespace(**{**vars(args), **overrides})
                if variant_args.image_noise == "patch" and not hasattr(clip.visual, "output_tokens"):
                    rows.append((variant, []))
                    continue
                runs = []
                for seed in args.seeds:
                    run_dir = folder / f"shots_{shots}" / (f"ablation/{slug(variant)}" if variant else "") / f"seed_{seed}"
                    runs.append(cached(run_dir / RESULT, args, lambda: run_one(
                        variant_args, clip, tokenizer, transforms, split, shots, seed, device, amp_dtype, run_dir)))
                rows.append((variant, runs))
                if not args.ablation:
                    results += runs
            if args.ablation:
                title = f"{split.info.name}, {shots} shots, seeds {' '.join(map(str, args.seeds))}"
                print(write_ablation(rows, folder / f"shots_{shots}", title))
                results += rows[0][1]  # the default PiNI goes into the summary
    table = write_summary(results, out)
    print(table)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (UsageError, datasets.DatasetError, pini.WeightsUnavailable, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished epoch is saved; rerun the same command with --resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
