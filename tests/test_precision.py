"""Precision that keeps the answer: logits in fp32 under autocast, a KL that stays finite."""
import copy
import math

import pytest
import torch

from experiments import epochs
import pini


def near_tied_features(n=256, classes=8, dim=24, seed=0):
    """Text features (C, D) and image features (n, D) whose two best classes differ in cosine by
    under 1e-3 (logits under 0.1 apart at scale 100), as happens between similar classes."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(classes, dim, generator=g)
    unit = torch.nn.functional.normalize(text, dim=-1)
    pairs = torch.randint(classes, (n, 2), generator=g)
    pairs[:, 1] = (pairs[:, 0] + 1 + pairs[:, 1] % (classes - 1)) % classes  # two different classes
    tilt = (torch.rand(n, 1, generator=g) - 0.5) * 2e-3
    image = (0.5 + tilt) * unit[pairs[:, 0]] + (0.5 - tilt) * unit[pairs[:, 1]]
    image = image + 0.01 * torch.randn(n, dim, generator=g)
    return text, image


def reference_argmax(image, text, scale=100.0):
    cos = torch.nn.functional.normalize(image.double(), dim=-1) @ torch.nn.functional.normalize(text.double(), dim=-1).T
    return (scale * cos).argmax(-1)


@pytest.fixture
def scaled_clip(tiny_vit):
    clip, tokenizer, _, eval_tf = tiny_vit
    clip = copy.deepcopy(clip)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100.0))  # CLIP's trained scale
    return clip, tokenizer, eval_tf


def test_bf16_autocast_keeps_the_argmax_of_near_tied_logits(scaled_clip):
    clip, tokenizer, _ = scaled_clip
    text, image = near_tied_features()
    expected = reference_argmax(image, text)
    model = pini.PiNI(clip, tokenizer, [f"c{i}" for i in range(len(text))], text_noise="none", image_noise="none")
    fp32 = model.predict(None, image_features=image, text_features=text.unsqueeze(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.predict(None, image_features=image, text_features=text.unsqueeze(0))
        logits = model(None, image_features=image, text_features=text.unsqueeze(0)).logits
    assert logits.dtype == torch.float32
    assert torch.equal(fp32.argmax(-1), expected)
    assert torch.equal(bf16.argmax(-1), expected)
    # what bf16 logits would do to these images: many ties or swaps
    rounded = (100.0 * torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T)
    assert (rounded.bfloat16().argmax(-1) != expected).sum() >= 10


def test_zero_shot_in_bf16_keeps_the_argmax_of_near_tied_logits(scaled_clip, monkeypatch):
    clip, tokenizer, eval_tf = scaled_clip
    text, image = near_tied_features(seed=1)
    expected = reference_argmax(image, text)
    # the towers' outputs are given: what is tested is the product that reads the answer
    monkeypatch.setattr(clip, "encode_text", lambda tokens, normalize=False: torch.nn.functional.normalize(
        text, dim=-1) if normalize else text)
    monkeypatch.setattr(clip, "encode_image", lambda index, normalize=False: torch.nn.functional.normalize(
        image[index.long()], dim=-1) if normalize else image[index.long()])
    ctx = epochs.Context(clip, tokenizer, None, eval_tf, torch.device("cpu"), "bf16")
    batches = [(torch.arange(i, i + 64), expected[i:i + 64]) for i in range(0, len(image), 64)]
    assert epochs.zero_shot_accuracy(ctx, [f"c{i}" for i in range(len(text))], "a photo of a {}.", batches) == 100.0


@pytest.mark.parametrize("beta", [1.0, 0.1])
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_kl_term_stays_finite_for_400_steps(tiny_vit, beta, amp):
    """σ = |Linear(·)| of the image injector crosses 0; without the KL's floor (σ clamped at 1e-8)
    this run reaches NaN at step 31 (fp32) and 30 (bf16) at β = 1. The image tower's features
    are given, so each step is the injector and the cosine only (fast)."""
    clip, tokenizer, _, _ = tiny_vit
    torch.manual_seed(0)
    model = pini.PiNI(clip, tokenizer, ["cat", "dog", "car", "x"], text_noise="none")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    features, labels = torch.randn(8, 24), torch.arange(8) % 4
    for step in range(400):
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = pini.pini_objective(model(None, image_features=features), labels, kl_weight=beta)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), f"step {step}: loss {loss.item()}"
    assert all(torch.isfinite(p).all() for p in model.trainable_parameters())


@pytest.mark.parametrize("precision, kept", [("fp32", True), ("authors-fp16", False)])
def test_an_update_below_fp16_resolution_is_lost_only_in_the_authors_mode(tiny_vit, precision, kept):
    """One SGD step at the warm-up lr 1e-5 on the text noise μ (≈ 0.02, where fp16's spacing is
    1.5e-5): lr·grad ≈ 1e-7 is far below half that spacing, so fp16 parameters do not move,
    while fp32 parameters (spacing 1.9e-9) do."""
    import argparse
    clip, tokenizer, _, _ = tiny_vit
    ctx = epochs.Context(copy.deepcopy(clip), tokenizer, None, None, torch.device("cpu"), precision)
    torch.manual_seed(0)
    model = pini.PiNI(ctx.clip, tokenizer, ["cat", "dog", "car", "x"], image_noise="none")
    if ctx.param_dtype is not None:
        ctx.clip.to(ctx.param_dtype)
        model.to(ctx.param_dtype)
    mu = model.text_injector.mu
    before = mu.detach().clone()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-5, momentum=0.9, weight_decay=5e-4)
    options = argparse.Namespace(noise_samples=1, ce_weight=1.0, kl_weight=0.0, prior_std=1.0)
    batches = [(None, torch.randn(8, 24), torch.arange(8) % 4)]
    epochs.train_epoch(model, batches, optimizer, None, options, ctx)
    assert mu.dtype == (torch.float32 if kept else torch.float16)
    assert optimizer.state[mu]["momentum_buffer"].dtype == mu.dtype
    large = before.float().abs() >= 2**-7  # |μ| ≥ 0.0078: fp16 spacing ≥ 7.6e-6 (smaller |μ| have finer steps)
    assert large.float().mean() > 0.5
    changed = (mu.detach() != before)[large].float().mean().item()
    assert changed > 0.9 if kept else changed == 0.0, changed
