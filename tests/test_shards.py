"""Many processes, one output folder: shards, locks, and tables rebuilt from the records alone."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

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


def in_parallel(*argvs, allowed=(0,)):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for argv in argvs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode in allowed for p in procs), outputs
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
    procs, outputs = in_parallel(call, call, allowed=(0, 75))
    assert set(records(tmp_path)) == RUNS
    for proc, out in zip(procs, outputs):  # one that met the other's lock says so last, and exits 75
        assert (proc.returncode == 75) == out.strip().splitlines()[-1].startswith("not done: ")
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
    assert train.main(one) == 75  # this very process holds it: alive, and the call says it did not do it
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


# --- locks under faults: a run is never stranded -------------------------------------------

def one_run(call, epochs="1"):
    args = call[:call.index("--shots") + 1] + ["1", "--seeds", "1"]
    return [epochs if prev == "--epochs" else a for prev, a in zip([None] + args, args)]


def test_an_empty_lock_is_stale(call, tmp_path, capsys):
    run_dir = tmp_path / "runs/caltech101/shots_1/seed_1"
    run_dir.mkdir(parents=True)
    (run_dir / runs.LOCK).write_bytes(b"")  # what a full disk at lock creation used to leave
    assert train.main(one_run(call)) == 0
    out = capsys.readouterr().out
    assert "taking over" in out and "empty or unreadable" in out
    assert (run_dir / "result.json").is_file() and not (run_dir / runs.LOCK).exists()


def test_a_full_disk_at_lock_creation_leaves_no_lock(call, tmp_path, capsys, monkeypatch):
    import errno
    from experiments import files

    real = files.Path.write_text

    def full(self, *a, **k):
        if self.name.startswith(f".{runs.LOCK}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(files.Path, "write_text", full)
    assert train.main(one_run(call)) == 2
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs/caltech101/shots_1/seed_1"
    assert f"cannot write {run_dir / runs.LOCK}: no space left on the device (" in err
    assert "free there)" in err and "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == []  # no lock, whole or partial, and no temporary file
    monkeypatch.undo()
    assert train.main(one_run(call)) == 0 and (run_dir / "result.json").is_file()


def foreign_lock(run_dir, age_seconds):
    lock = run_dir / runs.LOCK
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"host": "another-host", "pid": 1, "started": "then"}))
    then = lock.stat().st_mtime - age_seconds
    os.utime(lock, (then, then))
    return lock


def test_another_machines_lock_is_kept_while_its_heartbeat_is_recent(call, tmp_path, capsys):
    run_dir = tmp_path / "runs/caltech101/shots_1/seed_1"
    lock = foreign_lock(run_dir, runs.STALE_AFTER - 60)
    assert train.main(one_run(call)) == 75  # not done: said in the exit status and the last line
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("not done: 1 of 1 runs are held by other live processes") and "another-host:1" in err[-1]
    assert not (run_dir / "result.json").exists() and lock.exists()
    foreign_lock(run_dir, runs.STALE_AFTER + 60)  # its heartbeat stopped: the machine died
    assert train.main(one_run(call)) == 0
    assert "whose last heartbeat is 11 minutes old" in capsys.readouterr().out
    assert (run_dir / "result.json").is_file() and not lock.exists()


def test_force_takes_over_any_lock_but_a_live_process_of_this_host(call, tmp_path, capsys):
    run_dir = tmp_path / "runs/caltech101/shots_1/seed_1"
    lock = run_dir / runs.LOCK
    run_dir.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "now"}))
    assert train.main(one_run(call) + ["--force"]) == 75  # this very process: alive, even for --force
    assert "is being trained by" in capsys.readouterr().out and lock.exists()
    foreign_lock(run_dir, 0)  # another machine's, with a fresh heartbeat
    assert train.main(one_run(call) + ["--force"]) == 0
    assert "on another machine: --force takes it over" in capsys.readouterr().out
    assert (run_dir / "result.json").is_file() and not lock.exists()


def test_the_heartbeat_renews_the_lock_until_it_is_released(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "HEARTBEAT", 0.05)
    assert runs.acquire_lock(tmp_path) is None
    lock = tmp_path / runs.LOCK
    os.utime(lock, (1, 1))
    deadline = time.time() + 10
    while lock.stat().st_mtime < 2 and time.time() < deadline:
        time.sleep(0.02)
    assert lock.stat().st_mtime > time.time() - 60  # renewed by the thread, not by an epoch
    assert json.loads(lock.read_text())["pid"] == os.getpid() and oct(lock.stat().st_mode & 0o777) != "0o600"
    runs.release_lock(tmp_path)
    assert not lock.exists()


def test_sigterm_saves_the_last_epoch_releases_the_lock_and_resume_continues_on_another_host(
        call, tmp_path, capsys, monkeypatch):
    """The SLURM recipe: a preempted task gets SIGTERM; its requeue, on another node, runs the same
    command with --resume and continues from the last finished epoch."""
    argv = one_run(call, epochs="20") + ["--resume"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-u", str(REPO / "train.py"), *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "epoch 2/20" in line:
            proc.send_signal(signal.SIGTERM)
            break
    output = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    assert "terminated (SIGTERM): the last finished epoch is saved and the run's lock released" in output
    run_dir = tmp_path / "runs/caltech101/shots_1/seed_1"
    assert not (run_dir / runs.LOCK).exists() and not (run_dir / "result.json").exists()
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] + 1
    assert 1 <= saved < 20  # epoch 2 may have been cut in its checkpoint's write
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(runs.socket, "gethostname", lambda: "another-node")
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert f"resuming {run_dir} after epoch {saved}" in out and f"epoch {saved + 1}/20" in out
    assert len(json.loads((run_dir / "result.json").read_text())["history"]) == 20


def test_a_dataset_folder_linking_out_of_the_data_root_is_followed_with_a_notice(call, tmp_path, capsys):
    root = Path(call[call.index("--data-root") + 1])
    elsewhere = tmp_path / "big_disk" / "caltech-101"
    elsewhere.parent.mkdir()
    (root / "caltech-101").rename(elsewhere)
    (root / "caltech-101").symlink_to(elsewhere)
    planned = jobs.plan(train.parse_args(call), None)
    assert len(planned) == 4  # followed
    out = capsys.readouterr().out
    assert f"note: {root / 'caltech-101'} links to {elsewhere}, outside the data root: followed" in out
