"""The network a tag's weights were trained with: QuickGELU for OpenAI's CLIP, by open_clip's own metadata.

No weights are downloaded: open_clip's model constructor is intercepted (it receives the final
config, the activation included, after every override), or the weights' loading is skipped.
"""
import json

import open_clip
import pytest
import torch

from experiments import options
import pini


class Built(Exception):
    """Raised by the intercepted constructor, carrying the config open_clip would build."""


@pytest.fixture
def intercepted(monkeypatch):
    """load_clip reaches open_clip's model constructor and stops there, with nothing downloaded."""
    monkeypatch.setattr(pini, "_check_weights_reachable", lambda name, tag: None)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: "unused.pt")

    def constructor(**config):
        raise Built(config)

    for cls in ("CLIP", "CustomTextCLIP", "CoCa"):
        monkeypatch.setattr(open_clip.factory, cls, constructor)


def built_config(model, tag, **kwargs) -> dict:
    with pytest.raises(Built) as built:
        pini.load_clip(model, tag, **kwargs)
    return built.value.args[0]


def test_every_listed_tag_gets_the_activation_its_weights_were_trained_with(intercepted):
    pairs = open_clip.list_pretrained()
    assert len(pairs) > 100
    kinds = set()
    for name, tag in pairs:
        expected = bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
        assert bool(built_config(name, tag).get("quick_gelu", False)) == expected, (name, tag)
        kinds.add((bool((open_clip.get_model_config(name) or {}).get("quick_gelu")), expected))
    # all four cases occur: GELU config + QuickGELU weights (OpenAI's under the plain name) included
    assert kinds == {(False, False), (False, True), (True, True), (True, False)}


def test_the_default_command_builds_quickgelu_vit_b16(monkeypatch):
    """The default command's CLIP, built for real with only the weights' download and loading skipped."""
    args = options.parse_args([])
    assert (args.model, args.pretrained, args.activation) == ("ViT-B-16", "openai", "auto")
    monkeypatch.setattr(pini, "_check_weights_reachable", lambda name, tag: None)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: "unused.pt")
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", lambda *a, **k: {})
    clip = pini.load_clip(args.model, args.pretrained, activation=args.activation)[0]
    assert pini.activation_of(clip) == "quick-gelu"
    acts = [type(block.mlp.gelu) for tower in (clip.transformer, clip.visual.transformer)
            for block in tower.resblocks]
    assert len(acts) == 24 and set(acts) == {open_clip.transformer.QuickGELU}
    assert clip.visual.transformer.width == 768 and clip.visual.patch_size == (16, 16)


def test_asking_for_the_other_activation_of_a_tag_is_refused(intercepted):
    with pytest.raises(ValueError, match="trained with quick-gelu"):
        pini.load_clip("ViT-B-16", "openai", activation="gelu")
    assert built_config("ViT-B-16", "openai", activation="quick-gelu")["quick_gelu"] is True


@pytest.fixture
def tiny_config(tmp_path):
    from conftest import TINY_CONFIGS
    path = tmp_path / "tiny-act.json"
    path.write_text(json.dumps(TINY_CONFIGS["tiny-vit"]))
    return str(path)


def test_a_checkpoint_file_gets_its_activation_from_its_record_or_the_flag(tiny_config, tmp_path, capsys):
    torch.manual_seed(0)
    clip = pini.load_clip(tiny_config, "none", activation="quick-gelu")[0]
    recorded, bare = tmp_path / "recorded.pt", tmp_path / "bare.pt"
    torch.save({"state_dict": clip.state_dict(), "quick_gelu": True}, recorded)
    torch.save(clip.state_dict(), bare)
    assert pini.activation_of(pini.load_clip(tiny_config, str(recorded))[0]) == "quick-gelu"
    with pytest.raises(ValueError, match="records that its weights were trained with quick-gelu"):
        pini.load_clip(tiny_config, str(recorded), activation="gelu")
    # no record: the flag decides; without it, the config's, and a warning names the choice
    assert pini.activation_of(pini.load_clip(tiny_config, str(bare), activation="quick-gelu")[0]) == "quick-gelu"
    assert pini.activation_of(pini.load_clip(tiny_config, str(bare))[0]) == "gelu"
    assert "does not record its activation" in capsys.readouterr().err


def test_the_activation_changes_the_network(tiny_config):
    """The two builds compute different functions from the same weights (what a mismatch costs)."""
    torch.manual_seed(0)
    quick, tokenizer = pini.load_clip(tiny_config, "none", activation="quick-gelu")[:2]
    plain = pini.load_clip(tiny_config, "none", activation="gelu")[0]
    plain.load_state_dict(quick.state_dict())
    tokens = tokenizer(["a photo of a cat."])
    with torch.no_grad():
        assert (quick.encode_text(tokens) - plain.encode_text(tokens)).abs().max() > 1e-3
