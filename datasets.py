"""The 11 few-shot datasets of the CLIP-adaptation literature, read from CoOp's folder layouts.

Every dataset lives under one data root (`--data-root`, else $PINI_DATA, else ./data) in the
layout of CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md),
with CoOp's fixed train/val/test split files (`split_zhou_*.json`). That is what makes
accuracies comparable with the paper's tables: same images, same splits, same class names.

    load_dataset(name, root)            -> Split(train, val, test, classnames, info)
    few_shot(split, shots, seed, dir)   -> k training images per class (+ min(k, 4) val),
                                           cached as a readable JSON file
    ImageDataset(items, transform)      -> a torch Dataset of (image, label)

This module knows nothing of models: transforms are passed in.
"""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch.utils.data
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset

COOP_DATASETS_DOC = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


class DatasetError(Exception):
    """Bad or missing data, with a message that says what to do about it."""


@dataclass(frozen=True)
class Item:
    """One labelled image: path (absolute), label (0-based), class name."""
    path: str
    label: int
    classname: str


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of one benchmark dataset.

    alias:        the command-line name
    name:         CoOp's name (also the name in the paper's tables)
    folder:       its folder under the data root
    image_dir:    where the split file's relative paths start, relative to `folder`
    split_file:   CoOp's split file in `folder` ("" when the dataset has none)
    template:     the text before the class name in PiNI's prompts (authors' code)
    zero_shot:    CLIP's hand-crafted prompt for the zero-shot baseline
    layout:       the expected tree, for error messages
    renames:      CoOp's readable class names for raw folder names
    ignored:      class folders that are not classes
    test_only:    ImageNet variants: evaluation only, with ImageNet's classes
    """
    alias: str
    name: str
    folder: str
    image_dir: str
    split_file: str
    template: str
    zero_shot: str
    layout: str
    renames: dict = field(default_factory=dict)
    ignored: tuple = ()
    test_only: bool = False


def _tree(*lines: str) -> str:
    return "\n".join("    " + line for line in lines)


EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

_IMAGENET_LAYOUT = _tree("imagenet/", "├── images/", "│   ├── train/   # 1,000 folders n01440764, ...",
                         "│   └── val/     # same 1,000 folders", "└── classnames.txt   # 'n01440764 tench' per line")

DATASETS = {info.alias: info for info in [
    DatasetInfo("imagenet", "ImageNet", "imagenet", "images", "", "a photo of a", "a photo of a {}.",
                _IMAGENET_LAYOUT),
    DatasetInfo("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                "a photo of a", "a photo of a {}.",
                _tree("caltech-101/", "├── 101_ObjectCategories/   # one folder per class",
                      "└── split_zhou_Caltech101.json"),
                renames=CALTECH_NAMES, ignored=("BACKGROUND_Google", "Faces_easy")),
    DatasetInfo("oxford_pets", "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
                "a type of pet, a photo of a", "a photo of a {}, a type of pet.",
                _tree("oxford_pets/", "├── images/", "└── split_zhou_OxfordPets.json")),
    DatasetInfo("stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json",
                "a photo of a", "a photo of a {}.",
                _tree("stanford_cars/", "├── cars_train/", "├── cars_test/", "└── split_zhou_StanfordCars.json")),
    DatasetInfo("flowers102", "OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                "a type of flower, a photo of a", "a photo of a {}, a type of flower.",
                _tree("oxford_flowers/", "├── jpg/", "├── cat_to_name.json", "└── split_zhou_OxfordFlowers.json")),
    DatasetInfo("food101", "Food101", "food-101", "images", "split_zhou_Food101.json",
                "a type of food, a photo of", "a photo of {}, a type of food.",
                _tree("food-101/", "├── images/   # one folder per class", "└── split_zhou_Food101.json")),
    DatasetInfo("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", "",
                "a type of aircraft, a photo of a", "a photo of a {}, a type of aircraft.",
                _tree("fgvc_aircraft/", "├── images/", "├── images_variant_train.txt",
                      "├── images_variant_val.txt", "├── images_variant_test.txt", "└── variants.txt")),
    DatasetInfo("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a",
                "a photo of a {}.", _tree("sun397/", "├── SUN397/", "└── split_zhou_SUN397.json")),
    DatasetInfo("dtd", "DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json",
                "texture", "{} texture.",
                _tree("dtd/", "├── images/   # one folder per texture", "└── split_zhou_DescribableTextures.json")),
    DatasetInfo("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
                "a centered satellite photo of", "a centered satellite photo of {}.",
                _tree("eurosat/", "├── 2750/   # one folder per class", "└── split_zhou_EuroSAT.json"),
                renames=EUROSAT_NAMES),
    DatasetInfo("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                "a photo of a person doing", "a photo of a person doing {}.",
                _tree("ucf101/", "├── UCF-101-midframes/   # one folder per action", "└── split_zhou_UCF101.json")),
    DatasetInfo("imagenet_v2", "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "",
                "a photo of a", "a photo of a {}.",
                _tree("imagenetv2/", "├── imagenetv2-matched-frequency-format-val/   # folders 0 ... 999",
                      "└── classnames.txt"), test_only=True),
    DatasetInfo("imagenet_sketch", "ImageNetSketch", "imagenet-sketch", "images", "", "a photo of a",
                "a photo of a {}.", _tree("imagenet-sketch/", "├── images/   # 1,000 folders n01440764, ...",
                                          "└── classnames.txt"), test_only=True),
    DatasetInfo("imagenet_a", "ImageNetA", "imagenet-adversarial", "imagenet-a", "", "a photo of a",
                "a photo of a {}.", _tree("imagenet-adversarial/", "├── imagenet-a/   # 200 folders n01498041, ...",
                                          "└── classnames.txt"), test_only=True),
    DatasetInfo("imagenet_r", "ImageNetR", "imagenet-rendition", "imagenet-r", "", "a photo of a",
                "a photo of a {}.", _tree("imagenet-rendition/", "├── imagenet-r/   # 200 folders n01443537, ...",
                                          "└── classnames.txt"), test_only=True),
]}
BENCHMARK = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
             "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]  # the 11 datasets of the tables
# Datasets whose images come one folder per class: a missing split file can be generated.
FOLDER_PER_CLASS = {"caltech101", "dtd", "eurosat", "food101", "ucf101"}
CUSTOM_TEMPLATE = "a photo of a"


def default_data_root() -> str:
    return os.environ.get("PINI_DATA", "./data")


def resolve_name(name: str) -> str:
    """Map "Caltech101", "caltech-101", "oxford_pets", ... to the alias; a folder path stays as is."""
    if name in DATASETS or os.path.isdir(name):
        return name
    squash = re.sub(r"[^a-z0-9]", "", name.lower())
    for alias, info in DATASETS.items():
        if squash in {re.sub(r"[^a-z0-9]", "", s.lower()) for s in (alias, info.name, info.folder)}:
            return alias
    raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, 'all' "
                       "(the 11 benchmark datasets), or the path of a folder with one sub-folder per class")


# -----------------------------------------------------------------------------------------
# Splits
# -----------------------------------------------------------------------------------------

@dataclass
class Split:
    """A dataset's full train / val / test lists and its class names (index = label)."""
    train: list
    val: list
    test: list
    classnames: list
    info: DatasetInfo
    folder: Path  # where split and few-shot files are kept


def load_dataset(name: str, root: Optional[str] = None) -> Split:
    """Read a benchmark dataset (by alias) or a folder of your own (by path)."""
    name = resolve_name(name)
    if name not in DATASETS:
        return _load_custom(Path(name))
    info = DATASETS[name]
    root = Path(root or default_data_root())
    folder = root / info.folder
    if not folder.is_dir():
        raise DatasetError(_missing_message(info, folder, root))
    if info.alias == "fgvc_aircraft":
        train, val, test = _read_aircraft(folder)
    elif info.alias == "imagenet":
        names = _read_imagenet_classnames(folder)
        train = _read_class_folders(folder / "images" / "train", names, info)
        test = _read_class_folders(folder / "images" / "val", names, info)
        val = test  # as in CoOp: ImageNet's val set is the test set (the last epoch is tested)
    elif info.test_only:
        test = _read_imagenet_variant(folder, info)
        train, val = [], []
    else:
        train, val, test = _read_or_make_split(folder, info)
    items = train + val + test
    split = Split(train, val, test, _classnames(items), info, folder)
    if not split.test:
        raise DatasetError(f"{info.name}: no test images found under {folder}")
    return split


def _missing_message(info: DatasetInfo, folder: Path, root: Path) -> str:
    return (f"{info.name} not found: expected the folder {folder}\n"
            f"(data root {root}: set it with --data-root or $PINI_DATA). Expected layout:\n{info.layout}\n"
            f"Download the images and the split file as {COOP_DATASETS_DOC} describes ({info.name}).")


def _read_split_file(path: Path, image_dir: Path, renames: dict):
    try:
        raw = json.loads(path.read_text())
        return tuple([Item(str(image_dir / p), int(label), renames.get(name, name)) for p, label, name in raw[part]]
                     for part in ("train", "val", "test"))
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path} is not a split file: expected JSON {{'train': [[relative_path, label, "
                           f"classname], ...], 'val': [...], 'test': [...]}} ({error})") from None


def _read_or_make_split(folder: Path, info: DatasetInfo):
    image_dir = folder / info.image_dir
    split_path = folder / info.split_file
    if split_path.is_file():
        return _read_split_file(split_path, image_dir, info.renames)
    if info.alias in FOLDER_PER_CLASS and image_dir.is_dir():
        train, val, test = make_split(image_dir, renames=info.renames, ignored=info.ignored)
        write_split(split_path, image_dir, train, val, test)
        warnings.warn(f"{split_path.name} not found: created a split (seed 1, 50/20/30 per class) and wrote it "
                      f"to {split_path}. CoOp's own file ({COOP_DATASETS_DOC}) gives numbers comparable to the paper.")
        return train, val, test
    what = f"split file {info.split_file}" if image_dir.is_dir() else f"image folder {info.image_dir}/"
    raise DatasetError(f"{info.name}: {what} missing in {folder}. Expected layout:\n{info.layout}\n"
                       f"Get the images and {info.split_file} as {COOP_DATASETS_DOC} describes ({info.name}).")


def make_split(image_dir: Path, p_train: float = 0.5, p_val: float = 0.2, seed: int = 1,
               renames: Optional[dict] = None, ignored=()):
    """Split a folder-per-class image tree per class into train / val / test (CoOp's 50/20/30).

    Deterministic: files are sorted, then shuffled by a generator seeded with `seed`.
    """
    renames = renames or {}
    classes = [c for c in find_classes(str(image_dir))[0] if c not in ignored]
    by_class = _images_by_class(image_dir, classes)
    rng = random.Random(seed)
    train, val, test = [], [], []
    for label, cls in enumerate(classes):
        paths = sorted(by_class[cls])
        rng.shuffle(paths)
        n_train, n_val = round(len(paths) * p_train), round(len(paths) * p_val)
        if n_train == 0 or n_val == 0 or len(paths) - n_train - n_val == 0:
            raise DatasetError(f"class folder {image_dir / cls} has {len(paths)} images: at least 3 are needed "
                               "to split it into train, val and test")
        name = renames.get(cls, cls)
        train += [Item(p, label, name) for p in paths[:n_train]]
        val += [Item(p, label, name) for p in paths[n_train:n_train + n_val]]
        test += [Item(p, label, name) for p in paths[n_train + n_val:]]
    return train, val, test


def write_split(path: Path, image_dir: Path, train, val, test):
    """Write a split file in CoOp's format (paths relative to the image folder)."""
    def rows(items):
        return [[os.path.relpath(item.path, image_dir), item.label, item.classname] for item in items]
    path.write_text(json.dumps({"train": rows(train), "val": rows(val), "test": rows(test)}, indent=1))


def _images_by_class(image_dir: Path, classes) -> dict:
    class_to_idx = {c: i for i, c in enumerate(classes)}
    by_class = defaultdict(list)
    for path, index in make_dataset(str(image_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True):
        by_class[classes[index]].append(path)
    return by_class


def _read_class_folders(image_dir: Path, names: dict, info: DatasetInfo) -> list:
    """Images in <image_dir>/<folder>/..., labels by sorted folder, names from `names`."""
    if not image_dir.is_dir():
        raise DatasetError(f"{info.name}: folder {image_dir} missing. Expected layout:\n{info.layout}\n"
                           f"See {COOP_DATASETS_DOC} ({info.name}).")
    folders = find_classes(str(image_dir))[0]
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DatasetError(f"{info.name}: {len(unknown)} class folders are not in classnames.txt, e.g. {unknown[:3]}")
    by_class = _images_by_class(image_dir, folders)
    return [Item(p, label, names[f]) for label, f in enumerate(folders) for p in sorted(by_class[f])]


def _read_imagenet_classnames(folder: Path) -> dict:
    """classnames.txt: 'n01440764 tench' per line -> {folder: class name}, in file order."""
    path = folder / "classnames.txt"
    if not path.is_file():
        raise DatasetError(f"{path} missing: it maps ImageNet folders to CLIP's class names "
                           f"('n01440764 tench' per line); get it as {COOP_DATASETS_DOC} describes (ImageNet).")
    lines = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
    return {parts[0]: parts[1] if len(parts) > 1 else parts[0] for parts in lines}


def _read_imagenet_variant(folder: Path, info: DatasetInfo) -> list:
    names = _read_imagenet_classnames(folder)
    image_dir = folder / info.image_dir
    if info.alias != "imagenet_v2":  # folders named by WordNet id (A and R: a 200-class subset)
        return _read_class_folders(image_dir, names, info)
    # ImageNetV2: folders 0 ... 999 are ImageNet's labels, in classnames.txt order
    ordered = list(names.values())
    numbered = {str(i): name for i, name in enumerate(ordered)}
    items = _read_class_folders(image_dir, numbered, info)
    return [Item(item.path, int(Path(item.path).parent.name), item.classname) for item in items]


def _read_aircraft(folder: Path):
    variants = folder / "variants.txt"
    if not variants.is_file():
        raise DatasetError(_missing_message(DATASETS["fgvc_aircraft"], folder / "variants.txt", folder.parent))
    classnames = [line.strip() for line in variants.read_text().splitlines() if line.strip()]
    label = {name: i for i, name in enumerate(classnames)}

    def read(part):
        path = folder / f"images_variant_{part}.txt"
        if not path.is_file():
            raise DatasetError(f"FGVCAircraft: {path} missing. Expected layout:\n{DATASETS['fgvc_aircraft'].layout}")
        rows = [line.strip().split(" ", 1) for line in path.read_text().splitlines() if line.strip()]
        return [Item(str(folder / "images" / f"{image}.jpg"), label[name], name) for image, name in rows]

    return read("train"), read("val"), read("test")


def _classnames(items) -> list:
    names = {}
    for item in items:
        if names.setdefault(item.label, item.classname) != item.classname:
            raise DatasetError(f"label {item.label} has two class names: {names[item.label]!r}, {item.classname!r}")
    if sorted(names) != list(range(len(names))):  # every label 0..C-1 must have a name
        raise DatasetError(f"labels are not 0..{len(names) - 1}: {sorted(names)[:5]} ...")
    return [names[label].replace("_", " ") for label in range(len(names))]


def _load_custom(folder: Path) -> Split:
    """Your own data: <folder>/<class>/*.jpg, or <folder>/{train,val,test}/<class>/*.jpg."""
    info = DatasetInfo(folder.name, folder.name, str(folder), "", "split_pini.json", CUSTOM_TEMPLATE,
                       CUSTOM_TEMPLATE + " {}.", _tree(f"{folder.name}/", "├── class_a/   # images",
                                                       "└── class_b/", "or train/, [val/,] test/ each like that"))
    split_path = folder / info.split_file
    if split_path.is_file():
        train, val, test = _read_split_file(split_path, folder, {})
    elif (folder / "train").is_dir():
        if not (folder / "test").is_dir():
            raise DatasetError(f"{folder} has train/ but no test/ folder. Expected layout:\n{info.layout}")
        classes = find_classes(str(folder / "train"))[0]
        labels = {c: i for i, c in enumerate(classes)}

        def read(part):
            by_class = _images_by_class(folder / part, find_classes(str(folder / part))[0])
            extra = set(by_class) - set(labels)
            if extra:
                raise DatasetError(f"{folder / part} has classes that train/ lacks: {sorted(extra)[:5]}")
            return [Item(p, labels[c], c) for c in classes for p in sorted(by_class.get(c, []))]

        train, test = read("train"), read("test")
        if (folder / "val").is_dir():
            val = read("val")
        else:
            train, val = _split_per_class(train, 0.8, seed=1)
        write_split(split_path, folder, train, val, test)
    else:
        try:
            train, val, test = make_split(folder)
        except FileNotFoundError:
            raise DatasetError(f"{folder} has no class folders. Expected layout:\n{info.layout}") from None
        write_split(split_path, folder, train, val, test)
    return Split(train, val, test, _classnames(train + val + test), info, folder)


def _split_per_class(items, p_first: float, seed: int):
    """Divide a list per class into a first part (fraction p_first) and the rest."""
    rng = random.Random(seed)
    first, rest = [], []
    for group in _by_label(items):
        rng.shuffle(group)
        n = max(1, round(len(group) * p_first))
        first += group[:n]
        rest += group[n:]
    return first, rest


# -----------------------------------------------------------------------------------------
# Few-shot sampling
# -----------------------------------------------------------------------------------------

def check_shots(shots) -> int:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise DatasetError(f"shots must be a positive integer (the literature uses 1, 2, 4, 8, 16), not {shots!r}")
    return shots


def few_shot(split: Split, shots: int, seed: int, cache: bool = True):
    """k training images per class (all of a class when it has fewer) and min(k, 4) val images.

    Deterministic for a given seed (the literature reports seeds 1, 2, 3). The sample is cached
    in <dataset folder>/split_fewshot/shot_<k>-seed_<s>.json so that a rerun — or another
    variant of the same experiment — trains on exactly the same images.
    Returns (train, val) lists of Items.
    """
    check_shots(shots)
    path = split.folder / "split_fewshot" / f"shot_{shots}-seed_{seed}.json"
    image_root = split.folder / split.info.image_dir
    if cache and path.is_file():
        train, val, _ = _read_split_file(path, image_root, {})
        return train, val
    rng = random.Random(seed)
    train = sample_per_class(split.train, shots, rng)
    val = sample_per_class(split.val, min(shots, 4), rng)
    if cache:
        try:
            path.parent.mkdir(exist_ok=True)
            write_split(path, image_root, train, val, [])
        except OSError as error:  # a read-only dataset folder: sample again next time
            warnings.warn(f"could not cache the few-shot sample in {path}: {error}")
    return train, val


def sample_per_class(items, k: int, rng: random.Random) -> list:
    chosen = []
    for group in _by_label(items):
        chosen += rng.sample(group, k) if len(group) > k else group
    return chosen


def _by_label(items) -> list:
    """Items grouped by label: a list of (new) lists, in label order."""
    by_label = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    return [by_label[label] for label in sorted(by_label)]


def check_files(items, name: str = "dataset"):
    """Fail early, with the count and the first paths, when images the split names are absent."""
    missing = [item.path for item in items if not os.path.isfile(item.path)]
    if missing:
        listing = "\n".join("    " + p for p in missing[:5])
        raise DatasetError(f"{name}: {len(missing)} of {len(items)} images named by the split are missing, "
                           f"e.g.\n{listing}\nIs the data root right, and is the dataset fully extracted?")


# -----------------------------------------------------------------------------------------
# Loading images
# -----------------------------------------------------------------------------------------

class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, label) for a list of Items; an unreadable image raises with its path."""

    def __init__(self, items, transform: Callable):
        self.items, self.transform = list(items), transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        try:
            image = default_loader(item.path)
        except Exception as error:  # PIL raises many types: say which file it was
            raise DatasetError(f"cannot read image {item.path}: {error}") from None
        return self.transform(image), item.label
