"""train.py --classify: your own images through a checkpoint (experiments/classify.py), on tiny random CLIPs."""
import json
import pickle

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from experiments import classify
import pini
import train
from conftest import for_eval_only, noise_png, write_json_split

CLASSES = ["face", "leopard", "motorbike", "accordion"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Caltech's layout with random-pixel images: a random CLIP tells them apart a little."""
    root = tmp_path_factory.mktemp("data")
    split = write_json_split(root / "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", CLASSES,
                             per_class=(3, 1, 3))
    for i, (relative, _, _) in enumerate(split["train"] + split["val"] + split["test"]):
        (root / "caltech-101" / "101_ObjectCategories" / relative).write_bytes(noise_png(i))
    return root


@pytest.fixture(scope="module")
def base_args(data_root, config_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return ["--data-root", str(data_root), "--model", str(config_dir / "tiny-vit.json"), "--pretrained", "none",
            "--output-dir", str(out), "--workers", "0", "--batch-size", "4", "--epochs", "1", "--device", "cpu",
            "--dataset", "caltech101", "--shots", "2"]


def trained(base_args, *variant) -> str:
    """Train one tiny run of the variant (once per module) and return its checkpoint's path."""
    out = base_args[base_args.index("--output-dir") + 1] + "/" + ("_".join(variant).replace("-", "") or "default")
    path = f"{out}/caltech101/shots_2/seed_1/checkpoint.pt"
    args = base_args + list(variant) + ["--output-dir", out]
    assert train.main(args) == 0
    return path


@pytest.fixture(scope="module")
def default_checkpoint(base_args):
    return trained(base_args)


@pytest.fixture(scope="module")
def test_images(data_root):
    split = json.loads((data_root / "caltech-101/split_zhou_Caltech101.json").read_text())
    return [str(data_root / "caltech-101/101_ObjectCategories" / relative) for relative, _, _ in split["test"]]


def classify_json(capsys, *args):
    capsys.readouterr()  # what earlier calls printed
    code = train.main(["--device", "cpu", "--json", "--inference-samples", "2", "--classify", *args])  # K: fast pictures
    said = capsys.readouterr()
    return code, json.loads(said.out), said.err


@pytest.mark.parametrize("mode", ["mean", "sample"])
def test_top1_equals_the_test_pass(base_args, default_checkpoint, test_images, monkeypatch, capsys, mode, tmp_path):
    """The command's top-1 for an image is the class the test pass (--eval-only) predicts for it. In
    "sample" mode the noise depends on the random state, so the test pass runs one image per batch
    and only its first image has the same draws (both seed the checkpoint's seed first)."""
    predicted = []
    original = pini.PiNI.predict

    def recording(self, images, *args, **kwargs):
        log_probs = original(self, images, *args, **kwargs)
        predicted.extend(log_probs.exp().tolist())
        return log_probs

    monkeypatch.setattr(pini.PiNI, "predict", recording)
    images = test_images if mode == "mean" else test_images[:1]
    assert train.main(for_eval_only(base_args) + ["--eval-only", "--checkpoint", default_checkpoint, "--inference", mode,
                                   "--test-batch-size", "100" if mode == "mean" else "1",
                                   "--output-dir", str(tmp_path / "eval")]) == 0
    tested = predicted[:len(images)]  # [[probability per class]] per image
    predicted.clear()
    code, out, _ = classify_json(capsys, *images, "--checkpoint", default_checkpoint, "--inference", mode,
                                 "--top-k", "4")
    assert code == 0 and [answer["path"] for answer in out["answers"]] == images
    for answer, probabilities in zip(out["answers"], tested, strict=True):
        assert answer["top_k"][0]["class"] == CLASSES[max(range(4), key=probabilities.__getitem__)]
        # the whole distribution, not only its top-1 (a random CLIP may put every image in one class)
        assert {c["class"]: c["probability"] for c in answer["top_k"]} == pytest.approx(
            dict(zip(CLASSES, probabilities)), abs=1e-6)


def test_average_with_one_sample_equals_sample(default_checkpoint, test_images):
    classifier = train.load_classifier(default_checkpoint, device="cpu")
    one = classify.classify(test_images[:3], classifier, "sample")
    average = classify.classify(test_images[:3], classifier, "average", samples=1)
    assert [a.top_k for a in one.answers] == [a.top_k for a in average.answers]  # exactly
    assert all(s == 0 for a in average.answers for _, _, s in a.top_k)  # one sample: no spread
    # and it is PiNI.predict's "sample" under the checkpoint's seed
    pixels = classify.read_image(test_images[0], classifier.ctx.eval_tf)[None]
    train.seed_everything(classifier.seed)
    expected = classifier.model.predict(pixels, "sample").exp()[0]
    name, p, _ = one.answers[0].top_k[0]
    assert p == expected.max().item() and name == classifier.model.classnames[expected.argmax()]
    # the check can fail: 8 samples average to other probabilities
    eight = classify.classify(test_images[:1], classifier, "average", samples=8)
    assert eight.answers[0].top_k[0][1] != p


def test_spread_is_zero_when_sigma_is_zero(base_args, default_checkpoint, test_images):
    spreads = {}
    for name, checkpoint in [("noise", default_checkpoint), ("no-sigma", trained(base_args, "--control", "no-sigma"))]:
        report = classify.classify(test_images, train.load_classifier(checkpoint, device="cpu"), "average", samples=8, top_k=4)
        spreads[name] = torch.tensor([[s for _, _, s in a.top_k] for a in report.answers])
        changes = [a.top1_changes for a in report.answers]
        if name == "no-sigma":
            assert changes == [0] * len(test_images)
    assert spreads["no-sigma"].max() < 1e-6
    assert spreads["noise"].max() > 1e-3  # with σ > 0 the samples disagree


def bomb(path, side=64):
    Image.new("RGB", (side, side), (1, 2, 3)).save(path)
    return str(path)


def test_each_bad_input_is_one_line_and_the_good_images_are_answered(default_checkpoint, test_images, tmp_path,
                                                                    capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 32×32 images pass, 64×64 is above twice the limit
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.jpg").write_text("not a picture")
    bad = {"missing": str(tmp_path / "missing.jpg"), "not an image": str(tmp_path / "notes.jpg"),
           "bomb": bomb(tmp_path / "bomb.png"), "empty folder": str(tmp_path / "empty"),
           "pattern": str(tmp_path / "nothing*.png")}
    code, out, err = classify_json(capsys, test_images[0], *bad.values(), test_images[1],
                                   "--checkpoint", default_checkpoint)
    assert code == 2
    assert [a["path"] for a in out["answers"]] == test_images[:2]  # the good ones, answered
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    for what, path in bad.items():
        mine = [line for line in lines if path in line]
        assert len(mine) == 1, (what, lines)
    said = {what: next(line for line in lines if path in line) for what, path in bad.items()}
    assert "no such file or folder" in said["missing"]
    assert "not an image" in said["not an image"]
    assert "decompression bomb" in said["bomb"]
    assert "a folder with no images" in said["empty folder"]
    assert "no file matches" in said["pattern"]
    assert lines[-1] == "error: 5 inputs not classified (each said above); 2 images answered"
    assert len(out["problems"]) == 5 and "Traceback" not in err


def test_a_folder_and_a_pattern_give_their_images(default_checkpoint, test_images, tmp_path, capsys):
    for i, name in enumerate(["b.png", "sub/a.jpg", "notes.txt", ".hidden.jpg"]):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(noise_png(i))
    folder = tmp_path / "photos"
    code, out, _ = classify_json(capsys, str(folder), str(folder / "*.png"), "--checkpoint", default_checkpoint)
    assert code == 0  # the folder's images (recursively, sorted, not hidden), each once
    assert [a["path"] for a in out["answers"]] == [str(folder / "b.png"), str(folder / "sub/a.jpg")]


@pytest.mark.parametrize("what, message", [
    ("unsafe", "not a PiNI checkpoint, or not a safe one"),
    ("colliding", "groups of class names give the same prompt: 'Hot_Dog' = 'hot dog'"),
])
def test_a_bad_checkpoint_or_class_file_is_one_line(default_checkpoint, test_images, tmp_path, capsys, what, message):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    args = [test_images[0], "--checkpoint", default_checkpoint]
    if what == "unsafe":
        (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload()))
        args = [test_images[0], "--checkpoint", str(tmp_path / "evil.pt")]
    else:
        (tmp_path / "classes.txt").write_text("cat\nHot_Dog\nhot dog\n")
        args += ["--classes", str(tmp_path / "classes.txt")]
    assert train.main(["--device", "cpu", "--classify", *args]) == 2
    said = capsys.readouterr()
    assert said.err.strip().splitlines()[-1].startswith("error: ") and message in said.err
    assert "code ran" not in said.out and "Traceback" not in said.err


def test_other_class_names_from_a_file(base_args, default_checkpoint, test_images, tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("tabby cat\n\nsports_car\nwhale\n")
    code, out, _ = classify_json(capsys, test_images[0], "--checkpoint", default_checkpoint,
                                 "--classes", str(tmp_path / "classes.txt"), "--top-k", "9")
    assert code == 0
    assert sorted(c["class"] for c in out["answers"][0]["top_k"]) == ["sports car", "tabby cat", "whale"]
    assert sum(c["probability"] for c in out["answers"][0]["top_k"]) == pytest.approx(1, abs=1e-5)
    # per-class noise belongs to its training classes: the rule --eval-only --transfer applies
    feature = trained(base_args, "--text-noise", "feature")
    assert train.main(["--device", "cpu", "--classify", test_images[0], "--checkpoint", feature,
                       "--classes", str(tmp_path / "classes.txt")]) == 2
    assert "holds per-class noise" in capsys.readouterr().err


@pytest.mark.parametrize("variant, titles", [
    ((), ["as CLIP saw it", "top-", "image noise / feature"]),
    (("--image-noise", "pixel"), ["as CLIP saw it", "top-", "pixel noise μ", "pixel noise σ"]),
    (("--image-noise", "none"), ["as CLIP saw it", "top-"]),
])
def test_the_picture_has_its_panels(base_args, test_images, tmp_path, monkeypatch, capsys, variant, titles):
    checkpoint = trained(base_args, *variant)
    figures = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k))[1])
    assert train.main(["--device", "cpu", "--classify", test_images[0], "--checkpoint", checkpoint,
                       "--inference", "average", "--output-dir", str(tmp_path / "pictures")]) == 0
    picture = tmp_path / "pictures" / "test_0.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"picture: {picture}" in capsys.readouterr().out
    (figure,) = figures
    assert len(figure.axes) == len(titles)
    assert all(ax.get_title().startswith(t) for ax, t in zip(figure.axes, titles))
    bars = figure.axes[1].patches
    assert len(bars) == 4  # top-5 of 4 classes: all 4
