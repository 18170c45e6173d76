"""datasets.py on image trees generated in CoOp's real layouts (no real dataset is available)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from experiments import datasets
from experiments import fewshot
from experiments import image_data
from conftest import JPEG, touch_image, write_json_split
from experiments.datasets import DatasetError


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Caches that fall back to the user cache folder land in the test's own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    return tmp_path / "user_cache" / "pini"

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():  # the checkout may sit elsewhere; tests/fixtures holds a copy
    FIXTURES = Path(__file__).parent / "fixtures"
CALTECH_SPLIT = FIXTURES / "split_zhou_Caltech101.json"

JSON_DATASETS = ["caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101", "sun397", "dtd",
                 "eurosat", "ucf101"]


@pytest.mark.parametrize("alias", JSON_DATASETS)
def test_split_file_layouts(tmp_path, alias):
    info = datasets.DATASETS[alias]
    folder = tmp_path / info.folder
    names = ["abyssinian", "great_pyrenees", "Sea Lake"]
    write_json_split(folder, info.image_dir, info.split_file, names)
    split = datasets.load_dataset(alias, tmp_path)
    assert (len(split.train), len(split.val), len(split.test)) == (12, 6, 9)
    assert split.classnames == ["abyssinian", "great pyrenees", "Sea Lake"]
    assert [item.label for item in split.test[:4]] == [0, 0, 0, 1]
    assert all(Path(item.path).is_file() for item in split.train + split.val + split.test)
    assert Path(split.train[0].path).is_relative_to(folder / info.image_dir)


def test_eurosat_gets_coop_readable_names(tmp_path):
    write_json_split(tmp_path / "eurosat", "2750", "split_zhou_EuroSAT.json", ["AnnualCrop", "SeaLake"])
    assert datasets.load_dataset("eurosat", tmp_path).classnames == ["Annual Crop Land", "Sea or Lake"]


def test_real_caltech101_split(tmp_path):
    folder = tmp_path / "caltech-101"
    raw = json.loads(CALTECH_SPLIT.read_text())
    for part in raw.values():
        for rel, _, _ in part:
            path = folder / "101_ObjectCategories" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(JPEG)
    shutil.copy(CALTECH_SPLIT, folder / "split_zhou_Caltech101.json")
    split = datasets.load_dataset("Caltech101", tmp_path)  # the paper's spelling works too
    assert (len(split.train), len(split.val), len(split.test)) == (4128, 1649, 2465)
    assert len(split.classnames) == 100
    assert split.classnames[:4] == ["face", "leopard", "motorbike", "accordion"]
    assert "airplane" in split.classnames and "Faces_easy" not in split.classnames
    datasets.check_files(split.train + split.val + split.test)  # every path the split names exists
    sample = fewshot.few_shot(split, 16, seed=1)
    train, val = sample.train, sample.val
    counts = torch.bincount(torch.tensor([item.label for item in train]), minlength=100)
    # 16 per class, except classes with fewer training images, which come whole
    full = torch.bincount(torch.tensor([item.label for item in split.train]), minlength=100)
    assert torch.equal(counts, full.clamp(max=16))
    assert len(val) == sum(min(4, n) for n in torch.bincount(torch.tensor([i.label for i in split.val])).tolist())
    assert sample.short_classes == {split.classnames[c]: int(n) for c, n in enumerate(full) if n < 16}
    assert int(full.min()) == 16 and sample.short_classes == {}  # 3 classes have exactly 16: sampled, not short
    assert split.source == "coop"


def test_caltech101_without_split_file_is_split_deterministically(tmp_path):
    image_dir = tmp_path / "caltech-101" / "101_ObjectCategories"
    for cls in ["Faces", "Faces_easy", "BACKGROUND_Google", "accordion", "airplanes"]:
        for i in range(10):
            touch_image(image_dir / cls / f"image_{i:04d}.jpg")
    with pytest.warns(UserWarning, match="generated a split.*NOT CoOp's split"):
        split = datasets.load_dataset("caltech101", tmp_path)
    assert split.classnames == ["face", "accordion", "airplane"]  # ignored folders gone, CoOp names
    assert (len(split.train), len(split.val), len(split.test)) == (15, 6, 9)  # 5/2/3 per class
    parts = [{item.path for item in part} for part in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert split.source == "generated" and split.split_path.name == "split_pini_generated.json"
    assert not (tmp_path / "caltech-101" / "split_zhou_Caltech101.json").exists()  # never CoOp's name
    again = datasets.make_split(image_dir, renames=datasets.CALTECH_NAMES, ignored=datasets.DATASETS["caltech101"].ignored)
    assert [i.path for i in again[0]] == [i.path for i in split.train]
    assert datasets.load_dataset("caltech101", tmp_path).train == split.train  # the written file is read back


def test_fgvc_aircraft_layout(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    folder.mkdir()
    (folder / "variants.txt").write_text("707-320\nA300B4\nDC-10\n")
    for part, n in [("train", 3), ("val", 2), ("test", 2)]:
        lines = []
        for variant in ["707-320", "A300B4", "DC-10"]:
            for i in range(n):
                image = f"{part}{variant}{i}".replace("-", "")
                touch_image(folder / "images" / f"{image}.jpg")
                lines.append(f"{image} {variant}")
        (folder / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    split = datasets.load_dataset("fgvc_aircraft", tmp_path)
    assert split.classnames == ["707-320", "A300B4", "DC-10"]
    assert (len(split.train), len(split.val), len(split.test)) == (9, 6, 6)
    assert split.test[-1].label == 2


def make_imagenet_folder(folder: Path, image_dir: str, wnids, per_class=2):
    (folder).mkdir(parents=True, exist_ok=True)
    for wnid in wnids:
        for i in range(per_class):
            touch_image(folder / image_dir / wnid / f"{i}.JPEG")


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def write_classnames(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{k} {v}\n" for k, v in WNIDS.items()))


def test_imagenet_layout_uses_val_as_test(tmp_path):
    folder = tmp_path / "imagenet"
    write_classnames(folder)
    make_imagenet_folder(folder, "images/train", WNIDS, per_class=5)
    make_imagenet_folder(folder, "images/val", WNIDS, per_class=2)
    split = datasets.load_dataset("imagenet", tmp_path)
    assert split.classnames == ["tench", "goldfish", "great white shark"]
    assert (len(split.train), len(split.test)) == (15, 6)
    assert split.val == split.test


def test_imagenet_variants(tmp_path):
    write_classnames(tmp_path / "imagenet-sketch")
    make_imagenet_folder(tmp_path / "imagenet-sketch", "images", WNIDS)
    sketch = datasets.load_dataset("imagenet_sketch", tmp_path)
    assert sketch.classnames == list(WNIDS.values()) and len(sketch.test) == 6 and sketch.train == []

    write_classnames(tmp_path / "imagenet-adversarial")  # A: a subset of ImageNet's classes
    make_imagenet_folder(tmp_path / "imagenet-adversarial", "imagenet-a", ["n01443537", "n01484850"])
    adversarial = datasets.load_dataset("imagenet_a", tmp_path)
    assert adversarial.classnames == ["goldfish", "great white shark"]

    write_classnames(tmp_path / "imagenetv2")
    make_imagenet_folder(tmp_path / "imagenetv2", "imagenetv2-matched-frequency-format-val", ["0", "1", "2"])
    v2 = datasets.load_dataset("imagenet_v2", tmp_path)
    assert v2.classnames == list(WNIDS.values()) and [i.label for i in v2.test] == [0, 0, 1, 1, 2, 2]


@pytest.fixture
def small_split(tmp_path):
    write_json_split(tmp_path / "dtd", "images", "split_zhou_DescribableTextures.json",
                     ["banded", "dotted"], per_class=(10, 6, 2))
    return datasets.load_dataset("dtd", tmp_path)


def test_few_shot_sampling_is_deterministic_and_cached(small_split):
    sample = fewshot.few_shot(small_split, 4, seed=1)
    train, val = sample.train, sample.val
    assert [item.label for item in train] == [0] * 4 + [1] * 4
    assert len(val) == 8  # min(k, 4) per class
    cache = small_split.folder / "split_fewshot" / "shot_4-seed_1.json"
    assert json.loads(cache.read_text())["train"][0][0].startswith("banded/")  # readable, relative paths
    assert sample.cache_path == str(cache)
    other = fewshot.few_shot(small_split, 4, seed=2).train
    assert {i.path for i in other} != {i.path for i in train}
    assert fewshot.few_shot(small_split, 4, seed=1, cache=False).train == train  # same seed, same files
    all_of_them = fewshot.few_shot(small_split, 50, seed=1, cache=False)
    assert len(all_of_them.train) == 20  # fewer than k: the whole class, reported
    assert all_of_them.short_classes == {"banded": 10, "dotted": 10}
    recorded = cache.stat().st_mtime_ns
    again = fewshot.few_shot(small_split, 4, seed=1)  # drawn again, equal to its record: the record is kept
    assert again.train == train and again.cache_path == str(cache) and cache.stat().st_mtime_ns == recorded


@pytest.mark.parametrize("shots", [0, -2, 1.5, "4", True])
def test_bad_shots(small_split, shots):
    with pytest.raises(DatasetError, match="shots must be a positive integer"):
        fewshot.few_shot(small_split, shots, seed=1)


def test_missing_dataset_names_layout_and_source(tmp_path):
    with pytest.raises(DatasetError) as error:
        datasets.load_dataset("oxford_pets", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "oxford_pets") in message
    assert "split_zhou_OxfordPets.json" in message and "DATASETS.md" in message


def test_missing_split_file_where_it_cannot_be_made(tmp_path):
    (tmp_path / "sun397" / "SUN397").mkdir(parents=True)
    with pytest.raises(DatasetError, match="split file split_zhou_SUN397.json missing in"):
        datasets.load_dataset("sun397", tmp_path)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DatasetError, match="unknown dataset 'cifar10'.*caltech101.*imagenet_r"):
        datasets.load_dataset("cifar10")


def test_missing_images_are_counted_and_listed(small_split):
    for item in small_split.test[:3]:
        Path(item.path).unlink()
    with pytest.raises(DatasetError, match=r"3 of 4 images named by the split are missing, e\.g\.\n.*test_0\.jpg"):
        datasets.check_files(small_split.test, "DTD test")


def test_corrupt_image_names_its_path(small_split):
    bad = Path(small_split.train[0].path)
    bad.write_bytes(b"not a jpeg")
    dataset = image_data.ImageDataset(small_split.train, transform=lambda image: image.size)
    assert dataset[1] == ((8, 8), 0)
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        dataset[0]


def test_custom_folder_per_class(tmp_path):
    root = tmp_path / "my_birds"
    for cls in ["blue_jay", "robin"]:
        for i in range(10):
            touch_image(root / cls / f"{i}.png")
    split = datasets.load_dataset(str(root))
    assert split.classnames == ["blue jay", "robin"]
    assert split.info.template == "a photo of a"
    assert (len(split.train), len(split.val), len(split.test)) == (10, 4, 6)
    assert (root / "split_pini.json").is_file()
    assert len(fewshot.few_shot(split, 2, seed=1).train) == 4
    assert split.source == "custom"


def test_custom_folder_with_train_and_test(tmp_path):
    root = tmp_path / "mine"
    for part, n in [("train", 10), ("test", 3)]:
        for cls in ["a", "b"]:
            for i in range(n):
                touch_image(root / part / cls / f"{i}.jpg")
    split = datasets.load_dataset(str(root))
    assert (len(split.train), len(split.val), len(split.test)) == (16, 4, 6)
    assert not {i.path for i in split.train} & {i.path for i in split.val}
