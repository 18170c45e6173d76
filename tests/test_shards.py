"""Many processes, one output folder: shards, locks, and tables rebuilt from the records alone."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments import jobs
from experiments import runs
import train
from conftest import write_json_split
from test_train import CLASSES, COLORS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def call(tmp_path, config_dir):
    """A call of 4 runs (shots 1 and 2 × seeds 1 and 2) of one epoch each."""
    root = tmp_path / "data"
    write_json_split(root / "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", CLASSES,
                     per_class=(4, 1, 2), colors=COLORS)
    return ["--data-root", str(root), "--model", str(config_dir / "tiny-vit.json"), "--pretrained", "none",
            "--output-dir", str(tmp_path / "runs"), "--workers", "0", "--batch-size", "4", "--epochs", "1",
            "--test-batch-size", "8", "--device", "cpu", "--dataset", "caltech101", "--shots", "1", "2",
            "--seeds", "1", "2"]


def in_parallel(*argvs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for argv in argvs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outputs
    return procs, outputs


def records(tmp_path):
    return {r["record_path"]: r for r in runs.find_records(tmp_path / "runs")}


RUNS = {f"caltech101/shots_{k}/seed_{s}/result.json" for k in (1, 2) for s in (1, 2)}


def test_two_shards_in_parallel_make_every_run_once(call, tmp_path):
    procs, outputs = in_parallel(call + ["--shard", "0/2"], call + ["--shard", "1/2"])
    found = records(tmp_path)
    assert set(found) == RUNS
    trained = [sum(line.startswith("epoch 1/1") for line in out.splitlines()) for out in outputs]
    assert sum(trained) == 4 and all(trained)  # nothing twice, nothing missing, both shards worked
    by_pid = {p.pid: {path for path, r in found.items() if r["pid"] == p.pid} for p in procs}
    assert by_pid[procs[0].pid] | by_pid[procs[1].pid] == RUNS and not by_pid[procs[0].pid] & by_pid[procs[1].pid]
    assert not list((tmp_path / "runs").rglob(runs.LOCK))  # every lock released


def test_two_processes_on_the_same_call_train_each_run_once(call, tmp_path):
    _, outputs = in_parallel(call, call)
    assert set(records(tmp_path)) == RUNS
    assert sum(line.startswith("epoch 1/1") for out in outputs for line in out.splitlines()) == 4


def test_shares_are_balanced_by_cost_and_the_same_everywhere():
    args = SimpleNamespace(epochs=1, image_noise="cross-attention")
    fake = [jobs.Job("train", SimpleNamespace(classnames=["c"] * n), shots=1, seed=i) for i, n in
            enumerate([8, 7, 6, 5, 4, 1])]
    shares = [jobs.shard(fake, i, 3, args) for i in range(3)]
    assert sorted(j.seed for share in shares for j in share) == list(range(6))  # a partition
    loads = [sum(len(j.split.classnames) for j in share) for share in shares]
    assert max(loads) - min(loads) <= 8 and loads == [9, 11, 11]  # longest first, to the least loaded
    assert [[j.seed for j in jobs.shard(fake, i, 3, args)] for i in range(3)] == [[j.seed for j in s] for s in shares]


def test_a_stale_lock_is_taken_over_and_a_live_one_respected(call, tmp_path, capsys):
    one = call[:call.index("--shots") + 1] + ["1", "--seeds", "1"]
    run_dir = tmp_path / "runs/caltech101/shots_1/seed_1"
    run_dir.mkdir(parents=True)
    lock = run_dir / runs.LOCK
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "now"}))
    assert train.main(one) == 0  # this very process holds it: alive
    assert "is being trained by" in capsys.readouterr().out and not (run_dir / "result.json").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "then"}))
    assert train.main(one) == 0
    assert "taking over" in capsys.readouterr().out
    assert (run_dir / "result.json").is_file() and not lock.exists()


def test_summarize_rebuilds_the_tables_without_a_model_or_data(call, tmp_path, monkeypatch):
    assert train.main(call) == 0
    out = tmp_path / "runs"
    written = {name: (out / name).read_bytes() for name in ("summary.md", "summary.csv")}
    for name in written:
        (out / name).unlink()
    monkeypatch.setattr(train.pini, "load_clip", lambda *a, **k: pytest.fail("--summarize loaded a model"))
    monkeypatch.setattr(train.datasets, "load_datasets", lambda *a, **k: pytest.fail("--summarize read data"))
    assert train.main(["--output-dir", str(out), "--summarize"]) == 0
    assert {name: (out / name).read_bytes() for name in written} == written
    assert (out / "accuracy_vs_shots.png").stat().st_size > 0


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "1", "a/b", "0/0"])
@pytest.mark.parametrize("joined", [True, False])
def test_a_bad_shard_is_refused(spec, joined, capsys):
    with pytest.raises(SystemExit):
        train.parse_args([f"--shard={spec}"] if joined else ["--shard", spec])
    assert "must be I/N with 0 ≤ I < N" in capsys.readouterr().err
