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
           "row CLIP (github.com/muzairkhattak/ProText@f63d96b)")
TPT = ("TPT, NeurIPS 2022: README table 'Out-of-Distribution Generalization', row CLIP-RN50 "
       "(github.com/azshue/TPT@63ecbac)")

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
}


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
