"""The datasets as CoOp's users have them: CLIP's real ImageNet class list, CoOp's official split files."""
import csv
import hashlib
import json
import os
import warnings

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from experiments import datasets
from experiments import report
import train
from conftest import JPEG, touch_image
from test_datasets import CALTECH_SPLIT
from test_datasets_fewshot import load_split_file
from test_runs import base_args, data_root  # noqa: F401  (fixtures)

# CLIP's list (which CoOp's classnames.txt copies) names two classes 'missile' and two 'sunglasses'.
SHARED = {"missile": [657, 744], "sunglasses": [836, 837]}
WNIDS = [f"n{i:08d}" for i in range(1000)]  # stand-ins for the sorted WordNet ids: labels follow sorted folders


def write_clip_classnames(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, IMAGENET_CLASSNAMES)))


def image_tree(image_dir, folders):
    """One image per class folder (hard links to one file: 1,000 folders cost little)."""
    first = None
    for name in folders:
        path = image_dir / name / "0.JPEG"
        if first is None:
            touch_image(path, JPEG)
            first = path
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(first, path)


def load_warnings(alias, root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = datasets.load_dataset(alias, root)
    return split, [str(w.message) for w in caught]


def test_the_real_list_has_the_shared_prompts_this_file_tests():
    assert len(IMAGENET_CLASSNAMES) == 1000
    groups = {}
    for label, name in enumerate(IMAGENET_CLASSNAMES):
        groups.setdefault(datasets.normalised_classname(name), []).append(label)
    assert {name: labels for name, labels in groups.items() if len(labels) > 1} == SHARED


def test_imagenet_loads_with_clips_class_list_warned_once_and_recorded(tmp_path):
    folder = tmp_path / "imagenet"
    write_clip_classnames(folder)
    image_tree(folder / "images" / "train", WNIDS)
    image_tree(folder / "images" / "val", WNIDS)
    split, messages = load_warnings("imagenet", tmp_path)
    assert split.classnames == list(IMAGENET_CLASSNAMES) and len(split.test) == 1000
    shared = [m for m in messages if "prompts are shared by several classes" in m]
    assert len(shared) == 1
    assert "'missile' (labels 657, 744)" in shared[0] and "'sunglasses' (labels 836, 837)" in shared[0]
    record = split.record()
    assert record["duplicate_prompts"] == SHARED
    assert "not reproducible across machines" in record["order"]
    again, messages = load_warnings("imagenet", tmp_path)
    assert again.duplicate_prompts == SHARED and not [m for m in messages if "shared" in m]  # announced once


@pytest.mark.parametrize("alias, folders", [
    ("imagenet_v2", [str(i) for i in range(1000)]),
    ("imagenet_sketch", WNIDS),
    ("imagenet_a", WNIDS[600:800]),  # A and R: 200 of the classes (here ones holding both 'missile's)
    ("imagenet_r", WNIDS[650:850]),
])
def test_imagenet_variants_load_with_clips_class_list(tmp_path, alias, folders):
    info = datasets.DATASETS[alias]
    write_clip_classnames(tmp_path / info.folder)
    image_tree(tmp_path / info.folder / info.image_dir, folders)
    split, messages = load_warnings(alias, tmp_path)
    assert len(split.classnames) == len(folders)
    if alias in ("imagenet_v2", "imagenet_sketch"):
        assert split.classnames == list(IMAGENET_CLASSNAMES) and split.duplicate_prompts == SHARED
    else:  # labels are the subset's own: 'missile' is 657 - 600 and 744 - 600 in A's 200 classes
        first = int(folders[0][1:])
        assert split.classnames == list(IMAGENET_CLASSNAMES[first:first + 200])
        assert split.duplicate_prompts["missile"] == [657 - first, 744 - first]
    assert any("prompts are shared by several classes" in m for m in messages)


def test_a_folder_of_ones_own_with_colliding_names_is_still_refused(tmp_path):
    for name in ["missile", "Missile", "tench"]:
        for i in range(4):
            touch_image(tmp_path / "mine" / name / f"{i}.jpg")
    with pytest.raises(datasets.DatasetError, match="give the same prompt: 'Missile' = 'missile'"):
        datasets.load_dataset(str(tmp_path / "mine"))


# --- CoOp's official split files ------------------------------------------------------------

def test_the_caltech101_fixture_is_the_pinned_file_and_has_the_tables_counts():
    data = CALTECH_SPLIT.read_bytes()
    assert hashlib.sha256(data).hexdigest() == datasets.COOP_SPLIT_SHA256["split_zhou_Caltech101.json"]
    raw = json.loads(data)
    assert tuple(len(raw[p]) for p in datasets.PARTS) == datasets.COOP_SPLIT_COUNTS["split_zhou_Caltech101.json"]


def test_the_table_names_every_split_file_of_the_benchmark():
    files = {info.split_file for info in datasets.DATASETS.values() if info.split_file}
    assert set(datasets.COOP_SPLIT_COUNTS) == files and len(files) == 9
    assert set(datasets.COOP_SPLIT_SHA256) <= files


def test_coops_caltech101_file_is_official(tmp_path):
    raw = json.loads(CALTECH_SPLIT.read_text())
    split = load_split_file(tmp_path, raw)  # re-serialised: another sha256, the table's counts
    assert split.not_official == "" and "official" not in split.record()
    folder = tmp_path / "caltech-101"
    (folder / "split_zhou_Caltech101.json").write_bytes(CALTECH_SPLIT.read_bytes())  # the file itself
    assert datasets.load_dataset("caltech101", tmp_path).not_official == ""


def test_a_split_zhou_file_that_is_not_coops_is_announced_once_and_recorded(tmp_path):
    raw = json.loads(CALTECH_SPLIT.read_text())
    raw["test"] = raw["test"][:-1]  # e.g. a split CoOp's code generated under the same name
    folder = tmp_path / "caltech-101"
    folder.mkdir()
    (folder / "split_zhou_Caltech101.json").write_text(json.dumps(raw))
    split, messages = load_warnings("caltech101", tmp_path)
    announced = [m for m in messages if "not CoOp's official split" in m]
    assert len(announced) == 1 and "4128/1649/2464 images, CoOp's 4128/1649/2465" in announced[0]
    assert split.record()["official"] is False and "2464" in split.record()["check"]
    _, messages = load_warnings("caltech101", tmp_path)
    assert not [m for m in messages if "not CoOp's official split" in m]


def test_the_summary_row_says_when_a_split_is_not_coops(tmp_path):
    def record(dataset, official, accuracy):
        split = {"source": "coop", "fingerprint": "f"}
        if not official:
            split.update(official=False, check="train/val/test 1/1/1 images, CoOp's 4128/1649/2465")
        return {"dataset": dataset, "shots": 1, "seed": 1, "accuracy": accuracy, "settings": {"split": split}}

    table = report.write_summary([record("Caltech101", False, 50.0), record("DescribableTextures", True, 40.0)],
                                 tmp_path)
    assert "| dataset | 1-shot | split |" in table
    assert "| Caltech101 | 50.00 ± 0.00 | not CoOp's official split |" in table
    assert "| DescribableTextures | 40.00 ± 0.00 |  |" in table
    rows = {r["dataset"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert rows["Caltech101"]["split"] == "not CoOp's official split" and rows["DescribableTextures"]["split"] == ""
    plain = report.write_summary([record("DescribableTextures", True, 40.0)], tmp_path)
    assert "split" not in plain.splitlines()[0]  # no column when every split is CoOp's


# --- a sweep over ImageNet with CLIP's list, end to end ----------------------------------------

def test_domain_generalisation_with_clips_class_list_end_to_end(base_args, data_root, tmp_path):  # noqa: F811
    """ImageNet (6 of its classes, both 'missile's and both 'sunglasses' among them) trains a tiny
    PiNI; ImageNetV2 (all 1,000 classes), -Sketch, -A and -R test it, every folder with CLIP's list."""
    chosen = [WNIDS[i] for i in (0, 1, 657, 744, 836, 837)]
    image_tree(data_root / "imagenet/images/train", chosen)
    image_tree(data_root / "imagenet/images/val", chosen)
    image_tree(data_root / "imagenetv2/imagenetv2-matched-frequency-format-val", [str(i) for i in range(1000)])
    image_tree(data_root / "imagenet-sketch/images", chosen)
    image_tree(data_root / "imagenet-adversarial/imagenet-a", chosen[2:])
    image_tree(data_root / "imagenet-rendition/imagenet-r", chosen[:4])
    for folder in ("imagenet", "imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition"):
        write_clip_classnames(data_root / folder)
    args = base_args[:-4] + ["--protocol", "domain", "--shots", "1", "--epochs", "1",
                             "--test-batch-size", "500"]  # V2's 1,000 images in 2 batches, not 200
    assert train.main(args) == 0
    out = tmp_path / "runs"
    trained = json.loads((out / "imagenet/shots_1/seed_1/result.json").read_text())
    assert trained["settings"]["classnames"] == [IMAGENET_CLASSNAMES[i] for i in (0, 1, 657, 744, 836, 837)]
    assert trained["settings"]["split"]["duplicate_prompts"] == {"missile": [2, 3], "sunglasses": [4, 5]}
    assert "not reproducible across machines" in trained["settings"]["split"]["order"]
    tests = {alias: json.loads((out / f"{alias}/domain/shots_1/seed_1/eval.json").read_text())
             for alias in ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")}
    assert {a: t["n_classes"] for a, t in tests.items()} == {"imagenet_v2": 1000, "imagenet_sketch": 6,
                                                              "imagenet_a": 4, "imagenet_r": 4}
    assert tests["imagenet_v2"]["settings"]["split"]["duplicate_prompts"] == SHARED
    assert tests["imagenet_a"]["settings"]["split"]["duplicate_prompts"] == {"missile": [0, 1],
                                                                             "sunglasses": [2, 3]}
    rows = {(r["method"], r["dataset"]) for r in csv.DictReader(open(out / "domain.csv"))}
    assert {("PiNI (1 shots)", name) for name in ("ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA",
                                                  "ImageNetR")} <= rows
