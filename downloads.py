"""Datasets that download themselves, into exactly the CoOp layouts that datasets.py reads.

    python downloads.py caltech101 eurosat [--data-root R] [--yes] [--mirror URL]
    python downloads.py all                      # the 11 benchmark datasets

Everything a download brings in is treated as untrusted input:
  - archives are unpacked by `safe_extract`, which refuses absolute paths, `..`, links that
    point out of the target and device files, and writes only into a temporary folder under
    the data root that is renamed into place when (and only when) the whole archive is in;
  - only https:// sources are contacted, unless the user names a mirror (--mirror or
    $PINI_DATA_MIRROR), which then serves every file as <mirror>/<filename>;
  - a known checksum is verified before anything is unpacked;
  - split files are parsed as JSON and checked against CoOp's schema, never evaluated.

This module knows no model.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath


class DownloadError(Exception):
    """A download or an archive that cannot be used, with a message that says what to do."""


# -----------------------------------------------------------------------------------------
# Safe extraction
# -----------------------------------------------------------------------------------------

def _check_member_name(name: str, archive: Path):
    """Refuse a member name that would land outside the target: absolute, drive-letter or `..`.

    Checked on the raw name (both slash kinds), before the tar/zip modules get a chance to
    quietly rewrite it: an archive that tries this is not one we want any part of.
    """
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"{archive.name}: refused, member {name!r} has an absolute path")
    if ".." in parts:
        raise DownloadError(f"{archive.name}: refused, member {name!r} climbs out of the target with '..'")


def _inside(target: str) -> bool:
    """Whether a path made relative to the extraction folder (and normalised) stays inside it."""
    return not (target == ".." or target.startswith("../") or target.startswith("/"))


def _check_tar_member(member: tarfile.TarInfo, archive: Path, links: set):
    """Our own check of one tar member; tarfile's `data` filter then checks again as it writes.

    `links` holds the symlinks seen so far: a member stored *through* one of them (a/evil
    when a -> /etc) is refused, since writing it would follow the link out.
    """
    _check_member_name(member.name, archive)
    name = PurePosixPath(member.name.replace("\\", "/"))
    if any(str(parent) in links for parent in name.parents):
        raise DownloadError(f"{archive.name}: refused, member {member.name!r} is stored through a symlink")
    if member.isdev() or member.isfifo():
        raise DownloadError(f"{archive.name}: refused, member {member.name!r} is a device or pipe")
    if member.issym() or member.islnk():
        link = member.linkname.replace("\\", "/")
        if link.startswith("/") or (len(link) > 1 and link[1] == ":"):
            raise DownloadError(f"{archive.name}: refused, link {member.name!r} points to the absolute "
                                f"path {member.linkname!r}")
        # symlinks are relative to their own folder, hard links to the archive's root
        base = name.parent if member.issym() else PurePosixPath(".")
        if not _inside(os.path.normpath(str(base / link))):
            raise DownloadError(f"{archive.name}: refused, link {member.name!r} points outside the target "
                                f"({member.linkname!r})")
        if member.issym():
            links.add(str(name))


def _extract_tar(archive: Path, folder: Path):
    links: set = set()
    with tarfile.open(archive) as tar:  # "r:*": plain, gzip, bz2 or xz, detected from the content
        for member in tar:  # one pass, member by member: a 40 GB .tar.gz is read once
            _check_tar_member(member, archive, links)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: the stdlib's own check too
                try:
                    tar.extract(member, folder, filter="data")
                except tarfile.FilterError as error:
                    raise DownloadError(f"{archive.name}: refused by tarfile's data filter: {error}") from None
            else:  # the older tarfile has no filter: our check above is the whole check
                member.mode &= 0o755  # no set-uid/set-gid/sticky bits, no world-writable files
                tar.extract(member, folder)


def _extract_zip(archive: Path, folder: Path):
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():  # every name is checked before the first byte is written
            _check_member_name(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise DownloadError(f"{archive.name}: refused, member {info.filename!r} is a link or device")
        zf.extractall(folder)


def archive_kind(path: Path) -> str:
    """'tar', 'zip' or '' (not an archive), from the content rather than the file name."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    return ""


def safe_extract(archive, target_dir) -> Path:
    """Unpack a tar (.tar, .tar.gz, .tgz, ...) or zip archive so that its content becomes `target_dir`.

    `target_dir` must not exist yet. The archive is unpacked into a temporary folder next to it
    (so under the data root, on the same file system) and renamed to `target_dir` only once
    every member is in: an interrupt or a refused member leaves no half-extracted folder, and the
    temporary one is removed. Refused: absolute paths, `..`, links pointing outside the target,
    device files and pipes (issue 17). Returns `target_dir`.
    """
    archive, target = Path(archive), Path(target_dir)
    if target.exists():
        raise DownloadError(f"cannot extract {archive.name}: {target} already exists; move it away or delete it")
    kind = archive_kind(archive)
    if not kind:
        raise DownloadError(f"{archive} is not a tar or zip archive (an HTML error page saved by mistake?); "
                            "delete it and download again")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        (_extract_tar if kind == "tar" else _extract_zip)(archive, temporary)
        os.replace(temporary, target)
    except BaseException as error:  # also KeyboardInterrupt: never leave half a dataset behind
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, (tarfile.TarError, zipfile.BadZipFile, EOFError)):
            raise DownloadError(f"{archive} is damaged ({error}); delete it and download again") from None
        raise
    return target
