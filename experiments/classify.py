"""Classify your own images with a trained checkpoint: the top-k classes, the noise's own spread,
and a picture of what the noise did.

    python train.py --classify cat.jpg photos/ 'more/*.png' --checkpoint runs/caltech101/shots_16/seed_1/checkpoint.pt
    python train.py --classify cat.jpg --checkpoint C --inference average --inference-samples 16 --top-k 3
    python train.py --classify cat.jpg --checkpoint C --classes my_classes.txt --json

    classify(inputs, checkpoint, ...)   -> Report(answers, problems): what the command prints
    load_classifier(checkpoint, ...)    -> the checkpoint's PiNI on its CLIP, as --eval-only builds it
    image_paths(inputs)                 -> files, folders and glob patterns expanded; one problem line each
    plot_answer(classifier, answer, ...)-> the picture: the image as CLIP saw it, the top-k bars with their
                                           spread, and the image noise (μ, σ maps on pixels, or its size
                                           against the image feature's, per sample)

Everything the model needs comes from the checkpoint, through train.py's own functions (the CLIP,
its weights and eval transform, the injectors, the template, the class names); the class
probabilities and their spread are `pini.PiNI.predict_with_spread`. Each image is predicted alone,
after seeding the generator with the checkpoint's seed (as the test pass does), so an image's answer
does not depend on the other images of the call. A bad input (missing, not an image, a decompression
bomb, a folder with no images) costs one line and the other images are still answered.
"""

from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from matplotlib.figure import Figure
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

import pini
from experiments import datasets, image_data
from experiments.epochs import Context, seed_everything
from experiments.files import atomic_write
from experiments.runs import UsageError

MODES = ("mean", "sample", "average")


@dataclass
class Classifier:
    """A checkpoint's PiNI, ready to classify: the model, its CLIP's context, the seed of its run."""
    model: pini.PiNI
    ctx: Context
    checkpoint: str
    seed: int


@dataclass
class Answer:
    """One image's answer: the top-k classes with their probabilities and std over the noise samples
    (0 outside "average"), how many of the K samples' top-1 is not the answer's, and the picture."""
    path: str
    mode: str
    samples: int
    top_k: list  # [(class name, probability, std)], most probable first
    top1_changes: int
    picture: Optional[str] = None

    def record(self) -> dict:
        return {"path": self.path, "inference": self.mode, "samples": self.samples, "top1_changes": self.top1_changes,
                "top_k": [{"class": c, "probability": p, "std": s} for c, p, s in self.top_k], "picture": self.picture}


@dataclass
class Report:
    answers: list  # [Answer]
    problems: list  # ["<input>: why it was not classified"], one line each


# -----------------------------------------------------------------------------------------
# The model, from the checkpoint
# -----------------------------------------------------------------------------------------

def read_classes(path: str) -> list:
    """Class names from a text file, one per line (blank lines skipped); two that give the same
    prompt (up to case, spacing and underscores) are refused, as a dataset's class folders are."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--classes {path}: cannot be read ({getattr(error, 'strerror', None) or error}); "
                         "give a text file with one class name per line") from None
    if len(names) < 2:
        raise UsageError(f"--classes {path}: {len(names)} class name found, at least 2 are needed")
    groups = {}
    for name in names:
        groups.setdefault(datasets.normalised_classname(name), []).append(name)
    clashes = [group for group in groups.values() if len(group) > 1]
    if clashes:
        listed = "; ".join(" = ".join(repr(n) for n in group) for group in clashes[:5])
        raise UsageError(f"--classes {path}: {len(clashes)} groups of class names give the same prompt: {listed}. "
                         "Keep one name of each")
    return [name.replace("_", " ") for name in names]


# -----------------------------------------------------------------------------------------
# The images
# -----------------------------------------------------------------------------------------

def _is_image_name(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMG_EXTENSIONS)


def image_paths(inputs) -> tuple:
    """(paths, problems): every file named, every image file under a folder (recursively, sorted),
    every file a glob pattern matches (sorted); each path once. A missing path, a pattern that
    matches nothing and a folder without images are one problem line each."""
    paths, problems = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_image_name(p))
            if not found:
                problems.append(f"{text}: a folder with no images (looked for {' '.join(IMG_EXTENSIONS[:4])} ...)")
            paths += found
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{text}: no file matches this pattern")
            paths += found
        else:
            problems.append(f"{text}: no such file or folder")
    return [str(p) for p in dict.fromkeys(paths)], problems


def read_image(path: str, transform) -> torch.Tensor:
    """(3, H, W): the image as CLIP sees it (read as training reads it, then the eval transform).
    Raises UsageError with one line when it is not an image PIL can read, or is larger than PIL's
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS, checked from the header, before decoding)."""
    try:
        return transform(image_data.load_image(path))
    except Image.DecompressionBombError as error:
        raise UsageError(f"{path}: refused, {error}".rstrip(".")) from None
    except Image.UnidentifiedImageError:
        raise UsageError(f"{path}: not an image (PIL cannot identify it)") from None
    except Exception as error:  # PIL raises many types: truncated file, unreadable file, ...
        raise UsageError(f"{path}: cannot be read as an image ({type(error).__name__}: {error})") from None


# -----------------------------------------------------------------------------------------
# Classifying
# -----------------------------------------------------------------------------------------

def classify(inputs, classifier: Classifier, inference: str = "mean", samples: int = 8, top_k: int = 5,
             pictures=None) -> Report:
    """Classify every image of `inputs` (files, folders, glob patterns) with a checkpoint.

    inference: "mean", "sample" or "average" (`PiNI.predict`); samples: K for "average" (and the
    number of noise samples the picture draws); pictures: a folder for one PNG per image, or None.
    classifier: a checkpoint's model as `train.load_classifier` loads it (as --eval-only builds it).
    """
    if inference not in MODES:
        raise UsageError(f"--inference {inference!r}: use one of {', '.join(MODES)}")
    paths, problems = image_paths(inputs)
    model, ctx = classifier.model, classifier.ctx
    with ctx.autocast():
        text = model.mean_text_features() if inference == "mean" else None  # constant: encoded once
    answers, names = [], set()
    for path in paths:
        try:
            pixels = read_image(path, ctx.eval_tf)
        except UsageError as error:
            problems.append(str(error))
            continue
        seed_everything(classifier.seed)  # as the test pass: the image's answer is repeatable
        with ctx.autocast():
            prediction = model.predict_with_spread(pixels[None].to(ctx.device), inference, samples, text_features=text)
        probabilities, std = prediction.probabilities[0].float().cpu(), prediction.std[0].float().cpu()
        best = probabilities.argsort(descending=True)[:top_k].tolist()
        answer = Answer(path, inference, len(prediction.samples),
                        [(model.classnames[c], probabilities[c].item(), std[c].item()) for c in best],
                        int(prediction.top1_changes[0]))
        if pictures is not None:
            answer.picture = str(plot_answer(classifier, answer, pixels, Path(pictures) / _picture_name(path, names),
                                             samples))
        answers.append(answer)
    return Report(answers, problems)


def _picture_name(path: str, taken: set) -> str:
    """<image stem>.png, made unique within a call (two folders may hold a cat.jpg each)."""
    stem, n = Path(path).stem, 1
    name = f"{stem}.png"
    while name in taken:
        n += 1
        name = f"{stem}_{n}.png"
    taken.add(name)
    return name


# -----------------------------------------------------------------------------------------
# The picture
# -----------------------------------------------------------------------------------------

@torch.no_grad()
def plot_answer(classifier: Classifier, answer: Answer, pixels: torch.Tensor, path: Path, samples: int = 8) -> Path:
    """One PNG: the image as CLIP saw it (`pixels`, (3, H, W), after the eval transform); the top-k
    probabilities with their std over the noise samples; and the image noise as its injector draws
    it (`spatial`): μ and σ maps over the image for noise added to the pixels, or for noise added to
    the image feature, the size ‖ε_k‖ of K sampled noises against the size ‖f_v‖ of that feature.
    A bare matplotlib Figure: no pyplot state, no window, a notebook's backend left alone."""
    model, ctx = classifier.model, classifier.ctx
    images = pixels[None].to(ctx.device)  # (1, 3, H, W)
    injector = model.image_injector
    panels = 2 + (0 if injector is None else 2 if injector.spatial == "pixel" else 1)
    fig = Figure(figsize=(3.6 * panels, 3.4))
    axes = fig.subplots(1, panels)
    cfg = model.clip.visual.preprocess_cfg
    mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
    axes[0].imshow((pixels.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
    axes[0].set_title(f"as CLIP saw it ({pixels.shape[-1]}×{pixels.shape[-2]})", fontsize=9)
    axes[0].axis("off")

    names, probabilities, spread = zip(*answer.top_k)
    axes[1].barh(range(len(names)), probabilities, xerr=spread, color="tab:blue", capsize=3)
    axes[1].set_yticks(range(len(names)), [n[:24] for n in names], fontsize=8)
    axes[1].invert_yaxis()
    axes[1].set_xlim(0, 1)
    axes[1].set_xlabel("probability" + (f" (± std over {answer.samples} noise samples)" if answer.mode == "average"
                                        else f" ({answer.mode} noise)"), fontsize=8)
    axes[1].set_title(f"top-{len(names)}" + (f"; top-1 in {answer.samples - answer.top1_changes} of "
                                             f"{answer.samples} samples" if answer.mode == "average" else ""), fontsize=9)

    if injector is not None and injector.spatial == "pixel":
        with ctx.autocast():
            noise = model(images, 1, use_mean=True).noise["image"]  # μ, σ: (1, 3, H, W)
        mu, sigma = noise.mu[0].float().mean(0).cpu(), noise.sigma[0].float().mean(0).cpu()  # over RGB: (H, W)
        bound = mu.abs().max().item() or 1.0
        axes[2].imshow(mu.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes[2].set_title(f"pixel noise μ (RGB mean), ±{bound:.2g}", fontsize=9)
        axes[3].imshow(sigma.numpy(), cmap="viridis")
        axes[3].set_title(f"pixel noise σ (RGB mean), {sigma.min():.2g}–{sigma.max():.2g}", fontsize=9)
        for ax in axes[2:]:
            ax.axis("off")
    elif injector is not None:
        seed_everything(classifier.seed)  # "average": the very samples behind the bars
        with ctx.autocast():
            feature, eps = model.image_noise_samples(images, samples)  # (1, D), (K, 1, D)
        sizes = eps[:, 0].float().norm(dim=-1).cpu()  # (K,)
        feature_size = feature[0].float().norm().item()
        axes[2].bar(range(1, len(sizes) + 1), sizes.numpy(), color="tab:orange", label="‖ε_k‖ image noise")
        axes[2].axhline(feature_size, color="k", ls="--", label="‖f_v‖ image feature")
        axes[2].set_ylim(0, 1.3 * max(feature_size, sizes.max().item()))  # room for the legend
        axes[2].set_xlabel("noise sample k", fontsize=8)
        axes[2].set_title(f"image noise / feature: {sizes.mean() / feature_size:.2f} on average", fontsize=9)
        axes[2].legend(fontsize=7)
    fig.suptitle(Path(answer.path).name, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


# -----------------------------------------------------------------------------------------
# The command: train.py --classify
# -----------------------------------------------------------------------------------------

def describe(answer: Answer) -> str:
    """The answer for a person: a header line, then one line per class."""
    if answer.mode == "average":
        how = (f"average over {answer.samples} noise samples, {answer.samples - answer.top1_changes} of which "
               "have this top-1 class")
    else:
        how = "noise mean" if answer.mode == "mean" else "one noise sample"
    width = max(len(name) for name, _, _ in answer.top_k)
    lines = [f"{answer.path}  ({how})"]
    for name, p, s in answer.top_k:
        lines.append(f"  {name:<{width}}  {100 * p:6.2f}%" + (f"  ± {100 * s:.2f}" if answer.mode == "average" else ""))
    if answer.picture:
        lines.append(f"  picture: {answer.picture}")
    return "\n".join(lines)


def run(args, classifier: Classifier) -> list:
    """`train.py --classify`: print each image's answer (or one JSON document), a line per bad input."""
    pictures = Path(args.output_dir) if args.output_dir_given else Path(args.checkpoint).parent / "classified"
    report = classify(args.classify, classifier, args.inference, args.inference_samples, args.top_k, pictures)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "answers": [a.record() for a in report.answers],
                          "problems": report.problems}, indent=1))
    else:
        print("\n\n".join(describe(answer) for answer in report.answers))
    if report.problems:
        raise UsageError(f"{len(report.problems)} input{'s' * (len(report.problems) > 1)} not classified (each "
                         f"said above); {len(report.answers)} image{'s' * (len(report.answers) != 1)} answered")
    return [a.record() for a in report.answers]
