"""Runs you can trust: a run is its settings, checkpoints load safely, bad input is caught up front."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import datasets
from experiments import fewshot
from experiments import runs
import train
from conftest import for_eval_only, touch_image, write_json_split
from test_train import CLASSES, COLORS, read_result


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    write_json_split(root / "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", CLASSES,
                     per_class=(6, 2, 3), colors=COLORS)
    write_json_split(root / "dtd", "images", "split_zhou_DescribableTextures.json", ["banded", "dotted"],
                     per_class=(6, 2, 2), colors=COLORS[:2])
    write_json_split(root / "sun397", "SUN397", "split_zhou_SUN397.json", ["abbey", "beach", "canyon"],
                     per_class=(2, 1, 2), colors=COLORS[:3])  # the same template as Caltech101's
    return root


@pytest.fixture
def base_args(data_root, config_dir, tmp_path):
    return ["--data-root", str(data_root), "--model", str(config_dir / "tiny-vit.json"), "--pretrained", "none",
            "--output-dir", str(tmp_path / "runs"), "--workers", "0", "--batch-size", "4", "--epochs", "2",
            "--test-batch-size", "5", "--device", "cpu", "--dataset", "caltech101", "--shots", "2"]


def run_dir(tmp_path, dataset="caltech101", shots=2, seed=1):
    return tmp_path / "runs" / dataset / f"shots_{shots}" / f"seed_{seed}"


# --- a run is its settings ---------------------------------------------------------------

def test_a_finished_run_with_other_settings_is_never_reported_as_the_new_one(base_args, tmp_path, capsys):
    assert train.main(base_args) == 0
    first = read_result(base_args)
    assert first["settings"]["lr"] == 1e-3 and first["settings"]["classnames"] == CLASSES
    assert train.main(base_args + ["--lr", "0.01", "--image-noise", "none"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "lr: 0.001 → 0.01" in err and "image_noise" in err and "--force" in err
    assert read_result(base_args)["accuracy"] == first["accuracy"]  # untouched
    assert train.main(base_args + ["--lr", "0.01", "--force"]) == 0
    assert read_result(base_args)["settings"]["lr"] == 0.01


def test_resume_refuses_a_changed_setting(base_args, tmp_path, monkeypatch, capsys):
    original = train.save_checkpoint

    def interrupt(path, model, optimizer, scheduler, scaler, epoch, history, meta):
        original(path, model, optimizer, scheduler, scaler, epoch, history, meta)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", interrupt)
    assert train.main(base_args) == 130
    monkeypatch.setattr(train, "save_checkpoint", original)
    assert train.main(base_args + ["--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "cannot --resume" in err and "epochs: 2 → 3" in err
    assert not (run_dir(tmp_path) / "result.json").exists()


def test_eval_only_takes_the_run_from_the_checkpoint_and_keeps_the_training_result(base_args, tmp_path):
    assert train.main(base_args) == 0
    trained = (run_dir(tmp_path) / "result.json").read_text()
    # no --dataset, no --shots: both come from the checkpoint; the record goes to eval.json
    checkpoint = str(run_dir(tmp_path) / "checkpoint.pt")
    assert train.main(for_eval_only(base_args[:-4] + ["--eval-only", "--checkpoint", checkpoint])) == 0
    assert (run_dir(tmp_path) / "result.json").read_text() == trained
    evaluated = json.loads((run_dir(tmp_path) / "eval.json").read_text())
    assert evaluated["shots"] == 2 and evaluated["seed"] == 1 and evaluated["dataset"] == "Caltech101"
    assert evaluated["accuracy"] == json.loads(trained)["accuracy"]
    rows = list(csv.DictReader(open(tmp_path / "runs/summary.csv")))
    assert [(r["dataset"], r["n_seeds"]) for r in rows] == [("Caltech101", "1")]  # the same run, counted once


def test_eval_only_refuses_other_classes_unless_asked(base_args, tmp_path, capsys):
    assert train.main(base_args) == 0
    checkpoint = str(run_dir(tmp_path) / "checkpoint.pt")
    assert train.main(for_eval_only(base_args[:-4] + ["--dataset", "sun397", "--eval-only", "--checkpoint",
                                                      checkpoint])) == 2
    assert "--transfer" in capsys.readouterr().err
    assert train.main(for_eval_only(base_args[:-4] + ["--dataset", "sun397", "--eval-only", "--transfer",
                                                      "--checkpoint", checkpoint])) == 0
    evaluated = json.loads((tmp_path / "runs/sun397/shots_2/seed_1/eval.json").read_text())
    assert evaluated["trained_on"] == "Caltech101" and evaluated["n_classes"] == 3


def test_repeated_seeds_count_once_and_the_summary_keeps_earlier_results(base_args, tmp_path, capsys):
    assert train.main(base_args + ["--seeds", "1", "1", "--epochs", "1"]) == 0
    assert "repeats values" in capsys.readouterr().err
    assert train.main(base_args[:-4] + ["--dataset", "dtd", "--shots", "2", "--epochs", "1"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "runs/summary.csv")))
    assert [(r["dataset"], r["n_seeds"]) for r in rows] == [("Caltech101", "1"), ("DescribableTextures", "1")]


def test_the_record_holds_the_few_shot_sample(base_args, tmp_path):
    assert train.main(base_args + ["--epochs", "1"]) == 0
    record = read_result(base_args)
    sample = fewshot.few_shot(datasets.load_dataset("caltech101", base_args[1]), 2, 1)
    assert record["sample"] == json.loads(json.dumps(sample.record()))
    assert record["settings"]["sample"] == sample.fingerprint
    assert record["settings"]["split"]["source"] == "coop"


def test_a_class_with_fewer_images_than_shots_is_named_and_recorded(base_args, capsys):
    assert train.main(base_args[:-1] + ["8", "--epochs", "1"]) == 0
    assert "fewer training images" in capsys.readouterr().out
    assert read_result(base_args, shots=8)["short_classes"] == {name: 6 for name in CLASSES}


# --- the same seed, the same run ----------------------------------------------------------

def test_the_number_of_workers_does_not_change_the_run(base_args, tmp_path):
    losses = []
    for workers in ("0", "2"):
        out = str(tmp_path / f"w{workers}")
        assert train.main(base_args + ["--workers", workers, "--output-dir", out]) == 0
        losses.append([h["loss"] for h in json.loads(open(f"{out}/caltech101/shots_2/seed_1/result.json").read())
                       ["history"]])
    assert losses[0] == losses[1]


# --- checkpoints are data, never code ------------------------------------------------------

class MakesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this object would create the file
        return (open, (self.path, "w"))


@pytest.mark.parametrize("how", ["eval-only", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(base_args, tmp_path, capsys, how):
    marker = tmp_path / "pwned"
    evil = run_dir(tmp_path) / "checkpoint.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"injectors": {}, "meta": MakesAFile(str(marker))}, evil)
    call = (for_eval_only(base_args + ["--eval-only", "--checkpoint", str(evil)]) if how == "eval-only"
            else base_args + ["--resume"])
    assert train.main(call) == 2
    err = capsys.readouterr().err
    assert "not a PiNI checkpoint, or not a safe one" in err and str(evil) in err and "Traceback" not in err
    assert not marker.exists()
    # the unsafe path would indeed have run it: the test could fail
    with open(evil, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_a_broken_checkpoint_gives_one_line(base_args, tmp_path, capsys, content):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(content)
    assert train.main(for_eval_only(base_args + ["--eval-only", "--checkpoint", str(broken)])) == 2
    err = capsys.readouterr().err
    assert "not a PiNI checkpoint" in err and "Traceback" not in err


def test_non_finite_injectors_are_never_saved(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(runs.UsageError, match="non-finite"):
        runs.save_checkpoint(path, {"injectors": {"mu": torch.tensor([1.0, float("nan")])}, "meta": {}})
    assert not path.exists() and os.listdir(tmp_path) == []
    settings = {"dataset": "D", "classnames": ["a", "b"], "model": "m", "pretrained": "none", "shots": 1, "seed": 1,
                "epochs": 1}
    runs.save_checkpoint(path, {"injectors": {"mu": torch.ones(2)}, "meta": {"settings": settings}, "history": [],
                                "epoch": 0})
    assert runs.load_checkpoint(path)["meta"] == {"settings": settings}


def test_checkpoints_hold_only_plain_values(base_args, tmp_path):
    assert train.main(base_args + ["--epochs", "1"]) == 0
    state = torch.load(run_dir(tmp_path) / "checkpoint.pt", weights_only=True)  # raises on any custom class
    assert state["meta"]["settings"] == {k: v for k, v in read_result(base_args)["settings"].items()
                                         if k not in ("inference", "inference_samples")}


# --- every flag is checked before anything runs ---------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--reduction", "0"], "--reduction: must be a positive integer"),
    (["--reduction", "-2"], "--reduction: must be a positive integer"),
    (["--kl-weight", "-1"], "--kl-weight: must be a finite number ≥ 0"),
    (["--warmup-epochs", "5"], "--warmup-epochs 5 is more than --epochs 2"),
    (["--n-ctx", "-3"], "--n-ctx: must be an integer ≥ 0"),
    (["--pixel-level", "-1"], "--pixel-level: must be a finite number ≥ 0"),
    (["--prior-std", "0"], "--prior-std: must be a finite number > 0"),
    (["--lr", "nan"], "--lr: must be a finite number > 0"),
    (["--momentum", "1"], "--momentum must be below 1"),
    (["--workers", "-1"], "--workers: must be an integer ≥ 0"),
    (["--ce-weight", "0"], "nothing would be trained"),
])
def test_bad_flags_are_refused_in_one_line(base_args, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(base_args + flags)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_reduction_larger_than_the_feature_gives_one_line(base_args, capsys):
    assert train.main(base_args + ["--reduction", "1000"]) == 2
    err = capsys.readouterr().err
    assert "reduction 1000 leaves a hidden size of 0" in err and "Traceback" not in err


def test_all_missing_datasets_are_named_at_once(base_args, capsys):
    assert train.main(base_args[:-4] + ["--dataset", "oxford_pets", "food101", "caltech101"]) == 2
    err = capsys.readouterr().err
    assert "OxfordPets" in err and "Food101" in err


def test_a_mistyped_dataset_gets_a_suggestion(base_args, capsys):
    assert train.main(base_args[:-4] + ["--dataset", "caltech10"]) == 2
    assert "did you mean 'caltech101'" in capsys.readouterr().err


def test_a_broken_test_image_is_found_before_training(base_args, data_root, tmp_path, capsys):
    split = datasets.load_dataset("caltech101", data_root)
    touch_image(Path(split.test[0].path), b"\xff\xd8 not really a jpeg")
    assert train.main(base_args) == 2
    err = capsys.readouterr().err
    assert split.test[0].path in err and "Traceback" not in err
    assert not (run_dir(tmp_path) / "checkpoint.pt").exists()  # no epoch ran


def test_a_dataloader_workers_error_is_unwrapped():
    from torch._utils import ExceptionWrapper
    try:
        raise datasets.DatasetError("cannot read image /data/x.jpg: truncated")
    except datasets.DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(datasets.DatasetError) as error:
        wrapped.reraise()
    assert str(error.value).startswith("Caught DatasetError")
    assert train.one_line(error.value) == "cannot read image /data/x.jpg: truncated"


def test_a_generated_split_is_announced_and_recorded(base_args, data_root, tmp_path, capsys):
    (data_root / "caltech-101" / "split_zhou_Caltech101.json").unlink()  # images only: PiNI splits them
    assert train.main(base_args + ["--epochs", "1"]) == 0
    assert "not CoOp's split file" in capsys.readouterr().out
    assert read_result(base_args)["settings"]["split"]["source"] == "generated"
    assert (data_root / "caltech-101" / "split_pini_generated.json").is_file()
    assert not (data_root / "caltech-101" / "split_zhou_Caltech101.json").exists()


def test_zero_shot_prints_the_published_number_and_warns_on_a_gap(base_args, monkeypatch, capsys, tmp_path):
    zero_shot = base_args[:-2] + ["--zero-shot"]
    assert train.main(zero_shot) == 0
    assert "no published zero-shot number" in capsys.readouterr().out
    model = base_args[base_args.index("--model") + 1]
    monkeypatch.setitem(train.published.ZERO_SHOT, (train.published.model_key(model), "none", "Caltech101"),
                        (101.0, "a test table"))  # no measurement can reach it: a gap of more than 1 point
    assert train.main(zero_shot + ["--output-dir", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "warning: published: 101.00%" in out and "a test table" in out
    record = json.loads((tmp_path / "again/caltech101/zero_shot/result.json").read_text())
    assert record["published_accuracy"] == 101.0 and record["published_source"] == "a test table"


# --- found by a newcomer's review ------------------------------------------------------------

def test_eval_only_uses_the_checkpoints_clip(base_args, config_dir, tmp_path, capsys):
    resnet = str(config_dir / "tiny-resnet.json")
    args = [resnet if a.endswith("tiny-vit.json") else a for a in base_args]
    assert train.main(args + ["--epochs", "1"]) == 0
    trained = read_result(args)["accuracy"]
    # the command line names the ViT: the checkpoint's ResNet must be used all the same
    checkpoint = str(run_dir(tmp_path) / "checkpoint.pt")
    assert train.main(for_eval_only(base_args[:-4] + ["--eval-only", "--checkpoint", checkpoint,
                                                      "--output-dir", str(tmp_path / "e")])) == 0
    assert "evaluating with the checkpoint's CLIP" in capsys.readouterr().out
    evaluated = json.loads((tmp_path / "e/caltech101/shots_2/seed_1/eval.json").read_text())
    assert evaluated["accuracy"] == trained and evaluated["settings"]["model"] == resnet


def test_the_patch_injector_on_a_resnet_is_an_error_outside_the_ablation(base_args, config_dir, capsys):
    args = [str(config_dir / "tiny-resnet.json") if a.endswith("tiny-vit.json") else a for a in base_args]
    assert train.main(args + ["--image-noise", "patch"]) == 2
    assert "needs a ViT image tower" in capsys.readouterr().err


def test_evaluations_are_not_rows_of_the_summary(base_args, data_root, tmp_path):
    sketch = data_root / "imagenet-sketch"
    for i, name in enumerate(CLASSES):
        touch_image(sketch / "images" / f"n0{i}" / "0.jpg")
    (sketch / "classnames.txt").write_text("".join(f"n0{i} {name}\n" for i, name in enumerate(CLASSES)))
    assert train.main(base_args + ["--epochs", "1"]) == 0
    assert train.main(for_eval_only(base_args[:-4] + ["--dataset", "imagenet_sketch", "--eval-only", "--checkpoint",
                                        str(run_dir(tmp_path) / "checkpoint.pt")])) == 0
    rows = list(csv.DictReader(open(tmp_path / "runs/summary.csv")))
    assert [r["dataset"] for r in rows] == ["Caltech101"]
    assert "average (1 dataset)" in (tmp_path / "runs/summary.md").read_text()


def test_transfer_keeps_the_checkpoints_template(base_args, tmp_path):
    assert train.main(base_args + ["--epochs", "1"]) == 0
    assert train.main(for_eval_only(base_args[:-4] + ["--dataset", "dtd", "--eval-only", "--transfer", "--checkpoint",
                                        str(run_dir(tmp_path) / "checkpoint.pt")])) == 0
    evaluated = json.loads((tmp_path / "runs/dtd/shots_2/seed_1/eval.json").read_text())
    assert evaluated["settings"]["template"] == "a photo of a"  # DTD's own is "texture": another token count


def test_your_own_folder_never_shares_a_benchmarks_output_folder(base_args, tmp_path):
    own = tmp_path / "mine" / "dtd"
    for name in ("banded", "dotted"):
        for i in range(5):
            touch_image(own / name / f"{i}.jpg")
    assert train.main(base_args[:-4] + ["--dataset", str(own), "--shots", "1", "--epochs", "1"]) == 0
    assert (tmp_path / "runs/own_dtd/shots_1/seed_1/result.json").is_file()
    assert not (tmp_path / "runs/dtd").exists()


@pytest.mark.parametrize("flags, message", [
    (["--ablation", "--image-noise", "mlp"], "--ablation sets --text-noise"),
    (["--checkpoint", "x.pt"], "--checkpoint and --transfer belong to --eval-only"),
    (["--zero-shot", "--ablation"], "drop --zero-shot"),
    (["--text-noise", "none", "--image-noise", "none"], "leave nothing to train"),
    (["--seeds", "-1"], "--seeds/--seed: must be an integer ≥ 0"),
    (["--force", "--resume"], "--force starts runs again and --resume continues them: choose one"),
    (["--eval-only", "--checkpoint", "x.pt", "--ablation"],
     "trains nothing: drop --shots --epochs --batch-size --ablation"),
    (["--summarize"], "--summarize only reads --output-dir: drop --batch-size --data-root --dataset"),
])
def test_flags_that_make_no_sense_together_are_refused(base_args, capsys, flags, message):
    with pytest.raises(SystemExit):
        train.parse_args(base_args + flags)
    assert message in capsys.readouterr().err


def test_a_device_torch_knows_but_pini_does_not_use_is_refused(base_args, capsys):
    assert train.main(base_args + ["--device", "meta"]) == 2
    err = capsys.readouterr().err
    assert "--device 'meta': use auto, cpu, cuda or cuda:N" in err and "Traceback" not in err


def test_a_stray_result_file_gives_one_line(base_args, tmp_path, capsys):
    stray = tmp_path / "runs/elsewhere/result.json"
    stray.parent.mkdir(parents=True)
    stray.write_text(json.dumps({"accuracy": 50.0}))
    assert train.main(base_args + ["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{stray} is not a PiNI result file" in err and "Traceback" not in err


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from experiments import files

    path = tmp_path / "result.json"
    files.atomic_write_text(path, "old")

    def half_then_fail(tmp):
        tmp.write_text("half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=f"cannot write {path}: no space left on the device"):
        files.atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    files.atomic_write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["result.json"]



# --- nothing lost, nothing stuck, nothing trusted that was not checked ------------------------

def test_force_replaces_a_finished_run_only_when_the_new_one_finishes(base_args, tmp_path, monkeypatch, capsys):
    assert train.main(base_args) == 0
    folder = run_dir(tmp_path)
    before = {name: (folder / name).read_bytes() for name in ("result.json", "checkpoint.pt")}
    original = train.save_checkpoint

    def interrupt(path, *args):
        original(path, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", interrupt)
    capsys.readouterr()
    assert train.main(base_args + ["--force", "--lr", "0.01"]) == 130  # cut after the new run's first epoch
    out = capsys.readouterr().out
    assert f"replacing the finished run in {folder} (--force)" in out and "unfinished" not in out
    assert {name: (folder / name).read_bytes() for name in before} == before  # the finished run is whole
    monkeypatch.undo()
    assert train.main(base_args) == 0 and "already finished" in capsys.readouterr().out
    assert train.main(base_args + ["--force", "--lr", "0.01"]) == 0
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["meta"]["settings"]["lr"] == 0.01 and len(state["history"]) == 2
    assert json.loads((folder / "result.json").read_text())["settings"]["lr"] == 0.01
    assert not (folder / train.NEXT_CHECKPOINT).exists()


def enospc_on(monkeypatch, name):
    """Make the write of the file called `name` fail as a full disk does (torch.save: its own error)."""
    import errno

    import matplotlib.figure

    def full(path):
        if Path(path).name.startswith(f".{name}."):
            if name.endswith(".pt"):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                                   "writing file data/0: file write failed")
            raise OSError(errno.ENOSPC, "No space left on device")

    save, write_text, savefig = torch.save, Path.write_text, matplotlib.figure.Figure.savefig
    monkeypatch.setattr(runs.torch, "save", lambda obj, f, *a, **k: full(f) or save(obj, f, *a, **k))
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full(self) or write_text(self, *a, **k))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, f, *a, **k: full(f) or savefig(self, f, *a, **k))


@pytest.mark.parametrize("name", ["checkpoint.pt", "result.json", "noise.png", "summary.md"])
def test_a_full_disk_is_one_line_naming_the_file_and_earlier_results_stay(base_args, tmp_path, monkeypatch, capsys,
                                                                          name):
    assert train.main(base_args + ["--epochs", "1"]) == 0
    earlier = (run_dir(tmp_path) / "result.json").read_bytes()
    enospc_on(monkeypatch, name)
    assert train.main(base_args + ["--epochs", "1", "--seeds", "1", "2"]) == 2
    err = capsys.readouterr().err
    target = tmp_path / "runs" / name if name == "summary.md" else run_dir(tmp_path, seed=2) / name
    assert f"error: cannot write {target}: no space left on the device (" in err and " free there)" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"error: cannot write {target}")
    assert (run_dir(tmp_path) / "result.json").read_bytes() == earlier
    assert not [p for p in (tmp_path / "runs").rglob("*.tmp")]
    monkeypatch.undo()
    assert train.main(base_args + ["--epochs", "1", "--seeds", "1", "2"]) == 0
    if name == "noise.png":  # the finished run's missing plot is drawn from its checkpoint
        assert "drew the missing" in capsys.readouterr().out
    assert (run_dir(tmp_path, seed=2) / "noise.png").stat().st_size > 0


def test_files_follow_the_umask(base_args, tmp_path):
    previous = os.umask(0o022)
    try:
        assert train.main(base_args + ["--epochs", "1"]) == 0
    finally:
        os.umask(previous)
    folder = run_dir(tmp_path)
    written = [folder / "result.json", folder / "checkpoint.pt", folder / "noise.png", tmp_path / "runs/summary.md",
               *(tmp_path / "data/caltech-101/split_fewshot").iterdir()]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}


def test_eval_only_keeps_another_evaluation_and_never_draws_a_runs_noise_png(base_args, tmp_path, capsys):
    assert train.main(base_args + ["--epochs", "1"]) == 0
    folder = run_dir(tmp_path)
    plot = (folder / "noise.png").read_bytes()
    call = for_eval_only(base_args[:-4] + ["--eval-only", "--checkpoint", str(folder / "checkpoint.pt")])
    assert train.main(call) == 0
    first = (folder / "eval.json").read_text()
    assert train.main(call + ["--inference", "average"]) == 0
    assert "keeping" in capsys.readouterr().out and (folder / "eval.json").read_text() == first
    [other] = folder.glob("eval-average-*.json")
    assert json.loads(other.read_text())["settings"]["inference"] == "average"
    assert (folder / "noise.png").read_bytes() == plot  # the run's own plot
    assert (folder / "eval.noise.png").is_file() and (folder / f"{other.stem}.noise.png").is_file()
    found = {r["record_path"] for r in runs.find_records(tmp_path / "runs")}
    assert str(other.relative_to(tmp_path / "runs")) in found


def test_summarize_with_no_results_writes_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "summary.md").write_text("someone's table")
    assert train.main(["--output-dir", str(out), "--summarize"]) == 0
    assert "no results in" in capsys.readouterr().out and (out / "summary.md").read_text() == "someone's table"
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]


def test_a_folder_named_by_a_checkpoint_is_never_read_or_written(base_args, tmp_path, capsys):
    own = tmp_path / "mine" / "dtd"
    for name in ("banded", "dotted"):
        for i in range(5):
            touch_image(own / name / f"{i}.jpg")
    assert train.main(base_args[:-4] + ["--dataset", str(own), "--shots", "1", "--epochs", "1"]) == 0
    for cache in [own / "split_pini.json", *own.glob("split_fewshot/*")]:
        cache.unlink()
    checkpoint = tmp_path / "runs/own_dtd/shots_1/seed_1/checkpoint.pt"
    assert train.main(for_eval_only(base_args[:-4] + ["--eval-only", "--checkpoint", str(checkpoint)])) == 2
    err = capsys.readouterr().err
    assert "trained on a folder of its own" in err and "--dataset" in err
    assert not (own / "split_pini.json").exists()  # nothing written into it
    assert train.main(for_eval_only(base_args[:-4] + ["--dataset", str(own), "--eval-only", "--checkpoint",
                                                      str(checkpoint)])) == 0  # named: used


def test_a_file_where_a_run_folder_should_go_is_one_line(base_args, tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs/caltech101").write_text("")
    assert train.main(base_args + ["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'runs/caltech101'}" in err and "a file stands where" in err
    assert "Traceback" not in err


def test_a_nul_byte_in_a_split_path_names_the_split_file(base_args, data_root, capsys):
    path = data_root / "caltech-101/split_zhou_Caltech101.json"
    raw = json.loads(path.read_text())
    raw["train"][0][0] = "face/a\x00b.jpg"
    path.write_text(json.dumps(raw))
    assert train.main(base_args) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a split file: train[0] has a NUL byte in its path" in err


def test_an_orphan_temporary_file_is_removed_at_the_next_write(tmp_path):
    from experiments import files

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".result.json.{files.HOST}.{dead.pid}.0123abcd.tmp"  # a kill during a write
    orphan.write_text("half")
    live = tmp_path / f".result.json.{files.HOST}.{os.getpid()}.4567abcd.tmp"  # another writer, still at work
    live.write_text("half")
    files.atomic_write_text(tmp_path / "result.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["result.json", live.name])
