"""Files: written so that no reader ever sees half of one (parallel runs and shards share
folders), and sizes said for people.

Used by the data caches (datasets.py), the run records and checkpoints (runs.py), the reports
(report.py), the downloads and the memory checks (epochs.py); it knows nothing of any of them.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Optional


class WriteFailed(OSError):
    """A file that could not be written, said in one line: the file, why, and — when the disk
    is full — the free space left there. An OSError, so that callers that try another place on
    an OSError (the data caches) still do."""

    def __init__(self, path, error: BaseException):
        code = getattr(error, "errno", None) or (errno.ENOSPC if _disk_full(error) else errno.EIO)
        why = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1]
        if code in (errno.ENOTDIR, errno.EEXIST):
            why = "a file stands where one of its folders should be; move it away"
        if code in (errno.ENOSPC, errno.EDQUOT):
            why = f"no space left on the device ({human_size(free_space(Path(path).parent))} free there)"
        super().__init__(code, why, str(path))

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


def _disk_full(error: BaseException) -> bool:
    """ENOSPC as an OSError, or as torch.save reports it (a RuntimeError from its zip writer)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, RuntimeError) and "write failed" in str(error).lower()


def free_space(folder: Path) -> Optional[int]:
    """Bytes free on the filesystem of `folder` (its nearest existing parent); None when unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def file_mode() -> int:
    """The mode `open()` gives a new file under the current umask (0o644 under umask 022): the
    temporary files of atomic writes get it too, so collaborators read what a shared folder holds."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return 0o666 & ~mask


HOST = socket.gethostname()


def temporary_path(path: Path) -> Path:
    """A temporary name next to `path` that says who writes it (host and pid), so that one left by
    a killed process is recognised as an orphan and removed at the next write."""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_orphans(path: Path):
    """Delete the temporary files of `path` left by processes of this host that are gone (a kill
    during a write); another machine's are left alone, as are those of live processes."""
    prefix, suffix = f".{path.name}.{HOST}.", ".tmp"
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix) and e.name.endswith(suffix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):-len(suffix)].split(".")[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            (path.parent / name).unlink(missing_ok=True)
        except (ValueError, OverflowError, PermissionError, OSError):
            pass


def atomic_write(path: Path, write):
    """Call write(temporary path) in `path`'s folder, then rename it over `path` (atomic on one
    filesystem); on any failure the temporary file is removed and `path` is left as it was. The
    file gets the umask's mode; a failure to write is a WriteFailed naming the file."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteFailed) or _disk_full(error):
            raise WriteFailed(path, error) from None
        raise


def atomic_write_text(path: Path, text: str):
    atomic_write(path, lambda tmp: tmp.write_text(text))


def human_size(n: Optional[float]) -> str:
    """'791.9 MB', '1.5 KB', '512 B' (decimal units, as disks and downloads are sold)."""
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
