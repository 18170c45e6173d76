"""Shared fixtures: tiny, randomly initialised open_clip models registered from config files.

No CLIP weights can be downloaded where these tests run, so every test builds a small CLIP of
the real architecture (a ViT and a ModifiedResNet image tower, CLIP's text transformer and BPE
tokenizer) from an open_clip model-config JSON written to a temporary folder.
"""
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import pini

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_CONFIGS = {
    "tiny-vit": {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": TEXT_CFG,
    },
    "tiny-resnet": {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
        "text_cfg": TEXT_CFG,
    },
}


@pytest.fixture(autouse=True, scope="session")
def private_user_cache(tmp_path_factory):
    """Caches that fall back to the user's cache folder (few-shot samples, verified images) go to a
    temporary one: the tests never read or write ~/.cache."""
    patcher = pytest.MonkeyPatch()
    patcher.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user_cache")))
    yield
    patcher.undo()


def write_config(folder, name):
    path = folder / f"{name}.json"
    path.write_text(json.dumps(TINY_CONFIGS[name]))
    return path


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_configs")
    for name in TINY_CONFIGS:
        write_config(folder, name)
    return folder


@pytest.fixture(scope="session", params=sorted(TINY_CONFIGS))
def tiny_clip(request, config_dir):
    """(clip, tokenizer, train_transform, eval_transform) for each tiny architecture."""
    torch.manual_seed(0)
    return pini.load_clip(str(config_dir / f"{request.param}.json"), pretrained="none")


@pytest.fixture(scope="session")
def tiny_vit(config_dir):
    torch.manual_seed(0)
    return pini.load_clip(str(config_dir / "tiny-vit.json"), pretrained="none")


CLASSNAMES = ["cat", "golden_retriever", "hot air balloon", "x"]  # names of different token lengths


def jpeg_bytes(color=(200, 30, 30), size=8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "JPEG")
    return buffer.getvalue()


JPEG = jpeg_bytes()


def noise_png(seed: int, size=32) -> bytes:
    """A PNG of random pixels: every crop of it differs."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def touch_image(path: Path, data: bytes = JPEG):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_json_split(folder: Path, image_dir: str, split_file: str, names, per_class=(4, 2, 3), colors=None):
    """A CoOp split file over generated images (default per class: 4 train, 2 val, 3 test).
    `colors`, one per class, gives each class its own image colour (a learnable signal)."""
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        data = jpeg_bytes(colors[label]) if colors else JPEG
        for part, n in zip(split, per_class):
            for i in range(n):
                rel = f"{name.replace(' ', '_')}/{part}_{i}.jpg"
                touch_image(folder / image_dir / rel, data)
                split[part].append([rel, label, name])
    (folder / split_file).write_text(json.dumps(split))
    return split


TRAINING_FLAGS = ("--batch-size", "--epochs", "--shots", "--seeds", "--seed")


def for_eval_only(argv) -> list:
    """A training call's arguments without its training flags: --eval-only takes those from the
    checkpoint and refuses them."""
    out, dropping = [], False
    for arg in argv:
        if arg.startswith("--"):
            dropping = arg in TRAINING_FLAGS
        if not dropping:
            out.append(arg)
    return out
