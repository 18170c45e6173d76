"""downloads.py: safe extraction of hostile archives, and the downloader end to end against a
local HTTP server on 127.0.0.1 (these tests never touch the internet)."""
import io
import tarfile
import zipfile

import pytest

import downloads
from downloads import DownloadError


# -----------------------------------------------------------------------------------------
# Safe extraction (issue 17): nothing lands outside the target, nothing half-extracted stays
# -----------------------------------------------------------------------------------------

def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_symlink(tar: tarfile.TarFile, name: str, target: str):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


@pytest.fixture
def places(tmp_path):
    """(data root, target folder inside it, a marker path outside the root that must never appear)."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    return root, root / "target", tmp_path / "outside" / "marker.txt"


def assert_refused(archive, target, marker, match):
    with pytest.raises(DownloadError, match=match):
        downloads.safe_extract(archive, target)
    assert not marker.exists()
    assert not target.exists()
    assert list(target.parent.iterdir()) == [archive]  # the temporary folder is gone too


def test_tar_with_dotdot_member_is_refused(places):
    root, target, marker = places
    archive = root / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_file(tar, "ok.txt")
        add_file(tar, "../../outside/marker.txt")  # relative to the temporary folder inside root
    assert_refused(archive, target, marker, "'..'")


def test_tar_with_absolute_member_is_refused(places):
    root, target, marker = places
    archive = root / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, str(marker))
    assert_refused(archive, target, marker, "absolute path")


@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_tar_with_symlink_out_of_target_is_refused(places, link):
    root, target, marker = places
    archive = root / "evil.tar"
    outside = str(marker.parent) if link == "absolute" else "../../outside"
    with tarfile.open(archive, "w") as tar:
        add_symlink(tar, "escape", outside)
        add_file(tar, "escape/marker.txt")  # written through the link, it would land at the marker
    assert_refused(archive, target, marker, "points")


def test_tar_with_device_is_refused(places):
    root, target, marker = places
    archive = root / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("null")
        info.type = tarfile.CHRTYPE
        tar.addfile(info)
    assert_refused(archive, target, marker, "device")


def test_zip_with_dotdot_member_is_refused(places):
    root, target, marker = places
    archive = root / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../../outside/marker.txt", "gotcha")
    assert_refused(archive, target, marker, "'..'")


def test_good_archives_extract_into_place(places):
    root, target, _ = places
    tgz, zipped = root / "good.tgz", root / "good.zip"
    with tarfile.open(tgz, "w:gz") as tar:
        add_file(tar, "top/a/1.jpg", b"one")
        add_symlink(tar, "top/b", "a/1.jpg")  # a link that stays inside is fine
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("2750/River/River_1.jpg", b"two")
    assert downloads.safe_extract(tgz, target) == target
    assert (target / "top" / "a" / "1.jpg").read_bytes() == b"one"
    assert (target / "top" / "b").read_bytes() == b"one"
    downloads.safe_extract(zipped, root / "zipped")
    assert (root / "zipped" / "2750" / "River" / "River_1.jpg").read_bytes() == b"two"
    with pytest.raises(DownloadError, match="already exists"):  # never merged into an existing folder
        downloads.safe_extract(tgz, target)
    assert sorted(p.name for p in root.iterdir()) == ["good.tgz", "good.zip", "target", "zipped"]


def test_not_an_archive_is_refused(places):
    root, target, _ = places
    page = root / "file.tar.gz"
    page.write_text("<html>quota exceeded</html>")
    with pytest.raises(DownloadError, match="not a tar or zip"):
        downloads.safe_extract(page, target)
