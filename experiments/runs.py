"""What a run leaves behind, and how it is recognised: settings, result records, checkpoints.

A run is its settings. Every result record (`result.json`, `eval.json`) and every checkpoint
stores the full resolved settings of the run that made it — dataset, class names, split and
few-shot sample fingerprints, model, injectors, objective, schedule — and a finished run is
reused only when its stored settings equal the ones asked for. Anything else is refused with
the differing settings named, so an old number is never reported as a new one.

Checkpoints hold only tensors and plain Python values (dicts, lists, str, int, float, bool,
None) and are read with `torch.load(..., weights_only=True)`: a checkpoint someone sends you
cannot run code on your machine. Every file is written atomically (a temporary file, then a
rename), so an interrupt never leaves half a file.

This module knows no model and no data layout.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import torch

from experiments.files import WriteFailed, atomic_write, atomic_write_text, file_mode, remove_orphans, temporary_path

RESULT, EVAL_RESULT, CHECKPOINT = "result.json", "eval.json", "checkpoint.pt"


class UsageError(Exception):
    """A problem with the command line, the data or a run's files, reported as one line that says what to do."""


def plain(value):
    """`value` as plain JSON types (tuples become lists, paths strings): what a record and a
    checkpoint may hold, and what two settings are compared as."""
    return json.loads(json.dumps(value, default=str))


def differences(stored: dict, wanted: dict) -> list:
    """Human-readable differences between two settings dicts, e.g. ["lr: 0.001 → 0.01"]."""
    stored, wanted = plain(stored or {}), plain(wanted)
    out = []
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            before, after = (_short(stored.get(key, "(unset)")), _short(wanted.get(key, "(unset)")))
            out.append(f"{key}: {before} → {after}")
    return out


def listed(changes: list, most: int = 4) -> str:
    """'a → b; c → d (and 3 more)'."""
    more = f" (and {len(changes) - most} more)" if len(changes) > most else ""
    return "; ".join(changes[:most]) + more


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def write_record(path: Path, record: dict):
    atomic_write_text(path, json.dumps(plain(record), indent=1))


def read_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"{path} is not a readable result file ({error}); delete it or rerun with --force") from None
    fields = {"dataset": str, "kind": str, "shots": int, "seed": int, "accuracy": (int, float)}
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t) for k, t in fields.items()):
        raise UsageError(f"{path} is not a PiNI result file (it needs {', '.join(fields)}): move it out of the "
                         "output folder")
    return record


def find_records(out: Path) -> list:
    """Every result and evaluation record under the output folder, in a stable order."""
    paths = [path for pattern in (RESULT, EVAL_RESULT, "eval-*.json") for path in sorted(Path(out).rglob(pattern))]
    return [dict(read_record(path), record_path=str(path.relative_to(out))) for path in paths]


# -----------------------------------------------------------------------------------------
# Checkpoints
# -----------------------------------------------------------------------------------------

def save_checkpoint(path: Path, state: dict):
    """Write a checkpoint of tensors and plain values, atomically; never one holding NaN or ∞."""
    bad = [name for name, tensor in state["injectors"].items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise UsageError(f"the injectors became non-finite ({', '.join(bad[:3])}); nothing was saved. "
                       "Try a smaller --lr, or --precision fp32")
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint safely (weights_only: tensors and plain values, no code), and check
    that it is one of ours: {"injectors": {name: tensor}, "meta": {"settings": {...}}, ...}."""
    refused = f"{path}: not a PiNI checkpoint, or not a safe one"
    if not Path(path).is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError,
            ImportError, KeyError, IndexError, OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{refused} ({type(error).__name__}); only checkpoints written by train.py load") from None
    injectors = state.get("injectors") if isinstance(state, dict) else None
    meta = state.get("meta") if isinstance(state, dict) else None
    settings = meta.get("settings") if isinstance(meta, dict) else None
    needed = ("dataset", "classnames", "model", "pretrained", "shots", "seed", "epochs")
    if not (isinstance(injectors, dict) and all(isinstance(v, torch.Tensor) for v in injectors.values())
            and isinstance(settings, dict) and all(k in settings for k in needed)
            and isinstance(state.get("history"), list) and isinstance(state.get("epoch"), int)):
        raise UsageError(f"{refused} (it lacks the injectors, the history or the run settings)")
    return state


# -----------------------------------------------------------------------------------------
# Locks: many processes, on many machines, sharing one output folder
# -----------------------------------------------------------------------------------------

LOCK = ".lock"
HEARTBEAT = 60  # seconds between two heartbeats of a claimed run (a thread renews the lock's mtime)
STALE_AFTER = 10 * HEARTBEAT  # a lock of another machine whose heartbeat is older belongs to a dead process


def _lock_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _why_stale(holder: dict, path: Path, now: float, force: bool) -> Optional[str]:
    """None when the process that wrote this lock may still be running, else why it is not.
    On this machine its pid says so. For another machine, the heartbeat does: the lock's mtime,
    compared with `now` as the same filesystem's clock gives it (no clock skew between hosts);
    --force takes over any other machine's lock."""
    if not holder.get("host") or "pid" not in holder:
        return "it is empty or unreadable (a write that never finished)"
    who = f"{holder.get('host')}:{holder.get('pid')}"
    if holder["host"] == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return f"it was left by {who}, which is no longer running"
        except (PermissionError, ValueError, TypeError, OverflowError):
            return None  # exists but not ours, or unreadable: assume alive
        return None
    try:
        silent = now - path.stat().st_mtime
    except OSError:
        return f"it was left by {who}, and is gone"
    if silent > STALE_AFTER:
        return (f"it was left by {who}, whose last heartbeat is {silent / 60:.0f} minutes old (a live run "
                f"renews it every {HEARTBEAT} s)")
    if force:
        return f"it is held by {who}, on another machine: --force takes it over"
    return None


def _link_lock(path: Path, me: dict) -> Optional[float]:
    """Create the lock whole or not at all: its content goes to a temporary file, which is then
    hard-linked to the lock's name (fails if the lock exists). Returns None when claimed, else the
    filesystem's current time (the temporary file's mtime), for judging another lock's heartbeat."""
    tmp = temporary_path(path)
    remove_orphans(path)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode()))
        tmp.write_text(json.dumps(me))
        now = tmp.stat().st_mtime
    except OSError as error:  # a full disk: no lock at all, and a one-line message
        tmp.unlink(missing_ok=True)
        raise WriteFailed(path, error) from None
    try:
        try:
            os.link(tmp, path)
            return None
        except FileExistsError:
            return now
        except OSError:  # a filesystem without hard links: exclusive create, then the content
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
            except FileExistsError:
                return now
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            return None
    finally:
        tmp.unlink(missing_ok=True)


def acquire_lock(run_dir: Path, force: bool = False) -> Optional[str]:
    """Claim a run for this process: create run_dir/.lock (host, pid, start time) atomically and
    keep its heartbeat going. Returns None when claimed, else a line saying who holds it. A lock
    whose process is gone (see _why_stale) is taken over, with a message."""
    path = Path(run_dir) / LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteFailed(path.parent, error) from None
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "token": uuid.uuid4().hex}
    for _ in range(3):
        now = _link_lock(path, me)
        if now is None:
            _start_heartbeat(path, me)
            return None
        holder = _lock_holder(path)
        stale = _why_stale(holder, path, now, force)
        if not stale:
            return (f"{run_dir} is being trained by {holder.get('host')}:{holder.get('pid')} since "
                    f"{holder.get('started')}")
        if _remove_stale(path, holder):
            print(f"taking over {run_dir}: {stale}")
    return f"{run_dir}: could not claim its lock; another process is taking it over"


def _remove_stale(path: Path, holder: dict) -> bool:
    """Move a dead process's lock aside — only that one: if another process replaced it in the
    meantime, put theirs back."""
    tomb = path.with_name(f"{LOCK}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return False
    if _lock_holder(tomb) != holder:
        try:
            os.link(tomb, path)  # restore: fails if yet another process has locked meanwhile
        except FileExistsError:
            pass
        tomb.unlink(missing_ok=True)
        return False
    tomb.unlink(missing_ok=True)
    return True


_HEARTBEATS: dict = {}  # lock path -> (the lock's content, the event that stops its thread)


def _start_heartbeat(path: Path, me: dict):
    """Renew the lock's mtime every HEARTBEAT seconds while this process holds it — through long
    epochs, image decoding and test passes alike — so that only a dead process's lock goes stale."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT):
            if _lock_holder(path).get("token") != me["token"]:
                return  # taken over (this process was frozen past STALE_AFTER): not ours to renew
            try:
                os.utime(path)
            except OSError:
                pass

    _HEARTBEATS[str(path)] = (me, stop)
    threading.Thread(target=beat, name=f"heartbeat {path}", daemon=True).start()


def heartbeat(run_dir: Path):
    """Tell other machines this run is alive now (the thread also does, every HEARTBEAT seconds)."""
    try:
        os.utime(Path(run_dir) / LOCK)
    except OSError:
        pass


def release_lock(run_dir: Path):
    """Stop the heartbeat and remove the lock — only this process's own."""
    path = Path(run_dir) / LOCK
    me, stop = _HEARTBEATS.pop(str(path), (None, None))
    if stop:
        stop.set()
    if me is None or _lock_holder(path).get("token") == me["token"]:
        path.unlink(missing_ok=True)
