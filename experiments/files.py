"""Files: written so that no reader ever sees half of one (parallel runs and shards share
folders), and sizes said for people.

Used by the data caches (datasets.py), the run records and checkpoints (runs.py), the reports
(report.py), the downloads and the memory checks (epochs.py); it knows nothing of any of them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional


def atomic_write(path: Path, write):
    """Call write(temporary path) in `path`'s folder, then rename it over `path` (atomic on one
    filesystem); on any failure the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
