"""train.py's command line: every flag, its range, and the checks no single flag can make.

Every option is spelled once: the injector choices come from pini.py (TEXT_NOISE, IMAGE_NOISE,
CONTROLS), the dataset names from datasets.py. A bad value stops here, in one line, before any
data is read or any model loads.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from experiments import datasets
from experiments import epochs
import pini


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


def shard_spec(text: str) -> tuple:
    """'I/N' -> (I, N), 0 ≤ I < N (SLURM: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"must be I/N with 0 ≤ I < N (e.g. 0/4 ... 3/4), not {text!r}")
    return index, count


def _joined_negative_values(argv) -> list:
    """'--shard -1/2' as '--shard=-1/2': argparse would take '-1/2' for an unknown flag and answer
    "expected one argument" instead of the range check's message."""
    out = []
    for arg in argv:
        if out and out[-1] == "--shard" and arg[:1] == "-" and arg[1:2].isdigit():
            out[-1] = f"--shard={arg}"
        else:
            out.append(arg)
    return out


def parse_args(argv=None, description: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    for add_options in (_data_options, _model_options, _objective_options, _optimisation_options, _run_options,
                        _classify_options):
        add_options(p)
    args = p.parse_args(_joined_negative_values(sys.argv[1:] if argv is None else argv))
    args.output_dir_given = args.output_dir != p.get_default("output_dir")  # --classify: else next to the checkpoint
    args.started = time.time()  # results older than this call are what --force replaces
    for problem in _inconsistencies(args) + _ignored_flags(args, p):
        p.error(problem)
    for name in ("seeds", "shots"):
        values = getattr(args, name)
        if len(set(values)) < len(values):
            print(f"warning: --{name} {' '.join(map(str, values))} repeats values; each is run and counted once",
                  file=sys.stderr)
            setattr(args, name, list(dict.fromkeys(values)))
    return args


def _data_options(p):
    data = p.add_argument_group("data")
    data.add_argument("--dataset", nargs="+",
                      help=f"one or more of {', '.join(datasets.DATASETS)}; 'all' for the 11 benchmark "
                           "datasets; or the path of a folder with one sub-folder per class (default: "
                           "caltech101, or with --eval-only the checkpoint's dataset)")
    data.add_argument("--shots", nargs="+", type=positive_int, default=[16], help="images per class (1 2 4 8 16)")
    data.add_argument("--seeds", "--seed", nargs="+", type=count, default=[1], help="few-shot sample and training seeds")
    data.add_argument("--data-root", default=datasets.default_data_root(),
                      help="folder holding the datasets in CoOp's layout (default: $PINI_DATA or ./data)")
    data.add_argument("--download", action="store_true",
                      help="first download the datasets that are missing (see python -m experiments.downloads -h)")
    data.add_argument("--workers", type=count, default=min(8, os.cpu_count() or 1),
                      help="data-loading processes (and image-decoding threads); results do not depend on it")
    data.add_argument("--augment", choices=epochs.AUGMENT, default="auto",
                      help="how training images are cropped and flipped (the same crops and flips either "
                           "way): pil = decoded from disk and cropped by PIL in --workers processes every "
                           "epoch (the authors' data path); tensor = decoded once and kept in memory as "
                           "uint8, cropped by tensor ops on the training device; auto = tensor when they "
                           "fit in memory, else pil")


def _model_options(p):
    model = p.add_argument_group("model")
    model.add_argument("--model", default="ViT-B-16", help="open_clip model name or model-config .json path")
    model.add_argument("--pretrained", default="openai",
                       help="open_clip pretrained tag, local checkpoint file, or 'none' (random weights)")
    model.add_argument("--activation", choices=pini.ACTIVATIONS, default="auto",
                       help="MLP activation of CLIP's towers: auto = what the weights were trained with (an "
                            "open_clip tag's metadata: QuickGELU for OpenAI's; a checkpoint file's own record), "
                            "or gelu / quick-gelu (for a file that records none)")
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


def _objective_options(p):
    objective = p.add_argument_group("objective (see pini.pini_objective)")
    objective.add_argument("--noise-samples", type=positive_int, default=1, help="K Monte-Carlo noise samples")
    objective.add_argument("--ce-weight", type=non_negative, default=1.0, help="weight of the cross-entropy term (the "
                           "Monte-Carlo estimate of the bound)")
    objective.add_argument("--kl-weight", type=non_negative, default=0.0,
                           help="β, weight of KL(p_θ(ε) ‖ N(0, s²I)); 0 = the authors' code")
    objective.add_argument("--prior-std", type=positive, default=1.0, help="s, the prior's standard deviation")


def _optimisation_options(p):
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
    optim.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "authors-fp16"], default="auto",
                       help="autocast precision (parameters stay fp32, logits fp32); auto = fp16 on CUDA, fp32 on "
                            "CPU. authors-fp16: the authors' numerics — CLIP and injectors stored in fp16, SGD on "
                            "fp16 parameters and momentum, no GradScaler")
    optim.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _run_options(p):
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
    run.add_argument("--protocol", choices=["few-shot", "base2new", "domain", "cross-dataset"], default="few-shot",
                     help="few-shot: all classes (the paper's tables); base2new: train on the base half of the "
                          "classes, test on base and on the unseen new half (CoCoOp's protocol); domain: "
                          "ImageNet, tested on ImageNet-V2/-Sketch/-A/-R; cross-dataset: ImageNet, tested on "
                          "the 10 other datasets (--dataset picks the targets)")
    run.add_argument("--shard", type=shard_spec, metavar="I/N",
                     help="run only share I of N (0-based) of this call's jobs, balanced by estimated cost; "
                          "any number of processes may share one --output-dir")
    run.add_argument("--summarize", action="store_true",
                     help="only rebuild every summary and ablation table from the results in --output-dir")


def _classify_options(p):
    classify = p.add_argument_group("classify your own images (see classify.py)")
    classify.add_argument("--classify", nargs="+", metavar="IMAGE",
                          help="image files, folders of images or glob patterns ('photos/*.jpg'), classified by "
                               "--checkpoint under --inference; prints the top-k classes and writes a picture "
                               "per image (next to the checkpoint, or under --output-dir when given)")
    classify.add_argument("--top-k", type=positive_int, default=5, help="classes printed per image")
    classify.add_argument("--classes", metavar="FILE",
                          help="class names, one per line, instead of the checkpoint's (not with per-class noise)")
    classify.add_argument("--json", action="store_true", help="print the answers as JSON")


def _inconsistencies(args) -> list:
    """Problems no single flag shows, one message each."""
    problems = []
    if args.eval_only and not args.checkpoint:
        problems.append("--eval-only needs --checkpoint path/to/checkpoint.pt")
    if args.classify and (not args.checkpoint or args.eval_only or args.transfer):
        problems.append("--classify needs --checkpoint path/to/checkpoint.pt, without --eval-only or --transfer "
                        "(--classes FILE gives other class names)")
    elif (args.checkpoint or args.transfer) and not (args.eval_only or args.classify):
        problems.append("--checkpoint and --transfer belong to --eval-only or --classify (to continue a run, use "
                        "--resume)")
    if (args.classes or args.json) and not args.classify:
        problems.append("--classes and --json belong to --classify")
    if args.zero_shot and args.ablation:
        problems.append("--ablation trains every variant (its zero-shot row included); drop --zero-shot")
    if args.ablation and (args.text_noise, args.text_generator, args.image_noise, args.control) != (
            "tokens", "free", "cross-attention", "none"):
        problems.append("--ablation sets --text-noise, --text-generator, --image-noise and --control itself, one "
                        "variant per row; leave them at their defaults")
    if args.text_noise == "none" and args.image_noise == "none" and not (args.zero_shot or args.eval_only):
        problems.append("--text-noise none and --image-noise none leave nothing to train; "
                        "--zero-shot evaluates CLIP alone")
    if args.momentum >= 1:
        problems.append(f"--momentum must be below 1, not {args.momentum}")
    if args.warmup_epochs > args.epochs:
        problems.append(f"--warmup-epochs {args.warmup_epochs} is more than --epochs {args.epochs}")
    if args.ce_weight == 0 and args.kl_weight == 0:
        problems.append("--ce-weight and --kl-weight are both 0: nothing would be trained")
    if args.protocol != "few-shot" and (args.ablation or args.eval_only):
        problems.append(f"--protocol {args.protocol} runs PiNI and zero-shot CLIP; use --ablation and "
                        "--eval-only with the few-shot protocol")
    if args.cache_views and pini.needs_images(args.image_noise) and not args.ablation:
        problems.append(f"--cache-views caches image features, but --image-noise {args.image_noise} needs the "
                        "images; use it with cross-attention, mlp or none")
    return problems


# What --eval-only takes from the checkpoint, and what --summarize never reads: given, they would be ignored.
TRAINING_FLAGS = ("shots", "seeds", "text_noise", "text_generator", "image_noise", "control", "n_ctx", "reduction",
                  "pixel_level", "noise_samples", "ce_weight", "kl_weight", "prior_std", "epochs", "lr",
                  "batch_size", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "cache_views", "augment",
                  "resume", "force", "ablation", "zero_shot", "shard")
SUMMARIZE_READS = ("output_dir", "output_dir_given", "summarize", "started")  # and what parse_args derives


def _ignored_flags(args, parser) -> list:
    """Flags that contradict another, or that the chosen mode would silently ignore."""
    def given(names):
        return ["--" + name.replace("_", "-") for name in names
                if hasattr(args, name) and getattr(args, name) != parser.get_default(name)]

    problems = []
    if args.force and args.resume:
        problems.append("--force starts runs again and --resume continues them: choose one")
    if args.summarize:
        extra = given(sorted(set(vars(args)) - set(SUMMARIZE_READS)))
        if extra:
            problems.append(f"--summarize only reads --output-dir: drop {' '.join(extra)}")
    elif args.eval_only:
        extra = given(TRAINING_FLAGS)
        if extra:
            problems.append(f"--eval-only takes the run's settings from the checkpoint and trains nothing: drop "
                            f"{' '.join(extra)}")
    return problems
