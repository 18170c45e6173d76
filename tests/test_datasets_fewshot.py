"""Few-shot samples are CoOp's own, and no cache (few-shot sample, generated split) can go stale."""
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from experiments import datasets
from experiments import fewshot
from conftest import touch_image, write_json_split

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path(__file__).parent / "fixtures"
CALTECH_SPLIT = FIXTURES / "split_zhou_Caltech101.json"


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    return tmp_path / "user_cache" / "pini"


def dassl_reference(raw: dict, shots: int, seed: int, train_only=False):
    """Dassl's documented selection, written independently of datasets.py: CoOp's train.py calls
    set_random_seed(seed) (random.seed), then generate_fewshot_dataset(train, k) and
    generate_fewshot_dataset(val, min(k, 4)): labels grouped in a dict (first appearance), and
    random.sample(items, k) if len(items) >= k else all items."""
    state = random.getstate()
    random.seed(seed)

    def generate(rows, k):
        tracker = defaultdict(list)
        for path, label, _ in rows:
            tracker[label].append(path)
        out = []
        for items in tracker.values():
            out.extend(random.sample(items, k) if len(items) >= k else items)
        return out

    train = generate(raw["train"], shots)
    val = [] if train_only else generate(raw["val"], min(shots, 4))
    random.setstate(state)
    return train, val


def relative(sample, split):
    root = str(split.image_root) + "/"
    return [i.path.removeprefix(root) for i in sample.train], [i.path.removeprefix(root) for i in sample.val]


def load_split_file(tmp_path, raw) -> datasets.Split:
    """A Caltech101 dataset folder holding only the split file (few-shot sampling reads no image)."""
    folder = tmp_path / "caltech-101"
    folder.mkdir(exist_ok=True)
    (folder / "split_zhou_Caltech101.json").write_text(json.dumps(raw))
    return datasets.load_dataset("caltech101", tmp_path)


@pytest.fixture(scope="module")
def caltech_raw():
    return json.loads(CALTECH_SPLIT.read_text())


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_sample_is_dassls_on_the_real_caltech101_split(tmp_path, caltech_raw, shots):
    split = load_split_file(tmp_path, caltech_raw)
    global_state = random.getstate()
    for seed in (1, 2, 3):
        sample = fewshot.few_shot(split, shots, seed, cache=False)
        train, val = relative(sample, split)
        ref_train, ref_val = dassl_reference(caltech_raw, shots, seed)
        assert train == ref_train  # same images, same order
        assert val == ref_val
        assert (sample.shots, sample.seed, sample.sampler_version) == (shots, seed, 2)
    assert random.getstate() == global_state  # the caller's global random is left alone


def shuffled_blocks(raw: dict, seed=0) -> dict:
    """The same split with each part's label blocks in a random (not ascending) order."""
    rng = random.Random(seed)
    out = {}
    for part, rows in raw.items():
        blocks = defaultdict(list)
        for row in rows:
            blocks[row[1]].append(row)
        order = list(blocks)
        rng.shuffle(order)
        out[part] = [row for label in order for row in blocks[label]]
    return out


def test_sample_walks_labels_in_first_appearance_order(tmp_path, caltech_raw):
    raw = shuffled_blocks(caltech_raw)
    assert [r[1] for r in raw["train"][:1]] != [0]  # really not ascending
    split = load_split_file(tmp_path, raw)
    for shots, seed in [(1, 1), (4, 2), (16, 3)]:
        train, val = relative(fewshot.few_shot(split, shots, seed, cache=False), split)
        assert (train, val) == dassl_reference(raw, shots, seed)
        # sorted label order (the old sampler) gives another sample: the test tells them apart
        assert train != dassl_reference({p: sorted(r, key=lambda row: row[1]) for p, r in raw.items()},
                                        shots, seed)[0]


def test_imagenet_samples_train_only(tmp_path):
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "classnames.txt").write_text("n01 tench\nn02 goldfish\n")
    for part, n in [("train", 6), ("val", 3)]:
        for wnid in ["n01", "n02"]:
            for i in range(n):
                touch_image(folder / "images" / part / wnid / f"{i}.JPEG")
    split = datasets.load_dataset("imagenet", tmp_path)
    sample = fewshot.few_shot(split, 2, seed=1)
    raw = {"train": [[i.path, i.label, i.classname] for i in split.train]}
    assert [i.path for i in sample.train] == dassl_reference(raw, 2, 1, train_only=True)[0]
    assert sample.val == []  # ImageNet's val is its test set: CoOp samples none


# ----------------------------------------------------------------------------------------------
# Caches
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def dtd(tmp_path):
    write_json_split(tmp_path / "dtd", "images", "split_zhou_DescribableTextures.json",
                     ["banded", "dotted"], per_class=(10, 6, 2))
    return tmp_path


def test_cache_records_its_fingerprint_and_a_changed_split_resamples(dtd, monkeypatch):
    split = datasets.load_dataset("dtd", dtd)
    first = fewshot.few_shot(split, 4, seed=1)
    meta = json.loads(Path(first.cache_path).read_text())["pini"]
    assert meta["fingerprint"] == first.fingerprint and meta["split_fingerprint"] == split.fingerprint
    assert meta["sampler_version"] == fewshot.SAMPLER_VERSION and meta["classnames"] == ["banded", "dotted"]
    # the split file now puts the first 6 training images of each class into test
    path = dtd / "dtd" / "split_zhou_DescribableTextures.json"
    raw = json.loads(path.read_text())
    moved = [row for row in raw["train"] if int(row[0].split("_")[-1].split(".")[0]) < 6]
    raw["train"] = [row for row in raw["train"] if row not in moved]
    raw["test"] += moved
    path.write_text(json.dumps(raw))
    changed = datasets.load_dataset("dtd", dtd)
    assert changed.fingerprint != split.fingerprint
    with pytest.warns(UserWarning, match="drawn from another split"):
        again = fewshot.few_shot(changed, 4, seed=1)
    test_paths = {i.path for i in changed.test}
    assert not test_paths & {i.path for i in again.train}  # no test image trains
    assert {i.path for i in again.train} <= {i.path for i in changed.train}


def test_cache_naming_images_outside_the_split_is_not_used(dtd):
    split = datasets.load_dataset("dtd", dtd)
    sample = fewshot.few_shot(split, 2, seed=1)
    cache = Path(sample.cache_path)
    raw = json.loads(cache.read_text())
    raw["train"][0][0] = split.test[0].path.removeprefix(str(split.image_root) + "/")  # fingerprint kept
    cache.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="not in the current split's train/val"):
        again = fewshot.few_shot(split, 2, seed=1)
    assert again.train == sample.train


def test_an_unfingerprinted_cache_is_drawn_again(dtd):
    split = datasets.load_dataset("dtd", dtd)
    cache = split.folder / "split_fewshot" / "shot_2-seed_1.json"
    cache.parent.mkdir()
    rows = [[i.path.removeprefix(str(split.image_root) + "/"), i.label, i.classname] for i in split.train[:4]]
    cache.write_text(json.dumps({"train": rows, "val": [], "test": []}))  # no fingerprint, no "pini" record
    with pytest.warns(UserWarning, match="drawing the few-shot sample again"):
        sample = fewshot.few_shot(split, 2, seed=1)
    assert len(sample.val) == 4 and "pini" in json.loads(cache.read_text())


def test_generated_then_coop_split_never_reuses_the_old_sample(tmp_path):
    """The issue's case: a sample drawn from a generated split, then CoOp's file is put in place."""
    image_dir = tmp_path / "dtd" / "images"
    for cls in ["banded", "dotted"]:
        for i in range(20):
            touch_image(image_dir / cls / f"{i:02d}.jpg")
    with pytest.warns(UserWarning, match="generated a split"):
        generated = datasets.load_dataset("dtd", tmp_path)
    assert generated.source == "generated" and generated.split_path.name == "split_pini_generated.json"
    old = fewshot.few_shot(generated, 4, seed=1)
    # CoOp's file: what the generated split trained on is test here
    coop = {"train": [], "val": [], "test": []}
    gen_train = {i.path for i in generated.train}
    for i, path in enumerate(sorted(str(p) for p in image_dir.rglob("*.jpg"))):
        part = "test" if path in gen_train else ("val" if i % 5 == 0 else "train")
        rel = path.removeprefix(str(image_dir) + "/")
        coop[part].append([rel, int(rel.startswith("dotted")), rel.split("/")[0]])
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(coop, indent=4))
    split = datasets.load_dataset("dtd", tmp_path)
    assert split.source == "coop" and split.fingerprint != generated.fingerprint
    with pytest.warns(UserWarning, match="another split"):
        new = fewshot.few_shot(split, 4, seed=1)
    assert not {i.path for i in new.train} & {i.path for i in split.test}
    assert {i.path for i in old.train} <= {i.path for i in split.test}  # the old sample would have leaked


def test_a_split_pini_generated_under_coops_name_is_not_taken_for_coops(tmp_path):
    image_dir = tmp_path / "eurosat" / "2750"
    for cls in ["Forest", "River"]:
        for i in range(5):
            touch_image(image_dir / cls / f"{i}.jpg")
    train, val, test = datasets.make_split(image_dir)
    rows = {p: [[i.path.removeprefix(str(image_dir) + "/"), i.label, i.classname] for i in items]
            for p, items in zip(("train", "val", "test"), (train, val, test))}
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(rows, indent=1))  # as PiNI writes it
    with pytest.warns(UserWarning) as caught:
        split = datasets.load_dataset("eurosat", tmp_path)
    assert "generated by PiNI" in str(caught[0].message) and "NOT CoOp's split" in str(caught[1].message)
    assert split.source == "generated"


def test_record_recreates_the_sample(dtd):
    split = datasets.load_dataset("dtd", dtd)
    sample = fewshot.few_shot(split, 4, seed=3, cache=False)
    record = json.loads(json.dumps(sample.record()))  # JSON-able
    assert record["train"][0].startswith(("banded/", "dotted/")) and len(record["val"]) == 8
    assert record["split_source"] == "coop" and record["fingerprint"] == sample.fingerprint
    again = fewshot.few_shot_from_record(split, record)
    assert (again.train, again.val) == (sample.train, sample.val)
    record["split_fingerprint"] = "0" * 20
    with pytest.raises(datasets.DatasetError, match="another split"):
        fewshot.few_shot_from_record(split, record)


def make_custom(root: Path, classes, n=6):
    for cls in classes:
        for i in range(n):
            touch_image(root / cls / f"{i}.jpg")


def test_custom_split_is_refreshed_when_classes_change_and_cache_folders_are_no_class(tmp_path):
    root = tmp_path / "birds"
    make_custom(root, ["jay", "robin"])
    split = datasets.load_dataset(str(root))
    fewshot.few_shot(split, 1, seed=1)  # makes birds/split_fewshot/
    assert (root / "split_fewshot").is_dir()
    assert datasets.load_dataset(str(root)).fingerprint == split.fingerprint  # unchanged: the cache is used
    make_custom(root, ["wren"])
    with pytest.warns(UserWarning, match="changed since .*split_pini.json was made"):
        grown = datasets.load_dataset(str(root))
    assert grown.classnames == ["jay", "robin", "wren"]  # split_fewshot is not a class
    (root / "split_pini.json").unlink()
    assert datasets.load_dataset(str(root)).classnames == ["jay", "robin", "wren"]


@pytest.fixture
def read_only(monkeypatch):
    """Make writes under a folder fail as on a read-only mount (chmod does not stop root)."""
    def protect(folder: Path):
        write = datasets.atomic_write_text

        def refuse(path, text):
            if Path(path).is_relative_to(folder):
                raise PermissionError(13, "Permission denied", str(path))
            write(path, text)
        monkeypatch.setattr(datasets, "atomic_write_text", refuse)
    return protect


def test_read_only_custom_folder_caches_in_the_user_cache(tmp_path, read_only, user_cache, monkeypatch):
    root = tmp_path / "birds"
    make_custom(root, ["jay", "robin"])
    read_only(root)
    split = datasets.load_dataset(str(root))  # no PermissionError
    assert split.split_path.is_relative_to(user_cache) and not (root / "split_pini.json").exists()
    sample = fewshot.few_shot(split, 2, seed=1)
    assert Path(sample.cache_path).is_relative_to(user_cache)
    monkeypatch.setattr(datasets, "make_split", lambda *a, **k: pytest.fail("cached split not used"))
    again = datasets.load_dataset(str(root))
    drawn = fewshot.few_shot(again, 2, seed=1)  # drawn again, and found equal to its record: kept
    assert again.train == split.train and drawn.train == sample.train and drawn.cache_path == sample.cache_path


def test_cache_dir_is_used_first(dtd, tmp_path):
    split = datasets.load_dataset("dtd", dtd)
    sample = fewshot.few_shot(split, 2, seed=1, cache_dir=tmp_path / "runs")
    assert Path(sample.cache_path).is_relative_to(tmp_path / "runs")
    assert not (split.folder / "split_fewshot").exists()


def test_nowhere_writable_still_samples(dtd, read_only, tmp_path):
    split = datasets.load_dataset("dtd", dtd)
    read_only(tmp_path)
    with pytest.warns(UserWarning, match="could not write the cache"):
        sample = fewshot.few_shot(split, 2, seed=1)
    assert sample.cache_path is None and len(sample.train) == 4


@pytest.mark.parametrize("tamper", ["more images", "copies of one image"])
def test_a_cache_is_used_only_when_it_holds_what_the_sampler_draws(dtd, tamper):
    """A "1-shot" record holding 5 images per class, or copies of one image, with its fingerprint
    kept: never trained on; the run's sample is what the sampler draws, and its content hash says so."""
    split = datasets.load_dataset("dtd", dtd)
    genuine = fewshot.few_shot(split, 1, seed=1)
    cache = Path(genuine.cache_path)
    raw = json.loads(cache.read_text())
    rows = [[i.path.removeprefix(str(split.image_root) + "/"), i.label, i.classname] for i in split.train]
    raw["train"] = ([r for r in rows if r[1] == 0][:5] + [r for r in rows if r[1] == 1][:5] if tamper == "more images"
                    else [raw["train"][0]] * 100)
    cache.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="does not hold the sample the sampler draws"):
        again = fewshot.few_shot(split, 1, seed=1)
    assert again.train == genuine.train and len(again.train) == 2 and again.content == genuine.content
    assert json.loads(cache.read_text())["train"] == _rows_of(genuine.train, split)  # the record is written again
    assert again.record()["content"] == genuine.content
    other = fewshot.few_shot(split, 1, seed=2, cache=False)
    assert other.content != genuine.content  # the hash is of the images, not of the inputs alone


def _rows_of(items, split):
    return [[i.path.removeprefix(str(split.image_root) + "/"), i.label, i.classname] for i in items]


@pytest.mark.parametrize("tamper", ["test images added to train", "an image from elsewhere"])
def test_a_generated_split_whose_parts_overlap_or_name_strangers_is_made_again(tmp_path, tamper):
    image_dir = tmp_path / "dtd" / "images"
    for cls in ["banded", "dotted"]:
        for i in range(10):
            touch_image(image_dir / cls / f"{i:02d}.jpg")
    with pytest.warns(UserWarning, match="generated a split"):
        genuine = datasets.load_dataset("dtd", tmp_path)
    raw = json.loads(genuine.split_path.read_text())
    if tamper == "test images added to train":
        raw["train"] += raw["test"]  # what the fingerprint of the folder's listing cannot see
    else:
        raw["train"][0][0] = "banded/zz.jpg"  # no such image in the folder
    genuine.split_path.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="both train and test" if tamper.startswith("test") else
                      "not in the image folder"):
        again = datasets.load_dataset("dtd", tmp_path)
    assert again.fingerprint == genuine.fingerprint and len(again.train) == len(genuine.train)
    assert not {i.path for i in again.train} & {i.path for i in again.test}
    assert json.loads(genuine.split_path.read_text())["train"] == [  # the cache is written again
        [i.path.removeprefix(str(image_dir) + "/"), i.label, i.classname] for i in again.train]


def test_a_full_disk_for_a_cache_is_a_warning_naming_the_file_and_the_free_space(dtd, monkeypatch):
    import errno

    write_text = Path.write_text

    def full(self, *a, **k):
        if self.name.startswith(".shot_2-seed_1.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *a, **k)

    split = datasets.load_dataset("dtd", dtd)
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.warns(UserWarning, match=r"split_fewshot/shot_2-seed_1.json: no space left on the device \(.* free "
                                         r"there\)") as caught:
        sample = fewshot.few_shot(split, 2, seed=1)
    assert sample.cache_path is None and len(sample.train) == 4 and "Traceback" not in str(caught[0].message)
