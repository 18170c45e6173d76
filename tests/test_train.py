"""train.py end to end on CPU: a tiny random open_clip model and a generated Caltech101 tree."""
import csv
from pathlib import Path
from types import SimpleNamespace
import json
import math

import open_clip
import pytest
import torch
from PIL import Image

from experiments import datasets
from experiments import epochs
from experiments import image_data
import pini
import train
from conftest import for_eval_only, touch_image, write_json_split

CLASSES = ["face", "leopard", "motorbike", "accordion"]
COLORS = [(220, 20, 20), (20, 220, 20), (20, 20, 220), (220, 220, 20)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_json_split(root / "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", CLASSES,
                     per_class=(6, 2, 3), colors=COLORS)
    write_json_split(root / "dtd", "images", "split_zhou_DescribableTextures.json", ["banded", "dotted"],
                     per_class=(6, 2, 2), colors=COLORS[:2])
    sketch = root / "imagenet-sketch"  # a test-only set whose classes are Caltech's four, for eval-only
    for i, name in enumerate(CLASSES):
        touch_image(sketch / "images" / f"n0{i}" / "0.jpg")
    (sketch / "classnames.txt").write_text("".join(f"n0{i} {name}\n" for i, name in enumerate(CLASSES)))
    return root


@pytest.fixture
def base_args(data_root, config_dir, tmp_path):
    return ["--data-root", str(data_root), "--model", str(config_dir / "tiny-vit.json"), "--pretrained", "none",
            "--output-dir", str(tmp_path / "runs"), "--workers", "0", "--batch-size", "4", "--epochs", "2",
            "--test-batch-size", "5", "--device", "cpu"]


def read_result(base, dataset="caltech101", shots=2, seed=1):
    out = base[base.index("--output-dir") + 1]
    return json.loads(open(f"{out}/{dataset}/shots_{shots}/seed_{seed}/result.json").read())


def test_two_epochs_end_to_end(base_args, capsys):
    assert train.main(base_args + ["--dataset", "caltech101", "--shots", "2"]) == 0
    result = read_result(base_args)
    assert 0 <= result["accuracy"] <= 100 and result["n_test"] == 12 and result["n_train"] == 8
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["history"][0]["lr"] == pytest.approx(1e-5)  # the constant warm-up epoch
    assert result["history"][1]["lr"] == pytest.approx(1e-3)  # Dassl recounts: the cosine starts after warm-up
    out = base_args[base_args.index("--output-dir") + 1]
    summary = open(f"{out}/summary.md").read()
    assert f"| Caltech101 | {result['accuracy']:.2f} ± 0.00 |" in summary
    for name in ["summary.csv", "accuracy_vs_shots.png", "caltech101/shots_2/seed_1/noise.png"]:
        assert (open(f"{out}/{name}", "rb").read(4))
    # a finished run is skipped on a rerun
    assert train.main(base_args + ["--dataset", "caltech101", "--shots", "2"]) == 0
    assert "skipping" in capsys.readouterr().out


def test_zero_shot_equals_open_clip(base_args, data_root, config_dir):
    assert train.main(base_args + ["--dataset", "caltech101", "--zero-shot"]) == 0
    out = base_args[base_args.index("--output-dir") + 1]
    reported = json.loads(open(f"{out}/caltech101/zero_shot/result.json").read())

    torch.manual_seed(0)  # train.py seeds 0 before building a random CLIP: the same weights
    clip, tokenizer, _, eval_tf = pini.load_clip(str(config_dir / "tiny-vit.json"), "none")
    split = datasets.load_dataset("caltech101", data_root)
    images = torch.stack([eval_tf(Image.open(item.path)) for item in split.test])
    labels = torch.tensor([item.label for item in split.test])
    with torch.no_grad():
        text = clip.encode_text(tokenizer([f"a photo of a {c}." for c in CLASSES]), normalize=True)
        image = clip.encode_image(images, normalize=True)
    expected = 100.0 * ((image @ text.T).argmax(-1) == labels).float().mean().item()
    assert reported["template"] == "a photo of a {}."
    assert reported["accuracy"] == pytest.approx(expected)


def test_resume_after_interrupt_matches_a_straight_run(base_args, monkeypatch, tmp_path):
    straight = base_args + ["--dataset", "caltech101", "--shots", "2", "--output-dir", str(tmp_path / "a")]
    assert train.main(straight) == 0

    original = train.save_checkpoint

    def interrupt_after_first_epoch(path, model, optimizer, scheduler, scaler, epoch, history, meta):
        original(path, model, optimizer, scheduler, scaler, epoch, history, meta)
        if epoch == 0:
            raise KeyboardInterrupt

    interrupted = base_args + ["--dataset", "caltech101", "--shots", "2", "--output-dir", str(tmp_path / "b")]
    monkeypatch.setattr(train, "save_checkpoint", interrupt_after_first_epoch)
    assert train.main(interrupted) == 130
    assert not (tmp_path / "b/caltech101/shots_2/seed_1/result.json").exists()
    monkeypatch.setattr(train, "save_checkpoint", original)
    assert train.main(interrupted + ["--resume"]) == 0

    a = json.loads((tmp_path / "a/caltech101/shots_2/seed_1/result.json").read_text())
    b = json.loads((tmp_path / "b/caltech101/shots_2/seed_1/result.json").read_text())
    assert a["accuracy"] == b["accuracy"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    wa = torch.load(tmp_path / "a/caltech101/shots_2/seed_1/checkpoint.pt", weights_only=True)["injectors"]
    wb = torch.load(tmp_path / "b/caltech101/shots_2/seed_1/checkpoint.pt", weights_only=True)["injectors"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_multi_run_summary_table(base_args, tmp_path):
    args = base_args + ["--dataset", "caltech101", "dtd", "--shots", "1", "2", "--seeds", "1", "2",
                        "--epochs", "1"]
    assert train.main(args) == 0
    out = tmp_path / "runs"
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["dataset"], r["shots"], r["n_seeds"]) for r in rows] == [
        ("Caltech101", "1", "2"), ("Caltech101", "2", "2"), ("DescribableTextures", "1", "2"),
        ("DescribableTextures", "2", "2")]
    for r in rows:
        accs = [read_result(base_args, "caltech101" if r["dataset"] == "Caltech101" else "dtd",
                            int(r["shots"]), s)["accuracy"] for s in (1, 2)]
        assert float(r["mean"]) == pytest.approx(sum(accs) / 2, abs=1e-3)
    summary = (out / "summary.md").read_text()
    assert "| dataset | 1-shot | 2-shot |" in summary and "average (2 datasets)" in summary


def test_eval_only_reloads_the_injectors(base_args, tmp_path, capsys):
    assert train.main(base_args + ["--dataset", "caltech101", "--shots", "2", "--inference", "mean"]) == 0
    checkpoint = tmp_path / "runs/caltech101/shots_2/seed_1/checkpoint.pt"
    trained = read_result(base_args)["accuracy"]
    assert train.main(for_eval_only(base_args + ["--dataset", "caltech101", "--shots", "2", "--eval-only",
                                   "--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "e")])) == 0
    evaluated = json.loads((tmp_path / "e/caltech101/shots_2/seed_1/eval.json").read_text())["accuracy"]
    assert evaluated == trained
    # a checkpoint whose injectors do not fit the model is refused in one line
    state = torch.load(checkpoint, weights_only=True)
    state["injectors"].pop(sorted(state["injectors"])[0])
    torch.save(state, tmp_path / "tampered.pt")
    code = train.main(for_eval_only(base_args + ["--eval-only", "--checkpoint", str(tmp_path / "tampered.pt"),
                                   "--output-dir", str(tmp_path / "f")]))
    assert code == 2
    assert "does not match the model" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "cifar10"], "unknown dataset 'cifar10'"),
    (["--dataset", "oxford_pets"], "OxfordPets not found: expected the folder"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--precision", "fp16", "--device", "cpu"],
     "asked for a GPU" if not torch.cuda.is_available() else "fp16 needs a GPU"),
    (["--model", "ViT-Q-99"], "unknown open_clip model"),
    (["--pretrained", "/nowhere/clip.pt"], "checkpoint file not found"),
])
def test_bad_input_exits_with_one_line(base_args, capsys, extra, message):
    assert train.main(base_args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_output_dir_that_cannot_be_written(base_args, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert train.main(base_args + ["--output-dir", str(blocker / "runs")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


@pytest.mark.parametrize("shots", ["0", "-1", "two"])
def test_bad_shots_are_refused_by_the_parser(base_args, capsys, shots):
    with pytest.raises(SystemExit) as exit_:
        train.main(base_args + ["--shots", shots])
    assert exit_.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_ablation_writes_one_row_per_variant(base_args, tmp_path):
    args = base_args + ["--dataset", "caltech101", "--shots", "2", "--seeds", "1", "2", "--epochs", "1", "--ablation"]
    assert train.main(args) == 0
    folder = tmp_path / "runs/caltech101/shots_2"
    rows = list(csv.DictReader(open(folder / "ablation.csv")))
    assert [r["variant"] for r in rows] == [name for name, _ in train.ABLATION]
    assert all(r["n_seeds"] == "2" for r in rows[:-1]) and rows[-1]["n_seeds"] == "1"  # zero-shot: no seed
    by_name = {r["variant"]: r for r in rows}
    assert by_name["control: zero-shot CLIP (hand-crafted prompt)"]["trainable_parameters"] == "0"
    text_only = int(by_name["text noise only"]["trainable_parameters"])
    assert text_only == 2 * (16 + 4) * 32  # μ and σ over 20 noised tokens of width 32
    assert int(by_name["control: σ = 0 (a learned shift)"]["trainable_parameters"]) < \
        int(by_name["PiNI: text tokens + image cross-attention"]["trainable_parameters"])
    # the default PiNI row is the same run as a plain training call would make
    default = json.loads((folder / "ablation/pini_text_tokens_image_cross_attention/seed_1/result.json").read_text())
    assert float(by_name["PiNI: text tokens + image cross-attention"]["mean"]) == pytest.approx(
        (default["accuracy"] + json.loads((folder / "ablation/pini_text_tokens_image_cross_attention/seed_2/"
                                                     "result.json").read_text())["accuracy"]) / 2, abs=1e-3)
    assert (folder / "ablation.md").read_text().count("\n| ") == len(train.ABLATION) + 1
    # each row against the σ = 0 control, paired by seed: the mean difference and a 95 % Student-t interval,
    # here with 1 degree of freedom (the Cauchy distribution, whose 97.5 % point is tan(0.475 π))
    accuracy = {(r["ablation"], r["seed"]): r["accuracy"]
                for r in map(json.loads, map(Path.read_text, folder.glob("ablation/*/seed_*/result.json")))}
    control, pini_row = "control: σ = 0 (a learned shift)", "PiNI: text tokens + image cross-attention"
    d = [accuracy[(pini_row, s)] - accuracy[(control, s)] for s in (1, 2)]
    half = math.tan(0.475 * math.pi) * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2)
    row = by_name[pini_row]
    assert row["n_pairs"] == "2" and [float(row[k]) for k in ("paired_delta", "paired_low", "paired_high")] == \
        pytest.approx([sum(d) / 2, sum(d) / 2 - half, sum(d) / 2 + half], abs=1e-3)
    assert by_name[control]["paired_delta"] == "" and by_name["control: zero-shot CLIP (hand-crafted prompt)"]["n_pairs"] == ""
    assert f"{sum(d) / 2:+.2f} [{sum(d) / 2 - half:+.2f}, {sum(d) / 2 + half:+.2f}], 2 seeds" in (folder / "ablation.md").read_text()
    assert (folder / "ablation.png").stat().st_size > 0
    assert (folder / "ablation/image_noise_patch_query_cross_attention/seed_1/noise_maps.png").is_file()


def test_cached_views_encode_each_training_image_once_per_view(base_args, monkeypatch, tmp_path):
    epochs.VIEW_CACHE.clear()
    encoded = []
    original = pini.PiNI.encode_images

    def counting(self, images, patch_tokens=False):
        encoded.append(len(images))
        return original(self, images, patch_tokens)

    monkeypatch.setattr(pini.PiNI, "encode_images", counting)
    args = base_args + ["--dataset", "caltech101", "--shots", "2", "--epochs", "3", "--cache-views", "2",
                        "--test-batch-size", "100"]
    assert train.main(args + ["--seeds", "1"]) == 0
    result = read_result(base_args)
    assert result["cache_views"] == 2 and len(result["history"]) == 3
    n_train, n_test = result["n_train"], result["n_test"]
    # 2 views of the 8 training images, once for all 3 epochs; then the test set once (+ noise plot)
    assert encoded[:3] == [n_train, n_train, n_test]
    encoded.clear()
    assert train.main(args + ["--seeds", "1", "--force", "--output-dir", str(tmp_path / "again")]) == 0
    assert encoded[0] == n_test  # the same images in the same call's cache: nothing re-encoded
    again = json.loads((tmp_path / "again/caltech101/shots_2/seed_1/result.json").read_text())
    assert again["accuracy"] == result["accuracy"]
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in result["history"]]


def textured_caltech(root):
    """Caltech's layout with textured 60×45 JPEGs: every crop box and flip gives other pixels."""
    split = write_json_split(root / "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", CLASSES,
                             per_class=(4, 1, 2))
    for i, (relative, _, _) in enumerate(split["train"] + split["val"] + split["test"]):
        noise = torch.randint(0, 256, (9, 12, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        image = Image.fromarray(noise.numpy()).resize((60, 45), Image.BICUBIC)
        image.save(root / "caltech-101" / "101_ObjectCategories" / relative, quality=95)
    return root


def test_tensor_augmentation_feeds_the_pil_paths_batches(base_args, monkeypatch, tmp_path, capsys):
    """--augment tensor is fed the batches of --augment pil: the same order and labels, and pixels
    within a few grey levels (on textured images, where another box or flip changes many pixels
    by far more); each epoch's record says which path fed it."""
    fed = {}

    def recording(model, batches, optimizer, scaler, options, ctx):
        batches = list(batches)
        fed.setdefault(options.augment, []).append(batches)
        return epochs.train_epoch(model, iter(batches), optimizer, scaler, options, ctx)

    monkeypatch.setattr(train, "train_epoch", recording)
    root = textured_caltech(tmp_path / "data")
    args = base_args + ["--dataset", "caltech101", "--shots", "2", "--data-root", str(root)]
    for augment in ["pil", "tensor"]:
        assert train.main(args + ["--augment", augment, "--output-dir", str(tmp_path / augment)]) == 0
        history = read_result(["--output-dir", str(tmp_path / augment)])["history"]
        assert [h["augment"] for h in history] == [augment, augment]
    grey_level = 1 / 255 / min(open_clip.OPENAI_DATASET_STD)  # in normalised units (the tiny CLIP uses them)
    for pil_epoch, tensor_epoch in zip(fed["pil"], fed["tensor"], strict=True):
        for (pil, _, pil_labels), (tensor, _, tensor_labels) in zip(pil_epoch, tensor_epoch, strict=True):
            assert torch.equal(pil_labels, tensor_labels)
            assert (pil - tensor).abs().max() < 4.5 * grey_level and (pil - tensor).abs().mean() < 0.5 * grey_level
    first, second = fed["pil"]  # the check can fail: another epoch's crops are far apart
    assert (first[0][0] - second[0][0]).abs().mean() > 10 * grey_level

    # like the device, the data path is not part of what a run is: a finished run is reused
    assert train.main(args + ["--augment", "pil", "--output-dir", str(tmp_path / "tensor")]) == 0
    assert "skipping" in capsys.readouterr().out


def test_tensor_augmentation_that_does_not_fit_in_memory_says_what_to_do(base_args, monkeypatch, capsys):
    monkeypatch.setattr(image_data, "DECODED", image_data.DecodedImages())  # none kept by earlier tests
    monkeypatch.setattr(epochs, "available_memory", lambda: 1000)
    assert train.main(base_args + ["--dataset", "caltech101", "--shots", "2", "--augment", "tensor"]) == 2
    message = capsys.readouterr().err
    assert "--augment tensor: the 8 training images take 1.5 KB decoded, but 1.0 KB of memory" in message
    assert "Use --augment pil" in message


@pytest.mark.parametrize("memory, path", [(None, "tensor"), (1000, "pil")])
def test_auto_augmentation_keeps_images_decoded_when_they_fit(base_args, monkeypatch, capsys, memory, path):
    monkeypatch.setattr(image_data, "DECODED", image_data.DecodedImages())  # none kept by earlier tests
    monkeypatch.setattr(epochs, "available_memory", lambda: memory)  # None: unknown, 1000: far too little
    assert train.main(base_args + ["--dataset", "caltech101", "--shots", "2"]) == 0
    assert {h["augment"] for h in read_result(base_args)["history"]} == {path}
    said = capsys.readouterr()
    assert ("--augment auto: the 8 training images take 1.5 KB" in said.out + said.err) == (path == "pil")


def test_decoded_images_go_to_the_gpu_only_when_they_take_at_most_half_its_free_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (calls.append("info") or 1000, 4000))
    cuda = torch.device("cuda")
    assert epochs.on_gpu(500, cuda) and not epochs.on_gpu(501, cuda)
    assert calls[:2] == ["empty", "info"]  # the allocator's idle blocks are given back before counting
    assert not epochs.on_gpu(1, torch.device("cpu"))


def test_cached_views_refuse_the_pixel_injector(base_args, capsys):
    with pytest.raises(SystemExit):
        train.main(base_args + ["--cache-views", "2", "--image-noise", "pixel"])
    assert "needs the images" in capsys.readouterr().err


def test_offline_weights_exit_with_one_line(base_args, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': no connection")

    monkeypatch.setattr(pini.open_clip, "create_model_and_transforms", offline)
    monkeypatch.setattr(pini, "_check_weights_reachable", lambda name, tag: None)  # as if the host answered
    assert train.main(base_args + ["--model", "ViT-B-16", "--pretrained", "openai"]) == 2
    err = capsys.readouterr().err
    assert "could not download the 'openai' weights" in err and "Traceback" not in err


def test_test_only_sets_are_for_evaluation(base_args, tmp_path, capsys):
    assert train.main(base_args + ["--dataset", "imagenet_sketch"]) == 2
    assert "test-only set" in capsys.readouterr().err
    assert train.main(base_args + ["--dataset", "caltech101", "--shots", "2"]) == 0
    checkpoint = tmp_path / "runs/caltech101/shots_2/seed_1/checkpoint.pt"
    assert train.main(for_eval_only(base_args + ["--dataset", "imagenet_sketch", "--shots", "2", "--eval-only",
                                   "--checkpoint", str(checkpoint)])) == 0
    out = base_args[base_args.index("--output-dir") + 1]
    result = json.loads(open(f"{out}/imagenet_sketch/shots_2/seed_1/eval.json").read())
    assert result["n_train"] == 0 and result["n_test"] == 4 and result["history"]  # the trained run's history
    assert result["trained_on"] == "Caltech101" and result["kind"] == "eval"


def test_noise_maps_follow_what_the_injector_declares(config_dir, monkeypatch, tmp_path):
    """plot_noise draws maps from the injector's own `spatial` (patch grid, pixels, or none), not
    from its option name: an injector registered under a new name gets the maps it declares, and
    each declaration matches the shape of the noise it draws."""
    torch.manual_seed(0)
    clip, tokenizer, _, _ = pini.load_clip(str(config_dir / "tiny-vit.json"), pretrained="none")
    images = torch.randn(2, 3, 32, 32)

    class RenamedPixelInjector(pini.PixelNoiseInjector):
        pass

    monkeypatch.setitem(pini.IMAGE_INJECTORS, "pixel-renamed", RenamedPixelInjector)
    monkeypatch.setattr(pini, "IMAGE_NOISE", (*pini.IMAGE_INJECTORS, "none"))
    for name, injector in pini.IMAGE_INJECTORS.items():
        model = pini.PiNI(clip, tokenizer, CLASSES, image_noise=name)
        mu = model(images, use_mean=True).noise["image"].mu
        expected = {None: mu.shape[-1] == 24, "patch": mu.shape[-2:] == (16, 24),  # 4×4 patches of width 24
                    "pixel": mu.shape == images.shape}
        assert expected[injector.spatial], (name, injector.spatial, tuple(mu.shape))
        path = tmp_path / name / "noise.png"
        ctx = epochs.Context(clip, tokenizer, None, None, torch.device("cpu"), "fp32")
        train.plot_noise(model, [(images, torch.zeros(2))], ctx, path)
        assert path.is_file() and path.with_name("noise_maps.png").is_file() == (injector.spatial is not None), name


def test_a_run_made_with_the_other_activation_is_not_reused(base_args, capsys):
    args = base_args + ["--dataset", "caltech101", "--shots", "1", "--epochs", "1"]
    assert train.main(args + ["--activation", "gelu"]) == 0
    assert read_result(base_args, shots=1)["settings"]["activation"] == "gelu"
    capsys.readouterr()
    assert train.main(args + ["--activation", "quick-gelu"]) == 2
    assert "activation: gelu → quick-gelu" in capsys.readouterr().err


def test_zero_shot_on_a_test_only_set_says_where_its_result_goes(base_args, tmp_path, capsys):
    assert train.main(base_args + ["--dataset", "imagenet_sketch", "--zero-shot"]) == 0
    out = capsys.readouterr().out
    result = tmp_path / "runs/imagenet_sketch/zero_shot/result.json"
    assert f"ImageNetSketch is a test-only set: its zero-shot result goes to {result}, not to a row" in out
    assert result.is_file() and "ImageNetSketch" not in (tmp_path / "runs/summary.md").read_text()


def test_bf16_on_the_cpu_trains_with_clip_cast_once(base_args, monkeypatch):
    """--precision bf16: load_context stores CLIP's matrices in bf16 once (pini.freeze_in_dtype),
    the injectors stay fp32; training, evaluation and zero-shot all run on that CLIP."""
    contexts = []
    real = train.load_context
    monkeypatch.setattr(train, "load_context", lambda *a, **k: contexts.append(real(*a, **k)) or contexts[-1])
    args = base_args + ["--dataset", "caltech101", "--precision", "bf16"]
    assert train.main(args + ["--shots", "2"]) == 0 and train.main(args + ["--zero-shot"]) == 0
    assert 0 <= read_result(base_args)["accuracy"] <= 100
    for ctx in contexts:
        block = ctx.clip.transformer.resblocks[0]
        assert block.mlp.c_fc.weight.dtype == ctx.clip.visual.proj.dtype == torch.bfloat16
        assert block.ln_1.weight.dtype == torch.float32
    fp32 = real(SimpleNamespace(model=base_args[base_args.index("--model") + 1], pretrained="none"),
                None, torch.device("cpu"), "fp32")
    assert {p.dtype for p in fp32.clip.parameters()} == {torch.float32}
