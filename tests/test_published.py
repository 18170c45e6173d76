"""published.py: the set-up check against published zero-shot CLIP accuracy (issue 13)."""
import re

import pytest

from experiments import datasets
from experiments import published
from experiments.published import ZERO_SHOT, published_zero_shot, setup_check

# ViT-B/16 pairs without a stored readable source (see published.py, "Missing, and why").
# Adding a number later means removing its name here: a deliberate change.
EXPECTED_MISSING_VIT_B16 = {"Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                            "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101"}


def test_lookup_accepts_both_spellings_of_the_model():
    assert published_zero_shot("ViT-B-16", "openai", "ImageNet") == ZERO_SHOT[("ViT-B-16", "openai", "ImageNet")]
    assert published_zero_shot("ViT-B/16", "openai", "ImageNet") == published_zero_shot("ViT-B-16", "openai",
                                                                                          "ImageNet")
    assert published_zero_shot("ViT-B/16", "openai", "ImageNet")[0] == pytest.approx(66.72)
    assert published_zero_shot("RN50", "openai", "ImageNetA")[0] == pytest.approx(21.83)


def test_lookup_is_none_for_other_weights_models_and_unsourced_pairs():
    assert published_zero_shot("ViT-B-16", "laion2b_s34b_b88k", "ImageNet") is None
    assert published_zero_shot("ViT-L-14", "openai", "ImageNet") is None
    assert published_zero_shot("ViT-B-16", "openai", "Caltech101") is None  # listed, but no source yet
    assert published_zero_shot("ViT-B-16", "openai", "my_folder") is None


def test_a_match_within_one_point_does_not_warn():
    message, warn = setup_check(66.30, "ViT-B/16", "openai", "ImageNet")
    assert not warn
    assert message.startswith("published: 66.72% (ProText")
    assert "measured 66.30%" in message and "matches within 1 point" in message


def test_exactly_one_point_away_still_matches():
    assert setup_check(57.16, "RN50", "openai", "ImageNet")[1] is False
    assert setup_check(59.16, "RN50", "openai", "ImageNet")[1] is False


def test_more_than_one_point_away_warns_either_way():
    low, warn_low = setup_check(64.0, "ViT-B-16", "openai", "ImageNet")
    high, warn_high = setup_check(68.0, "ViT-B-16", "openai", "ImageNet")
    assert warn_low and warn_high
    assert "differs by -2.72 points" in low and "differs by +1.28 points" in high
    assert "66.72%" in low and "measured 64.00%" in low
    assert "split" in low  # says what to check


def test_tolerance_is_a_parameter():
    assert setup_check(64.0, "ViT-B-16", "openai", "ImageNet", tolerance=3.0)[1] is False
    assert setup_check(66.5, "ViT-B-16", "openai", "ImageNet", tolerance=0.1)[1] is True


def test_unknown_pair_says_so_and_never_warns():
    message, warn = setup_check(12.3, "ViT-B/16", "openai", "EuroSAT")
    assert (message, warn) == ("no published zero-shot number for ViT-B-16/openai on EuroSAT", False)
    message, warn = setup_check(0.1, "RN50", "none", "ImageNet")
    assert (message, warn) == ("no published zero-shot number for RN50/none on ImageNet", False)


def test_every_entry_has_a_source_and_a_plausible_accuracy():
    known = {key: value for key, value in ZERO_SHOT.items() if value is not None}
    assert known, "the table has no numbers"
    for key, (accuracy, source) in known.items():
        assert isinstance(accuracy, float) and 0 < accuracy < 100, key
        assert isinstance(source, str) and source.strip(), key
        assert "github.com/" in source, key  # names where it was read


def test_table_keys_are_open_clip_names_and_coop_dataset_names():
    names = {info.name for info in datasets.DATASETS.values()}
    for model, pretrained, name in ZERO_SHOT:
        assert "/" not in model and pretrained == "openai"
        assert name in names, name
    benchmark = {datasets.DATASETS[alias].name for alias in datasets.BENCHMARK}
    assert set(published.BENCHMARK_NAMES) == benchmark


@pytest.mark.parametrize("model", ["ViT-B-16", "RN50"])
def test_every_benchmark_dataset_is_listed_for_both_models(model):
    for alias in datasets.BENCHMARK:
        assert (model, "openai", datasets.DATASETS[alias].name) in ZERO_SHOT


def test_vit_b16_coverage_is_exactly_what_could_be_sourced():
    missing = {datasets.DATASETS[alias].name for alias in datasets.BENCHMARK
               if published_zero_shot("ViT-B-16", "openai", datasets.DATASETS[alias].name) is None}
    assert missing == EXPECTED_MISSING_VIT_B16


# --- numbers with repository, path and line --------------------------------------------------

SOURCE_WITH_LINE = re.compile(r"github\.com/[\w.-]+/[\w.-]+@[0-9a-f]{7} [\w./-]+ lines? \d+")


def test_every_number_names_repository_commit_path_and_line():
    sources = [source for value in ZERO_SHOT.values() if value for source in [value[1]]]
    sources += [row[3] for rows in published.BASE_TO_NEW.values() for row in rows.values()]
    sources += [row[2] for row in published.FEW_SHOT.values()]
    assert all(SOURCE_WITH_LINE.search(source) for source in sources), [s for s in sources
                                                                         if not SOURCE_WITH_LINE.search(s)]


def test_rn50_has_a_number_for_every_dataset_and_imagenets_is_not_tip_adapters_ensemble():
    for name in published.BENCHMARK_NAMES + published.VARIANT_NAMES:
        assert published_zero_shot("RN50", "openai", name) is not None, name
    accuracy, source = published_zero_shot("RN50", "openai", "ImageNet")
    assert accuracy == pytest.approx(58.16) and "TPT" in source  # Tip-Adapter's 60.32 is a 7-prompt ensemble
    assert all("Tip-Adapter" not in source for (_, _, name), (_, source) in
               ((k, v) for k, v in ZERO_SHOT.items() if v) if name in ("ImageNet", *published.VARIANT_NAMES))
    assert published_zero_shot("RN50", "openai", "EuroSAT") == (37.52, published.tip_adapter(25))
    assert published_zero_shot("RN50", "openai", "StanfordCars")[0] == pytest.approx(55.74)


def test_base_to_new_averages_are_kept_apart_and_consistent():
    rows = published.BASE_TO_NEW["ViT-B-16"]
    assert rows["CLIP"][:3] == (69.34, 74.22, 71.70)
    for method, (base, new, h, _) in rows.items():  # each row's H is the harmonic mean of its base and new
        assert 2 * base * new / (base + new) == pytest.approx(h, abs=0.01), method
    assert published_zero_shot("ViT-B-16", "openai", "Caltech101") is None  # never used as a full-split number


def test_base_to_new_check():
    line, warn = published.base_to_new_check(69.0, 74.5, "ViT-B/16", "openai", 11)
    assert not warn and "69.34/74.22/71.70" in line and "measured 69.00/74.50/71.64" in line
    line, warn = published.base_to_new_check(66.0, 74.5, "ViT-B/16", "openai", 11)
    assert warn and "differs by -3.34/+0.28/-1.71 points" in line
    assert published.base_to_new_check(10.0, 10.0, "ViT-B/16", "openai", 3)[1] is False  # not the 11 datasets
    assert published.base_to_new_check(69.0, 74.5, "RN50", "openai", 11) == (
        "no published base-to-new zero-shot average for RN50/openai", False)


def test_the_base_to_new_table_compares_its_zero_shot_average(tmp_path):
    from experiments import report
    records = [{"kind": "zero-shot", "protocol": "base2new", "dataset": name, "shots": 0, "seed": 0,
                "accuracy": 69.34, "accuracy_new": 74.22, "settings": {"model": "ViT-B-16", "pretrained": "openai"}}
               for name in published.BENCHMARK_NAMES]
    report.write_base_to_new(records, tmp_path, published.BENCHMARK_NAMES)
    text = (tmp_path / "base2new.md").read_text()
    assert "Zero-shot CLIP average: published zero-shot CLIP base/new/H: 69.34/74.22/71.70" in text
    assert "matches within 1 point" in text
