"""downloads.py: safe extraction of hostile archives, and the downloader end to end against a
local HTTP server on 127.0.0.1 (these tests never touch the internet)."""
import dataclasses
import hashlib
import io
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments import datasets
from experiments import downloads
import train
from conftest import JPEG
from experiments.downloads import DownloadError


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


# -----------------------------------------------------------------------------------------
# A mirror on 127.0.0.1 that serves generated archives in the real datasets' inner layouts
# -----------------------------------------------------------------------------------------

@pytest.fixture
def server():
    """An HTTP server on an ephemeral port: `files` maps names to bytes, `log` records every
    (method, name, Range header, bytes sent); `honour_range` can be switched off."""
    files, log, redirects = {}, [], {}

    class Handler(BaseHTTPRequestHandler):
        honour_range = True

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.respond(body=False)

        def do_GET(self):
            self.respond(body=True)

        def respond(self, body):
            name = self.path.lstrip("/")
            if name in redirects:
                log.append((self.command, name, None, 0))  # logged first: the client may be done before we are
                self.send_response(302)
                self.send_header("Location", redirects[name])
                self.end_headers()
                return
            if name not in files:
                self.send_error(404)
                return
            data, asked, start = files[name], self.headers.get("Range"), 0
            if asked and Handler.honour_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            log.append((self.command, name, asked, len(data) - start if body else 0))
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if body:
                self.wfile.write(data[start:])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", files=files, log=log, redirects=redirects,
                          handler=Handler)
    httpd.shutdown()
    httpd.server_close()


def zip_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict, mode="w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            add_file(tar, name, data)
    return buffer.getvalue()


def split_for(image_dir_names, per_class=(3, 2, 2)):
    """CoOp split rows and the image files they name: ({rel path: bytes}, split dict)."""
    images, split = {}, {"train": [], "val": [], "test": []}
    for label, (folder, name) in enumerate(image_dir_names):
        for part, n in zip(split, per_class):
            for i in range(n):
                rel = f"{folder}/{part}_{i}.jpg"
                images[rel] = JPEG
                split[part].append([rel, label, name])
    return images, split


CALTECH_CLASSES = [("Faces", "Faces"), ("airplanes", "airplanes"), ("accordion", "accordion")]


def caltech_files():
    """The official caltech-101.zip's layout: caltech-101/101_ObjectCategories.tar.gz (+ Annotations.tar)."""
    images, split = split_for(CALTECH_CLASSES)
    inner = tar_bytes({f"101_ObjectCategories/{rel}": data for rel, data in images.items()}
                      | {"101_ObjectCategories/BACKGROUND_Google/x.jpg": JPEG})
    archive = zip_bytes({"caltech-101/101_ObjectCategories.tar.gz": inner,
                         "caltech-101/Annotations.tar": tar_bytes({"Annotations/a.mat": b"m"}, "w")})
    return {"caltech-101.zip": archive, "split_zhou_Caltech101.json": json_bytes(split)}


def eurosat_files():
    images, split = split_for([("River", "River"), ("SeaLake", "SeaLake")])
    return {"EuroSAT.zip": zip_bytes({f"2750/{rel}": data for rel, data in images.items()}),
            "split_zhou_EuroSAT.json": json_bytes(split)}


def dtd_files():
    images, split = split_for([("banded", "banded"), ("dotted", "dotted")])
    archive = tar_bytes({f"dtd/images/{rel}": data for rel, data in images.items()}
                        | {"dtd/labels/labels_joint_anno.txt": b"banded/a.jpg banded\n"})
    return {"dtd-r1.0.1.tar.gz": archive, "split_zhou_DescribableTextures.json": json_bytes(split)}


def aircraft_files():
    """fgvc-aircraft-2013b.tar.gz: the official split lives in data/images_variant_*.txt (no CoOp file)."""
    data = "fgvc-aircraft-2013b/data"
    members = {f"{data}/images/{i:07d}.jpg": JPEG for i in range(6)}
    members[f"{data}/variants.txt"] = b"707-320\nA300B4\n"
    for part, ids in (("train", (0, 1)), ("val", (2, 3)), ("test", (4, 5))):
        members[f"{data}/images_variant_{part}.txt"] = "".join(
            f"{i:07d} {'707-320' if i % 2 == 0 else 'A300B4'}\n" for i in ids).encode()
    return {"fgvc-aircraft-2013b.tar.gz": tar_bytes(members)}


def json_bytes(obj) -> bytes:
    import json
    return json.dumps(obj).encode()


GENERATED = {"caltech101": caltech_files, "eurosat": eurosat_files, "dtd": dtd_files, "fgvc_aircraft": aircraft_files}


def pin_checksums(monkeypatch, alias, files):
    """Give the recipe the generated archives' MD5s, as the real recipe holds the real ones."""
    recipe = downloads.RECIPES[alias]
    parts = tuple(dataclasses.replace(part, source=dataclasses.replace(
        part.source, md5=hashlib.md5(files[part.source.filename]).hexdigest() if part.source.md5 or
        part.source.sha256 else "", sha256="")) for part in recipe.parts)
    monkeypatch.setitem(downloads.RECIPES, alias, dataclasses.replace(recipe, parts=parts))


@pytest.mark.parametrize("alias", sorted(GENERATED))
def test_download_gives_the_layout_datasets_reads(server, tmp_path, monkeypatch, capsys, alias):
    files = GENERATED[alias]()
    server.files.update(files)
    pin_checksums(monkeypatch, alias, files)
    monkeypatch.setenv(downloads.MIRROR_ENV, server.url)  # the CLI's mirror variable
    root = tmp_path / "data"
    assert downloads.main([alias, "--data-root", str(root), "--yes"]) == 0
    split = datasets.load_dataset(alias, root)  # the layout datasets.py reads, with the split file
    sizes = {"caltech101": (9, 6, 6), "eurosat": (6, 4, 4), "dtd": (6, 4, 4), "fgvc_aircraft": (2, 2, 2)}[alias]
    assert (len(split.train), len(split.val), len(split.test)) == sizes
    datasets.check_files(split.train + split.val + split.test)
    if alias == "caltech101":
        assert split.classnames == ["face", "airplane", "accordion"]  # CoOp's names from its split
    assert sorted(p.name for p in root.iterdir()) == [datasets.DATASETS[alias].folder]  # no archives, no temp
    assert not [p for p in root.rglob("*") if ".partial" in p.name or p.suffix in {".zip", ".gz", ".tar"}]
    out = capsys.readouterr().out
    assert "free" in out and "Total:" in out and downloads.RECIPES[alias].terms in out
    # idempotent: a second run finds everything in place and asks the server for nothing
    requests = len(server.log)
    assert downloads.download([alias], root, mirror=server.url) == [root / datasets.DATASETS[alias].folder]
    assert len(server.log) == requests


def test_checksum_mismatch_is_refused_before_extraction(server, tmp_path, monkeypatch, capsys):
    server.files.update(caltech_files())  # the real recipe: its MD5 is the real archive's, not this one's
    unpacked = []
    monkeypatch.setattr(downloads, "safe_extract", lambda *args: unpacked.append(args))
    root = tmp_path / "data"
    assert downloads.main(["caltech101", "--data-root", str(root), "--yes", "--mirror", server.url]) == 2
    err = capsys.readouterr().err.strip()
    assert "md5" in err and "3138e1922a9193bfa496528edbbc45d0" in err and "nothing was extracted" in err
    assert "\n" not in err and "Traceback" not in err
    assert unpacked == []
    assert not (root / "caltech-101").exists()
    assert not (root / ".downloads" / "caltech-101.zip").exists()  # the bad file is not kept for a "resume"


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes(server, tmp_path, monkeypatch, honour_range):
    files = caltech_files()
    server.files.update(files)
    server.handler.honour_range = honour_range
    pin_checksums(monkeypatch, "caltech101", files)
    root = tmp_path / "data"
    archive = files["caltech-101.zip"]
    cut = len(archive) // 3
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / "caltech-101.zip.part").write_bytes(archive[:cut])  # what an interrupt left
    downloads.download(["caltech101"], root, mirror=server.url)
    gets = [entry for entry in server.log if entry[0] == "GET" and entry[1] == "caltech-101.zip"]
    if honour_range:  # only the missing bytes travelled
        assert gets == [("GET", "caltech-101.zip", f"bytes={cut}-", len(archive) - cut)]
    else:  # a server without Range support sends it whole, and the file is still right
        assert gets == [("GET", "caltech-101.zip", f"bytes={cut}-", len(archive))]
    assert len(datasets.load_dataset("caltech101", root).test) == 6


def test_http_is_refused_without_a_mirror(server, tmp_path):
    server.files["f.bin"] = b"data"
    with pytest.raises(DownloadError, match="only https://"):
        downloads.http_download(f"{server.url}/f.bin", tmp_path / "f.bin")
    assert server.log == [] and not (tmp_path / "f.bin").exists()
    # with a mirror, a redirect may not lead off it (no https -> http downgrade, no other host)
    server.redirects["r.bin"] = f"http://localhost:{server.url.rsplit(':', 1)[1]}/f.bin"
    with pytest.raises(DownloadError, match="redirects"):
        downloads.http_download(f"{server.url}/r.bin", tmp_path / "r.bin", mirror=server.url)
    assert [entry[1] for entry in server.log] == ["r.bin"]
    assert downloads.http_download(f"{server.url}/f.bin", tmp_path / "f.bin", mirror=server.url).read_bytes() == b"data"


@pytest.mark.parametrize("bad", [{"train": "import os; os.system('x')", "val": [], "test": []},
                                 {"train": [["a/1.jpg", "0", "cat"]], "val": [], "test": []},
                                 {"train": [["../../etc/passwd", 0, "cat"]], "val": [], "test": []}])
def test_bad_split_file_is_refused_with_one_line(server, tmp_path, capsys, bad):
    server.files["split_zhou_StanfordCars.json"] = json_bytes(bad)
    root = tmp_path / "data"
    assert downloads.main(["stanford_cars", "--data-root", str(root), "--yes", "--mirror", server.url]) == 2
    err = capsys.readouterr().err.strip()
    assert "split_zhou_StanfordCars.json" in err and "\n" not in err
    assert not (root / "stanford_cars" / "split_zhou_StanfordCars.json").exists()


def test_imagenet_explains_its_manual_steps(tmp_path, monkeypatch):
    fetched = []

    def fake_drive(drive_id, path):  # stands in for gdown: the tests never touch the internet
        fetched.append(drive_id)
        path.write_text("".join(f"n{i:08d} class {i}\n" for i in range(1000)))
        return path

    monkeypatch.setattr(downloads, "drive_download", fake_drive)
    monkeypatch.delenv(downloads.MIRROR_ENV, raising=False)
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as error:
        downloads.download(["ImageNet"], root)
    message = str(error.value)
    assert "login" in message and "https://image-net.org" in message and "ILSVRC2012_img_train.tar" in message
    assert str(root / "imagenet" / "images") in message
    assert fetched == ["1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"]  # CoOp's classnames.txt did come automatically
    assert (root / "imagenet" / "classnames.txt").is_file()


def test_download_command(tmp_path):
    assert datasets.download_command("caltech101") == "python -m experiments.downloads caltech101"
    assert datasets.download_command("caltech101", datasets.default_data_root()) == "python -m experiments.downloads caltech101"
    command = datasets.download_command("eurosat", tmp_path / "my data")
    assert shlex.split(command) == ["python", "-m", "experiments.downloads", "eurosat", "--data-root", str(tmp_path / "my data")]


def test_the_download_command_runs_the_downloader(tmp_path):
    """The command the missing-data message prints starts the downloader (from the repository root)."""
    repo = Path(__file__).resolve().parents[1]
    command = shlex.split(datasets.download_command("no-such-set", tmp_path))
    done = subprocess.run([sys.executable, *command[1:]], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no-such-set" in done.stderr and "caltech101" in done.stderr, done.stderr


def test_unknown_name_lists_the_valid_ones(capsys):
    assert downloads.main(["caltech-101", "imagenet_z"]) == 2
    err = capsys.readouterr().err
    assert "imagenet_z" in err and "caltech101" in err and "eurosat" in err and "'all'" in err
    assert "Traceback" not in err
    assert downloads.resolve(["Caltech101", "caltech-101", "all"])[:2] == ["caltech101", "imagenet"]


def test_every_dataset_has_a_recipe():
    assert set(downloads.RECIPES) == set(datasets.DATASETS)
    for alias, recipe in downloads.RECIPES.items():
        for part in recipe.parts:
            source = part.source
            assert source.url.startswith("https://") or source.drive_id, alias
            assert source.origin, f"{alias}: say where {source.filename}'s address was read"
            if part.check is downloads.check_split:
                assert source.filename == datasets.DATASETS[alias].split_file


def test_a_drive_error_page_is_deleted_not_kept(server, tmp_path, capsys):
    """Drive answers quota problems with an HTML page: without a checksum to catch it, it must not stick."""
    server.files["UCF-101-midframes.zip"] = b"<html>Too many users have viewed or downloaded this file</html>"
    root = tmp_path / "data"
    assert downloads.main(["ucf101", "--data-root", str(root), "--yes", "--mirror", server.url]) == 2
    assert "not a tar or zip archive" in capsys.readouterr().err
    assert not (root / ".downloads" / "UCF-101-midframes.zip").exists() and not (root / "ucf101").exists()


def test_train_says_how_to_download_then_downloads_with_the_flag(server, tmp_path, monkeypatch, config_dir, capsys):
    files = caltech_files()
    server.files.update(files)
    pin_checksums(monkeypatch, "caltech101", files)
    monkeypatch.setenv(downloads.MIRROR_ENV, server.url)
    root = tmp_path / "data"
    args = ["--data-root", str(root), "--model", str(config_dir / "tiny-vit.json"), "--pretrained", "none",
            "--output-dir", str(tmp_path / "runs"), "--workers", "0", "--batch-size", "4", "--epochs", "1",
            "--test-batch-size", "6", "--device", "cpu", "--dataset", "caltech101", "--shots", "2"]
    assert train.main(args) == 2
    assert f"python -m experiments.downloads caltech101 --data-root {root}" in capsys.readouterr().err
    assert not server.log  # nothing fetched without --download
    assert train.main(args + ["--download"]) == 0
    assert (root / "caltech-101" / "split_zhou_Caltech101.json").is_file()
    assert (tmp_path / "runs/caltech101/shots_2/seed_1/result.json").is_file()


# --- SUN397: its official address is gone ------------------------------------------------------

def sun397_files():
    """SUN397.tar.gz's layout (SUN397/<letter>/<class>/*.jpg) and a CoOp split over it."""
    images, split = split_for([("a/abbey", "abbey"), ("b/beach", "beach")])
    return {"SUN397.tar.gz": tar_bytes({f"SUN397/{rel}": data for rel, data in images.items()}),
            "split_zhou_SUN397.json": json_bytes(split)}


@pytest.fixture
def dead_official_address(server, monkeypatch):
    """SUN397's recipe pointed at the local server, which answers 404 as the real address does."""
    recipe = downloads.RECIPES["sun397"]
    archive = dataclasses.replace(recipe.parts[0], source=dataclasses.replace(
        recipe.parts[0].source, url=f"{server.url}/projects/2010/SUN/SUN397.tar.gz"))
    monkeypatch.setitem(downloads.RECIPES, "sun397", dataclasses.replace(recipe, parts=(archive, *recipe.parts[1:])))
    real = downloads._allowed  # the official address is https; the stand-in on 127.0.0.1 is not
    monkeypatch.setattr(downloads, "_allowed", lambda url, mirror: url.startswith(server.url) or real(url, mirror))
    return server


def test_sun397_says_its_address_is_gone_and_how_to_get_it(dead_official_address, tmp_path, capsys):
    root = tmp_path / "data"
    assert downloads.main(["sun397", "--data-root", str(root), "--yes"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "SUN397's official address is gone" in err and "CoOp issue #90" in err
    assert f"{datasets.DOWNLOAD_COMMAND} sun397 --data-root {root} --mirror URL" in err
    assert str(root / ".downloads" / "SUN397.tar.gz") in err and "md5 8ca2778205c41d23104230ba66911c7a" in err
    assert datasets.DATASETS["sun397"].layout in err and "Traceback" not in err
    assert not (root / "sun397" / "SUN397").exists()


def test_sun397_comes_through_a_mirror(dead_official_address, tmp_path, monkeypatch):
    files = sun397_files()
    dead_official_address.files.update(files)
    pin_checksums(monkeypatch, "sun397", files)
    root = tmp_path / "data"
    assert downloads.main(["sun397", "--data-root", str(root), "--yes", "--mirror", dead_official_address.url]) == 0
    split = datasets.load_dataset("sun397", root)
    assert split.classnames == ["abbey", "beach"] and (len(split.train), len(split.val), len(split.test)) == (6, 4, 4)
    datasets.check_files(split.train + split.val + split.test)


def test_sun397_archive_put_in_place_by_hand_is_verified_and_unpacked(dead_official_address, tmp_path, monkeypatch):
    files = sun397_files()
    pin_checksums(monkeypatch, "sun397", files)
    root = tmp_path / "data"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / "SUN397.tar.gz").write_bytes(files["SUN397.tar.gz"])  # step 2 of the message
    (root / "sun397").mkdir()
    (root / "sun397" / "split_zhou_SUN397.json").write_bytes(files["split_zhou_SUN397.json"])
    assert downloads.main(["sun397", "--data-root", str(root), "--yes"]) == 0
    assert len(datasets.load_dataset("sun397", root).test) == 4
    assert not [entry for entry in dead_official_address.log if entry[0] == "GET"]  # nothing was fetched


# Each recipe's official address and checksum, against torchvision's own dataset class (0.29).
TORCHVISION = {"caltech101": "caltech", "oxford_pets": "oxford_iiit_pet", "flowers102": "flowers102",
               "food101": "food101", "fgvc_aircraft": "fgvc_aircraft", "sun397": "sun397", "dtd": "dtd",
               "eurosat": "eurosat"}


@pytest.mark.parametrize("alias", sorted(TORCHVISION))
def test_official_addresses_are_torchvisions(alias):
    import importlib
    import inspect
    text = inspect.getsource(importlib.import_module(f"torchvision.datasets.{TORCHVISION[alias]}"))
    parts = [part for part in downloads.RECIPES[alias].parts if part.source.url]
    assert parts
    for part in parts:
        url = part.source.url
        # flowers102 joins a prefix and a file name; food101 and sun397 spell the address http://
        spellings = {url, url.replace("https://", "http://", 1), url.rsplit("/", 1)[0] + "/"}
        assert any(f'"{s}"' in text for s in spellings), url
        if part.source.md5:
            assert part.source.md5 in text


def test_stanford_cars_is_manual_as_torchvision_says_its_address_is_broken():
    import inspect
    import torchvision.datasets.stanford_cars as cars
    assert "The original URL is broken" in inspect.getsource(cars)
    assert not [part for part in downloads.RECIPES["stanford_cars"].parts if part.source.url]
    assert downloads.RECIPES["stanford_cars"].manual
