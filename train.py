"""Few-shot training and evaluation of PiNI from one command.

    python train.py --dataset caltech101 --shots 16
    python train.py --dataset all --shots 1 2 4 8 16 --seeds 1 2 3      # the paper's tables
    python train.py --dataset caltech101 --zero-shot                     # the CLIP baseline
    python train.py --dataset path/to/my_images --shots 4                # your own data

Defaults reproduce the authors' protocol: ViT-B/16 with OpenAI weights, SGD (momentum 0.9,
weight decay 5e-4) lr 1e-3, 100 epochs, cosine schedule after 1 warm-up epoch at 1e-5,
batch 32, random resized crop + flip, the last epoch tested. Each run writes
<output-dir>/<dataset>/shots_<k>/seed_<s>/result.json (+ checkpoint.pt, noise.png); every call
rebuilds summary.md / summary.csv / accuracy_vs_shots.png from every result in the output folder.

A run is its settings: a finished run is reused only when its stored settings equal the ones
asked for, --resume refuses a changed setting, and everything a run will read (datasets, split
files, every image, a checkpoint) is checked before the model loads.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import open_clip
import torch
from tqdm import tqdm

import datasets
import downloads
import pini
import report
import runs
from runs import CHECKPOINT, EVAL_RESULT, RESULT


class UsageError(Exception):
    """A problem with the command line or the environment, reported as one line."""


# -----------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------

def _number(kind, low, low_ok: bool, what: str):
    """An argparse type: a finite `kind` number above `low` (or equal to it when low_ok)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or (value == low and not low_ok):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value
    return parse


positive_int = _number(int, 1, True, "a positive integer (e.g. 1 2 4 8 16)")
count = _number(int, 0, True, "an integer ≥ 0")
positive = _number(float, 0.0, False, "a finite number > 0")
non_negative = _number(float, 0.0, True, "a finite number ≥ 0")


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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", nargs="+",
                      help=f"one or more of {', '.join(datasets.DATASETS)}; 'all' for the 11 benchmark "
                           "datasets; or the path of a folder with one sub-folder per class (default: "
                           "caltech101, or with --eval-only the checkpoint's dataset)")
    data.add_argument("--shots", nargs="+", type=positive_int, default=[16], help="images per class (1 2 4 8 16)")
    data.add_argument("--seeds", "--seed", nargs="+", type=int, default=[1], help="few-shot sample and training seeds")
    data.add_argument("--data-root", default=datasets.default_data_root(),
                      help="folder holding the datasets in CoOp's layout (default: $PINI_DATA or ./data)")
    data.add_argument("--download", action="store_true",
                      help="first download the datasets that are missing (see python datasets.py download -h)")
    data.add_argument("--workers", type=count, default=min(8, os.cpu_count() or 1),
                      help="data-loading processes (results do not depend on it)")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="ViT-B-16", help="open_clip model name or model-config .json path")
    model.add_argument("--pretrained", default="openai",
                       help="open_clip pretrained tag, local checkpoint file, or 'none' (random weights)")
    model.add_argument("--text-noise", choices=pini.TEXT_NOISE, default="tokens",
                       help="where text noise enters: the prompt's context-token embeddings (the paper's "
                            "PiNI), each class's text feature, or nowhere")
    model.add_argument("--text-generator", choices=pini.TEXT_GENERATORS, default="free",
                       help="free μ, σ (authors' code) or an MLP conditioned on the class text features")
    model.add_argument("--image-noise", choices=pini.IMAGE_NOISE, default="cross-attention",
                       help="image injector: cross-attention from the image feature to the class texts (the "
                            "paper's PiNI), per-patch cross-attention, an MLP on the image feature, a CNN on "
                            "pixels, or none")
    model.add_argument("--control", choices=pini.CONTROLS, default="none",
                       help="controls: σ fixed at 0 (a learned shift) or μ fixed at 0 (pure noise)")
    model.add_argument("--n-ctx", type=count, default=16, help="placeholder context tokens before the template")
    model.add_argument("--reduction", type=positive_int, default=1, help="image injector hidden size = D / reduction")
    model.add_argument("--pixel-level", type=non_negative, default=0.1, help="RMS strength of pixel noise")

    objective = p.add_argument_group("objective (see pini.pini_objective)")
    objective.add_argument("--noise-samples", type=positive_int, default=1, help="K Monte-Carlo noise samples")
    objective.add_argument("--ce-weight", type=non_negative, default=1.0, help="weight of the cross-entropy bound")
    objective.add_argument("--kl-weight", type=non_negative, default=0.0,
                           help="β, weight of KL(p_θ(ε) ‖ N(0, s²I)); 0 = the authors' code")
    objective.add_argument("--prior-std", type=positive, default=1.0, help="s, the prior's standard deviation")

    optim = p.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=100)
    optim.add_argument("--lr", type=positive, default=1e-3)
    optim.add_argument("--batch-size", type=positive_int, default=32)
    optim.add_argument("--momentum", type=non_negative, default=0.9, help="SGD momentum, in [0, 1)")
    optim.add_argument("--weight-decay", type=non_negative, default=5e-4)
    optim.add_argument("--warmup-epochs", type=count, default=1)
    optim.add_argument("--warmup-lr", type=positive, default=1e-5)
    optim.add_argument("--cache-views", type=count, default=0, metavar="V",
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
    run.add_argument("--eval-only", action="store_true",
                     help="evaluate saved injectors (--checkpoint); settings, shots and seed come from it")
    run.add_argument("--checkpoint", help="checkpoint.pt of a trained run, for --eval-only")
    run.add_argument("--transfer", action="store_true",
                     help="with --eval-only: allow a dataset whose classes differ from the checkpoint's")
    args = p.parse_args(argv)
    for problem in _inconsistencies(args):
        p.error(problem)
    for name in ("seeds", "shots"):
        values = getattr(args, name)
        if len(set(values)) < len(values):
            print(f"warning: --{name} {' '.join(map(str, values))} repeats values; each is run and counted once",
                  file=sys.stderr)
            setattr(args, name, list(dict.fromkeys(values)))
    return args


def _inconsistencies(args) -> list:
    """Problems no single flag shows, one message each."""
    problems = []
    if args.eval_only and not args.checkpoint:
        problems.append("--eval-only needs --checkpoint path/to/checkpoint.pt")
    if args.momentum >= 1:
        problems.append(f"--momentum must be below 1, not {args.momentum}")
    if args.warmup_epochs > args.epochs:
        problems.append(f"--warmup-epochs {args.warmup_epochs} is more than --epochs {args.epochs}")
    if args.ce_weight == 0 and args.kl_weight == 0:
        problems.append("--ce-weight and --kl-weight are both 0: nothing would be trained")
    if args.cache_views and pini.needs_images(args.image_noise) and not args.ablation:
        problems.append(f"--cache-views caches image features, but --image-noise {args.image_noise} needs the "
                        "images; use it with cross-attention, mlp or none")
    return problems


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


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a GPU; on the CPU use fp32 or bf16")
    return precision


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    """A DataLoader whose augmentation of image i depends on (seed, i) only — not on `workers`
    (see datasets.ImageDataset.set_epoch) — and whose shuffle order depends on `seed` only."""
    dataset = datasets.ImageDataset(items, transform)
    dataset.set_epoch(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        drop_last=shuffle and len(items) >= batch_size,  # as Dassl: no ragged last training batch
        generator=torch.Generator().manual_seed(seed), persistent_workers=False,
        pin_memory=torch.cuda.is_available())


def lr_factor(epoch: int, epochs: int, warmup_epochs: int, warmup_lr: float, lr: float) -> float:
    """Dassl's schedule: a constant warm-up lr, then cosine annealing over all epochs."""
    if epoch < warmup_epochs:
        return warmup_lr / lr
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs))


# -----------------------------------------------------------------------------------------
# The job list: one call expands into explicit jobs, checked before the model loads
# -----------------------------------------------------------------------------------------

@dataclass
class Job:
    """One thing to compute: train + test ("train"), test a checkpoint ("eval"), or zero-shot CLIP."""
    kind: str
    split: datasets.Split
    shots: int = 0
    seed: int = 0
    ablation: str = ""  # the ABLATION row this job belongs to, "" outside --ablation
    overrides: dict = field(default_factory=dict)  # the variant's changes to the command line
    sample: Optional[datasets.FewShot] = None

    def run_dir(self, out: Path) -> Path:
        folder = out / self.split.info.alias
        if self.kind == "zero-shot":
            return folder / "zero_shot"
        folder = folder / f"shots_{self.shots}"
        return (folder / "ablation" / slug(self.ablation) if self.ablation else folder) / f"seed_{self.seed}"


def slug(text: str) -> str:
    """A folder name: 'control: σ = 0 (a learned shift)' -> 'control_sigma_0_a_learned_shift'."""
    text = text.lower().replace("σ", "sigma").replace("μ", "mu")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def plan(args, checkpoint: Optional[dict]) -> list:
    """The call's jobs, in the order they run. Data problems surface here: all at once."""
    names = args.dataset or ([checkpoint["meta"].get("dataset_arg", "")] if checkpoint else ["caltech101"])
    names = datasets.BENCHMARK if names == ["all"] else names
    if args.download:
        fetch_missing(names, args.data_root)
    splits = datasets.load_datasets(names, args.data_root)
    if checkpoint:
        return [eval_job(split, checkpoint, args) for split in splits]
    for split in splits:
        if split.info.test_only and not args.zero_shot:
            raise UsageError(f"{split.info.name} is a test-only set: evaluate a model trained on ImageNet with "
                             f"--eval-only --checkpoint runs/imagenet/shots_16/seed_1/checkpoint.pt, or use --zero-shot")
    if args.zero_shot:
        return [Job("zero-shot", split) for split in splits]
    jobs = []
    for split in splits:
        for shots in args.shots:
            samples = {seed: datasets.few_shot(split, shots, seed) for seed in args.seeds}
            warn_short(split, shots, samples[args.seeds[0]])
            for variant, overrides in (ABLATION if args.ablation else [("", {})]):
                if overrides is None:  # the zero-shot control: no training, no seed
                    jobs.append(Job("zero-shot", split))
                    continue
                jobs += [Job("train", split, shots, seed, variant, overrides, samples[seed]) for seed in args.seeds]
    return jobs


def fetch_missing(names, data_root):
    """--download: fetch what is missing of the named benchmark datasets (see downloads.py)."""
    try:
        downloads.download([n for n in names if datasets.resolve_name(n) in datasets.DATASETS], data_root)
    except downloads.DownloadError as error:
        raise UsageError(str(error)) from None


def eval_job(split: datasets.Split, checkpoint: dict, args) -> Job:
    """Evaluate a checkpoint on `split`: its own classes, or — asked for — another class set."""
    trained = checkpoint["meta"]["settings"]
    if trained["classnames"] != split.classnames and not (args.transfer or split.info.test_only):
        raise UsageError(f"{args.checkpoint} was trained on {trained['dataset']}'s {len(trained['classnames'])} "
                         f"classes, not on {split.info.name}'s {len(split.classnames)}: add --transfer to "
                         "evaluate it on other classes")
    overrides = {key: trained[key] for key in MODEL_KEYS + ("epochs",)}
    return Job("eval", split, trained["shots"], trained["seed"], checkpoint["meta"].get("ablation", ""), overrides)


def dataset_arg(split: datasets.Split) -> str:
    """How --dataset names this dataset: its alias, or the folder of your own data."""
    return split.info.alias if split.info.alias in datasets.DATASETS else str(split.folder)


def warn_short(split, shots: int, sample):
    if sample.short_classes:
        listing = ", ".join(f"{name} ({n})" for name, n in list(sample.short_classes.items())[:5])
        tqdm.write(f"warning: {split.info.name}, {shots} shots: {len(sample.short_classes)} classes have fewer "
                   f"training images, all of which are used: {listing}")


def check_images(jobs, args):
    """Open every image any job will read (few-shot train and val, test), once, before the model loads."""
    by_split = {}
    for job in jobs:
        items = by_split.setdefault(id(job.split), (job.split, {}))[1]
        if job.sample:
            items.update((item.path, item) for item in job.sample.train + job.sample.val)
    for split, items in by_split.values():
        items.update((item.path, item) for item in split.test)
        datasets.verify_images(list(items.values()), split.info.name)


# -----------------------------------------------------------------------------------------
# Settings: what a run is
# -----------------------------------------------------------------------------------------

MODEL_KEYS = ("model", "pretrained", "text_noise", "text_generator", "image_noise", "control", "n_ctx",
              "reduction", "pixel_level", "template", "shots", "seed")
TRAINING_KEYS = ("noise_samples", "ce_weight", "kl_weight", "prior_std", "epochs", "lr", "batch_size",
                 "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "cache_views", "precision")


def job_options(job: Job, args) -> argparse.Namespace:
    """The command line as this job sees it: the variant's (or the checkpoint's) settings applied."""
    options = argparse.Namespace(**{**vars(args), **job.overrides})
    if pini.needs_images(options.image_noise):
        options.cache_views = 0  # this injector needs the images: no feature cache
    return options


def settings_of(job: Job, args, precision: str) -> dict:
    """Everything that determines a job's result, as plain values."""
    split, options = job.split, job_options(job, args)
    common = {"kind": job.kind, "dataset": split.info.name, "classnames": split.classnames,
              "split": {"source": split.source, "fingerprint": split.fingerprint},
              "model": options.model, "pretrained": options.pretrained, "precision": precision}
    if job.kind == "zero-shot":
        return runs.plain({**common, "template": split.info.zero_shot})
    options.template, options.shots, options.seed, options.precision = (
        split.info.template, job.shots, job.seed, precision)
    if job.kind == "eval":
        return runs.plain({**common, **{k: getattr(options, k) for k in MODEL_KEYS},
                           "checkpoint": str(args.checkpoint), "inference": options.inference,
                           "inference_samples": options.inference_samples})
    return runs.plain({**common, **{k: getattr(options, k) for k in MODEL_KEYS + TRAINING_KEYS},
                       "sample": job.sample.fingerprint, "inference": options.inference,
                       "inference_samples": options.inference_samples})


def training_settings(settings: dict) -> dict:
    """The part of a run's settings a checkpoint must match to be resumed (not the test-time ones)."""
    return {k: v for k, v in settings.items() if k not in ("inference", "inference_samples")}


def reuse_or_run(path: Path, settings: dict, args, compute) -> dict:
    """The finished run at `path` when its settings are these (and no --force), else compute it."""
    if path.is_file() and not args.force:
        record = runs.read_record(path)
        changed = runs.differences(record.get("settings"), settings)
        if not changed:
            tqdm.write(f"skipping {path.parent}: already finished (--force reruns it)")
            return record
        raise UsageError(f"{path.parent} holds a finished run with other settings ({'; '.join(changed[:4])}): "
                         "rerun with --force to replace it, or choose another --output-dir")
    return compute()


# -----------------------------------------------------------------------------------------
# Running one job: restore, train, evaluate, record
# -----------------------------------------------------------------------------------------

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

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def build_model(options, ctx: Context, split) -> pini.PiNI:
    return pini.PiNI(ctx.clip, ctx.tokenizer, split.classnames, split.info.template, options.n_ctx,
                     text_noise=options.text_noise, image_noise=options.image_noise,
                     text_generator=options.text_generator, control=options.control,
                     reduction=options.reduction, pixel_level=options.pixel_level)


def variant_name(options) -> str:
    """A short name of the injector set-up, e.g. 'text:tokens/free + image:cross-attention'."""
    parts = []
    if options.text_noise != "none":
        parts.append(f"text:{options.text_noise}/{options.text_generator}")
    if options.image_noise != "none":
        parts.append(f"image:{options.image_noise}")
    name = " + ".join(parts) or "zero-shot (PiNI prompts)"
    return name if options.control == "none" else f"{name} [{options.control}]"


def run_training(job: Job, args, ctx: Context, run_dir: Path) -> dict:
    """Train PiNI on one few-shot sample (dataset, shots, seed), test it, and record the result."""
    options, settings = job_options(job, args), settings_of(job, args, ctx.precision)
    seed_everything(job.seed)
    model = build_model(options, ctx, job.split)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=options.lr, momentum=options.momentum,
                                weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, options.epochs, options.warmup_epochs, options.warmup_lr, options.lr))
    scaler = torch.amp.GradScaler(ctx.device.type) if ctx.precision == "fp16" else None
    meta = {"settings": training_settings(settings), "ablation": job.ablation, "dataset_arg": dataset_arg(job.split)}
    history = restore(run_dir / CHECKPOINT, meta, model, optimizer, scheduler, scaler, args.resume, ctx.device)
    started = time.time()
    train(model, job, options, ctx, optimizer, scheduler, scaler, history, run_dir / CHECKPOINT, meta)
    return test_and_record(model, job, options, ctx, run_dir / RESULT, settings, history,
                           wall_seconds=time.time() - started)


def restore(path: Path, meta: dict, model, optimizer, scheduler, scaler, resume: bool, device) -> list:
    """With --resume and a checkpoint of the same settings: load it and return its history."""
    if not (resume and path.is_file()):
        return []
    state = runs.load_checkpoint(path, map_location=device)
    changed = runs.differences(state["meta"]["settings"], meta["settings"])
    if changed:
        raise UsageError(f"cannot --resume {path}: settings changed since it was saved ({'; '.join(changed[:4])}); "
                         "rerun with the old settings, or with --force to start again")
    load_injectors(model, state["injectors"], path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    tqdm.write(f"resuming {path.parent} after epoch {state['epoch'] + 1}")
    return state["history"]


def train(model, job, options, ctx, optimizer, scheduler, scaler, history: list, checkpoint: Path, meta: dict):
    """The epochs still to run; a checkpoint after each. Each epoch's randomness (shuffle,
    augmentation, noise) is a function of (seed, epoch) alone, so a run resumed from a checkpoint
    continues exactly as the uninterrupted run would."""
    start = len(history)
    if start >= options.epochs:
        return
    batches_for = epoch_batches(model, job.sample.train, options, ctx)
    desc = f"{job.split.info.name} {job.shots}-shot seed {job.seed}"
    for epoch in tqdm(range(start, options.epochs), desc=desc, initial=start, total=options.epochs,
                      dynamic_ncols=True):
        epoch_seed = job.seed * 100_003 + epoch
        seed_everything(epoch_seed)
        stats = train_epoch(model, batches_for(epoch_seed), optimizer, scaler, options, ctx)
        stats.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"])
        scheduler.step()
        history.append(stats)
        tqdm.write(f"epoch {epoch + 1}/{options.epochs}  loss {stats['loss']:.4f}  train acc {stats['acc']:.1f}%  "
                   f"lr {stats['lr']:.2e}  {stats['seconds']:.1f}s")
        save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, epoch, history, meta)


def test_and_record(model, job, options, ctx, path: Path, settings: dict, history: list, **extra) -> dict:
    test_loader = loader(job.split.test, ctx.eval_tf, options.test_batch_size, options.workers)
    seed_everything(job.seed)  # the "sample" inference mode draws noise: make it repeatable
    accuracy = evaluate(model, test_loader, ctx, options.inference, options.inference_samples)
    n_train = len(job.sample.train) if job.sample else 0
    record = {"kind": job.kind, "dataset": job.split.info.name, "shots": job.shots, "seed": job.seed,
              "variant": variant_name(options), "ablation": job.ablation, "accuracy": accuracy,
              "settings": settings, "history": history, "train_seconds": sum(h["seconds"] for h in history),
              "n_train": n_train, "n_test": len(job.split.test), "n_classes": len(job.split.classnames),
              "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
              "sample": job.sample.record() if job.sample else None,
              "short_classes": job.sample.short_classes if job.sample else {},
              "cache_views": options.cache_views, "device": str(ctx.device), "workers": options.workers,
              "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__}, **extra}
    if job.split.source != "coop" and job.split.info.alias in datasets.DATASETS:
        tqdm.write(f"warning: {job.split.info.name} uses a generated split, not CoOp's: not comparable with the paper")
    runs.write_record(path, record)
    plot_noise(model, test_loader, ctx.device, path.with_name("noise.png"))
    tqdm.write(f"{job.split.info.name} {job.shots}-shot seed {job.seed}: test accuracy {accuracy:.2f}%")
    return record


def run_eval(job: Job, args, ctx: Context, run_dir: Path, checkpoint: dict) -> dict:
    """Test saved injectors; the record goes to its own file (eval.json), never over a result."""
    options, settings = job_options(job, args), settings_of(job, args, ctx.precision)
    model = build_model(options, ctx, job.split)
    if model.per_class and job.split.classnames != checkpoint["meta"]["settings"]["classnames"]:
        raise UsageError(f"{args.checkpoint} holds per-class noise ({variant_name(options)}): it cannot be "
                         "evaluated on other classes")
    load_injectors(model, checkpoint["injectors"], args.checkpoint)
    return test_and_record(model, job, options, ctx, run_dir / EVAL_RESULT, settings, checkpoint["history"],
                           trained_on=checkpoint["meta"]["settings"]["dataset"])


def run_zero_shot(job: Job, args, ctx: Context, run_dir: Path) -> dict:
    split = job.split
    test_loader = loader(split.test, ctx.eval_tf, args.test_batch_size, args.workers)
    accuracy = zero_shot_accuracy(ctx, split.classnames, split.info.zero_shot, test_loader)
    record = {"kind": "zero-shot", "dataset": split.info.name, "shots": 0, "seed": 0, "variant": "zero-shot CLIP",
              "ablation": "", "accuracy": accuracy, "settings": settings_of(job, args, ctx.precision),
              "template": split.info.zero_shot, "model": args.model, "n_test": len(split.test),
              "trainable_parameters": 0}
    runs.write_record(run_dir / RESULT, record)
    tqdm.write(f"{split.info.name} zero-shot: test accuracy {accuracy:.2f}%")
    return record


# -----------------------------------------------------------------------------------------
# Evaluation and checkpoints
# -----------------------------------------------------------------------------------------

def top1(scores, test_loader, ctx: Context, desc: str) -> float:
    """Top-1 accuracy (%) over the test loader of `scores(images) -> (B, C)`, under autocast."""
    correct = total = 0
    for images, labels in tqdm(test_loader, desc=desc, leave=False, dynamic_ncols=True):
        with torch.no_grad(), ctx.autocast():
            predicted = scores(images.to(ctx.device)).argmax(-1).cpu()
        correct += (predicted == labels).sum().item()
        total += len(labels)
    return 100.0 * correct / total


def evaluate(model: pini.PiNI, test_loader, ctx: Context, mode: str, samples: int) -> float:
    """Top-1 accuracy (%) of `model.predict` in the given inference mode."""
    model.eval()
    with ctx.autocast():
        text = model.mean_text_features() if mode == "mean" else None  # constant: encoded once
    return top1(lambda images: model.predict(images, mode, samples, text_features=text), test_loader, ctx, "test")


@torch.no_grad()
def zero_shot_accuracy(ctx: Context, classnames, template: str, test_loader) -> float:
    """CLIP's zero-shot accuracy (%) with one hand-crafted prompt per class (e.g. 'a photo of a {}.')."""
    with ctx.autocast():
        text = ctx.clip.encode_text(ctx.tokenizer([template.format(c) for c in classnames]).to(ctx.device),
                                    normalize=True)  # (C, D)
    return top1(lambda images: ctx.clip.encode_image(images, normalize=True) @ text.T, test_loader, ctx, "zero-shot")


def injector_state(model: pini.PiNI) -> dict:
    """The trainable state only: the injectors (CLIP is never changed, so never saved)."""
    return {name: value for name, value in model.state_dict().items() if not name.startswith("clip.")}


def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, epoch: int, history: list, meta: dict):
    """Tensors and plain values only, so that it loads with weights_only=True (see runs.py)."""
    runs.save_checkpoint(path, {"injectors": injector_state(model), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                                "epoch": epoch, "history": runs.plain(history), "meta": runs.plain(meta)})


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
# Epochs
# -----------------------------------------------------------------------------------------

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
            batches = loader(missing, transform, options.test_batch_size, options.workers, seed=view)
            with ctx.autocast():
                views.append(torch.cat([model.encode_images(images.to(ctx.device)).float().cpu()
                                        for images, _ in tqdm(batches, desc=f"caching view {view + 1}",
                                                              leave=False, dynamic_ncols=True)]))
        for item, features in zip(missing, torch.stack(views, dim=1)):
            VIEW_CACHE[(key, item.path)] = features
    return torch.stack([VIEW_CACHE[(key, item.path)] for item in items])


def epoch_batches(model, items, options, ctx: Context):
    """A function epoch_seed -> that epoch's batches of (images or None, features or None, labels):
    augmented images from the loader, or (--cache-views) features of cached augmented views."""
    if options.cache_views:
        features = view_features(model, items, ctx.train_tf, options, ctx)  # (n, V, D)
        labels = torch.tensor([item.label for item in items])
        return lambda epoch_seed: cached_batches(features, labels, options.batch_size, epoch_seed)
    train_loader = loader(items, ctx.train_tf, options.batch_size, options.workers, shuffle=True)

    def image_batches(epoch_seed):
        train_loader.generator.manual_seed(epoch_seed)
        train_loader.dataset.set_epoch(epoch_seed)
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


def train_epoch(model, batches, optimizer, scaler, options, ctx: Context) -> dict:
    """One pass over `batches` of (images or None, image features or None, labels)."""
    model.train()
    started, total_loss, correct, seen = time.time(), 0.0, 0, 0
    for images, features, labels in batches:
        images = images.to(ctx.device, non_blocking=True) if images is not None else None
        features = features.to(ctx.device, non_blocking=True) if features is not None else None
        labels = labels.to(ctx.device, non_blocking=True)
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
        loss = losses["loss"].item()
        if not math.isfinite(loss):
            raise UsageError("the loss became non-finite; try --precision fp32 or bf16, or a smaller --lr")
        total_loss += loss * len(labels)
        correct += (output.logits.argmax(-1) == labels).float().mean(0).sum().item()
        seen += len(labels)
    return {"loss": total_loss / max(seen, 1), "acc": 100.0 * correct / max(seen, 1),
            "seconds": time.time() - started}


@torch.no_grad()
def plot_noise(model: pini.PiNI, test_loader, device, path: Path):
    """What the injectors learned, on a few test images (report.plot_noise, report.plot_noise_maps)."""
    images = next(iter(test_loader))[0][:4].to(device)
    noise = model(images, use_mean=True).noise
    panels = {}
    for name, gaussian in noise.items():
        mu, sigma = gaussian.mu.float().cpu(), gaussian.sigma.float().cpu()
        if name == "text" and model.text_noise == "tokens":  # (n, W), or (C, n, W) conditioned: average classes
            mu, sigma = mu.reshape(-1, *mu.shape[-2:]).mean(0), sigma.reshape(-1, *sigma.shape[-2:]).mean(0)
        kind = model.text_noise if name == "text" else model.image_noise
        panels[name] = (kind, mu.numpy(), sigma.numpy())
    report.plot_noise(panels, path)
    if model.image_noise == "patch":  # (1, B, N, D): |μ_p| and mean σ_p on the patch grid
        side = math.isqrt(noise["image"].mu.shape[2])
        mu_map = noise["image"].mu[0].float().norm(dim=-1).view(-1, side, side)
        sigma_map = noise["image"].sigma[0].float().mean(-1).view(-1, side, side)
    elif model.image_noise == "pixel":  # (B, 3, H, W): average the colour channels
        mu_map, sigma_map = noise["image"].mu.float().mean(1), noise["image"].sigma.float().mean(1)
    else:
        return
    report.plot_noise_maps(images.float().cpu().numpy(), mu_map.cpu().numpy(), sigma_map.cpu().numpy(),
                           model.image_noise, path.with_name("noise_maps.png"))


# -----------------------------------------------------------------------------------------
# Main
# -----------------------------------------------------------------------------------------

def run(args) -> list:
    out = writable_output(Path(args.output_dir))
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    checkpoint = runs.load_checkpoint(args.checkpoint, device) if args.eval_only else None
    jobs = plan(args, checkpoint)  # data problems first: cheap
    check_images(jobs, args)
    torch.manual_seed(0)  # with --pretrained none: the same random CLIP on every call (resume, eval-only)
    ctx = Context(*pini.load_clip(args.model, args.pretrained, device), device=device, precision=precision)

    results = []
    for job in jobs:
        run_dir = job.run_dir(Path(args.output_dir))
        if job.kind == "train" and not pini.fits(ctx.clip, job_options(job, args).image_noise):
            continue  # the patch injector needs a ViT: its ablation row says n/a
        if job.kind == "eval":
            results.append(run_eval(job, args, ctx, run_dir, checkpoint))
        elif job.kind == "zero-shot":
            results.append(reuse_or_run(run_dir / RESULT, settings_of(job, args, precision), args,
                                        lambda: run_zero_shot(job, args, ctx, run_dir)))
        else:
            results.append(reuse_or_run(run_dir / RESULT, settings_of(job, args, precision), args,
                                        lambda: run_training(job, args, ctx, run_dir)))
    write_reports(jobs, out)
    return results


def write_reports(jobs, out: Path):
    """Summary and ablation tables, rebuilt from every record in the output folder."""
    records = runs.find_records(out)
    for alias, name, shots in dict.fromkeys((j.split.info.alias, j.split.info.name, j.shots)
                                            for j in jobs if j.ablation):
        mine = [r for r in records if r["dataset"] == name]
        rows = [(variant, [r for r in mine if r["kind"] == "zero-shot"] if overrides is None else
                 [r for r in mine if r.get("ablation") == variant and r["shots"] == shots])
                for variant, overrides in ABLATION]
        seeds = sorted({r["seed"] for _, rs in rows for r in rs if r["shots"]})
        title = f"{name}, {shots} shots, seeds {' '.join(map(str, seeds))}"
        print(report.write_ablation(rows, out / alias / f"shots_{shots}", title))
    main_records = [r for r in records if r.get("ablation", "") in ("", ABLATION[0][0])]
    print(report.write_summary(main_records, out, [datasets.DATASETS[a].name for a in datasets.BENCHMARK]))


def one_line(error: BaseException) -> str:
    """The message of an error; a DataLoader worker's wrapped error unwrapped to its own message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.strip().splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (UsageError, runs.RunError, datasets.DatasetError, pini.WeightsUnavailable, ValueError,
            FileNotFoundError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished epoch is saved; rerun the same command with --resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
