"""CoOp's few-shot samples of a split, and CoCoOp's base/new halves of its classes.

    few_shot(split, shots, seed)          -> FewShot: k training images per class (+ min(k, 4) val),
                                             CoOp's own sample (Dassl's generate_fewshot_dataset,
                                             reproduced exactly), cached as fingerprinted JSON;
                                             .record() for result.json
    few_shot_from_record(split, record)   -> the sample a result.json names
    class_half(split, sample, half)       -> the split and sample cut to the base or new classes

A cache is made again, with a warning, when what it was drawn from changed (its fingerprint).
Like datasets.py, this module knows nothing of models.
"""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from experiments.datasets import (DatasetError, Split, by_label, cache_places, digest, items_digest, read_json,
                                  relative_path, split_problem, write_cache)

SAMPLER_VERSION = 2  # the sampler a cache was drawn with: 2 is Dassl's generate_fewshot_dataset; others are redrawn


# -----------------------------------------------------------------------------------------
# Few-shot sampling: CoOp's own
# -----------------------------------------------------------------------------------------

def check_shots(shots) -> int:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise DatasetError(f"shots must be a positive integer (the literature uses 1, 2, 4, 8, 16), not {shots!r}")
    return shots


@dataclass
class FewShot:
    """One few-shot sample of a split, and what it was drawn from.

    short_classes: class name -> its real number of training images, for classes with fewer than
                   `shots` (they come whole; a run should warn and record it)
    fingerprint:   hash of (split fingerprint, sampler version, class names, shots, seed)
    """
    train: list
    val: list
    shots: int
    seed: int
    short_classes: dict
    fingerprint: str
    split_source: str
    split_fingerprint: str
    image_root: str
    sampler_version: int = SAMPLER_VERSION
    cache_path: Optional[str] = None
    content: str = ""  # hash of the images drawn (relative path, label, class name of train and val)

    def record(self) -> dict:
        """A JSON-able description for result.json: with the same split it re-creates this exact
        sample (few_shot_from_record)."""
        root = Path(self.image_root)
        return {"shots": self.shots, "seed": self.seed, "sampler_version": self.sampler_version,
                "sampler": "Dassl generate_fewshot_dataset (random.sample when a class has >= k images)",
                "fingerprint": self.fingerprint, "content": self.content, "split_source": self.split_source,
                "split_fingerprint": self.split_fingerprint, "short_classes": dict(self.short_classes),
                "train": [relative_path(i.path, root) for i in self.train],
                "val": [relative_path(i.path, root) for i in self.val]}


def few_shot(split: Split, shots: int, seed: int, cache: bool = True, cache_dir=None) -> FewShot:
    """k training images per class (all of a class when it has fewer) and min(k, 4) val images,
    exactly as CoOp draws them (Dassl's generate_fewshot_dataset after set_random_seed(seed)):

    - Python's `random` seeded with `seed` (a private random.Random(seed): the same stream as
      CoOp's global random.seed(seed), without touching the global state);
    - labels in the order they first appear in the split (Dassl groups them into a dict);
    - random.sample(items, k) when a class has AT LEAST k items, else the whole class;
    - train first, then val from the same stream; ImageNet: train only (its val is the test set).

    The sample is always drawn (drawing is cheap), and kept as a readable record in
    split_fewshot/shot_<k>-seed_<s>.json (in `cache_dir`, else the dataset folder, else the user
    cache folder: the first that is writable). A record that does not hold exactly what was drawn
    (another split, sampler or class list, images outside the split, other images or counts) is
    never used: it is written again, with a warning. `content` hashes the images drawn.
    """
    check_shots(shots)
    fingerprint = digest(split.fingerprint, SAMPLER_VERSION, split.classnames, shots, seed)
    name = f"shot_{shots}-seed_{seed}.json"
    places = [place / "split_fewshot" for place in cache_places(split.folder, cache_dir)]
    rng = random.Random(seed)
    train = sample_per_class(split.train, shots, rng)
    val = [] if split.val is split.test else sample_per_class(split.val, min(shots, 4), rng)
    cache_path = None
    if cache:
        for place in places:
            path = place / name
            if not path.is_file():
                continue
            recorded = _read_sample(path, split, fingerprint)  # None, with a warning, when it cannot be trusted
            if recorded == (train, val):
                cache_path = path
                break
            if recorded is not None:
                warnings.warn(f"{path} does not hold the sample the sampler draws (other images, or other counts "
                              "per class): it is not used, and is written again")
        if cache_path is None:
            payload = {"train": _rows(train, split.image_root), "val": _rows(val, split.image_root), "test": [],
                       "pini": {"fingerprint": fingerprint, "split_fingerprint": split.fingerprint,
                                "split_source": split.source, "sampler_version": SAMPLER_VERSION,
                                "classnames": split.classnames, "shots": shots, "seed": seed}}
            cache_path = write_cache(f"split_fewshot/{name}", cache_places(split.folder, cache_dir), payload)
    sizes = Counter(item.label for item in split.train)
    short = {split.classnames[label]: n for label, n in sorted(sizes.items()) if n < shots}
    return FewShot(train, val, shots, seed, short, fingerprint, split.source, split.fingerprint,
                   str(split.image_root), SAMPLER_VERSION, str(cache_path) if cache_path else None,
                   items_digest(split.image_root, train, val))


def _rows(items, root: Path) -> list:
    return [[relative_path(item.path, root), item.label, item.classname] for item in items]


def _read_sample(path: Path, split: Split, fingerprint: str):
    """(train, val) from a few-shot cache, or None (with a warning) when it cannot be trusted."""
    try:
        raw = read_json(path)
    except DatasetError as error:
        warnings.warn(f"{error}: drawing the few-shot sample again")
        return None
    meta = raw.get("pini") if isinstance(raw, dict) else None
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint or split_problem(raw, ("train", "val")):
        warnings.warn(f"{path} was drawn from another split, class list or sampler version: drawing the "
                      "few-shot sample again")
        return None
    chosen = _items_by_relative(split, raw["train"], split.train), _items_by_relative(split, raw["val"], split.val)
    if None in chosen:
        warnings.warn(f"{path} names images that are not in the current split's train/val sets: drawing the "
                      "few-shot sample again")
        return None
    return chosen


def _items_by_relative(split: Split, rows, pool) -> Optional[list]:
    """The split's items for rows [relative path, label, ...] (or bare paths); None if one is not in `pool`."""
    by_path = {relative_path(item.path, split.image_root): item for item in pool}
    items = []
    for row in rows:
        rel, label = (row[0], row[1]) if isinstance(row, list) else (row, None)
        item = by_path.get(rel)
        if item is None or (label is not None and item.label != label):
            return None
        items.append(item)
    return items


def few_shot_from_record(split: Split, record: dict) -> FewShot:
    """The exact sample a result.json recorded (FewShot.record()), checked against `split`."""
    try:
        if record["split_fingerprint"] != split.fingerprint:
            raise DatasetError(f"the recorded few-shot sample was drawn from another split of {split.info.name} "
                               f"(fingerprint {record['split_fingerprint']}, now {split.fingerprint})")
        train = _items_by_relative(split, record["train"], split.train)
        val = _items_by_relative(split, record["val"], split.val)
        if train is None or val is None:
            raise DatasetError(f"the recorded few-shot sample names images not in {split.info.name}'s train/val")
        return FewShot(train, val, record["shots"], record["seed"], dict(record["short_classes"]),
                       record["fingerprint"], record["split_source"], split.fingerprint, str(split.image_root),
                       record["sampler_version"], content=items_digest(split.image_root, train, val))
    except (KeyError, TypeError) as error:
        raise DatasetError(f"not a few-shot record (FewShot.record()): {error!r} missing or malformed") from None


def sample_per_class(items, k: int, rng: random.Random) -> list:
    """Dassl's generate_fewshot_dataset (repeat=False, its default since Oct 2021) for one list."""
    chosen = []
    for group in by_label(items):
        chosen += rng.sample(group, k) if len(group) >= k else group
    return chosen


# -----------------------------------------------------------------------------------------
# Base-to-new: half the classes for training, the other half unseen
# -----------------------------------------------------------------------------------------

HALVES = ("base", "new")


def class_half(split: Split, sample: Optional[FewShot], half: str):
    """(split, few-shot sample) cut to the base or the new classes, by CoCoOp's rule (its
    `subsample_classes`): the labels present in the training list, sorted; the first ceil(n/2)
    are the base classes, the rest the new ones; the chosen half is relabelled 0, 1, ... in that
    order in every list. As in CoCoOp, the sample is drawn over all classes first — it is the
    few-shot protocol's own sample — and then cut."""
    if half not in HALVES:
        raise DatasetError(f"half must be one of {HALVES}, not {half!r}")
    labels = sorted({item.label for item in (sample.train if sample else split.train)})
    m = math.ceil(len(labels) / 2)
    relabel = {old: new for new, old in enumerate(labels[:m] if half == "base" else labels[m:])}

    def cut(items):
        return [dataclasses.replace(item, label=relabel[item.label]) for item in items if item.label in relabel]

    names = [split.classnames[old] for old in relabel]
    shared = {prompt: [relabel[old] for old in olds if old in relabel]
              for prompt, olds in split.duplicate_prompts.items()}
    part = dataclasses.replace(split, train=cut(split.train), val=cut(split.val), test=cut(split.test),
                               classnames=names, fingerprint=f"{split.fingerprint}:{half}",
                               duplicate_prompts={prompt: new for prompt, new in shared.items() if len(new) > 1})
    if sample:
        sample = dataclasses.replace(sample, train=cut(sample.train), val=cut(sample.val),
                                     fingerprint=f"{sample.fingerprint}:{half}",
                                     content=items_digest(split.image_root, cut(sample.train), cut(sample.val)),
                                     short_classes={n: k for n, k in sample.short_classes.items() if n in names})
    return part, sample
