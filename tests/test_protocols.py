"""Beyond few-shot: base-to-new (CoCoOp's protocol), on the real Caltech101 split and end to end."""
import csv
import json
import math

import pytest
import torch

from experiments import datasets
from experiments import fewshot
import train
from test_datasets_fewshot import CALTECH_SPLIT, load_split_file
from test_runs import base_args, data_root  # noqa: F401  (fixtures)
from test_train import CLASSES


def cocoop_reference(train_rows, parts, half):
    """CoCoOp's subsample_classes, written from its documented rule: labels of the first list,
    sorted, the first ceil(n/2) base; the half relabelled in order; other items dropped."""
    labels = sorted({label for _, label, _ in train_rows})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if half == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    return [[(path, relabeler[label]) for path, label, _ in rows if label in relabeler] for rows in parts]


@pytest.mark.parametrize("half", ["base", "new"])
def test_the_class_split_is_cocoops_on_the_real_caltech101_split(tmp_path, half):
    raw = json.loads(CALTECH_SPLIT.read_text())
    split = load_split_file(tmp_path, raw)
    sample = fewshot.few_shot(split, 4, 1)
    part, cut = fewshot.class_half(split, sample, half)
    root = str(split.image_root) + "/"

    def rows(items):
        return [(i.path.removeprefix(root), i.label, i.classname) for i in items]

    expected = cocoop_reference(rows(sample.train), [rows(sample.train), rows(sample.val), raw["test"]], half)
    assert [[(p, label) for p, label, _ in rows(x)] for x in (cut.train, cut.val)] == expected[:2]
    assert [(i.path.removeprefix(root), i.label) for i in part.test] == expected[2]
    assert len(part.classnames) == 50 and part.classnames == split.classnames[:50] if half == "base" else \
        part.classnames == split.classnames[50:]


def test_an_odd_number_of_classes_gives_the_extra_one_to_base(data_root):  # noqa: F811
    split = datasets.load_dataset("sun397", data_root)  # 3 classes
    assert [fewshot.class_half(split, None, h)[0].classnames for h in ("base", "new")] == [["abbey", "beach"],
                                                                                        ["canyon"]]


def test_base_to_new_end_to_end(base_args, tmp_path):  # noqa: F811
    args = base_args + ["--protocol", "base2new", "--epochs", "1", "--seeds", "1", "2"]
    assert train.main(args) == 0
    folder = tmp_path / "runs/caltech101/base2new"
    record = json.loads((folder / "shots_2/seed_1/result.json").read_text())
    assert record["settings"]["classnames"] == CLASSES[:2] and record["settings"]["new_classnames"] == CLASSES[2:]
    assert record["n_classes"] == 2 and record["n_train"] == 4  # 2 base classes × 2 shots
    assert 0 <= record["accuracy"] <= 100 and 0 <= record["accuracy_new"] <= 100
    assert record["n_test"] == record["n_test_new"] == 6
    zero_shot = json.loads((folder / "zero_shot/result.json").read_text())
    rows = {(r["dataset"], r["method"]): r for r in csv.DictReader(open(tmp_path / "runs/base2new.csv"))}
    pini_row = rows[("Caltech101", "PiNI")]
    news = [json.loads((folder / f"shots_2/seed_{s}/result.json").read_text())["accuracy_new"] for s in (1, 2)]
    assert float(pini_row["new"]) == pytest.approx(sum(news) / 2, abs=1e-3) and pini_row["n_seeds"] == "2"
    b, n = float(pini_row["base"]), float(pini_row["new"])
    assert float(pini_row["H"]) == pytest.approx(2 * b * n / (b + n) if b + n else 0, abs=1e-3)
    assert float(rows[("Caltech101", "zero-shot CLIP")]["new"]) == pytest.approx(zero_shot["accuracy_new"], abs=1e-3)
    assert "Base-to-new" in (tmp_path / "runs/base2new.md").read_text()
    assert not (tmp_path / "runs/summary.csv").read_text().count("Caltech101")  # not a few-shot result
    assert train.main(args) == 0  # a rerun reuses both runs


def test_base_trained_injectors_test_new_classes_unchanged(base_args, monkeypatch):  # noqa: F811
    seen = {}
    original = train.new_class_accuracy

    def spy(model, job, options, ctx):
        before = {k: v.clone() for k, v in train.injector_state(model).items()}
        result = original(model, job, options, ctx)
        seen["unchanged"] = all(torch.equal(before[k], v) for k, v in train.injector_state(model).items())
        seen["classes"] = job.new_split.classnames
        return result

    monkeypatch.setattr(train, "new_class_accuracy", spy)
    assert train.main(base_args + ["--protocol", "base2new", "--epochs", "1"]) == 0
    assert seen == {"unchanged": True, "classes": CLASSES[2:]}


def test_per_class_noise_is_refused_for_new_classes(base_args, capsys):  # noqa: F811
    assert train.main(base_args + ["--protocol", "base2new", "--text-noise", "feature"]) == 2
    assert "cannot be tested on new classes" in capsys.readouterr().err


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def imagenet_family(root):
    """ImageNet (3 classes) and its four test-only variants, in CoOp's layouts; A and R hold a subset."""
    from conftest import jpeg_bytes, touch_image
    colors = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]
    names = "".join(f"{k} {v}\n" for k, v in WNIDS.items())
    for folder, image_dir, wnids, n in [("imagenet", "images/train", WNIDS, 3), ("imagenet", "images/val", WNIDS, 2),
                                        ("imagenet-sketch", "images", WNIDS, 2),
                                        ("imagenet-adversarial", "imagenet-a", list(WNIDS)[1:], 2),
                                        ("imagenet-rendition", "imagenet-r", list(WNIDS)[:2], 2),
                                        ("imagenetv2", "imagenetv2-matched-frequency-format-val", ["0", "1", "2"], 2)]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "classnames.txt").write_text(names)
        for k, wnid in enumerate(wnids):
            for i in range(n):
                touch_image(root / folder / image_dir / wnid / f"{i}.jpg", jpeg_bytes(colors[k % 3]))


def test_domain_generalisation_end_to_end(base_args, data_root, tmp_path, capsys):  # noqa: F811
    imagenet_family(data_root)
    args = base_args[:-4] + ["--protocol", "domain", "--shots", "1", "--epochs", "1"]
    assert train.main(args) == 0
    out = tmp_path / "runs"
    trained = json.loads((out / "imagenet/shots_1/seed_1/result.json").read_text())  # the few-shot run itself
    tests = {alias: json.loads((out / f"{alias}/domain/shots_1/seed_1/eval.json").read_text())
             for alias in ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")}
    assert {a: t["n_classes"] for a, t in tests.items()} == {"imagenet_v2": 3, "imagenet_sketch": 3,
                                                              "imagenet_a": 2, "imagenet_r": 2}  # A, R: own classes
    assert all(t["trained_on"] == "ImageNet" and t["settings"]["template"] == "a photo of a" for t in tests.values())
    rows = {(r["method"], r["dataset"]): r for r in csv.DictReader(open(out / "domain.csv"))}
    assert float(rows[("PiNI (1 shots)", "ImageNet")]["mean"]) == pytest.approx(trained["accuracy"], abs=1e-3)
    assert float(rows[("PiNI (1 shots)", "ImageNetA")]["mean"]) == pytest.approx(tests["imagenet_a"]["accuracy"],
                                                                                 abs=1e-3)
    assert ("zero-shot CLIP", "ImageNetR") in rows and (out / "domain.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "ImageNet |" in summary and "ImageNetV2" not in summary  # test-only sets are no summary rows
    # a few-shot call on ImageNet reuses the very same run
    assert train.main(base_args[:-4] + ["--dataset", "imagenet", "--shots", "1", "--epochs", "1"]) == 0
    assert json.loads((out / "imagenet/shots_1/seed_1/result.json").read_text())["pid"] == trained["pid"]
    # a test whose checkpoint is not there (trained elsewhere, unfinished, removed) is not done: exit 75, said
    # last; the finished tests are reused without it
    (out / "imagenet/shots_1/seed_1/checkpoint.pt").unlink()
    (out / "imagenet_a/domain/shots_1/seed_1/eval.json").unlink()
    capsys.readouterr()
    assert train.main(args) == 75
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("not done: 1 of ") and "tests wait for a checkpoint that is not there yet" in last
    assert "imagenet_a" in last and not (out / "imagenet_a/domain/shots_1/seed_1/eval.json").exists()


def test_cross_dataset_tests_the_imagenet_run_on_chosen_targets(base_args, data_root, tmp_path):  # noqa: F811
    imagenet_family(data_root)
    args = base_args[:-4] + ["--protocol", "cross-dataset", "--dataset", "caltech101", "dtd", "--shots", "1",
                             "--epochs", "1", "--seeds", "1", "2"]
    assert train.main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "runs/cross_dataset.csv")))
    pini_rows = {r["dataset"]: r for r in rows if r["method"] == "PiNI (1 shots)"}
    assert set(pini_rows) == {"ImageNet", "Caltech101", "DescribableTextures"}
    assert all(r["n_seeds"] == "2" for r in pini_rows.values())
    dtd = json.loads((tmp_path / "runs/dtd/cross-dataset/shots_1/seed_1/eval.json").read_text())
    assert dtd["settings"]["template"] == "a photo of a" and dtd["n_classes"] == 2


def test_a_training_job_and_its_tests_share_a_shard(base_args, data_root, tmp_path, capsys):  # noqa: F811
    imagenet_family(data_root)
    args = train.parse_args(base_args[:-4] + ["--protocol", "domain", "--shots", "1", "--seeds", "1", "2", "3"])
    jobs_ = train.plan(args, None)
    for i in range(2):
        mine = {id(j) for j in train.shard(jobs_, i, 2, args)}
        for job in jobs_:
            if job.source is not None:
                assert (id(job) in mine) == (id(job.source) in mine)
