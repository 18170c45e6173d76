"""Datasets that download themselves, into exactly the CoOp layouts that datasets.py reads.

    python -m experiments.downloads caltech101 eurosat [--data-root R] [--yes] [--mirror URL]
    python -m experiments.downloads all                      # the 11 benchmark datasets

Everything a download brings in is treated as untrusted input:
  - archives are unpacked by `safe_extract`, which refuses absolute paths, `..`, links that
    point out of the target and device files, and writes only into a temporary folder under
    the data root that is renamed into place when (and only when) the whole archive is in;
  - only https:// sources are contacted, unless the user names a mirror (--mirror or
    $PINI_DATA_MIRROR), which then serves every file as <mirror>/<filename>;
  - a known checksum is verified before anything is unpacked;
  - split files are parsed as JSON and checked against CoOp's schema, never evaluated.

    download(names, data_root, yes, mirror) -> dataset folders now complete
    safe_extract(archive, target_dir)       -> unpack an untrusted tar/zip, or refuse it
    main(argv)                              -> the command line; 0, or 2 with a one-line error

Where no automatic source exists (ImageNet's images need a login; Stanford Cars' official
download is gone), everything else is fetched and the steps left to a person are printed.
Each source's `origin` names the file its URL and checksum were read from.
This module knows no model.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from experiments import datasets  # the layouts (datasets imports nothing of this module)
from experiments.files import human_size

MIRROR_ENV = "PINI_DATA_MIRROR"
CHUNK = 1 << 20


class DownloadError(Exception):
    """A download or an archive that cannot be used, with a message that says what to do."""


class UnreachableError(DownloadError):
    """The address itself failed (an HTTP error, no answer): not a broken transfer that a rerun resumes."""


# -----------------------------------------------------------------------------------------
# Safe extraction
# -----------------------------------------------------------------------------------------

def _check_member_name(name: str, archive: Path):
    """Refuse a member name that would land outside the target: absolute, drive-letter or `..`.

    Checked on the raw name (both slash kinds), before the tar/zip modules get a chance to
    quietly rewrite it: an archive that tries this is not one we want any part of.
    """
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
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
        if link.startswith("/") or re.match(r"[A-Za-z]:", link):
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
        raise DownloadError(f"{archive} is not a tar or zip archive (an HTML error page saved by mistake?)")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        (_extract_tar if kind == "tar" else _extract_zip)(archive, temporary)
        os.replace(temporary, target)
    except BaseException as error:  # also KeyboardInterrupt: never leave half a dataset behind
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, (tarfile.TarError, zipfile.BadZipFile, EOFError)):
            raise DownloadError(f"{archive} is damaged ({error})") from None
        raise
    return target


# -----------------------------------------------------------------------------------------
# What to download: sources, and recipes that turn them into CoOp's layouts
# -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One file to fetch. `url` is the official https address; a Google Drive file has `drive_id`
    instead (fetched with gdown, as torchvision does). With a mirror, both come from
    <mirror>/<filename>. `size` in bytes (0: unknown, asked from the server). `origin` says
    where the address and checksum were read, so that they can be checked again."""
    filename: str
    url: str = ""
    drive_id: str = ""
    md5: str = ""
    sha256: str = ""
    size: int = 0
    origin: str = ""

    def where(self) -> str:
        return self.url or f"https://drive.google.com/file/d/{self.drive_id}/view"


@dataclass(frozen=True)
class Part:
    """One thing a dataset folder needs.

    A plain file is put at `dest`. For an archive, the folder `inner` inside it becomes `dest`
    ("" = the dataset folder itself, merged), after first unpacking `nested`, an archive inside
    the archive (Caltech101 ships a .tar.gz inside a .zip). `present` is the path whose existence
    means the part is done (default: `dest`). `check` validates a downloaded plain file.
    """
    source: Source
    dest: str
    inner: Optional[str] = None
    nested: str = ""
    present: str = ""
    check: Optional[Callable[[Path], None]] = None


@dataclass(frozen=True)
class Recipe:
    """How one dataset gets into its CoOp folder: the parts, a line on its terms of use, and,
    where something cannot be fetched automatically, the steps for a person (`manual`, with
    `{folder}` for the dataset folder) and the paths that show they were done."""
    parts: tuple
    terms: str
    manual: str = ""
    manual_done: tuple = ()
    known_down: str = ""  # said first when an official address fails and is known to be gone


def check_split(path: Path):
    """Refuse anything but CoOp's split schema (datasets.split_problem): the file comes from the
    network, so it is parsed as JSON (never evaluated) and its paths must stay inside the image folder."""
    try:
        raw = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise DownloadError(f"{path.name} is not JSON ({error}): not a split file; delete it and retry") from None
    problem = datasets.split_problem(raw, ("train", "val", "test"))
    if problem:
        raise DownloadError(f"{path.name} is not a split file: {problem}")


def check_classnames(path: Path):
    """CoOp's ImageNet classnames.txt: one 'n01440764 tench' per line, 1,000 lines."""
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    bad = [line for line in lines if not re.fullmatch(r"n\d{8} \S.*", line)]
    if len(lines) != 1000 or bad:
        raise DownloadError(f"{path.name} is not CoOp's classnames.txt (1,000 lines 'n01440764 tench'); "
                            f"found {len(lines)} lines{', e.g. ' + repr(bad[0][:60]) if bad else ''}")


def check_json_names(path: Path):
    """Flowers102's cat_to_name.json: {"1": "pink primrose", ...}."""
    try:
        raw = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        raw = None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise DownloadError(f"{path.name} is not a JSON object of class names")


TV = "pytorch/vision torchvision/datasets/"  # provenance prefixes
TFDS = "tensorflow/datasets tensorflow_datasets/url_checksums/"
COOP = "KaiyangZhou/CoOp DATASETS.md"


def coop_split(name: str, drive_id: str) -> Part:
    """CoOp's split file for a dataset, from the Google Drive file DATASETS.md links to."""
    filename = f"split_zhou_{name}.json"
    return Part(Source(filename, drive_id=drive_id, origin=COOP), filename, check=check_split)


CLASSNAMES = Part(Source("classnames.txt", drive_id="1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF", origin=COOP),
                  "classnames.txt", check=check_classnames)

RECIPES = {
    "imagenet": Recipe(
        (CLASSNAMES,),
        "ImageNet's terms of access (image-net.org): non-commercial research and education only.",
        manual=("ImageNet needs a login, so its images cannot be downloaded for you:\n"
                "  1. sign in at https://image-net.org and download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar "
                "and ILSVRC2012_devkit_t12.tar.gz (ILSVRC 2012) into {folder}/images/\n"
                "  2. let torchvision sort them into class folders (checks their MD5s; needs `pip install scipy`):\n"
                "     python -c \"import torchvision; [torchvision.datasets.ImageNet('{folder}/images', split=s) "
                "for s in ('train', 'val')]\"\n"
                "  3. check that {folder}/images/train/ and {folder}/images/val/ hold 1,000 folders n01440764, ...; "
                "the three archives can then be deleted"),
        manual_done=("images/train", "images/val")),
    "caltech101": Recipe(
        (Part(Source("caltech-101.zip", "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                     md5="3138e1922a9193bfa496528edbbc45d0", origin=TV + "caltech.py"),
              "101_ObjectCategories", inner="101_ObjectCategories", nested="caltech-101/101_ObjectCategories.tar.gz"),
         coop_split("Caltech101", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN")),
        "Caltech 101: CC BY 4.0, https://data.caltech.edu/records/mzrjq-6wc02 (cite Fei-Fei et al. 2004)."),
    "oxford_pets": Recipe(
        (Part(Source("images.tar.gz", "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
                     md5="5c4f3ee8e5d25df40f4fd59a7f44e54c", size=791918971,
                     origin=TV + "oxford_iiit_pet.py; size: " + TFDS + "oxford_iiit_pet.txt"),
              "images", inner="images"),
         coop_split("OxfordPets", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs")),
        "Oxford-IIIT Pet: CC BY-SA 4.0, images' copyright stays with their owners "
        "(https://www.robots.ox.ac.uk/~vgg/data/pets/)."),
    "stanford_cars": Recipe(
        (coop_split("StanfordCars", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),),
        "Stanford Cars: for non-commercial research (https://ai.stanford.edu/~jkrause/cars/car_dataset.html).",
        manual=("Stanford Cars' official download is gone (torchvision: \"the original URL is broken\"), so its "
                "images cannot be downloaded for you:\n"
                "  1. get the original archives cars_train.tgz and cars_test.tgz from a copy you trust "
                "(the dataset is mirrored on Kaggle and Hugging Face)\n"
                "  2. extract them into {folder}/ so that it holds cars_train/ (8,144 images) and cars_test/ "
                "(8,041 images)"),
        manual_done=("cars_train", "cars_test")),
    "flowers102": Recipe(
        (Part(Source("102flowers.tgz", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                     md5="52808999861908f626f3c1f4e79d11fa", size=344862509,
                     origin=TV + "flowers102.py; size: " + TFDS + "oxford_flowers102.txt"),
              "jpg", inner="jpg"),
         Part(Source("cat_to_name.json", drive_id="1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0", origin=COOP),
              "cat_to_name.json", check=check_json_names),
         coop_split("OxfordFlowers", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT")),
        "Oxford 102 Flowers: for research; images' copyright stays with their owners "
        "(https://www.robots.ox.ac.uk/~vgg/data/flowers/102/)."),
    "food101": Recipe(
        (Part(Source("food-101.tar.gz", "https://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                     md5="85eeb15f3717b99a5da872d97d918f87", size=4996278331,
                     origin=TV + "food101.py (there as http://); size: " + TFDS + "food101.txt"),
              "", inner="food-101", present="images"),
         coop_split("Food101", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl")),
        "Food-101: images from Foodspotting, not ETH Zurich's; beyond scientific fair use, ask their owners "
        "(license_agreement.txt, kept in the folder)."),
    "fgvc_aircraft": Recipe(
        (Part(Source("fgvc-aircraft-2013b.tar.gz",
                     "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                     sha256="d5f68b1b81d6d7831eb9d5c5517074176b5dfbce6bcb43dc14ed1c66a87b8d75", size=2770575360,
                     origin=TV + "fgvc_aircraft.py (URL; no checksum there); sha256, size: " + TFDS + "fgvc.txt"),
              "", inner="fgvc-aircraft-2013b/data", present="images"),),  # official split: no CoOp file
        "FGVC-Aircraft: non-commercial research only (https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/)."),
    "sun397": Recipe(
        (Part(Source("SUN397.tar.gz", "https://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
                     md5="8ca2778205c41d23104230ba66911c7a", size=39077296924,
                     origin=TV + "sun397.py (there as http://); https URL, size: " + TFDS + "sun397.txt"),
              "SUN397", inner="SUN397"),
         coop_split("SUN397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq")),
        "SUN397: for research; images' copyright stays with their owners "
        "(https://vision.princeton.edu/projects/2010/SUN/).",
        known_down=("SUN397's official address is gone: it answers 404, for everyone, not only on your network "
                    "(KaiyangZhou/CoOp issue #90, pytorch/vision issue #9348, gaopengcuhk/Tip-Adapter issue #36). "
                    "Only the original archive gives CoOp's images: a copy already split into train/ and test/ "
                    "folders does not have CoOp's layout.")),
    "dtd": Recipe(
        (Part(Source("dtd-r1.0.1.tar.gz", "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                     md5="fff73e5086ae6bdbea199a49dfb8a4c1", size=625239812,
                     origin=TV + "dtd.py; size: " + TFDS + "dtd.txt"),
              "", inner="dtd", present="images"),
         coop_split("DescribableTextures", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x")),
        "DTD: for research (https://www.robots.ox.ac.uk/~vgg/data/dtd/)."),
    "eurosat": Recipe(
        (Part(Source("EuroSAT.zip", "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                     "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                     md5="c8fa014336c82ac7804f0398fcb19387", origin=TV + "eurosat.py"),
              "2750", inner="2750"),
         coop_split("EuroSAT", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o")),
        "EuroSAT: MIT licence (https://github.com/phelber/eurosat); contains Copernicus Sentinel-2 data."),
    "ucf101": Recipe(
        (Part(Source("UCF-101-midframes.zip", drive_id="10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O", origin=COOP),
              "UCF-101-midframes", inner="UCF-101-midframes"),
         coop_split("UCF101", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y")),
        "UCF101: for research (https://www.crcv.ucf.edu/data/UCF101.php); the mid-video frames are CoOp's."),
    "imagenet_v2": Recipe(
        (Part(Source("imagenetv2-matched-frequency.tar.gz", "https://huggingface.co/datasets/vaishaal/ImageNetV2/"
                     "resolve/main/imagenetv2-matched-frequency.tar.gz",
                     origin="modestyachts/ImageNetV2_pytorch imagenetv2_pytorch/ImageNetV2_dataset.py (no checksum)"),
              "imagenetv2-matched-frequency-format-val", inner="imagenetv2-matched-frequency-format-val"),
         CLASSNAMES),
        "ImageNetV2: see https://github.com/modestyachts/ImageNetV2; ImageNet's terms apply to its use."),
    "imagenet_sketch": Recipe(
        (Part(Source("ImageNet-Sketch.zip", drive_id="1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA",
                     origin="HaohanWang/ImageNet-Sketch README.md (7.8 GB)"),
              "images", inner="sketch"),
         CLASSNAMES),
        "ImageNet-Sketch: see https://github.com/HaohanWang/ImageNet-Sketch; ImageNet's terms apply to its use."),
    "imagenet_a": Recipe(
        (Part(Source("imagenet-a.tar", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
                     sha256="3bb3632277e6ba6392ea64c02ddbf4dd2266c9caffd6bc09c9656d28f012589e", size=687552512,
                     origin=TFDS + "imagenet_a.txt"),
              "imagenet-a", inner="imagenet-a"),
         CLASSNAMES),
        "ImageNet-A: see https://github.com/hendrycks/natural-adv-examples; ImageNet's terms apply to its use."),
    "imagenet_r": Recipe(
        (Part(Source("imagenet-r.tar", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
                     sha256="18c6bf493b39a0d975d48e587437f562caab9c52ae6327dcfa9dd8eb54aa1b52", size=2191079936,
                     origin=TFDS + "imagenet_r.txt"),
              "imagenet-r", inner="imagenet-r"),
         CLASSNAMES),
        "ImageNet-R: see https://github.com/hendrycks/imagenet-r; ImageNet's terms apply to its use."),
}


# -----------------------------------------------------------------------------------------
# Transport: https only (or the user's mirror), resumable, checksummed
# -----------------------------------------------------------------------------------------

def _allowed(url: str, mirror: Optional[str]) -> bool:
    """https:// anywhere; anything else only under the mirror the user named."""
    return url.startswith("https://") or bool(mirror and url.startswith(mirror.rstrip("/") + "/"))


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to addresses that are themselves allowed (no https -> http downgrade)."""

    def __init__(self, mirror: Optional[str]):
        self.mirror = mirror

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not _allowed(newurl, self.mirror):
            raise DownloadError(f"refused: {req.full_url} redirects to {newurl}, which is not https://")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, mirror: Optional[str], method: str = "GET", headers: Optional[dict] = None, timeout=60):
    if not _allowed(url, mirror):
        raise DownloadError(f"refused to download {url}: only https:// sources are used, unless you name a mirror "
                            f"(--mirror URL or ${MIRROR_ENV}) that serves the files")
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "pini-downloads", **(headers or {})})
    return urllib.request.build_opener(_SafeRedirects(mirror)).open(request, timeout=timeout)


def remote_size(url: str, mirror: Optional[str] = None) -> Optional[int]:
    """Content-Length from a HEAD request, or None when the server does not say (or cannot be reached)."""
    try:
        with _open(url, mirror, method="HEAD", timeout=15) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None
    except (OSError, ValueError, DownloadError):
        return None


def http_download(url: str, path: Path, mirror: Optional[str] = None) -> Path:
    """Fetch `url` to `path` through `path.part`, resuming from what an earlier attempt left there.

    Resuming asks for the missing bytes with an HTTP Range request; a server that ignores it
    answers 200 and the file is fetched again from the start. The file gets its final name only
    when every byte the server announced has arrived, so `path` is never a partial file.
    """
    from tqdm import tqdm

    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, mirror, headers={"Range": f"bytes={have}-"} if have else None)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to send: the .part is already whole
            os.replace(part, path)
            return path
        raise UnreachableError(f"could not download {url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise UnreachableError(f"could not reach {url}: {error.reason}; check the network (or --mirror) and retry") from None
    with response:
        if response.status != 206:  # 200: the whole file comes, whatever we had
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with open(part, "ab" if have else "wb") as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                           unit_divisor=1024, desc=path.name, leave=False) as bar:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:  # reset, timeout, truncated chunk
                raise DownloadError(f"{path.name}: the connection broke ({type(error).__name__}) after "
                                    f"{out.tell():,} bytes; run the same command again to resume") from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(f"{path.name}: the connection ended after {got:,} of {total:,} bytes; run the same "
                            "command again to resume")
    os.replace(part, path)
    return path


def drive_download(drive_id: str, path: Path) -> Path:
    """A Google Drive file through gdown (what torchvision uses for Drive). Tests replace this function."""
    try:
        import gdown
    except ModuleNotFoundError:
        raise DownloadError("Google Drive files need gdown: pip install gdown (it is in requirements.txt)") from None
    try:
        result = gdown.download(id=drive_id, output=str(path), quiet=False, resume=True)
    except Exception as error:  # gdown raises its own types for quota, permission and network errors
        result, reason = None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    else:
        reason = "no file came back"
    if not result or not path.is_file():
        raise DownloadError(f"Google Drive did not give {path.name} ({reason}). Drive often limits popular files "
                            f"for a day: retry later, or download https://drive.google.com/file/d/{drive_id}/view "
                            f"in a browser, save it as {path}, and rerun the same command")
    return path


def checksums(path: Path, source: Source) -> dict:
    """The known checksums of `source` that `path` fails, as {kind: (expected, actual)}; one read of the file."""
    wanted = {kind: value.lower() for kind, value in (("md5", source.md5), ("sha256", source.sha256)) if value}
    hashers = {kind: hashlib.new(kind) for kind in wanted}
    if hashers:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                for hasher in hashers.values():
                    hasher.update(chunk)
    return {kind: (wanted[kind], h.hexdigest()) for kind, h in hashers.items() if h.hexdigest() != wanted[kind]}


def fetch(source: Source, folder: Path, mirror: Optional[str] = None) -> Path:
    """Download `source` into `folder` (resuming), and verify its checksum before anyone unpacks it.

    On a mismatch the file is deleted and nothing is extracted: a second try fetches it anew.
    """
    path = folder / source.filename
    folder.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        if mirror:
            http_download(f"{mirror.rstrip('/')}/{source.filename}", path, mirror)
        elif source.url:
            http_download(source.url, path, mirror)
        else:
            drive_download(source.drive_id, path)
    bad = checksums(path, source)
    if bad:
        path.unlink()
        kind, (expected, actual) = next(iter(bad.items()))
        raise DownloadError(f"{source.filename}: {kind} is {actual}, expected {expected} ({source.origin}); the file "
                            f"was deleted and nothing was extracted. Retry; if it fails again, the source at "
                            f"{source.where()} has changed: report it")
    return path


# -----------------------------------------------------------------------------------------
# Putting the parts in place
# -----------------------------------------------------------------------------------------

def _move_into(source: Path, dest: Path, last: str = ""):
    """Rename `source` to `dest`; when `dest` is a folder already, merge source's entries into it.

    Renames stay on one file system (both lie under the data root), so each is instant and whole.
    When merging, the entry named `last` goes last: it is the one whose presence marks the part done.
    """
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
        return
    if not (dest.is_dir() and source.is_dir()):
        return  # a file already there is kept
    for child in sorted(source.iterdir(), key=lambda p: p.name == last):
        _move_into(child, dest / child.name)


def _install(part: Part, downloaded: Path, folder: Path, staging: Path):
    """Put one downloaded part where datasets.py expects it."""
    if part.inner is None:  # a plain file
        if part.check:
            try:
                part.check(downloaded)
            except DownloadError:
                downloaded.unlink()
                raise
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{part.dest}.partial"
        shutil.copyfile(downloaded, partial)  # copied: a shared file (classnames.txt) may serve another dataset
        os.replace(partial, folder / part.dest)
        return
    shutil.rmtree(staging, ignore_errors=True)  # ours, left by an interrupted run
    try:
        try:
            unpacked = safe_extract(downloaded, staging / "archive")
        except DownloadError as error:
            if part.source.md5 or part.source.sha256:  # verified, yet unusable: leave it for a person to look at
                raise DownloadError(f"{error}; delete it and run the same command again") from None
            downloaded.unlink()  # unverifiable (a Drive file): most likely an error page, so fetch it anew next time
            raise DownloadError(f"{error}; it was deleted: run the same command again to fetch it anew") from None
        if part.nested:
            unpacked = safe_extract(unpacked / part.nested, staging / "nested")
        inner = unpacked / part.inner
        if not inner.is_dir():
            raise DownloadError(f"{downloaded.name} has no folder {part.nested + ':' if part.nested else ''}"
                                f"{part.inner}: the archive's layout is not the one expected; report it")
        _move_into(inner, folder / part.dest if part.dest else folder, last=part.present)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    downloaded.unlink()  # the images are in place: the archive is no longer needed


def _is_done(part: Part, folder: Path) -> bool:
    return (folder / (part.present or part.dest)).exists()


def _dataset_folder(alias: str, root: Path) -> Path:
    return root / datasets.DATASETS[alias].folder


def missing_parts(alias: str, data_root) -> list:
    """The parts of a dataset not yet in place under `data_root`."""
    folder = _dataset_folder(alias, Path(data_root))
    return [part for part in RECIPES[alias].parts if not _is_done(part, folder)]


def unreachable_steps(alias: str, part: Part, data_root) -> str:
    """What to do when a part's official address fails: a mirror, the archive put in place by hand, or
    the finished layout by hand."""
    recipe, root = RECIPES[alias], Path(data_root)
    folder, source = _dataset_folder(alias, root), part.source
    checksum = f"md5 {source.md5}" if source.md5 else f"sha256 {source.sha256}" if source.sha256 else "no checksum"
    size = f"{human_size(source.size)}, " if source.size else ""
    return ((recipe.known_down + "\n" if recipe.known_down else "")
            + f"Get {source.filename} ({size}{checksum}) from a copy you trust, then either\n"
            f"  1. serve it from a folder and run: {datasets.download_command(alias, root)} --mirror URL\n"
            f"     (every file is then fetched as URL/<filename>, {source.filename} among them, and verified), or\n"
            f"  2. put it at {root / '.downloads' / source.filename} and run the same command again: it is verified "
            "and unpacked, or\n"
            f"  3. unpack it yourself so that {folder} looks like this (the other files as the command fetches them):\n"
            f"{datasets.DATASETS[alias].layout}")


def manual_steps(alias: str, data_root) -> str:
    """The steps a person must still take for this dataset ("" when none are left)."""
    recipe, folder = RECIPES[alias], _dataset_folder(alias, Path(data_root))
    if not recipe.manual or all((folder / p).exists() for p in recipe.manual_done):
        return ""
    return recipe.manual.format(folder=folder)


# -----------------------------------------------------------------------------------------
# The downloader
# -----------------------------------------------------------------------------------------

def resolve(names) -> list:
    """Dataset aliases from what a person typed: aliases, CoOp's names, folder names, or 'all'."""
    aliases = []
    for name in names:
        try:
            found = datasets.BENCHMARK if name == "all" else [datasets.resolve_name(name)]
        except datasets.DatasetError as error:
            raise DownloadError(str(error).split(", or the path of a folder")[0]) from None
        if found[0] not in datasets.DATASETS:  # a folder of one's own: nothing to download
            raise DownloadError(f"{name!r} is a folder, not one of the datasets: {', '.join(datasets.DATASETS)}")
        aliases += [alias for alias in found if alias not in aliases]
    return aliases


def _free_space(root: Path) -> int:
    existing = root.resolve()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def download(names, data_root=None, yes: bool = False, mirror: Optional[str] = None) -> list:
    """Download what is missing of each named dataset into CoOp's layout under `data_root`.

    Data already in place is skipped, so running it twice costs nothing. Before starting it shows
    every file, the total size and the free space, and asks for confirmation when run from a
    terminal (`yes` skips the question). Returns the dataset folders now complete; raises
    DownloadError naming the steps left to a person (ImageNet's images, Stanford Cars' images).
    """
    root = Path(data_root or datasets.default_data_root())
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    aliases = resolve(names)
    todo = [(alias, part) for alias in aliases for part in missing_parts(alias, root)]
    sources = list({part.source.filename: part.source for _, part in todo}.values())  # classnames.txt once
    staging_root = root / ".downloads"
    if todo:
        sizes = {s.filename: s.size or (remote_size(f"{mirror.rstrip('/')}/{s.filename}" if mirror else s.url, mirror)
                                        if (mirror or s.url) else None) for s in sources}
        known = sum(size for size in sizes.values() if size)
        free = _free_space(root)
        print(f"Downloading into {root.resolve()} ({human_size(free)} free){' from the mirror ' + mirror if mirror else ''}:")
        for alias in dict.fromkeys(alias for alias, _ in todo):
            print(f"  {alias}: {RECIPES[alias].terms}")
            for _, part in (item for item in todo if item[0] == alias):
                print(f"    {part.source.filename:40s} {human_size(sizes[part.source.filename]):>14s}  {part.source.where()}")
        unknown = sum(size is None for size in sizes.values())
        total = f"{human_size(known)}{f' + {unknown} file(s) of unknown size' if unknown else ''}" if known else "unknown"
        print(f"Total: {total}; "
              "archives are deleted once unpacked, but need their own size again while they are.")
        if known > free:
            raise DownloadError(f"not enough space: {human_size(known)} to download, {human_size(free)} free on {root}; "
                                "free some space or choose another --data-root")
        if not yes and sys.stdin.isatty() and input("Proceed? [y/N] ").strip().lower() not in ("y", "yes"):
            raise DownloadError("cancelled: nothing was downloaded")
    for alias, part in todo:
        folder = _dataset_folder(alias, root)
        if _is_done(part, folder):  # a shared file (classnames.txt) another dataset just brought
            continue
        print(f"{alias}: {part.source.filename}")
        try:
            downloaded = fetch(part.source, staging_root, mirror)
        except UnreachableError as error:
            if mirror or not part.source.url:
                raise
            raise DownloadError(f"{error}\n{unreachable_steps(alias, part, root)}") from None
        if part.inner is not None:
            print(f"{alias}: unpacking {part.source.filename}")
        _install(part, downloaded, folder, staging_root / f"{alias}.unpacking")
    for source in sources:  # plain files were copied into place (classnames.txt serves several datasets)
        (staging_root / source.filename).unlink(missing_ok=True)
    if staging_root.is_dir() and not any(staging_root.iterdir()):
        staging_root.rmdir()
    steps = [manual_steps(alias, root) for alias in aliases]
    steps = [s for s in steps if s]
    if steps:
        raise DownloadError("\n".join(steps))
    done = [_dataset_folder(alias, root) for alias in aliases]
    for alias, folder in zip(aliases, done):
        print(f"{alias}: ready in {folder}")
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=datasets.DOWNLOAD_COMMAND, description="Download datasets into the CoOp layouts datasets.py reads "
        "(images from their official sources, CoOp's split files from its Google Drive).")
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help=f"{', '.join(datasets.DATASETS)}, or all (the 11 benchmark datasets)")
    parser.add_argument("--data-root", default=None, help="where the datasets live (default: $PINI_DATA, else ./data)")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask before downloading")
    parser.add_argument("--mirror", default=None, help=f"fetch every file as <MIRROR>/<filename> instead "
                        f"(institution mirrors, air-gapped clusters; also ${MIRROR_ENV})")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse has printed the usage line
        return int(exit.code or 0)
    try:
        download(args.names, args.data_root, yes=args.yes, mirror=args.mirror)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as error:  # disk full, permission denied, ...
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
