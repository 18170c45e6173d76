"""Published zero-shot CLIP accuracies, for a set-up check (issue 13).

What the check is for
---------------------
`python train.py --dataset X --zero-shot` measures CLIP with CoOp's hand-crafted
prompt (datasets.py, `DatasetInfo.zero_shot`) on CoOp's test split. Zero-shot CLIP
involves no training and no seed, so the measured number should land on the
published one. Printing the two side by side tells a newcomer within a minute
whether the weights, the images, the class names and the split are right: a
difference of more than 1 point means one of them is not what the papers used.

What counts as "the same"
-------------------------
Only numbers for the same CLIP weights, the same single hand-crafted prompt as
CoOp's `CUSTOM_TEMPLATES` (KaiyangZhou/CoOp, trainers/zsclip.py) and the full test
set of the same split are recorded here. Not recorded, on purpose:
- base-to-new numbers (CoCoOp Table 1, and the CLIP rows in the MaPLe, KgCoOp,
  PromptSRC and ProText READMEs: 69.34 / 74.22 / 71.70): half the classes each;
- prompt-ensemble numbers (e.g. "Ensembled prompt" in TPT, the CLIP rows of TDA's
  README): another prompt;
- "a photo of a {}." results on datasets whose CoOp prompt is another one
  (Pets, Flowers, Food101, Aircraft, DTD, EuroSAT, UCF101).

Sources (every number below was read in the file named beside it)
-----------------------------------------------------------------
- ProText (Khattak et al., AAAI 2025), github.com/muzairkhattak/ProText, README.md
  at f63d96b, table "ProText fares well in comparison with Prompt Ensembling
  methods", row "CLIP (ICML'21)". Backbone ViT-B/16
  (configs/trainers/ProText/text_only_supervised/imagenet.yaml), evaluated by
  trainers/zsclip_cupl.py with CoOp's CUSTOM_TEMPLATES ("a photo of a {}.").
- TPT (Shu et al., NeurIPS 2022), github.com/azshue/TPT, README.md at 63ecbac,
  table "Out-of-Distribution Generalization", row "CLIP-RN50". The prompt is
  "a photo of a" (scripts/test_tpt.sh: ctx_init=a_photo_of_a), which is CoOp's
  prompt for ImageNet and its four variants.
- Tip-Adapter (Zhang et al., ECCV 2022), github.com/gaopengcuhk/Tip-Adapter, exp.log
  at 30d2598: the line "<dataset>: <accuracy>" that opens each dataset's block is
  zero-shot CLIP, the baseline of the paper's Figures 4 and 5 (README.md line 45
  points to this file for those figures' numbers). Backbone RN50 (configs/*.yaml),
  CoOp's split files (datasets/*.py: OxfordPets.read_split) and, for the 10 datasets
  other than ImageNet, CoOp's single hand-crafted prompt (datasets/<name>.py,
  `template`); main.py reports the zero-shot accuracy on the test split. Its
  ImageNet line (60.32) is NOT recorded: datasets/imagenet.py uses a 7-prompt
  ensemble (`imagenet_templates`), not CoOp's "a photo of a {}.".

Base-to-new (CoCoOp's protocol, ViT-B/16, averages over the 11 datasets) are kept
apart, in BASE_TO_NEW: half the classes each, so they never enter ZERO_SHOT.

Missing, and why
----------------
The per-dataset zero-shot numbers of CoOp (IJCV 2022: Fig. 3 and its released
spreadsheet) and CoCoOp (CVPR 2022, Table 3: ViT-B/16 on ImageNet and its variants)
were not readable in any stored file or page here (the papers are PDFs; the
spreadsheet is on Google Drive). Pairs without a readable source are listed with
None in ZERO_SHOT, and the check then says that there is no published number.
Add a number only with the file, table and row it was read in.
"""
from __future__ import annotations

from typing import Optional

PROTEXT = ("ProText, AAAI 2025: README table 'ProText fares well in comparison with Prompt Ensembling methods', "
           "row CLIP (github.com/muzairkhattak/ProText@f63d96b README.md line 101)")
TPT = ("TPT, NeurIPS 2022: README table 'Out-of-Distribution Generalization', row CLIP-RN50 "
       "(github.com/azshue/TPT@63ecbac README.md line 80)")


def tip_adapter(line: int) -> str:
    return (f"Tip-Adapter, ECCV 2022: zero-shot CLIP RN50 with CoOp's prompt "
            f"(github.com/gaopengcuhk/Tip-Adapter@30d2598 exp.log line {line})")


MAPLE = "github.com/muzairkhattak/multimodal-prompt-learning@69bce21 README.md"
PROMPTSRC = "github.com/muzairkhattak/PromptSRC@bb95c77 README.md"

BENCHMARK_NAMES = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                   "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101")
VARIANT_NAMES = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")

# (open_clip model, pretrained tag, CoOp dataset name) -> (top-1 % on the full test set, source), or None: unknown
ZERO_SHOT: dict[tuple[str, str, str], Optional[tuple[float, str]]] = {
    **{("ViT-B-16", "openai", name): None for name in BENCHMARK_NAMES + VARIANT_NAMES},
    **{("RN50", "openai", name): None for name in BENCHMARK_NAMES + VARIANT_NAMES},

    ("ViT-B-16", "openai", "ImageNet"): (66.72, PROTEXT),

    ("RN50", "openai", "ImageNet"): (58.16, TPT),
    ("RN50", "openai", "ImageNetA"): (21.83, TPT),
    ("RN50", "openai", "ImageNetV2"): (51.41, TPT),
    ("RN50", "openai", "ImageNetR"): (56.15, TPT),
    ("RN50", "openai", "ImageNetSketch"): (33.37, TPT),

    ("RN50", "openai", "SUN397"): (58.52, tip_adapter(9)),
    ("RN50", "openai", "OxfordPets"): (85.83, tip_adapter(17)),
    ("RN50", "openai", "EuroSAT"): (37.52, tip_adapter(25)),
    ("RN50", "openai", "Caltech101"): (85.92, tip_adapter(33)),
    ("RN50", "openai", "DescribableTextures"): (42.20, tip_adapter(41)),
    ("RN50", "openai", "FGVCAircraft"): (17.10, tip_adapter(49)),
    ("RN50", "openai", "Food101"): (77.32, tip_adapter(57)),
    ("RN50", "openai", "OxfordFlowers"): (66.02, tip_adapter(65)),
    ("RN50", "openai", "UCF101"): (61.35, tip_adapter(73)),
    ("RN50", "openai", "StanfordCars"): (55.74, tip_adapter(81)),
}

# Base-to-new (CoCoOp's protocol), ViT-B/16, averaged over the 11 datasets (3 seeds):
# method -> (base %, new %, H %, source). "CLIP" is zero-shot CLIP with CoOp's hand-crafted prompts
# on each half: what `--protocol base2new`'s "zero-shot CLIP" average row should reproduce.
BASE_TO_NEW: dict[str, dict[str, tuple[float, float, float, str]]] = {
    "ViT-B-16": {
        "CLIP": (69.34, 74.22, 71.70, f"{MAPLE} line 101"),
        "CoOp": (82.69, 63.22, 71.66, f"{MAPLE} line 102"),
        "CoCoOp": (80.47, 71.69, 75.83, f"{MAPLE} line 103"),
        "MaPLe": (82.28, 75.14, 78.55, f"{MAPLE} line 104"),
        "PromptSRC": (84.26, 76.10, 79.97, f"{PROMPTSRC} line 125"),
    },
}

# Few-shot anchors readable in a stored source: (method, model, dataset, shots) -> (mean %, std %, source).
# CoOp's COOP.md shows its own 3-seed result as the example output of parse_test_res.py.
FEW_SHOT = {
    ("CoOp", "RN50", "Caltech101", 16): (92.00, 0.15, "github.com/KaiyangZhou/CoOp@5425db1 COOP.md lines 73-78 "
                                                      "(example output: seeds 91.81, 92.01, 92.17)"),
}


def base_to_new_check(base: float, new: float, model: str, pretrained: str, n_datasets: int,
                      tolerance: float = 1.0) -> tuple[str, bool]:
    """One line comparing a measured zero-shot CLIP base-to-new average (over the 11 benchmark
    datasets) with the published one, and whether to warn (more than `tolerance` points on base,
    new or H). Never warns without a published number or over fewer than 11 datasets."""
    found = BASE_TO_NEW.get(model_key(model), {}).get("CLIP") if pretrained == "openai" else None
    if found is None:
        return f"no published base-to-new zero-shot average for {model_key(model)}/{pretrained}", False
    if n_datasets != len(BENCHMARK_NAMES):
        return (f"published base-to-new zero-shot average (11 datasets) not compared: this table has "
                f"{n_datasets}"), False
    p_base, p_new, p_h, source = found
    h = 2 * base * new / (base + new) if base + new else 0.0
    gaps = (base - p_base, new - p_new, h - p_h)
    line = (f"published zero-shot CLIP base/new/H: {p_base:.2f}/{p_new:.2f}/{p_h:.2f} ({source}) — measured "
            f"{base:.2f}/{new:.2f}/{h:.2f}")
    if max(abs(g) for g in gaps) <= tolerance:
        return f"{line}: matches within {tolerance:g} point{'s' if tolerance != 1 else ''}", False
    return (f"{line}: differs by {'/'.join(f'{g:+.2f}' for g in gaps)} points (more than {tolerance:g}); "
            "check the CLIP weights, the images, the class names and the splits"), True


def model_key(model: str) -> str:
    """open_clip's spelling of a CLIP model name: 'ViT-B/16' -> 'ViT-B-16'."""
    return model.strip().replace("/", "-")


def published_zero_shot(model: str, pretrained: str, dataset_name: str) -> Optional[tuple[float, str]]:
    """(accuracy in %, source) published for this CLIP and dataset with CoOp's prompt, or None if unknown."""
    return ZERO_SHOT.get((model_key(model), pretrained, dataset_name))


def setup_check(measured: float, model: str, pretrained: str, dataset_name: str,
                tolerance: float = 1.0) -> tuple[str, bool]:
    """One line comparing a measured zero-shot accuracy (%) with the published one, and whether to warn.

    Warns when they differ by more than `tolerance` points; never warns without a published number."""
    found = published_zero_shot(model, pretrained, dataset_name)
    if found is None:
        return f"no published zero-shot number for {model_key(model)}/{pretrained} on {dataset_name}", False
    published, source = found
    gap = measured - published
    line = f"published: {published:.2f}% ({source}) — measured {measured:.2f}%"
    if abs(gap) <= tolerance:
        return f"{line}: matches within {tolerance:g} point{'s' if tolerance != 1 else ''}", False
    return (f"{line}: differs by {gap:+.2f} points (more than {tolerance:g}); "
            "check the CLIP weights, the images, the class names and the split"), True
