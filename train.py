"""Few-shot training and evaluation of PiNI from one command.

    python train.py --dataset caltech101 --shots 16
    python train.py --dataset all --shots 1 2 4 8 16 --seeds 1 2 3      # the paper's tables
    python train.py --dataset caltech101 --zero-shot                     # the CLIP baseline
    python train.py --dataset path/to/my_images --shots 4                # your own data
    python train.py --dataset all --protocol base2new --seeds 1 2 3      # base-to-new (CoCoOp)
    python train.py --dataset all --shots 16 --shard 0/8                 # one of 8 shares; then --summarize

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
import signal
import socket
import sys
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Optional

import open_clip
import torch
from tqdm import tqdm

from experiments import classify, datasets, jobs
from experiments import options
import pini
from experiments import published
from experiments import report
from experiments import runs
from experiments.epochs import (Context, seed_everything, epoch_batches, evaluate, loader, lr_factor, pick_device, resolve_precision,
                    train_epoch, writable_output, zero_shot_accuracy)
from experiments.jobs import (ABLATION, Busy, Job, Waiting, check_images, dataset_arg, job_options, plan, reuse_or_run, settings_of,
                              shard, tested_checkpoint, training_settings, variant_name)
from experiments.files import WriteFailed
from experiments.runs import CHECKPOINT, EVAL_RESULT, RESULT, UsageError


def parse_args(argv=None):
    return options.parse_args(argv, description=__doc__)


# -----------------------------------------------------------------------------------------
# Running one job: restore, train, evaluate, record
# -----------------------------------------------------------------------------------------

def build_model(options, ctx: Context, split, classnames=None) -> pini.PiNI:
    """PiNI on this split's classes (or on `classnames`, split None: a checkpoint's, for --classify).
    The template is the split's own, except when a checkpoint is evaluated: its text noise was
    learned over its own template's tokens, so that template stays."""
    template = options.template if hasattr(options, "template") else split.info.template
    return pini.PiNI(ctx.clip, ctx.tokenizer, classnames or split.classnames, template, options.n_ctx,
                     text_noise=options.text_noise, image_noise=options.image_noise,
                     text_generator=options.text_generator, control=options.control,
                     reduction=options.reduction, pixel_level=options.pixel_level)


def run_training(job: Job, args, ctx: Context, run_dir: Path) -> dict:
    """Train PiNI on one few-shot sample (dataset, shots, seed), test it, and record the result."""
    options, settings = job_options(job, args), settings_of(job, args, ctx.precision)
    seed_everything(job.seed)
    model = build_model(options, ctx, job.split)
    if ctx.param_dtype is not None:
        model.to(ctx.param_dtype)  # authors-fp16: the injectors in fp16 too (their .to(clip_model.dtype))
    if job.new_split and model.per_class:
        raise UsageError(f"{variant_name(options)} learns noise per training class: it cannot be tested on new "
                         "classes (--protocol base2new); use the default injectors")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=options.lr, momentum=options.momentum,
                                weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, options.epochs, options.warmup_epochs, options.warmup_lr, options.lr))
    scaler = torch.amp.GradScaler(ctx.device.type) if ctx.precision == "fp16" else None
    meta = {"settings": training_settings(settings), "ablation": job.ablation, "dataset_arg": dataset_arg(job.split)}
    checkpoint = run_dir / CHECKPOINT
    if args.force and (run_dir / RESULT).is_file():  # the finished run stays whole until the new one is
        checkpoint = run_dir / NEXT_CHECKPOINT
        tqdm.write(f"replacing the finished run in {run_dir} (--force): its result and checkpoint stay until "
                   "the new run finishes")
    history = restore(checkpoint, meta, model, optimizer, scheduler, scaler, args.resume, ctx.device)
    started = time.time()
    train(model, job, options, ctx, optimizer, scheduler, scaler, history, checkpoint, meta)
    extra = new_class_accuracy(model, job, options, ctx) if job.new_split else {}
    return test_and_record(model, job, options, ctx, run_dir / RESULT, settings, history,
                           promote=checkpoint if checkpoint.name == NEXT_CHECKPOINT else None,
                           wall_seconds=time.time() - started, **extra)


NEXT_CHECKPOINT = "checkpoint.next.pt"  # --force over a finished run: the new run's checkpoint until it finishes


def new_class_accuracy(model: pini.PiNI, job: Job, options, ctx: Context) -> dict:
    """The trained injectors, unchanged, on the unseen classes: their own prompts, their test images."""
    unseen = build_model(options, ctx, job.new_split)
    load_injectors(unseen, injector_state(model), "the base-class run")
    return {"accuracy_new": test_pass(unseen, job.new_split, job.seed, options, ctx)[0],
            "n_test_new": len(job.new_split.test)}


def test_pass(model: pini.PiNI, split, seed: int, options, ctx: Context):
    """(top-1 accuracy on the split's test set, its loader), in the run's inference mode."""
    test_loader = loader(split.test, ctx.eval_tf, options.test_batch_size, options.workers, device=ctx.device)
    seed_everything(seed)  # the "sample" inference mode draws noise: make it repeatable
    return evaluate(model, test_loader, ctx, options.inference, options.inference_samples), test_loader


def restore(path: Path, meta: dict, model, optimizer, scheduler, scaler, resume: bool, device) -> list:
    """With --resume and a checkpoint of the same settings: load it and return its history."""
    if not (resume and path.is_file()):
        if path.is_file():
            tqdm.write(f"starting {path.parent} afresh: it holds an unfinished run (--resume continues it)")
        return []
    state = runs.load_checkpoint(path, map_location=device)
    changed = runs.differences(state["meta"]["settings"], meta["settings"])
    if changed:
        raise UsageError(f"cannot --resume {path}: settings changed since it was saved ({runs.listed(changed)}); "
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
    batches_for, data_path = epoch_batches(model, job.sample.train, options, ctx)
    desc = f"{job.split.info.name} {job.shots}-shot seed {job.seed}"
    for epoch in tqdm(range(start, options.epochs), desc=desc, initial=start, total=options.epochs,
                      dynamic_ncols=True):
        epoch_seed = job.seed * 100_003 + epoch
        seed_everything(epoch_seed)
        stats = train_epoch(model, batches_for(epoch_seed), optimizer, scaler, options, ctx)
        stats.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"], augment=data_path)
        scheduler.step()
        history.append(stats)
        tqdm.write(f"epoch {epoch + 1}/{options.epochs}  loss {stats['loss']:.4f}  train acc {stats['acc']:.1f}%  "
                   f"lr {stats['lr']:.2e}  {stats['seconds']:.1f}s")
        save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, epoch, history, meta)
        runs.heartbeat(checkpoint.parent)  # this run is alive: other machines leave it alone


def test_and_record(model, job, options, ctx, path: Path, settings: dict, history: list, promote=None,
                    **extra) -> dict:
    """Test, write the record, then (promote: --force's new checkpoint) put the checkpoint in place, then
    draw noise.png (an evaluation of someone's checkpoint draws <record>.noise.png: never a run's own)."""
    accuracy, test_loader = test_pass(model, job.split, job.seed, options, ctx)
    n_train = len(job.sample.train) if job.sample else 0
    record = {"kind": job.kind, "protocol": job.protocol, "dataset": job.split.info.name, "shots": job.shots,
              "seed": job.seed,
              "variant": variant_name(options), "ablation": job.ablation, "accuracy": accuracy,
              "settings": settings, "history": history, "train_seconds": sum(h["seconds"] for h in history),
              "n_train": n_train, "n_test": len(job.split.test), "n_classes": len(job.split.classnames),
              "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
              "sample": job.sample.record() if job.sample else None,
              "short_classes": job.sample.short_classes if job.sample else {},
              "cache_views": options.cache_views, "device": str(ctx.device), "workers": options.workers,
              "host": socket.gethostname(), "pid": os.getpid(),
              "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__}, **extra}
    runs.write_record(path, record)
    if promote:
        os.replace(promote, path.with_name(CHECKPOINT))
    plot_noise(model, test_loader, ctx,
               path.with_name("noise.png") if path.name in (RESULT, EVAL_RESULT) and not extra.get("checkpoint_file")
               else path.with_name(f"{path.stem}.noise.png"))
    tqdm.write(f"{job.split.info.name} {job.shots}-shot seed {job.seed}: test accuracy {accuracy:.2f}%")
    return record


def evaluate_transfer(job: Job, args, ctx: Context, run_dir: Path):
    """Test the checkpoint of this call's ImageNet run on a target dataset (domain, cross-dataset).
    A finished test is reused; one whose checkpoint is not there yet is Waiting: not done by this call."""
    path = tested_checkpoint(job, args)

    def test():
        if not Path(path).is_file():
            tqdm.write(f"skipping {run_dir}: {path} is not there yet (its run is elsewhere or unfinished)")
            raise Waiting(f"{run_dir} waits for {path}")
        return run_eval(job, args, ctx, run_dir, runs.load_checkpoint(path, ctx.device))
    return reuse_or_run(run_dir / EVAL_RESULT, settings_of(job, args, ctx.precision), args, test)


def run_eval(job: Job, args, ctx: Context, run_dir: Path, checkpoint: dict) -> dict:
    """Test saved injectors; the record goes to its own file (eval.json), never over a result."""
    options, settings = job_options(job, args), settings_of(job, args, ctx.precision)
    path = tested_checkpoint(job, args)
    model = build_model(options, ctx, job.split)
    check_class_set(model, checkpoint, path, options)
    load_injectors(model, checkpoint["injectors"], path)
    trained = len(checkpoint["history"])
    if trained < options.epochs:
        tqdm.write(f"warning: {path} stopped after {trained} of {options.epochs} epochs: an unfinished run")
    extra = {} if job.source else {"checkpoint_file": str(path)}  # --eval-only: maybe in another run's folder
    return test_and_record(model, job, options, ctx, eval_path(run_dir, settings), settings, checkpoint["history"],
                           trained_on=checkpoint["meta"]["settings"]["dataset"], epochs_trained=trained, **extra)


def eval_path(run_dir: Path, settings: dict) -> Path:
    """eval.json, unless it holds an evaluation of another checkpoint or inference mode: that one is
    kept, and this one is named after its own (eval-<inference>-<hash of its settings>.json)."""
    path = run_dir / EVAL_RESULT
    if path.is_file() and runs.differences(runs.read_record(path).get("settings"), settings):
        other = run_dir / f"eval-{settings['inference']}-{datasets.digest(settings)[:8]}.json"
        tqdm.write(f"keeping {path} (it evaluates another checkpoint or inference mode); this evaluation goes "
                   f"to {other.name}")
        return other
    return path


def check_class_set(model: pini.PiNI, checkpoint: dict, path, options):
    """Per-class noise belongs to the classes it was trained on: never used with others."""
    if model.per_class and model.classnames != checkpoint["meta"]["settings"]["classnames"]:
        raise UsageError(f"{path} holds per-class noise ({variant_name(options)}): it cannot be "
                         "evaluated on other classes")


def load_context(args, checkpoint: Optional[dict], device, precision: str) -> Context:
    """The frozen CLIP of this call, with its transforms: the command line's, or a checkpoint's."""
    model, weights, activation = args.model, args.pretrained, getattr(args, "activation", "auto")
    if checkpoint:  # the CLIP its injectors were trained with, whatever the command line says
        trained = checkpoint["meta"]["settings"]
        model, weights, activation = trained["model"], trained["pretrained"], trained.get("activation", "auto")
        if (model, weights) != (args.model, args.pretrained):
            tqdm.write(f"evaluating with the checkpoint's CLIP: --model {model} --pretrained {weights}")
    torch.manual_seed(0)  # with --pretrained none: the same random CLIP on every call (resume, eval-only)
    ctx = Context(*pini.load_clip(model, weights, device, activation), device=device, precision=precision)
    if ctx.param_dtype is not None:
        ctx.clip.to(ctx.param_dtype)  # the authors' clip.build_model keeps CLIP in fp16
    else:  # fp16/bf16 autocast (CUDA, or bf16 on the CPU): CLIP's matrices cast once here, not at every use
        pini.freeze_in_dtype(ctx.clip, ctx.amp_dtype)
    return ctx


def run_zero_shot(job: Job, args, ctx: Context, run_dir: Path) -> dict:
    """Frozen CLIP with the dataset's hand-crafted prompt — and the set-up check: the published
    zero-shot accuracy of the same model, prompt and split, when there is one (published.py)."""
    split = job.split

    def accuracy_on(part: datasets.Split) -> float:
        test_loader = loader(part.test, ctx.eval_tf, args.test_batch_size, args.workers, device=ctx.device)
        return zero_shot_accuracy(ctx, part.classnames, split.info.zero_shot, test_loader)

    record = {"kind": "zero-shot", "protocol": job.protocol, "dataset": split.info.name, "shots": 0, "seed": 0,
              "variant": "zero-shot CLIP", "ablation": "", "accuracy": accuracy_on(split),
              "settings": settings_of(job, args, ctx.precision), "template": split.info.zero_shot,
              "model": args.model, "n_test": len(split.test), "trainable_parameters": 0}
    tqdm.write(f"{split.info.name} zero-shot: test accuracy {record['accuracy']:.2f}%")
    if job.new_split:  # base-to-new: the unseen half too (published numbers are for all classes)
        record["accuracy_new"] = accuracy_on(job.new_split)
    else:
        found = published.published_zero_shot(args.model, args.pretrained, split.info.name)
        check, warn = published.setup_check(record["accuracy"], args.model, args.pretrained, split.info.name)
        record.update(published_accuracy=found[0] if found else None, published_source=found[1] if found else None)
        tqdm.write(("warning: " if warn else "  ") + check)
    runs.write_record(run_dir / RESULT, record)
    return record


# -----------------------------------------------------------------------------------------
# Checkpoints
# -----------------------------------------------------------------------------------------

def injector_state(model: pini.PiNI) -> dict:
    """The trainable state only: the injectors (CLIP is never changed, so never saved)."""
    return {name: value for name, value in model.state_dict().items() if not name.startswith("clip.")}


def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, epoch: int, history: list, meta: dict):
    """Tensors and plain values only, so that it loads with weights_only=True (see runs.py)."""
    runs.save_checkpoint(path, {"injectors": injector_state(model), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                                "epoch": epoch, "history": runs.plain(history), "meta": runs.plain(meta)})


def load_classifier(checkpoint: str, classes: Optional[str] = None, device: str = "auto",
                    precision: str = "auto") -> classify.Classifier:
    """The checkpoint's PiNI as --eval-only builds it: its CLIP (model and weights), injectors,
    template and class names (or those of the `classes` file, where the injectors allow it)."""
    device = pick_device(device)
    precision = resolve_precision(precision, device)
    state = runs.load_checkpoint(checkpoint, device)  # safe: tensors and plain values only
    trained = state["meta"]["settings"]
    classnames = classify.read_classes(classes) if classes else trained["classnames"]
    options = argparse.Namespace(**jobs.checkpoint_overrides(state))  # its own CLIP, injectors, template
    with redirect_stdout(sys.stderr):  # progress lines never mix with the answers (--json)
        ctx = load_context(options, state, device, precision)
        model = build_model(options, ctx, None, classnames)
        check_class_set(model, state, checkpoint, options)
        load_injectors(model, state["injectors"], checkpoint)
        if len(state["history"]) < trained["epochs"]:
            print(f"warning: {checkpoint} stopped after {len(state['history'])} of {trained['epochs']} epochs: "
                  "an unfinished run")
    return classify.Classifier(model.eval(), ctx, str(checkpoint), trained["seed"])


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


@torch.no_grad()
def plot_noise(model: pini.PiNI, test_loader, ctx: Context, path: Path):
    """What the injectors learned, on a few test images (report.plot_noise, report.plot_noise_maps).
    Under the run's autocast, as every other forward: CLIP's matrices may be stored in its dtype."""
    images = ctx.inputs(next(iter(test_loader))[0][:4])
    with ctx.autocast():
        noise = model(images, use_mean=True).noise
    panels = {}
    for name, gaussian in noise.items():
        mu, sigma = gaussian.mu.float().cpu(), gaussian.sigma.float().cpu()
        if name == "text" and model.text_noise == "tokens":  # (n, W), or (C, n, W) conditioned: average classes
            mu, sigma = mu.reshape(-1, *mu.shape[-2:]).mean(0), sigma.reshape(-1, *sigma.shape[-2:]).mean(0)
        kind = model.text_noise if name == "text" else model.image_noise
        panels[name] = (kind, mu.numpy(), sigma.numpy())
    report.plot_noise(panels, path)
    spatial = model.image_injector.spatial if model.image_injector is not None else None
    if spatial == "patch":  # (1, B, N, D): |μ_p| and mean σ_p on the patch grid
        side = math.isqrt(noise["image"].mu.shape[2])
        mu_map = noise["image"].mu[0].float().norm(dim=-1).view(-1, side, side)
        sigma_map = noise["image"].sigma[0].float().mean(-1).view(-1, side, side)
    elif spatial == "pixel":  # (B, 3, H, W): average the colour channels
        mu_map, sigma_map = noise["image"].mu.float().mean(1), noise["image"].sigma.float().mean(1)
    else:
        return
    report.plot_noise_maps(images.float().cpu().numpy(), mu_map.cpu().numpy(), sigma_map.cpu().numpy(),
                           spatial, path.with_name(path.name.replace("noise.png", "noise_maps.png")))


# -----------------------------------------------------------------------------------------
# Main
# -----------------------------------------------------------------------------------------

def run(args) -> list:
    if args.classify:  # your own images, through a trained checkpoint (experiments/classify.py)
        return classify.run(args, load_classifier(args.checkpoint, args.classes, args.device, args.precision))
    out = writable_output(Path(args.output_dir))
    if args.summarize:  # no model, no data: tables from the records alone
        write_reports(out)
        return []
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    checkpoint = runs.load_checkpoint(args.checkpoint, device) if args.eval_only else None
    jobs = plan(args, checkpoint)  # data problems first: cheap
    if args.shard:
        jobs = shard(jobs, *args.shard, args)
    check_images(jobs)
    ctx = load_context(args, checkpoint, device, precision)
    args.activation = pini.activation_of(ctx.clip)  # part of every run's settings: the network that ran
    misfits = [j for j in jobs if j.kind == "train" and not pini.fits(ctx.clip, job_options(j, args).image_noise)]
    if any(not j.ablation for j in misfits):
        raise UsageError(f"--image-noise {args.image_noise} needs a ViT image tower (patch tokens); "
                         f"{args.model} has a {type(ctx.clip.visual).__name__}")

    results, busy, waiting = [], [], []
    for job in jobs:
        run_dir = job.run_dir(out)
        if any(job is misfit for misfit in misfits):
            continue  # the ablation's patch row on a ResNet tower: no run, the table says why
        try:
            if job.kind == "eval" and job.source:  # a protocol's test of a run trained in this call
                results.append(evaluate_transfer(job, args, ctx, run_dir))
                continue
            if job.kind == "eval":
                results.append(run_eval(job, args, ctx, run_dir, checkpoint))
                continue
            compute = run_zero_shot if job.kind == "zero-shot" else run_training
            results.append(reuse_or_run(run_dir / RESULT, settings_of(job, args, precision), args,
                                        lambda: compute(job, args, ctx, run_dir)))
            if job.kind == "train":
                redraw_missing_noise(job, args, ctx, run_dir)
        except Busy as held:  # Waiting too: both are runs this call could not do now
            (waiting if isinstance(held, Waiting) else busy).append(str(held))
    write_reports(out)
    if busy or waiting:
        reasons = []
        if busy:
            reasons.append(f"{len(busy)} of {len(jobs)} runs are held by other live processes (e.g. {busy[0]})")
        if waiting:
            reasons.append(f"{len(waiting)} of {len(jobs)} tests wait for a checkpoint that is not there yet "
                           f"(e.g. {waiting[0]})")
        raise NotDone(f"not done: {'; '.join(reasons)}; rerun this command when they finish to collect them")
    return [r for r in results if r is not None]


class NotDone(Exception):
    """The call ended without doing every run it was asked for (exit status 75, 'try again later')."""


def redraw_missing_noise(job: Job, args, ctx: Context, run_dir: Path):
    """A finished run whose noise.png was never written (a full disk, a kill) gets it from its checkpoint."""
    png, checkpoint = run_dir / "noise.png", run_dir / CHECKPOINT
    if png.exists() or not (run_dir / RESULT).is_file() or not checkpoint.is_file():
        return
    options = job_options(job, args)
    model = build_model(options, ctx, job.split)
    load_injectors(model, runs.load_checkpoint(checkpoint, ctx.device)["injectors"], checkpoint)
    test_loader = loader(job.split.test, ctx.eval_tf, options.test_batch_size, options.workers)
    plot_noise(model, test_loader, ctx, png)
    tqdm.write(f"drew the missing {png} from its checkpoint")


def write_reports(out: Path):
    report.write_reports(out, ABLATION, [datasets.DATASETS[a].name for a in datasets.BENCHMARK],
                         test_only=[info.name for info in datasets.DATASETS.values() if info.test_only])


def one_line(error: BaseException) -> str:
    """The message of an error; a DataLoader worker's wrapped error unwrapped to its own message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.strip().splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, `kill`), handled as Ctrl-C is: the current epoch is
    abandoned, the last finished one is already saved, and every lock is released on the way out."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not break the clean-up
    raise Terminated()


def main(argv=None) -> int:
    args = parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        run(args)
    except (UsageError, datasets.DatasetError, pini.WeightsUnavailable, pini.CUDAError, ValueError,
            FileNotFoundError, WriteFailed) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except NotDone as error:
        print(error, file=sys.stderr)
        return 75
    except KeyboardInterrupt as error:
        how = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
        print(f"\n{how}: the last finished epoch is saved and the run's lock released; rerun the same "
              "command with --resume", file=sys.stderr)
        return 143 if isinstance(error, Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
