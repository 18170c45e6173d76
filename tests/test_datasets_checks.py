"""Bad input is caught up front with one actionable message; images are verified before training;
augmentation is the same whatever the number of DataLoader workers; UCF101 follows CoOp's protocol."""
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from experiments import datasets
from experiments import image_data
from conftest import JPEG, noise_png, touch_image, write_json_split
from experiments.datasets import DatasetError


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    return tmp_path / "user_cache" / "pini"


def test_mistyped_name_gets_did_you_mean():
    with pytest.raises(DatasetError, match=r"unknown dataset 'caltek101' \(did you mean 'caltech101'\?\)"):
        datasets.resolve_name("caltek101")
    with pytest.raises(DatasetError, match="did you mean 'oxford_pets'"):
        datasets.resolve_name("oxfordpet")


def test_load_datasets_names_every_broken_dataset_at_once(tmp_path):
    write_json_split(tmp_path / "dtd", "images", "split_zhou_DescribableTextures.json", ["banded", "dotted"])
    (tmp_path / "sun397" / "SUN397").mkdir(parents=True)  # images but no split file
    with pytest.raises(DatasetError) as error:
        datasets.load_datasets(["dtd", "oxford_pets", "sun397", "cifar"], tmp_path)
    message = str(error.value)
    assert message.startswith("3 of 4 datasets cannot be used")
    assert "[oxford_pets] OxfordPets not found" in message and str(tmp_path / "oxford_pets") in message
    assert "[sun397] SUN397: split file split_zhou_SUN397.json missing" in message
    assert "[cifar] unknown dataset 'cifar'" in message
    splits = datasets.load_datasets(["dtd", "DTD", "dtd"], tmp_path)  # each once
    assert [s.info.alias for s in splits] == ["dtd"]


def test_class_too_small_to_split_says_how_many_are_needed(tmp_path):
    for cls, n in [("a", 3), ("b", 4)]:
        for i in range(n):
            touch_image(tmp_path / "mine" / cls / f"{i}.jpg")
    with pytest.raises(DatasetError, match="has 3 images: at least 4 are needed"):
        datasets.load_dataset(str(tmp_path / "mine"))
    touch_image(tmp_path / "mine" / "a" / "3.jpg")
    assert len(datasets.load_dataset(str(tmp_path / "mine")).test) == 2


def test_one_class_is_an_error(tmp_path):
    write_json_split(tmp_path / "dtd", "images", "split_zhou_DescribableTextures.json", ["banded"])
    with pytest.raises(DatasetError, match="1 class found, at least 2 are needed"):
        datasets.load_dataset("dtd", tmp_path)


def test_class_names_that_give_the_same_prompt_are_an_error(tmp_path):
    root = tmp_path / "animals"
    for cls in ["sea_lion", "sea lion", "Sea Lion", "seal"]:
        for i in range(4):
            touch_image(root / cls / f"{i}.jpg")
    with pytest.raises(DatasetError, match="1 groups of class names give the same prompt: "
                                           "'Sea Lion' = 'sea lion' = 'sea_lion'"):
        datasets.load_dataset(str(root))


def test_flat_imagenet_val_says_to_make_class_folders(tmp_path):
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    for wnid in ["n01440764", "n01443537"]:
        touch_image(folder / "images" / "train" / wnid / "0.JPEG")
    touch_image(folder / "images" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetError, match=r"val holds 1 images directly .*one folder per class"):
        datasets.load_dataset("imagenet", tmp_path)


GOOD = [["a/0.jpg", 0, "a"], ["b/0.jpg", 1, "b"]]


@pytest.mark.parametrize("content, problem", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    (json.dumps({"train": GOOD, "val": GOOD}), "'test' is missing or not a list"),
    (json.dumps({"train": GOOD, "val": GOOD, "test": [["a/1.jpg", "0", "a"]]}), r"test\[0\] is"),
    (json.dumps({"train": GOOD, "val": GOOD, "test": [["a/1.jpg", 0]]}), r"test\[0\] is"),
    (json.dumps({"train": GOOD, "val": GOOD, "test": [["/etc/passwd", 0, "a"]]}), "must be relative"),
    (json.dumps({"train": GOOD, "val": GOOD, "test": [["a/../../x.jpg", 0, "a"]]}), "must be relative"),
])
def test_malformed_split_file_is_refused_with_its_name(tmp_path, content, problem):
    folder = tmp_path / "dtd"
    (folder / "images").mkdir(parents=True)
    (folder / "split_zhou_DescribableTextures.json").write_text(content)
    with pytest.raises(DatasetError, match=problem) as error:
        datasets.load_dataset("dtd", tmp_path)
    assert str(folder / "split_zhou_DescribableTextures.json") in str(error.value)


def test_aircraft_line_with_unknown_variant_names_file_and_line(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    folder.mkdir()
    (folder / "variants.txt").write_text("707-320\nA300B4\n")
    for part in ["train", "val", "test"]:
        (folder / f"images_variant_{part}.txt").write_text("0001 707-320\n0002 A300B4\n")
    (folder / "images_variant_test.txt").write_text("0001 707-320\n0002 B777\n")
    with pytest.raises(DatasetError, match=r"images_variant_test.txt line 2 is '0002 B777'"):
        datasets.load_dataset("fgvc_aircraft", tmp_path)


# ----------------------------------------------------------------------------------------------
# verify_images
# ----------------------------------------------------------------------------------------------

def big_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(noise_png(0, 64))).save(buffer, "JPEG")
    return buffer.getvalue()


def test_verify_images_finds_truncated_and_garbage_files_and_remembers_good_ones(tmp_path):
    items = []
    for i in range(6):
        touch_image(tmp_path / f"{i}.jpg", big_jpeg())
        items.append(datasets.Item(str(tmp_path / f"{i}.jpg"), 0, "a"))
    truncated = tmp_path / "1.jpg"
    truncated.write_bytes(big_jpeg()[:-400])
    Image.open(truncated).verify()  # PIL's verify() lets a truncated JPEG pass; decoding does not
    (tmp_path / "2.jpg").write_bytes(b"not an image")
    (tmp_path / "3.jpg").unlink()
    cache = tmp_path / "verified.json"
    with pytest.raises(DatasetError) as error:
        image_data.verify_images(items, "DTD test", cache_path=cache, progress=False)
    message = str(error.value)
    assert message.startswith("DTD test: 3 of 6 images cannot be read")
    assert f"{truncated}: OSError: image file is truncated" in message
    assert f"{tmp_path / '3.jpg'}: missing" in message and str(tmp_path / "2.jpg") in message
    assert set(json.loads(cache.read_text())) == {str(tmp_path / f"{i}.jpg") for i in (0, 4, 5)}
    good = [items[i] for i in (0, 4, 5)]
    assert image_data.verify_images(good, "x", cache_path=cache, progress=False) == 0  # remembered: none decoded
    touch_image(tmp_path / "4.jpg", JPEG)  # replaced: new size and mtime, checked again
    assert image_data.verify_images(good, "x", cache_path=cache, progress=False) == 1


# ----------------------------------------------------------------------------------------------
# UCF101
# ----------------------------------------------------------------------------------------------

def test_ucf101_without_split_file_or_lists_is_refused(tmp_path):
    (tmp_path / "ucf101" / "UCF-101-midframes" / "Apply_Eye_Makeup").mkdir(parents=True)
    with pytest.raises(DatasetError) as error:
        datasets.load_dataset("ucf101", tmp_path)
    message = str(error.value)
    assert "split_zhou_UCF101.json missing" in message and "UCF-101-midframes" in message
    assert "ucfTrainTestlist" in message and "DATASETS.md" in message


def test_ucf101_split_follows_coops_protocol(tmp_path):
    folder = tmp_path / "ucf101"
    lists = folder / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    train_lines, test_lines = [], []
    for action in ["ApplyEyeMakeup", "YoYo"]:
        for group in range(1, 8):
            for clip in range(1, 3):
                video = f"v_{action}_g{group:02d}_c{clip:02d}"
                touch_image(folder / "UCF-101-midframes" / ("Apply_Eye_Makeup" if action[0] == "A" else "Yo_Yo")
                            / f"{video}.jpg")
                (test_lines if group <= 2 else train_lines).append(f"{action}/{video}.avi")
    (lists / "trainlist01.txt").write_text("".join(f"{line} 1\n" for line in train_lines))
    (lists / "testlist01.txt").write_text("\n".join(test_lines) + "\n")
    with pytest.warns(UserWarning, match="CoOp's protocol on ucfTrainTestlist.*NOT CoOp's split"):
        split = datasets.load_dataset("ucf101", tmp_path)
    assert split.source == "generated" and split.split_path.name == "split_pini_generated.json"
    assert split.classnames == ["Apply Eye Makeup", "Yo Yo"]
    assert (len(split.train), len(split.val), len(split.test)) == (16, 4, 8)  # 80/20 of 10 per class
    group = lambda item: Path(item.path).stem.rsplit("_", 1)[0]
    assert not {group(i) for i in split.test} & {group(i) for i in split.train + split.val}
    assert all(Path(i.path).is_file() for i in split.train + split.val + split.test)
    assert not (folder / "split_zhou_UCF101.json").exists()
