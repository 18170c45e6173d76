"""The training-step benchmark script runs in its smallest setting and reports a ratio."""
import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def test_benchmark_prints_a_ratio(capsys):
    spec = importlib.util.spec_from_file_location("train_step", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ratios = bench.main(["--classes", "5", "--steps", "1", "--batch-size", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert list(ratios) == [5] and ratios[5] > 0
    row = re.search(r"^\s+5\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", out, re.M)
    assert row, out
    this, authors, ratio = map(float, row.groups())
    assert abs(ratio - this / authors) < 0.01 * ratio + 0.01


# ----------------------------------------------------------------------------------------------
# The epoch benchmark
# ----------------------------------------------------------------------------------------------

def load_epoch_script():
    spec = importlib.util.spec_from_file_location("epoch_bench", SCRIPT.parent / "epoch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_profiled_step_is_the_training_step(config_dir, tmp_path):
    """benchmarks/epoch.py times the parts of a step separately, splitting the backward pass at the
    text features: the parameters it reaches must be exactly those train.py's step reaches."""
    import copy
    from types import SimpleNamespace

    import torch

    from experiments import epochs
    import pini

    bench = load_epoch_script()
    items = bench.training_set(tmp_path / "data", classes=3, shots=2, distinct=3)
    torch.manual_seed(0)
    clip, tokenizer, train_tf, _ = pini.load_clip(str(config_dir / "tiny-vit.json"), "none")
    ctx = epochs.Context(clip, tokenizer, train_tf, None, torch.device("cpu"), "fp32")
    options = SimpleNamespace(batch_size=3, workers=0, augment="tensor", cache_views=0, noise_samples=2,
                              ce_weight=1.0, kl_weight=0.1, prior_std=1.0)
    start = pini.PiNI(clip, tokenizer, bench.class_names(3))
    after = {}
    for name in ["train.py", "profiled"]:
        model = copy.deepcopy(start)
        optimizer = bench.sgd(model.trainable_parameters())
        batches_of, _ = epochs.epoch_batches(model, items, options, ctx)
        torch.manual_seed(1)
        if name == "train.py":
            epochs.train_epoch(model, bench.take(batches_of(5), 2), optimizer, None, options, ctx)
        else:
            seconds, count = bench.our_parts(model, batches_of, optimizer, None, options, ctx, 2, seed=5)
            assert count == 2 and set(seconds) == set(bench.PARTS) and all(s > 0 for s in seconds.values())
        after[name] = [p.detach().clone() for p in model.trainable_parameters()]
    before = list(start.trainable_parameters())
    text_mu = start.text_injector.mu
    index = next(i for i, p in enumerate(before) if p is text_mu)
    assert not torch.equal(after["train.py"][index], text_mu)  # the text side was trained: the check can fail
    for ours, profiled in zip(after["train.py"], after["profiled"], strict=True):
        torch.testing.assert_close(profiled, ours, rtol=1e-5, atol=1e-7)


def test_epoch_benchmark_reports_its_parts_and_ratios(config_dir, tmp_path, capsys):
    bench = load_epoch_script()
    results = bench.main(["--model", str(config_dir / "tiny-vit.json"), "--classes", "3", "--shots", "4",
                          "--batch-size", "4", "--workers", "0", "--device", "cpu", "--data", str(tmp_path)])
    out = capsys.readouterr().out
    (r,) = results
    assert r["per_epoch"] == r["timed"] == 3 and r["augment"] == "tensor"  # 12 images, batch 4; auto: they fit
    assert "3 classes × 4 shots, batch 4, CPU" in out and "32×32 px" in out
    floor = float(re.search(r"epoch / image-tower floor: ([\d.]+)x", out).group(1))
    assert abs(floor - r["ours"] / r["parts"]["image tower"]) < 0.01 * floor
    shares = [float(x) for x in re.findall(r"^\s{4}\S.*?\s([\d.]+) %$", out, re.M)]
    assert len(shares) == 5 and abs(sum(shares) - 100) < 0.5


def test_an_epoch_is_projected_from_its_first_batches():
    bench = load_epoch_script()
    assert bench.epoch_seconds([5.0, 1.0, 3.0], per_epoch=10) == 5.0 + 2.0 * 9  # start-up counted once
    assert bench.epoch_seconds([2.0], per_epoch=10) == 20.0
    assert bench.epoch_seconds([5.0, 1.0, 3.0], per_epoch=3) == 9.0  # the whole epoch timed


def test_the_padded_text_baseline_does_the_padded_work():
    """benchmarks/text_side.py times 'every name padded to the longest' by moving each EOT to the
    last position any prompt needs: every prompt then ends there, other tokens unchanged."""
    spec = importlib.util.spec_from_file_location("text_side", SCRIPT.parent / "text_side.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch
    eot = 49407
    tokens = torch.tensor([[5, eot, 0, 0, 0], [5, 6, 7, eot, 0], [8, eot, 0, 0, 0]])
    moved = bench.padded(tokens)
    assert moved.argmax(-1).tolist() == [3, 3, 3] and (moved == eot).sum() == 3
    assert torch.equal(moved[:, :3][tokens[:, :3] != eot], tokens[:, :3][tokens[:, :3] != eot])


def test_the_gpu_checklist_only_uses_flags_the_benchmarks_have():
    """benchmarks/gpu_check.sh is run on a GPU machine nobody can debug from here: every benchmark
    command in it must parse (shell variables replaced by values they take)."""
    import shlex

    script = (SCRIPT.parent / "gpu_check.sh").read_text().replace("\\\n", " ")
    commands = re.findall(r"python3 (benchmarks/\w+\.py)([^|\n]*)", script)
    assert {path for path, _ in commands} == {"benchmarks/train_step.py", "benchmarks/epoch.py",
                                              "benchmarks/augment.py", "benchmarks/step_syncs.py",
                                              "benchmarks/casts.py"}
    for path, rest in commands:
        spec = importlib.util.spec_from_file_location(Path(path).stem + "_checked", SCRIPT.parents[1] / path)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        argv = shlex.split(rest.replace('"$precision"', "fp16").replace('"$WORKERS"', "8").replace("2>&1", ""))
        bench.parser().parse_args(argv)  # SystemExit (and the test fails) on an unknown or malformed flag


def load_script(name):
    spec = importlib.util.spec_from_file_location(name + "_bench", SCRIPT.parent / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_augmentation_benchmark_prints_its_ratio_and_setting(capsys):
    ratio = load_script("augment").main(["--batch-size", "2", "--width", "40", "--height", "30", "--batches", "1"])
    out = capsys.readouterr().out
    assert "2 images of 40×30 px" in out and "CPU" in out and "224×224" in out
    before, after = (float(x) for x in re.findall(r"([\d.]+) ms/batch", out))
    printed = float(re.search(r"ratio \(per image / batched\): ([\d.]+)x", out).group(1))
    assert abs(printed - ratio) < 0.01 and abs(ratio - before / after) < 0.05 * ratio + 0.05


def test_the_step_benchmark_counts_no_host_read_in_a_step(config_dir, capsys):
    results = load_script("step_syncs").main(["--model", str(config_dir / "tiny-vit.json"), "--classes", "5",
                                              "--batch-size", "2", "--steps", "1"])
    out = capsys.readouterr().out
    assert results[5]["reads"] == 0 and results[5]["ops"] > 100
    assert re.search(r"^\s+5\s+0\.0\s+n/a\s+\d+$", out, re.M), out


def test_the_cast_benchmark_counts_fewer_casts_with_clip_cast_once(config_dir, capsys):
    results = load_script("casts").main(["--model", str(config_dir / "tiny-vit.json"), "--classes", "5",
                                         "--batch-size", "2"])
    out = capsys.readouterr().out
    before, after = results[5]["before"], results[5]["after"]
    assert after["casts"] < 0.6 * before["casts"] and after["weight casts"] <= 0.1 * before["weight casts"]
    assert "tiny-vit.json" in out and "batch 2" in out and "CPU" in out and "bf16" in out
    rows = re.search(r"^\s+5" + r"\s+(\d+) ->\s+(\d+)\s+([\d.]+)" * 4 + "$", out, re.M)
    assert rows, out
    columns = ["ops", "kernels", "casts", "weight casts"]
    for k, (start, end, ratio) in zip(columns, zip(*[iter(rows.groups())] * 3)):
        assert (int(start), int(end)) == (before[k], after[k])
        assert abs(float(ratio) - after[k] / before[k]) < 0.006
    assert after["kernels"] < before["kernels"] < before["ops"]
