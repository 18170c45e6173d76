"""What one call of train.py computes: an explicit list of jobs, and the settings that make each a run.

    plan(args, checkpoint)  -> [Job]   every (dataset, shots, seed, variant) the call asks for,
                                       with its few-shot sample; data problems surface here, all at once
    check_images(jobs)                 every image any job will read, opened once, before the model loads
    settings_of(job, args, precision)  everything that determines a job's result (see runs.py)
    reuse_or_run(path, settings, ...)  a finished run is reused only when its settings are these

Running, skipping and reporting all work over the job list; so will sharding and protocols.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm import tqdm

import datasets
import downloads
import pini
import runs
from runs import UsageError


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


def variant_name(options) -> str:
    """A short name of the injector set-up, e.g. 'text:tokens/free + image:cross-attention'."""
    parts = []
    if options.text_noise != "none":
        parts.append(f"text:{options.text_noise}/{options.text_generator}")
    if options.image_noise != "none":
        parts.append(f"image:{options.image_noise}")
    name = " + ".join(parts) or "zero-shot (PiNI prompts)"
    return name if options.control == "none" else f"{name} [{options.control}]"
