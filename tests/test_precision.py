"""Precision that keeps the answer: logits in fp32 under autocast, a KL that stays finite."""
import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from experiments import epochs
import pini

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import casts  # noqa: E402


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


# ----------------------------------------------------------------------------------------------
# CLIP's weights cast once (pini.freeze_in_dtype), not by autocast at every use
# ----------------------------------------------------------------------------------------------

def cast_counts(tiny_vit, cast_once: bool) -> tuple:
    """(cast kernels in the profiler, casts of CLIP's own weights) in one bf16 CPU training step."""
    from types import SimpleNamespace
    from conftest import CLASSNAMES

    clip, tokenizer, _, _ = tiny_vit
    clip = copy.deepcopy(clip)
    if cast_once:
        pini.freeze_in_dtype(clip, torch.bfloat16)
    torch.manual_seed(0)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES)
    ctx = epochs.Context(clip, tokenizer, None, None, torch.device("cpu"), "bf16")
    options = SimpleNamespace(noise_samples=1, ce_weight=1.0, kl_weight=0.0, prior_std=1.0)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])

    counted = casts.measure(lambda: epochs.train_step(model, images, None, labels, optimizer, None, options, ctx),
                            clip)  # the benchmark's own counting (benchmarks/casts.py)
    return counted["casts"], counted["weight casts"]


def test_clip_cast_once_removes_the_per_use_weight_casts(tiny_vit):
    """Under bf16 autocast a frozen fp32 CLIP is cast again at every use (autocast caches casts only
    for leaves that require grad). tiny ViT, 4 classes, batch 2, one training step (forward and
    backward): 85 casts of CLIP's weights and 259 cast kernels with fp32 weights; 3 weight casts
    (the fp32 positional embeddings) and 122 cast kernels (activations, e.g. into and out of the fp32
    LayerNorms) with the weights cast once."""
    kernels_before, weights_before = cast_counts(tiny_vit, cast_once=False)
    kernels_after, weights_after = cast_counts(tiny_vit, cast_once=True)
    assert weights_before >= 50  # the old path really casts every weight at every use
    assert weights_after <= 0.1 * weights_before, (weights_before, weights_after)
    assert kernels_after <= 0.6 * kernels_before, (kernels_before, kernels_after)


def test_clip_cast_once_keeps_layernorms_embeddings_and_injectors_in_fp32(tiny_vit):
    """As OpenAI's clip.model.convert_weights (open_clip.model.convert_weights_to_lp): matrices in
    the compute dtype, LayerNorms (their statistics) and embeddings in fp32; the injectors untouched."""
    from conftest import CLASSNAMES

    clip, tokenizer, _, _ = tiny_vit
    clip = pini.freeze_in_dtype(copy.deepcopy(clip), torch.bfloat16)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES)
    block = clip.transformer.resblocks[0]
    assert block.mlp.c_fc.weight.dtype == block.attn.in_proj_weight.dtype == torch.bfloat16
    assert clip.text_projection.dtype == clip.visual.proj.dtype == clip.visual.conv1.weight.dtype == torch.bfloat16
    assert block.ln_1.weight.dtype == clip.ln_final.weight.dtype == clip.token_embedding.weight.dtype == torch.float32
    assert clip.positional_embedding.dtype == clip.logit_scale.dtype == torch.float32
    assert {p.dtype for p in model.trainable_parameters()} == {torch.float32}
    fp32 = copy.deepcopy(tiny_vit[0])
    assert pini.freeze_in_dtype(fp32, None) is fp32 and {p.dtype for p in fp32.parameters()} == {torch.float32}
    # the residual stream is bf16 on the CPU, where autocast leaves layer_norm in bf16: its mean and
    # variance are still accumulated in fp32 — the answer is fp32's up to bf16 rounding (≤ 0.016 at
    # |y| < 4), while statistics taken in bf16 (512 values of mean ≈ 50) are off by about 0.1
    g = torch.Generator().manual_seed(0)
    x, ones, zeros = (50 + torch.randn(64, 512, generator=g)).bfloat16(), torch.ones(512), torch.zeros(512)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.layer_norm(x, (512,), ones, zeros)
    exact = torch.nn.functional.layer_norm(x.float(), (512,), ones, zeros)
    assert y.dtype == torch.bfloat16 and (y.float() - exact).abs().max() <= 0.02
    mean = x.mean(-1, keepdim=True, dtype=torch.bfloat16)
    in_bf16 = (x - mean) / ((x - mean) ** 2).mean(-1, keepdim=True, dtype=torch.bfloat16).add(1e-5).sqrt()
    assert (in_bf16.float() - exact).abs().max() > 0.05


def test_clip_cast_once_matches_the_fp32_logits_and_injector_gradients(scaled_clip):
    """The same PiNI forward and backward (logit scale 100, as trained CLIP; 64 images × 2 noise
    samples), fp32 against bf16 weights under bf16 autocast. Documented tolerance (bf16 keeps 8
    significant bits: 0.4 % per rounding, compounded through both towers):
      - logits (fp32, |logit| ≤ 24 here): max |Δ| ≤ 1.0 — measured 0.48 (0.43 when autocast casts
        fp32 weights at every use);
      - the same argmax wherever fp32's two best logits are more than 0.5 apart (85 of 128 rows);
      - text injector gradients (μ, σ): relative error ‖Δg‖/‖g‖ ≤ 0.15 — measured 0.08, 0.07;
      - all injector gradients together: relative error ≤ 0.15 — measured 0.07 (the key bias alone
        has a gradient of ~0: softmax ignores a shift shared by all keys)."""
    from conftest import CLASSNAMES

    clip, tokenizer, _ = scaled_clip
    model = pini.PiNI(clip, tokenizer, CLASSNAMES)
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(128) % len(CLASSNAMES)

    def run(m, amp):
        torch.manual_seed(3)  # the same noise draws on both paths
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = m(images, num_samples=2).logits  # (K, B, C)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels)
        loss.backward()
        return logits.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}

    exact, exact_grads = run(copy.deepcopy(model), amp=False)
    low = copy.deepcopy(model)
    pini.freeze_in_dtype(low.clip, torch.bfloat16)
    logits, grads = run(low, amp=True)
    assert logits.dtype == torch.float32
    assert (logits - exact).abs().max() <= 1.0
    top2 = exact.topk(2, dim=-1).values
    clear = top2[..., 0] - top2[..., 1] > 0.5
    assert clear.sum() >= 64 and torch.equal(logits.argmax(-1)[clear], exact.argmax(-1)[clear])

    def relative(names):
        diff = torch.cat([(grads[n] - exact_grads[n]).flatten() for n in names])
        return (diff.norm() / torch.cat([exact_grads[n].flatten() for n in names]).norm()).item()

    assert relative(["text_injector.mu"]) <= 0.15 and relative(["text_injector.sigma"]) <= 0.15
    assert relative(list(exact_grads)) <= 0.15
