"""Tables and plots, computed from result records alone (no model, no images).

    summary_rows(records)              -> the accuracy table: dataset × shots, mean ± std over seeds
    write_summary(records, out)        -> summary.md, summary.csv, accuracy_vs_shots.png
    write_ablation(rows, folder, title)-> ablation.md, ablation.csv, ablation.png
    write_reports(out, ablation, order)-> all of them, from every record in an output folder
    plot_noise(panels, path)           -> what the injectors learned (noise.png)
    plot_noise_maps(images, mu, sigma, kind, path) -> image, μ map, σ map (noise_maps.png)

A record is a dict as `train.py` writes it to result.json / eval.json: at least "dataset",
"shots" (0 for zero-shot CLIP), "seed", "accuracy" and "settings". Every table counts a
(dataset, variant, shots, seed) once, however many files hold it.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files, never open windows
import matplotlib.pyplot as plt  # noqa: E402
from scipy import stats  # noqa: E402

from experiments import published  # noqa: E402
from experiments.files import atomic_write, atomic_write_text  # noqa: E402  (every file whole or not at all: shards share the folder)
from experiments.runs import find_records  # noqa: E402


def _write_text(path: Path, text: str):
    atomic_write_text(path, text)


def _write_csv(path: Path, rows):
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    _write_text(path, buffer.getvalue())


def _save_figure(fig, path: Path):
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def mean_std(values) -> tuple:
    """(mean, sample standard deviation), the std taken as 0 for a single value."""
    values = list(values)
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values) -> str:
    if not values:
        return ""
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def unique_runs(records) -> list:
    """One record per (dataset, variant, shots, seed): a training result wins over an evaluation
    of the same run, and the first found wins otherwise."""
    chosen = {}
    for record in sorted(records, key=lambda r: r.get("kind") == "eval"):
        key = (record["dataset"], record.get("variant", ""), record["shots"], record["seed"])
        chosen.setdefault(key, record)
    return list(chosen.values())


def in_order(names, order=()) -> list:
    """`names` sorted as in `order` (the benchmark's order), the others after them alphabetically."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n.split(" (")[0], len(rank)), n))


NOT_COOP_SPLIT = "not CoOp's official split"


def split_note(record) -> str:
    """What a summary row says about a run's split: "" for CoOp's official split (or none at all)."""
    split = (record.get("settings") or {}).get("split") or {}
    return NOT_COOP_SPLIT if split.get("official") is False else ""


def summary_cells(records, order=(), notes=None) -> dict:
    """{row label: {column: [accuracies over seeds]}}; columns are shots, "zero-shot" for 0.
    A dataset with runs of more than one variant gets one row per variant. `notes`, a dict if
    given, receives each row's split note (split_note) where there is one."""
    runs = unique_runs(records)
    variants = {}
    for r in runs:
        if r["shots"]:
            variants.setdefault(r["dataset"], set()).add(r.get("variant", ""))
    cells = {}
    for r in runs:
        several = len(variants.get(r["dataset"], ())) > 1
        label = f"{r['dataset']} ({r.get('variant', '')})" if several and r["shots"] else r["dataset"]
        column = "zero-shot" if r["shots"] == 0 else r["shots"]
        cells.setdefault(label, {}).setdefault(column, []).append(r["accuracy"])
        if notes is not None and split_note(r):
            notes[label] = split_note(r)
    return {label: cells[label] for label in in_order(cells, order)}


def write_summary(records, out: Path, order=()) -> str:
    """Mean ± std over seeds per dataset × shots (markdown + CSV), and accuracy vs. shots (PNG).
    A last column "split" appears when a row's runs used a split that is not CoOp's official one."""
    notes = {}
    cells = summary_cells(records, order, notes)
    columns = sorted({c for row in cells.values() for c in row}, key=lambda c: -1 if c == "zero-shot" else c)
    extra = ["split"] if notes else []
    header = ["dataset"] + [c if c == "zero-shot" else f"{c}-shot" for c in columns] + extra
    rows = [[name] + [fmt(row.get(c, [])) for c in columns] + [notes.get(name, "")] * len(extra)
            for name, row in cells.items()]
    means = [[mean_std(row[c])[0] for row in cells.values() if c in row] for c in columns]
    counts = {len(m) for m in means}
    label = (f"average ({len(cells)} dataset{'s' * (len(cells) != 1)})" if counts == {len(cells)} else
             "average (of the datasets with a number in the column)")
    rows.append([label] + [f"{statistics.mean(m):.2f}" if m else "" for m in means] + [""] * len(extra))
    table = _markdown(header, rows)
    _write_text(out / "summary.md", "Top-1 test accuracy (%), mean ± std over seeds.\n\n" + table + "\n")
    csv_rows = [["dataset", "shots", "mean", "std", "n_seeds"] + extra]
    for name, row in cells.items():
        for c in columns:
            if row.get(c):
                mean, std = mean_std(row[c])
                csv_rows.append([name, 0 if c == "zero-shot" else c, f"{mean:.4f}", f"{std:.4f}", len(row[c])]
                                + [notes.get(name, "")] * len(extra))
    _write_csv(out / "summary.csv", csv_rows)
    _plot_accuracy_vs_shots(cells, columns, out / "accuracy_vs_shots.png")
    return table


def _markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _plot_accuracy_vs_shots(cells, columns, path: Path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in cells.items():
        shots = [c for c in columns if c != "zero-shot" and c in row]
        if shots:
            ax.plot(shots, [mean_std(row[c])[0] for c in shots], "o-", label=name)
        if "zero-shot" in row:
            ax.axhline(mean_std(row["zero-shot"])[0], ls=":", color="gray")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("PiNI few-shot accuracy (dotted: zero-shot CLIP)")
    if any(not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend(fontsize=7)
    _save_figure(fig, path)


def paired_difference(runs: dict, reference: dict, level: float = 0.95):
    """{seed: accuracy} of a variant and of the reference -> (mean difference, low, high, n) over the seeds
    both have, with a Student-t interval at `level`; None below two shared seeds (no spread to measure)."""
    seeds = sorted(set(runs) & set(reference))
    if len(seeds) < 2:
        return None
    diffs = [runs[s] - reference[s] for s in seeds]
    mean = statistics.mean(diffs)
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half, len(diffs)


def write_ablation(rows, folder: Path, title: str, reference: str = "") -> str:
    """rows: [(variant, [records over seeds])] -> ablation.md, ablation.csv, ablation.png in `folder`.
    A variant with no finished run says so (not run yet, or the patch injector on a ResNet tower).
    With a `reference` row (the σ = 0 control), each other row also gets its accuracy difference to it,
    paired by seed, with a 95 % t-interval: when seeds vary more than variants, unpaired mean ± std hide it."""
    header = ["variant", "accuracy (%)", f"Δ vs {reference or 'reference'}, paired 95 % interval",
              "trainable parameters", "training time (s)"]
    lines, csv_rows = [], [["variant", "mean", "std", "n_seeds", "paired_delta", "paired_low", "paired_high",
                            "n_pairs", "trainable_parameters", "train_seconds"]]
    rows = [(variant, unique_runs(records)) for variant, records in rows]
    by_seed = {variant: {r["seed"]: r["accuracy"] for r in records} for variant, records in rows}
    for variant, records in rows:
        if not records:
            why = "needs a ViT image tower, or " if "patch" in variant else ""
            lines.append([variant, f"no finished run ({why}not run yet)", "", "", ""])
            continue
        mean, std = mean_std(r["accuracy"] for r in records)
        params = records[0].get("trainable_parameters", 0)
        seconds = statistics.mean(r.get("train_seconds", 0.0) for r in records)
        paired = paired_difference(by_seed[variant], by_seed.get(reference, {})) if variant != reference else None
        delta = f"{paired[0]:+.2f} [{paired[1]:+.2f}, {paired[2]:+.2f}], {paired[3]} seeds" if paired else ""
        lines.append([variant, f"{mean:.2f} ± {std:.2f}", delta, f"{params:,}", f"{seconds:.1f}"])
        csv_rows.append([variant, f"{mean:.4f}", f"{std:.4f}", len(records),
                         *([f"{v:.4f}" for v in paired[:3]] + [paired[3]] if paired else ["", "", "", ""]),
                         params, f"{seconds:.2f}"])
    _write_csv(folder / "ablation.csv", csv_rows)
    table = _markdown(header, lines)
    note = (" Δ: accuracy minus the reference's on the same seed, mean and 95 % Student-t interval over the "
            "seeds both have (two or more); each row's interval on its own, not corrected for the number of rows."
            if reference else "")
    _write_text(folder / "ablation.md", f"{title}: top-1 test accuracy, mean ± std over seeds.{note}\n\n{table}\n")
    measured = [(v, [r["accuracy"] for r in records]) for v, records in rows if records]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(measured) + 1.2))
    ax.barh([v for v, _ in measured], [mean_std(a)[0] for _, a in measured],
            xerr=[mean_std(a)[1] for _, a in measured], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(title)
    _save_figure(fig, folder / "ablation.png")
    return table


def write_reports(out: Path, ablation, order=(), test_only=()):
    """Every summary and ablation table in the output folder, rebuilt from its records alone
    (`--summarize`, and the end of every call). `ablation`: [(variant name, overrides or None for
    the zero-shot control)], the rows of an ablation table in order; `order`: dataset names;
    `test_only`: datasets that are only ever test targets (no row of the few-shot summary)."""
    everything = find_records(out)
    if not everything:  # nothing to tabulate: earlier tables (someone's, or of moved results) stay
        print(f"no results in {out}: no table written")
        return
    records = [r for r in everything if r.get("protocol", "few-shot") == "few-shot"]
    base2new = [r for r in everything if r.get("protocol") == "base2new"]
    if base2new:
        print(write_base_to_new(base2new, out, order))
    for protocol in sorted({r["protocol"] for r in everything if r["kind"] == "eval"} & {"domain", "cross-dataset"}):
        print(write_transfer(everything, protocol, out, order))
    tables = {}  # <alias>/shots_<k> -> (dataset, shots)
    for r in records:
        if r.get("ablation") and r["shots"]:
            tables.setdefault(Path(*Path(r["record_path"]).parts[:2]), (r["dataset"], r["shots"]))
    for folder, (name, shots) in sorted(tables.items()):
        mine = [r for r in records if r["dataset"] == name]
        rows = [(variant, [r for r in mine if r["kind"] == "zero-shot"] if overrides is None else
                 [r for r in mine if r.get("ablation") == variant and r["shots"] == shots])
                for variant, overrides in ablation]
        seeds = sorted({r["seed"] for _, rs in rows for r in rs if r["shots"]})
        reference = next((v for v, overrides in ablation if overrides == {"control": "no-sigma"}), "")
        print(write_ablation(rows, out / folder, f"{name}, {shots} shots, seeds {' '.join(map(str, seeds))}", reference))
    default = ablation[0][0]  # the default PiNI's ablation row is the same run as a plain call's
    trained = [r for r in records if r["kind"] != "eval" and r.get("ablation", "") in ("", default)
               and r["dataset"] not in test_only]
    print(write_summary(trained, out, order))  # evaluations of checkpoints (eval.json) are not table rows


def harmonic_mean(base: float, new: float) -> float:
    """H = 2·base·new / (base + new), the base-to-new protocol's summary (CoCoOp)."""
    return 2 * base * new / (base + new) if base + new else 0.0


def write_base_to_new(records, out: Path, order=()) -> str:
    """Base-to-new (CoCoOp's protocol): per dataset, base and new accuracy (mean ± std over seeds)
    and their harmonic mean H, for zero-shot CLIP and PiNI, and the average over datasets (H of
    the averages, as CoCoOp reports it). base2new.md, base2new.csv, base2new.png."""
    methods = {"zero-shot CLIP": [r for r in records if r["kind"] == "zero-shot"],
               "PiNI": [r for r in unique_runs(records) if r["kind"] == "train"]}
    names = in_order({r["dataset"] for r in records}, order)
    header, rows, csv_rows = ["dataset"], [], [["dataset", "method", "base", "base_std", "new", "new_std", "H", "n_seeds"]]
    for method in methods:
        header += [f"{method} base", "new", "H"]
    means = {method: [] for method in methods}
    for name in names:
        row = [name]
        for method, found in methods.items():
            runs_ = [r for r in found if r["dataset"] == name]
            if not runs_:
                row += ["", "", ""]
                continue
            (base, base_std), (new, new_std) = mean_std(r["accuracy"] for r in runs_), mean_std(r["accuracy_new"] for r in runs_)
            means[method].append((base, new))
            row += [f"{base:.2f} ± {base_std:.2f}", f"{new:.2f} ± {new_std:.2f}", f"{harmonic_mean(base, new):.2f}"]
            csv_rows.append([name, method, f"{base:.4f}", f"{base_std:.4f}", f"{new:.4f}", f"{new_std:.4f}",
                             f"{harmonic_mean(base, new):.4f}", len(runs_)])
        rows.append(row)
    average = [f"average ({len(names)} datasets)"]
    for method in methods:
        if means[method]:
            base, new = (statistics.mean(v) for v in zip(*means[method]))
            average += [f"{base:.2f}", f"{new:.2f}", f"{harmonic_mean(base, new):.2f}"]
        else:
            average += ["", "", ""]
    table = _markdown(header, rows + [average])
    zero_shot = methods["zero-shot CLIP"]
    if means["zero-shot CLIP"]:  # the zero-shot row's average against the published one (set-up check)
        settings = zero_shot[0].get("settings") or {}
        base, new = (statistics.mean(v) for v in zip(*means["zero-shot CLIP"]))
        check, _ = published.base_to_new_check(base, new, settings.get("model", ""), settings.get("pretrained", ""),
                                               len(means["zero-shot CLIP"]))
        table += f"\n\nZero-shot CLIP average: {check}."
    _write_text(out / "base2new.md", "Base-to-new generalisation (CoCoOp's protocol): trained on the base half of "
                "each dataset's classes, tested on base and on the unseen new half; top-1 accuracy (%), mean ± std "
                "over seeds; H = harmonic mean of base and new.\n\n" + table + "\n")
    _write_csv(out / "base2new.csv", csv_rows)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3.5))
    for k, (method, found) in enumerate(methods.items()):
        hs = [harmonic_mean(*(mean_std(r[key] for r in found if r["dataset"] == n)[0] for key in ("accuracy", "accuracy_new")))
              if any(r["dataset"] == n for r in found) else 0.0 for n in names]
        ax.bar([i + 0.4 * k for i in range(len(names))], hs, width=0.4, label=method)
    ax.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=30, ha="right")
    ax.set_ylabel("H (%)")
    ax.set_title("base-to-new: harmonic mean of base and new accuracy")
    ax.legend(fontsize=7)
    _save_figure(fig, out / "base2new.png")
    return table


def write_transfer(records, protocol: str, out: Path, order=()) -> str:
    """Domain generalisation or cross-dataset transfer: ImageNet (the source) and every target,
    for zero-shot CLIP (each dataset's own prompt) and PiNI trained on ImageNet (one row per shots),
    mean ± std over seeds, and the average over the targets. <protocol>.md, .csv and .png."""
    tests = [r for r in records if r["kind"] == "eval" and r.get("protocol") == protocol]
    targets = in_order({r["dataset"] for r in tests}, order)
    plain = [r for r in unique_runs(records) if r.get("protocol", "few-shot") == "few-shot" and not r.get("ablation")]
    zero = {r["dataset"]: [r["accuracy"]] for r in plain if r["kind"] == "zero-shot"}
    table_rows = {"zero-shot CLIP": zero}
    for shots in sorted({r["shots"] for r in tests}):
        seeds = {r["seed"] for r in tests if r["shots"] == shots}
        cells = {t: [r["accuracy"] for r in tests if r["dataset"] == t and r["shots"] == shots] for t in targets}
        cells["ImageNet"] = [r["accuracy"] for r in plain if r["kind"] == "train" and r["dataset"] == "ImageNet"
                             and r["shots"] == shots and r["seed"] in seeds]
        table_rows[f"PiNI ({shots} shots)"] = cells
    header = ["method", "ImageNet (source)", *targets, "average (targets)"]
    rows, csv_rows = [], [["method", "dataset", "mean", "std", "n_seeds"]]
    for method, cells in table_rows.items():
        means = [mean_std(cells[t])[0] for t in targets if cells.get(t)]
        rows.append([method, fmt(cells.get("ImageNet", [])), *(fmt(cells.get(t, [])) for t in targets),
                     f"{statistics.mean(means):.2f}" if len(means) == len(targets) and means else ""])
        csv_rows += [[method, name, *(f"{v:.4f}" for v in mean_std(cells[name])), len(cells[name])]
                     for name in ["ImageNet", *targets] if cells.get(name)]
    title = {"domain": "Domain generalisation", "cross-dataset": "Cross-dataset transfer"}[protocol]
    table = _markdown(header, rows)
    stem = protocol.replace("-", "_")
    _write_text(out / f"{stem}.md", f"{title}: trained on ImageNet, tested unchanged on each target (PiNI keeps "
                "its ImageNet prompt template, over whose tokens its text noise was learned); top-1 accuracy (%), "
                "mean ± std over seeds.\n\n" + table + "\n")
    _write_csv(out / f"{stem}.csv", csv_rows)
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * (len(targets) + 1)), 3.5))
    for k, (method, cells) in enumerate(table_rows.items()):
        values = [mean_std(cells[n])[0] if cells.get(n) else 0.0 for n in ["ImageNet", *targets]]
        ax.bar([i + k / (len(table_rows) + 1) for i in range(len(values))], values,
               width=1 / (len(table_rows) + 1), label=method)
    ax.set_xticks(range(len(targets) + 1), ["ImageNet", *targets], rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save_figure(fig, out / f"{stem}.png")
    return table


# -----------------------------------------------------------------------------------------
# What the injectors learned
# -----------------------------------------------------------------------------------------

def plot_noise(panels: dict, path: Path):
    """panels: {"text": (kind, mu, sigma), "image": (kind, mu, sigma)} as NumPy arrays.

    Text noise on tokens: μ, σ of shape (n, W), shown per noised token position; text noise on
    features: (C, D), shown per class; image noise: histograms of μ and σ over dimensions."""
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.5), squeeze=False)
    for ax, (name, (kind, mu, sigma)) in zip(axes[0], panels.items()):
        if name == "text":
            ax.bar(range(len(sigma)), sigma.reshape(len(sigma), -1).mean(-1), label="mean σ")
            ax.plot(abs(mu).reshape(len(mu), -1).mean(-1), "k.-", label="mean |μ|")
            ax.set_xlabel("noised token position (placeholders, then the template)" if kind == "tokens" else "class")
            ax.set_ylabel("averaged over the embedding")
            ax.set_title(f"text noise ({kind})")
        else:
            ax.hist(mu.flatten(), bins=50, alpha=0.6, label="μ")
            ax.hist(sigma.flatten(), bins=50, alpha=0.6, label="σ")
            ax.set_xlabel("value per noise dimension (a few test images)")
            ax.set_ylabel("count")
            ax.set_title(f"image noise ({kind})")
        ax.legend()
    _save_figure(fig, path)


def plot_noise_maps(images, mu_map, sigma_map, kind: str, path: Path):
    """Image, μ map and σ map side by side, one row per test image (NumPy arrays:
    images (B, 3, H, W); maps (B, h, w) — per patch for the patch injector, per pixel otherwise)."""
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 3 * len(images)), squeeze=False)
    unit = "patch" if kind == "patch" else "pixel"
    for row, image in enumerate(images):
        shown = (image - image.min()) / (image.max() - image.min() + 1e-8)
        axes[row, 0].imshow(shown.transpose(1, 2, 0))
        axes[row, 0].set_title("test image")
        for col, (values, title, cmap) in enumerate([(mu_map, "|μ|" if kind == "patch" else "μ", "coolwarm"),
                                                     (sigma_map, "σ", "magma")], start=1):
            im = axes[row, col].imshow(values[row], cmap=cmap)
            fig.colorbar(im, ax=axes[row, col])
            axes[row, col].set_title(f"{title} per {unit}")
    for ax in axes.flat:
        ax.axis("off")
    _save_figure(fig, path)
