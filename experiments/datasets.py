"""The 11 few-shot datasets of the CLIP-adaptation literature, read from CoOp's folder layouts.

Every dataset lives under one data root (`--data-root`, else $PINI_DATA, else ./data) in the
layout of CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md),
with CoOp's fixed train/val/test split files (`split_zhou_*.json`). That is what makes
accuracies comparable with the paper's tables: same images, same splits, same class names,
and the same few-shot samples (Dassl's generate_fewshot_dataset, reproduced exactly: fewshot.py).

    load_dataset(name, root)              -> Split(train, val, test, classnames, info, folder,
                                                   source, fingerprint, split_path)
    load_datasets(names, root)            -> [Split, ...], one error naming every broken dataset

Caches never go stale: each carries a fingerprint of what it was made from and is made again,
with a warning, when that changed. A split this module generates is never named like CoOp's.
Few-shot samples of a split are fewshot.py; reading the images themselves (verifying, decoding
once, the torch Dataset) is image_data.py; both use this module's cache helpers (digest,
relative_path, read_json, by_label, cache_places, write_cache, user_cache_dir), which live here
only. This module knows nothing of models.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
import re
import shlex
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from experiments.files import atomic_write_text

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
                "a photo of a {}.", _tree("sun397/", "├── SUN397/   # a/abbey/*.jpg, ..., as in SUN397.tar.gz",
                                          "└── split_zhou_SUN397.json")),
    DatasetInfo("dtd", "DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json",
                "texture", "{} texture.",
                _tree("dtd/", "├── images/   # one folder per texture", "└── split_zhou_DescribableTextures.json")),
    DatasetInfo("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
                "a centered satellite photo of", "a centered satellite photo of {}.",
                _tree("eurosat/", "├── 2750/   # one folder per class", "└── split_zhou_EuroSAT.json"),
                renames=EUROSAT_NAMES),
    DatasetInfo("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                "a photo of a person doing", "a photo of a person doing {}.",
                _tree("ucf101/", "├── UCF-101-midframes/   # one folder per action", "└── split_zhou_UCF101.json",
                      "(or ucfTrainTestlist/ instead of the split file: a split by CoOp's protocol is generated)")),
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
# Datasets whose images come one folder per class: a missing split file can be generated (not
# UCF101: its folders mix frames of one video group; it is generated from ucfTrainTestlist only).
FOLDER_PER_CLASS = {"caltech101", "dtd", "eurosat", "food101"}
# CoOp's official split files: (train, val, test) image counts per file, from the dataset table of
# CoOp's paper (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv
# 2109.01134, appendix table of dataset statistics: #Train, #Val, #Test). CoOp's DATASETS.md gives
# no counts. CoOp's own code writes the splits it *generates* under these same names (e.g.
# datasets/caltech101.py), so a name alone proves nothing: a file is CoOp's when its sha256 is the
# published file's (pinned where a copy could be read: tests/fixtures/split_zhou_Caltech101.json)
# or, failing that, its counts are the table's. Only Caltech101's counts could be checked against a
# stored copy of the file; the paper itself (a PDF) could not be read in any stored source here, so a
# wrong count would show as a "not CoOp's official split" warning on the real file: report it.
COOP_SPLIT_COUNTS = {
    "split_zhou_Caltech101.json": (4128, 1649, 2465),
    "split_zhou_OxfordPets.json": (2944, 736, 3669),
    "split_zhou_StanfordCars.json": (6509, 1635, 8041),
    "split_zhou_OxfordFlowers.json": (4093, 1633, 2463),
    "split_zhou_Food101.json": (50500, 20200, 30300),
    "split_zhou_SUN397.json": (15880, 3970, 19850),
    "split_zhou_DescribableTextures.json": (2820, 1128, 1692),
    "split_zhou_EuroSAT.json": (13500, 5400, 8100),
    "split_zhou_UCF101.json": (7639, 1898, 3783),
}
COOP_SPLIT_SHA256 = {  # the files themselves, where a copy could be read
    "split_zhou_Caltech101.json": "43ab95e88d2f6a32a11c4f8dc9f822c534e822f3dbbde2e248af5432d771a6fc",
}
IMAGENET_ORDER = ("images sorted by file name within each class folder; CoOp (Dassl's listdir_nohidden) lists "
                  "them in file-system order, which is not reproducible across machines, so CoOp's own "
                  "few-shot ImageNet sample cannot be reproduced exactly anywhere")
PARTS = ("train", "val", "test")
SPLIT_VERSION = 1    # of the splits this module generates
GENERATED_SPLIT_FILE = "split_pini_generated.json"  # never CoOp's name split_zhou_*.json
CUSTOM_SPLIT_FILE = "split_pini.json"
CACHE_FOLDERS = {"split_fewshot"}  # PiNI's (and CoOp's) cache folders: never a class
CUSTOM_TEMPLATE = "a photo of a"


def default_data_root() -> str:
    return os.environ.get("PINI_DATA", "./data")


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def resolve_name(name: str) -> str:
    """Map "Caltech101", "caltech-101", "oxford_pets", ... to the alias; a folder path stays as is."""
    if name in DATASETS or os.path.isdir(name):
        return name
    spellings = {_squash(s): alias for alias, info in DATASETS.items() for s in (alias, info.name, info.folder)}
    if _squash(name) in spellings:
        return spellings[_squash(name)]
    if os.sep in name or name.startswith("."):  # meant as a folder of one's own
        raise DatasetError(f"no folder {name!r}: give the path of a folder with one sub-folder per class")
    close = dict.fromkeys(spellings[s] for s in difflib.get_close_matches(_squash(name), spellings, n=3, cutoff=0.6))
    hint = f" (did you mean {' or '.join(repr(alias) for alias in close)}?)" if close else ""
    raise DatasetError(f"unknown dataset {name!r}{hint}: choose one of {', '.join(DATASETS)}, 'all' "
                       "(the 11 benchmark datasets), or the path of a folder with one sub-folder per class")


# -----------------------------------------------------------------------------------------
# Splits
# -----------------------------------------------------------------------------------------

@dataclass
class Split:
    """A dataset's full train / val / test lists and its class names (index = label).

    source:      "coop"      CoOp's split file, or CoOp's protocol on the official lists (ImageNet,
                             FGVCAircraft, the ImageNet variants): numbers comparable with the paper's;
                 "generated" a split this module made from the image folders: not CoOp's, so not
                             comparable (a run should say so and record it);
                 "custom"    a folder of your own.
    fingerprint: a hash of every (relative path, label, class name) of train, val and test: two splits
                 with the same fingerprint are the same split. Few-shot caches are keyed by it.
    split_path:  the split file read or written, if any.
    """
    train: list
    val: list
    test: list
    classnames: list
    info: DatasetInfo
    folder: Path  # the dataset folder; caches go here when it is writable
    source: str = "coop"
    fingerprint: str = ""
    split_path: Optional[Path] = None
    duplicate_prompts: dict = field(default_factory=dict)  # {prompt's class name: [labels sharing it]}
    not_official: str = ""  # why a split_zhou_*.json is not CoOp's official file ("" when it is)

    def record(self) -> dict:
        """The split as a run records it: source and fingerprint, and only where they apply, why it is not
        CoOp's official split, class names that share a prompt, and the order images are listed in."""
        record = {"source": self.source, "fingerprint": self.fingerprint}
        if self.not_official:
            record.update(official=False, check=self.not_official)
        if self.duplicate_prompts:
            record["duplicate_prompts"] = self.duplicate_prompts
        if self.info.alias == "imagenet":
            record["order"] = IMAGENET_ORDER
        return record

    @property
    def image_root(self) -> Path:
        """Where the split's relative paths start."""
        return self.folder / self.info.image_dir


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
    source, split_path = "coop", None
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
        (train, val, test), source, split_path = _read_or_make_split(folder, info)
    split = _new_split(train, val, test, info, folder, source, split_path)
    if source == "coop" and split_path is not None:
        split.not_official = official_split_problem(split_path, (train, val, test))
        if split.not_official:
            _announce(f"{split_path}: not CoOp's official split ({split.not_official}). Its numbers are not "
                      f"comparable with published ones; the run records this. CoOp's file: {COOP_DATASETS_DOC}")
    return split


def load_datasets(names, root: Optional[str] = None) -> list:
    """Load every dataset named ('all' = the 11 benchmark datasets), each once, in order.

    All problems are reported together: one DatasetError naming every dataset that cannot be
    used, with what each one needs, so that a long multi-dataset run does not stop at the
    first missing dataset after hours of training the ones before it.
    """
    expanded = [alias for name in names for alias in (BENCHMARK if name == "all" else [name])]
    splits, errors, seen = [], [], set()
    for name in expanded:
        try:
            alias = resolve_name(name)
            if alias in seen:
                continue
            seen.add(alias)
            splits.append(load_dataset(alias, root))
        except DatasetError as error:
            errors.append(f"[{name}] {error}")
    if errors:
        raise DatasetError(f"{len(errors)} of {len(errors) + len(splits)} datasets cannot be used:\n\n"
                           + "\n\n".join(errors))
    return splits


def _new_split(train, val, test, info: DatasetInfo, folder: Path, source: str, split_path=None) -> Split:
    """Check the class names and fingerprint the content: every Split is made here.

    Class names that give one prompt are refused in a folder of one's own (there they are a mistake),
    but only warned about, once, in a benchmark dataset's own files: CLIP's ImageNet list, which CoOp
    copies, names two classes 'missile' and two 'sunglasses', and every published number used it as is."""
    where = f"{info.name} ({split_path or folder})"
    duplicates = {}
    classnames = _classnames(train + val + test, where, duplicates=None if source == "custom" else duplicates)
    if not test:
        raise DatasetError(f"{where}: no test images found")
    image_root = folder / info.image_dir
    fingerprint = items_digest(image_root, train, val, test)
    if duplicates:
        listed = "; ".join(f"{prompt!r} (labels {', '.join(map(str, labels))})"
                           for prompt, labels in duplicates.items())
        _announce(f"{where}: {len(duplicates)} prompts are shared by several classes: {listed}. Kept as they "
                  "are, as CoOp and CLIP keep them (the classes of a group cannot be told apart by their prompts); "
                  "the run records them")
    return Split(train, val, test, classnames, info, folder, source, fingerprint, split_path,
                 duplicate_prompts=duplicates)


_ANNOUNCED = set()


def _announce(message: str):
    """A warning given once per process, however often the dataset is loaded."""
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        warnings.warn(message, stacklevel=3)


def normalised_classname(name: str) -> str:
    """What a class name becomes in a prompt, up to case and spacing ("Sea_Lion" -> "sea lion")."""
    return " ".join(name.replace("_", " ").lower().split())


def _classnames(items, where: str = "dataset", duplicates: Optional[dict] = None) -> list:
    """Class names by label. At least 2 classes, and no two that give the same prompt: refused when
    `duplicates` is None, else each shared prompt and its labels are added to it ({'missile': [657, 744]})."""
    names = {}
    for item in items:
        if names.setdefault(item.label, item.classname) != item.classname:
            raise DatasetError(f"{where}: label {item.label} has two class names: "
                               f"{names[item.label]!r}, {item.classname!r}")
    if sorted(names) != list(range(len(names))):  # every label 0..C-1 must have a name
        raise DatasetError(f"{where}: labels are not 0..{len(names) - 1}: {sorted(names)[:5]} ...")
    if len(names) < 2:
        raise DatasetError(f"{where}: {len(names)} class found, at least 2 are needed (with one class every "
                           "prediction is right, and accuracy means nothing)")
    groups = defaultdict(list)
    for label in range(len(names)):
        groups[normalised_classname(names[label])].append(label)
    clashes = {prompt: labels for prompt, labels in groups.items() if len(labels) > 1}
    if clashes and duplicates is not None:
        duplicates.update(clashes)
    elif clashes:
        listed = "; ".join(" = ".join(repr(names[label]) for label in labels) for labels in list(clashes.values())[:5])
        raise DatasetError(f"{where}: {len(clashes)} groups of class names give the same prompt: {listed}. "
                           "Merge or rename those class folders (or split file entries)")
    return [names[label].replace("_", " ") for label in range(len(names))]


DOWNLOAD_COMMAND = "python -m experiments.downloads"  # the downloader's command line (downloads.main)


def download_command(alias: str, data_root=None) -> str:
    """The command line that downloads this dataset into `data_root` (for the missing-data message)."""
    command = f"{DOWNLOAD_COMMAND} {alias}"
    if data_root is not None and Path(data_root).resolve() != Path(default_data_root()).resolve():
        command += f" --data-root {shlex.quote(str(data_root))}"
    return command


def _missing_message(info: DatasetInfo, folder: Path, root: Path) -> str:
    return (f"{info.name} not found: expected the folder {folder}\n"
            f"(data root {root}: set it with --data-root or $PINI_DATA). Download it with\n"
            f"    {download_command(info.alias, root)}\n"
            f"(or train.py --download), or lay it out by hand as {COOP_DATASETS_DOC} describes "
            f"({info.name}). Expected layout:\n{info.layout}")


SPLIT_FORMAT = "JSON {'train': [[relative_path, label, classname], ...], 'val': [...], 'test': [...]}"


def split_problem(raw, parts) -> Optional[str]:
    """Why `raw` is not a split (None when it is one): the schema of CoOp's split files."""
    if not isinstance(raw, dict):
        return f"it holds a JSON {type(raw).__name__}, not an object"
    for part in parts:
        rows = raw.get(part)
        if not isinstance(rows, list):
            return f"{part!r} is missing or not a list"
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[2], str)
                    and isinstance(row[1], int) and not isinstance(row[1], bool) and row[1] >= 0):
                return f"{part}[{i}] is {json.dumps(row)[:80]}, not [relative_path, label >= 0, classname]"
            path = row[0]
            if "\x00" in path:
                return f"{part}[{i}] has a NUL byte in its path {path!r}"
            if not path or os.path.isabs(path) or path.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", path):
                return f"{part}[{i}] has the path {path!r}: paths must be relative and stay inside the image folder"
    return None


def read_json(path: Path):
    """A JSON file's content; a DatasetError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f"{path} is not valid JSON ({error}): replace it (a PiNI cache can be deleted)") from None


def _read_split_file(path: Path, image_dir: Path, renames: dict, parts=("train", "val", "test")):
    """Items of each part of a split file, refused with one line when it is not a split file."""
    raw = read_json(path)
    problem = split_problem(raw, parts)
    if problem:
        raise DatasetError(f"{path} is not a split file: {problem}. Expected {SPLIT_FORMAT}; "
                           f"get CoOp's file as {COOP_DATASETS_DOC} describes, or delete it if PiNI made it")
    return tuple([Item(str(image_dir / p), label, renames.get(name, name)) for p, label, name in raw[part]]
                 for part in parts)


def official_split_problem(path: Path, parts) -> str:
    """Why the split file at `path` (read into `parts`, its train, val and test items) is not CoOp's
    official file; "" when it is: its sha256 is the published file's, or its counts are CoOp's table's."""
    counts = tuple(len(items) for items in parts)
    expected = COOP_SPLIT_COUNTS.get(path.name)
    if expected is None:
        return f"{path.name} is not the name of any of CoOp's split files"
    pinned = COOP_SPLIT_SHA256.get(path.name)
    if pinned and hashlib.sha256(path.read_bytes()).hexdigest() == pinned:
        return ""
    if counts == expected:
        return ""
    return (f"train/val/test {'/'.join(map(str, counts))} images, CoOp's {'/'.join(map(str, expected))}"
            + (", and not the published file's sha256" if pinned else ""))


def _generated_by_pini(path: Path) -> bool:
    """Whether a file under CoOp's split name is a split PiNI generated: indented by 1; CoOp's files use 4."""
    try:
        with open(path, "rb") as f:
            return f.read(12) == b'{\n "train": '
    except OSError:
        return False


def _read_or_make_split(folder: Path, info: DatasetInfo):
    """((train, val, test), source, path): CoOp's split file, else a generated split (cached)."""
    image_dir = folder / info.image_dir
    split_path = folder / info.split_file
    if split_path.is_file() and not _generated_by_pini(split_path):
        return _read_split_file(split_path, image_dir, info.renames), "coop", split_path
    if split_path.is_file():
        warnings.warn(f"{split_path} was generated by PiNI from your image folders: it is not CoOp's "
                      f"split, and is ignored. Delete it, and put CoOp's file there ({COOP_DATASETS_DOC}).")
    if info.alias == "ucf101" and (folder / "ucfTrainTestlist").is_dir() and image_dir.is_dir():
        lists = folder / "ucfTrainTestlist"
        made_from = digest(SPLIT_VERSION, [_file_digest(lists / f) for f in UCF_LISTS])
        return _generated_split(folder, image_dir, info, made_from, lambda: make_ucf101_split(folder, image_dir))
    if info.alias in FOLDER_PER_CLASS and image_dir.is_dir():
        listing = _tree_listing(image_dir)
        made_from = digest(SPLIT_VERSION, info.ignored, listing)
        return _generated_split(folder, image_dir, info, made_from,
                                lambda: make_split(image_dir, renames=info.renames, ignored=info.ignored),
                                images=set(listing))
    what = f"split file {info.split_file}" if image_dir.is_dir() else f"image folder {info.image_dir}/"
    extra = ""
    if info.alias == "ucf101":
        extra = ("\nCoOp's split keeps the frames of one video group out of both train and test; PiNI can "
                 "generate a split by CoOp's protocol only from UCF101's ucfTrainTestlist/ folder "
                 "(classInd.txt, trainlist01.txt, testlist01.txt) placed in the dataset folder.")
    raise DatasetError(f"{info.name}: {what} missing in {folder}. Expected layout:\n{info.layout}\n"
                       f"Get the images and {info.split_file} as {COOP_DATASETS_DOC} describes ({info.name}).{extra}")


def _generated_split(folder: Path, image_root: Path, info: DatasetInfo, made_from: str, make: Callable,
                     images: Optional[set] = None):
    """A split this module generates, cached with the fingerprint of what it was made from."""
    cached, stale = _cached_split(folder, image_root, made_from, GENERATED_SPLIT_FILE, images)
    if cached:
        return cached[0], "generated", cached[1]
    train, val, test = make()
    path = write_cache(GENERATED_SPLIT_FILE, cache_places(folder),
                        _split_payload(image_root, train, val, test, made_from=made_from))
    how = "CoOp's protocol on ucfTrainTestlist" if info.alias == "ucf101" else "seed 1, 50/20/30 per class"
    why = f" (the images changed since {stale[0]} was made)" if stale else ""
    warnings.warn(f"{info.name}: no {info.split_file}, so PiNI generated a split from the image folders{why} "
                  f"({how}){f' and cached it in {path}' if path else ''}. It is NOT CoOp's split: numbers are not "
                  f"comparable with the paper's. Get CoOp's {info.split_file} ({COOP_DATASETS_DOC}).")
    return (train, val, test), "generated", path


def _cached_split(folder: Path, image_root: Path, made_from: str, filename: str, images: Optional[set] = None):
    """(((train, val, test), path) or None, [stale cache paths]): a cached generated split made from
    `made_from`, if there is one; caches made from anything else are reported, never used. Its
    content is checked too (the fingerprint covers only what it was made from): a cache whose parts
    share an image, or that names an image not in `images` (the folder's listing), is refused."""
    stale = []
    for place in cache_places(folder):
        path = place / filename
        if not path.is_file():
            continue
        try:
            raw = read_json(path)
        except DatasetError:
            stale.append(path)
            continue
        meta = raw.get("pini", {}) if isinstance(raw, dict) else {}
        if not isinstance(meta, dict) or meta.get("made_from") != made_from or split_problem(raw, PARTS):
            stale.append(path)
            continue
        problem = _split_content_problem(raw, images)
        if problem:
            warnings.warn(f"{path} {problem}: it is not used, and the split is made again")
            continue
        return (tuple([Item(str(image_root / p), label, name) for p, label, name in raw[part]]
                      for part in PARTS), path), stale
    return None, stale


def _split_content_problem(raw: dict, images: Optional[set]) -> Optional[str]:
    """Why a generated split's content cannot be PiNI's: an image in two parts, or not in the folder."""
    seen = {}
    for part in PARTS:
        for rel, _, _ in raw[part]:
            if rel in seen:
                return f"puts {rel} in both {seen[rel]} and {part}" if seen[rel] != part else f"lists {rel} twice"
            seen[rel] = part
    listed = {os.path.normpath(image) for image in images or ()}
    strangers = [rel for rel in seen if images is not None and os.path.normpath(rel) not in listed]
    if strangers:
        return f"names {len(strangers)} images that are not in the image folder (e.g. {strangers[0]})"
    return None


def _split_payload(image_root: Path, train, val, test, **meta) -> dict:
    payload = {part: [[relative_path(item.path, image_root), item.label, item.classname] for item in items]
               for part, items in zip(PARTS, (train, val, test))}
    if meta:
        payload["pini"] = dict(meta, note="made by PiNI (datasets.py), not CoOp's split", version=SPLIT_VERSION)
    return payload


def make_split(image_dir: Path, p_train: float = 0.5, p_val: float = 0.2, seed: int = 1,
               renames: Optional[dict] = None, ignored=()):
    """Split a folder-per-class image tree per class into train / val / test (CoOp's 50/20/30).

    Deterministic: files are sorted, then shuffled by a generator seeded with `seed`.
    """
    renames = renames or {}
    classes = _class_folders(image_dir, ignored)
    by_class = _images_by_class(image_dir, classes)
    rng = random.Random(seed)
    train, val, test = [], [], []
    for label, cls in enumerate(classes):
        paths = sorted(by_class[cls])
        rng.shuffle(paths)
        n_train, n_val = round(len(paths) * p_train), round(len(paths) * p_val)
        if n_train == 0 or n_val == 0 or len(paths) - n_train - n_val == 0:
            raise DatasetError(f"class folder {image_dir / cls} has {len(paths)} images: at least 4 are needed "
                               "to split it into train, val and test")
        name = renames.get(cls, cls)
        train += [Item(p, label, name) for p in paths[:n_train]]
        val += [Item(p, label, name) for p in paths[n_train:n_train + n_val]]
        test += [Item(p, label, name) for p in paths[n_train + n_val:]]
    return train, val, test


UCF_LISTS = ("classInd.txt", "trainlist01.txt", "testlist01.txt")


def make_ucf101_split(folder: Path, image_dir: Path, seed: int = 1):
    """UCF101 by CoOp's protocol (datasets/ucf101.py): UCF's official trainlist01 / testlist01, so
    the frames of one video group never fall on both sides, then 80/20 train/val per class
    (OxfordPets.split_trainval). CoOp shuffles with the global seed of whichever run made the split
    first; here the seed is fixed to 1. Class names: CamelCase split by "_" ("Apply_Eye_Makeup").
    """
    lists = folder / "ucfTrainTestlist"

    def lines(name):
        path = lists / name
        if not path.is_file():
            raise DatasetError(f"UCF101: {path} missing (it comes with UCF101's ucfTrainTestlist.zip)")
        return [line.split() for line in path.read_text().splitlines() if line.strip()]

    try:
        label = {name: int(index) - 1 for index, name in lines("classInd.txt")}
    except ValueError:
        raise DatasetError(f"UCF101: {lists / 'classInd.txt'} is not '<index> <ClassName>' per line") from None

    def read(name):
        items = []
        for row in lines(name):
            action, _, video = row[0].partition("/")
            if action not in label or not video:
                raise DatasetError(f"UCF101: {lists / name} names {row[0]!r}, not <ClassName>/<video>.avi "
                                   "with a class of classInd.txt")
            renamed = "_".join(re.findall("[A-Z][^A-Z]*", action)) or action
            items.append(Item(str(image_dir / renamed / video.replace(".avi", ".jpg")), label[action], renamed))
        return items

    train, val = _split_trainval(read("trainlist01.txt"), p_val=0.2, rng=random.Random(seed))
    return train, val, read("testlist01.txt")


def _split_trainval(items, p_val: float, rng: random.Random):
    """CoOp's split_trainval: per label (first-appearance order), shuffle, first round(n·p_val) to val."""
    train, val = [], []
    for group in by_label(items):
        n_val = round(len(group) * p_val)
        if n_val == 0:
            raise DatasetError(f"class {group[0].classname!r} has {len(group)} training images: too few to "
                               "keep 20% for validation")
        rng.shuffle(group)
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def _class_folders(image_dir: Path, ignored=()) -> list:
    """Sorted class folders: hidden folders, `ignored` and PiNI's own cache folders are not classes."""
    try:
        entries = list(os.scandir(image_dir))
    except OSError as error:
        raise DatasetError(f"cannot list {image_dir}: {error.strerror or error}") from None
    classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".")
                     and e.name not in ignored and e.name not in CACHE_FOLDERS)
    if not classes:
        raise DatasetError(f"{image_dir} has no class folders (one sub-folder of images per class is expected)")
    return classes


def _images_by_class(image_dir: Path, classes) -> dict:
    class_to_idx = {c: i for i, c in enumerate(classes)}
    by_class = defaultdict(list)
    for path, index in make_dataset(str(image_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True):
        by_class[classes[index]].append(path)
    return by_class


def _tree_listing(folder: Path) -> list:
    """Every folder and image under `folder`, relative and sorted, without hidden entries and PiNI's
    caches: what a generated split is made from, so that any added, removed or renamed class or
    image is noticed."""
    listing = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in CACHE_FOLDERS]
        rel = os.path.relpath(here, folder)
        listing += [os.path.join(rel, d) + "/" for d in dirs]
        listing += [os.path.join(rel, f) for f in files if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)]
    return sorted(listing)


def _read_class_folders(image_dir: Path, names: dict, info: DatasetInfo) -> list:
    """Images in <image_dir>/<folder>/..., labels by sorted folder, names from `names`."""
    if not image_dir.is_dir():
        raise DatasetError(f"{info.name}: folder {image_dir} missing. Expected layout:\n{info.layout}\n"
                           f"See {COOP_DATASETS_DOC} ({info.name}).")
    loose = [e.name for e in os.scandir(image_dir) if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)]
    if loose:
        raise DatasetError(f"{info.name}: {image_dir} holds {len(loose)} images directly (e.g. {loose[0]}), but "
                           "one folder per class is expected, as in train/ (n01440764/..., n01443537/...). "
                           "For ImageNet's val/, move each image into its class folder (e.g. with the widely used "
                           f"valprep.sh script), as {COOP_DATASETS_DOC} describes ({info.name}). Expected layout:\n"
                           f"{info.layout}")
    folders = _class_folders(image_dir)
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DatasetError(f"{info.name}: {len(unknown)} class folders of {image_dir} are not in classnames.txt, "
                           f"e.g. {unknown[:3]}")
    by_class = _images_by_class(image_dir, folders)
    return [Item(p, label, names[f]) for label, f in enumerate(folders) for p in sorted(by_class[f])]


def _read_imagenet_classnames(folder: Path) -> dict:
    """classnames.txt: 'n01440764 tench' per line -> {folder: class name}, in file order."""
    path = folder / "classnames.txt"
    if not path.is_file():
        raise DatasetError(f"{path} missing: it maps ImageNet folders to CLIP's class names "
                           f"('n01440764 tench' per line); get it as {COOP_DATASETS_DOC} describes (ImageNet).")
    try:
        text = path.read_text()
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read {path} as text ({error}): 'n01440764 tench' per line is expected") from None
    lines = [line.split(maxsplit=1) for line in text.splitlines() if line.strip()]
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
        items = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            image, _, name = line.strip().partition(" ")
            if line.strip() and name not in label:
                raise DatasetError(f"FGVCAircraft: {path} line {n} is {line.strip()!r}: '<image id> <variant>' "
                                   f"with a variant of {variants.name} is expected")
            if line.strip():
                items.append(Item(str(folder / "images" / f"{image}.jpg"), label[name], name))
        return items

    return read("train"), read("val"), read("test")


def _load_custom(folder: Path) -> Split:
    """Your own data: <folder>/<class>/*.jpg, or <folder>/{train,val,test}/<class>/*.jpg.

    The split is generated (seed 1: 50/20/30 per class, or 80/20 train/val when there is no val/),
    and cached as split_pini.json with a fingerprint of the folder's listing: adding, removing or
    renaming a class or an image makes a new split (with a warning), never a silently stale one.
    """
    info = DatasetInfo(folder.name, folder.name, str(folder), "", CUSTOM_SPLIT_FILE, CUSTOM_TEMPLATE,
                       CUSTOM_TEMPLATE + " {}.", _tree(f"{folder.name}/", "├── class_a/   # images",
                                                       "└── class_b/", "or train/, [val/,] test/ each like that"))
    has_parts = (folder / "train").is_dir()
    if has_parts and not (folder / "test").is_dir():
        raise DatasetError(f"{folder} has train/ but no test/ folder. Expected layout:\n{info.layout}")
    listing = _tree_listing(folder)
    made_from = digest(SPLIT_VERSION, listing)
    cached, stale = _cached_split(folder, folder, made_from, CUSTOM_SPLIT_FILE, set(listing))
    if cached:
        (train, val, test), path = cached
        return _new_split(train, val, test, info, folder, "custom", path)
    if has_parts:
        classes = _class_folders(folder / "train")
        labels = {c: i for i, c in enumerate(classes)}

        def read(part):
            present = _class_folders(folder / part)
            extra = set(present) - set(labels)
            if extra:
                raise DatasetError(f"{folder / part} has classes that train/ lacks: {sorted(extra)[:5]}")
            by_class = _images_by_class(folder / part, present)
            return [Item(p, labels[c], c) for c in classes for p in sorted(by_class.get(c, []))]

        train, test = read("train"), read("test")
        if (folder / "val").is_dir():
            val = read("val")
        else:
            train, val = _split_per_class(train, 0.8, seed=1)
    else:
        train, val, test = make_split(folder)
    path = write_cache(CUSTOM_SPLIT_FILE, cache_places(folder),
                        _split_payload(folder, train, val, test, made_from=made_from))
    if stale:
        warnings.warn(f"{folder}: the class folders or images changed since {stale[0]} was made: "
                      f"made a new split{f' ({path})' if path else ''}; earlier results used the old one")
    return _new_split(train, val, test, info, folder, "custom", path)


def _split_per_class(items, p_first: float, seed: int):
    """Divide a list per class into a first part (fraction p_first) and the rest."""
    rng = random.Random(seed)
    first, rest = [], []
    for group in by_label(items):
        rng.shuffle(group)
        n = max(1, round(len(group) * p_first))
        first += group[:n]
        rest += group[n:]
    return first, rest


def by_label(items) -> list:
    """Items grouped by label, labels in order of first appearance (Dassl's split_dataset_by_label)."""
    groups = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return list(groups.values())


# -----------------------------------------------------------------------------------------
# Caches: fingerprinted, written atomically, somewhere writable
# -----------------------------------------------------------------------------------------

def digest(*parts) -> str:
    """A short hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()[:20]


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None


def relative_path(path: str, root: Path) -> str:
    prefix = str(root) + os.sep
    return path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)


def items_digest(root: Path, *parts) -> str:
    """A hash of every (relative path, label, class name) of each part, in order."""
    h = hashlib.sha256()
    for items in parts:
        h.update(b"\x1e")
        for item in items:
            h.update(f"{relative_path(item.path, root)}\x1f{item.label}\x1f{item.classname}\n".encode())
    return h.hexdigest()[:20]


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/pini, else ~/.cache/pini: where caches go when a data folder is read-only."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pini"


def cache_places(folder: Path, cache_dir=None) -> list:
    """Where the caches of a dataset folder may live, in order of preference: `cache_dir` (if given),
    the dataset folder itself (as CoOp), the user cache folder. Each but the dataset folder is keyed
    by the dataset folder's absolute path, so two datasets never share a cache."""
    key = f"{folder.name}-{digest(str(folder.resolve()))[:10]}"
    places = [Path(cache_dir) / key] if cache_dir else []
    return places + [folder, user_cache_dir() / key]


def write_cache(relative: str, places, payload) -> Optional[Path]:
    """Write a JSON cache in the first place that takes it; None (and a warning) if none does."""
    text = json.dumps(payload, indent=1)
    errors = []
    for place in places:
        path = place / relative
        try:
            atomic_write_text(path, text)
            return path
        except OSError as error:
            errors.append(f"{path}: {error.strerror or error}")
    warnings.warn(f"could not write the cache {relative} anywhere ({'; '.join(errors)}): it is made again next time")
    return None


def check_files(items, name: str = "dataset"):
    """Fail early, with the count and the first paths, when images the split names are absent."""
    missing = [item.path for item in items if not os.path.isfile(item.path)]
    if missing:
        listing = "\n".join("    " + p for p in missing[:5])
        raise DatasetError(f"{name}: {len(missing)} of {len(items)} images named by the split are missing, "
                           f"e.g.\n{listing}\nIs the data root right, and is the dataset fully extracted?")

