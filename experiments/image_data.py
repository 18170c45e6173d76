"""Reading images: decode, verify up front, decode once and keep, and the torch Dataset.

    load_image(path)                    -> the one way an image is read (PIL, RGB)
    verify_images(items, name)          -> decode every image before training (parallel, remembered)
    decoded_bytes(items)                -> memory the images take decoded, from their headers only
    DECODED.keep(items)                 -> {path: (3, H, W) uint8 tensor}: each image decoded once
                                           per process and kept (the `--augment tensor` path)
    ImageDataset(items, transform)      -> a torch Dataset of (image, label), indexed by i or by
                                           (epoch_seed, i): augmentation independent of --workers
    EpochSampler(n, shuffle)            -> yields those (epoch_seed, i); .set_epoch(seed)

Like datasets.py, this module knows nothing of models: transforms are passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import torch.utils.data
from PIL import Image
from torchvision.datasets.folder import default_loader
from torchvision.transforms.v2.functional import pil_to_tensor, to_dtype
from tqdm import tqdm

from experiments.datasets import DatasetError, write_cache, user_cache_dir


# -----------------------------------------------------------------------------------------
# Reading and verifying
# -----------------------------------------------------------------------------------------

def load_image(path: str):
    """The one way images are read, by training, evaluation and verify_images alike."""
    return default_loader(path)


def _image_problem(path: str) -> Optional[str]:
    """None when the image decodes fully (a truncated JPEG passes PIL's verify() but not this)."""
    try:
        load_image(path)
        return None
    except Exception as error:  # PIL raises many types
        return f"{type(error).__name__}: {error}"


def verify_images(items, name: str = "dataset", cache_path=None, workers: Optional[int] = None,
                  progress: bool = True) -> int:
    """Open and fully decode every image a run will read, before any training: a bad test image
    is otherwise found only after the last epoch. Runs in threads (Pillow decodes without the GIL),
    with a progress bar; images that decoded once are remembered by (path, size, mtime) in a JSON
    file (`cache_path`, default <user cache>/verified_images.json), so the next run is instant.
    Returns the number of images decoded now; raises one DatasetError listing the bad ones.
    """
    cache_path = Path(cache_path) if cache_path else user_cache_dir() / "verified_images.json"
    known = _read_verified(cache_path)
    paths = list(dict.fromkeys(os.path.abspath(item.path) for item in items))  # keys valid from any cwd
    bad, todo = [], []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            bad.append((path, "missing" if isinstance(error, FileNotFoundError) else error.strerror))
            continue
        stamp = [stat.st_size, stat.st_mtime_ns]
        if known.get(path) != stamp:
            todo.append((path, stamp))
    good = {}
    if todo:
        workers = workers or min(8, 2 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool, \
                tqdm(total=len(todo), desc=f"checking {name} images", unit="img", disable=not progress) as bar:
            for (path, stamp), problem in zip(todo, pool.map(_image_problem, [p for p, _ in todo])):
                bar.update()
                if problem:
                    bad.append((path, problem))
                else:
                    good[path] = stamp
    if good:
        merged = _read_verified(cache_path)  # another run may have added entries meanwhile
        merged.update(good)
        write_cache(cache_path.name, [cache_path.parent], merged)
    if bad:
        listing = "\n".join(f"    {path}: {why}" for path, why in bad[:5])
        raise DatasetError(f"{name}: {len(bad)} of {len(paths)} images cannot be read, e.g.\n{listing}\n"
                           "Replace or re-extract them (is the dataset fully downloaded?)")
    return len(todo)


def _read_verified(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
        return raw if isinstance(raw, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or a broken one: check everything again


def _read(path: str):
    """load_image, with the file named when it fails (PIL raises many types)."""
    try:
        return load_image(path)
    except Exception as error:
        raise DatasetError(f"cannot read image {path}: {error}") from None


# -----------------------------------------------------------------------------------------
# Decoded once, kept in memory
# -----------------------------------------------------------------------------------------

def decoded_bytes(items) -> int:
    """Bytes the distinct images of `items` take decoded as RGB uint8, read from their headers
    (PIL opens a file lazily: the size is known without decoding the pixels)."""
    total = 0
    for path in dict.fromkeys(item.path for item in items):
        with Image.open(path) as image:
            width, height = image.size
        total += 3 * width * height
    return total


class DecodedImages:
    """Images decoded once per process and kept as (3, H, W) uint8 tensors, by path.

    Decoding a JPEG costs more than cropping and resizing it; a few-shot training set is small
    (16-shot ImageNet: 16,000 images, about 7 GB decoded), so it is decoded once and every epoch,
    seed and variant that trains on the same images reuses the pixels. The pixels are exactly
    `load_image`'s. Only the images of the last `keep` call are held: memory stays bounded by one
    training set when the jobs of a call train on different samples.
    """

    def __init__(self):
        self.images: dict = {}

    def missing(self, items) -> list:
        """The items whose images are not kept yet (one per path); drops every image not in
        `items`, so memory stays bounded by one training set."""
        wanted = {item.path: item for item in items}
        self.images = {path: pixels for path, pixels in self.images.items() if path in wanted}
        return [item for path, item in wanted.items() if path not in self.images]

    def clear(self):
        """Keep nothing (the memory goes back to whoever needs it)."""
        self.images = {}

    def keep(self, items, workers: Optional[int] = None, device=None, progress: bool = True) -> dict:
        """{path: (3, H, W) uint8} for every image of `items`, decoding those not kept yet (in
        threads: Pillow decodes without the GIL) and placing them on `device` (default: CPU)."""
        missing = [item.path for item in self.missing(items)]
        if missing:
            def decode(path):
                pixels = pil_to_tensor(_read(path))
                return pixels.to(device) if device is not None else pixels

            with ThreadPoolExecutor(workers or min(8, 2 * (os.cpu_count() or 1))) as pool:
                decoded = tqdm(pool.map(decode, missing), total=len(missing), desc="decoding training images",
                               unit="img", leave=False, disable=not progress)
                self.images.update(zip(missing, decoded))
        return self.images


DECODED = DecodedImages()


# -----------------------------------------------------------------------------------------
# Augmenting a batch at once (the --augment tensor path)
# -----------------------------------------------------------------------------------------

class BatchAugmentation:
    """A training transform (crop, flip, to float, normalise: pini.train_transform) cut in two,
    so that the device does the per-pixel work once per batch, not once per image.

        per image (the Dataset's transform, under the sample's seed):
            (3, H, W) uint8 -> (3, S, S) uint8 random resized crop, and the flip drawn, not applied
        per batch (`finish`, after the loader stacks them):
            (B, 3, S, S) uint8, (B,) flips -> flipped, converted to [0, 1] and normalised, (B, 3, S, S)

    The per-image part draws exactly what the whole transform draws, in the same order (the crop
    box, then RandomHorizontalFlip's `torch.rand(1) < p`), from the same generator; the batch part
    applies the same operations to the same values, so the batch equals the per-image transforms
    stacked, bit for bit (tests/test_image_data.py). Mean and std live on the device, made once:
    torchvision's normalize builds them from Python lists for every image (two copies to the GPU each).
    """

    def __init__(self, transform, device="cpu"):
        parts = {type(t).__name__: t for t in transform.transforms}
        self.crop, self.flip = parts["RandomResizedCrop"], parts["RandomHorizontalFlip"]
        self.dtype = parts["ToDtype"].dtype
        normalize = parts["Normalize"]
        self.mean = torch.tensor(normalize.mean, dtype=self.dtype, device=device).view(-1, 1, 1)  # (3, 1, 1)
        self.std = torch.tensor(normalize.std, dtype=self.dtype, device=device).view(-1, 1, 1)

    def __call__(self, pixels: torch.Tensor):
        """(3, H, W) uint8 -> ((3, S, S) uint8, (1,) bool: flip it)."""
        resized = self.crop(pixels)
        return resized, torch.rand(1) < self.flip.p  # the flip RandomHorizontalFlip draws

    def finish(self, pixels: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 on the device, (B, 1) or (B,) bool -> (B, 3, S, S) normalised floats."""
        flips = flips.to(pixels.device, non_blocking=True).view(-1, 1, 1, 1)
        pixels = torch.where(flips, pixels.flip(-1), pixels)
        pixels = to_dtype(pixels, self.dtype, scale=True)  # uint8 -> [0, 1], as ToDtype
        return pixels.sub_(self.mean).div_(self.std)  # as Normalize: (x − mean) / std


# -----------------------------------------------------------------------------------------
# The Dataset
# -----------------------------------------------------------------------------------------

def sample_seed(epoch_seed: int, index: int) -> int:
    """A 64-bit seed for one sample in one epoch, well mixed (no overlap between nearby seeds)."""
    return int.from_bytes(hashlib.blake2b(f"{epoch_seed}:{index}".encode(), digest_size=8).digest(), "little")


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch_seed, index) keys for a DataLoader: this epoch's order (shuffled by the seed,
    or in order) with the seed travelling beside each index, so a worker process augments a sample
    as the main process would, and the workers can live across epochs (`persistent_workers`)."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed = n, shuffle, seed

    def set_epoch(self, seed: int):
        self.seed = seed

    def __len__(self):
        return self.n

    def __iter__(self):
        seed = self.seed  # this epoch's, even if set_epoch is called before the iteration ends
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist() \
            if self.shuffle else range(self.n)
        return ((seed, index) for index in order)


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, label) for a list of Items; an unreadable image raises with its path.

    Indexed by `index`, or by `(epoch_seed, index)` (the keys EpochSampler yields): then the
    sample's augmentation is a function of (epoch_seed, index) only — the transform runs under
    torch's CPU random generator forked and seeded from them, so the same seed gives the same
    crops whichever worker process loads the sample, and the caller's random state (CPU and GPU:
    the noise is drawn there) is untouched. Transforms must draw from torch's CPU generator, as
    torchvision's do, also when they work on GPU tensors.

    load: how a path becomes the transform's input — `load_image` (a PIL image, decoded from
    disk) by default; the `--augment tensor` path passes kept uint8 tensors instead.
    """

    def __init__(self, items, transform: Callable, load: Callable = None):
        self.items, self.transform, self.load = list(items), transform, load or _read

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        epoch_seed, index = key if isinstance(key, tuple) else (None, key)
        item = self.items[index]
        image = self.load(item.path)
        if epoch_seed is None:
            return self.transform(image), item.label
        with torch.random.fork_rng(devices=[]):  # saves and restores the CPU generator only, so
            torch.default_generator.manual_seed(sample_seed(epoch_seed, index))  # seed only that one
            return self.transform(image), item.label
