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
