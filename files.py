"""Writing a file so that no reader ever sees half of it — parallel runs and shards share folders.

Used by the data caches (datasets.py, image_data.py), the run records and checkpoints (runs.py)
and the reports (report.py); it knows nothing of any of them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
