"""pini.py: equalities with open_clip, gradients, the noise distributions, the objective, inference."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import pini
from conftest import CLASSNAMES


def zero_shot_logits(clip, tokenizer, images, classnames=CLASSNAMES, template="a photo of a"):
    """CLIP's zero-shot logits computed with open_clip alone, on PiNI's prompt text."""
    prompts = [" ".join(["X"] * 16 + [template, name.replace("_", " ")]) + "." for name in classnames]
    with torch.no_grad():
        image = clip.encode_image(images, normalize=True)
        text = clip.encode_text(tokenizer(prompts), normalize=True)
    return clip.logit_scale.exp() * image @ text.T


def silence(model):
    """Set every injector's μ and σ to exactly zero."""
    with torch.no_grad():
        if model.text_injector is not None:
            model.text_injector.mu.zero_()
            model.text_injector.sigma.zero_()
        if model.image_injector is not None:
            for head in (model.image_injector.to_mu, model.image_injector.to_sigma):
                head.weight.zero_()
                head.bias.zero_()
    return model


@pytest.mark.parametrize("image_noise", ["cross-attention", "none"])
def test_zero_noise_gives_open_clip_zero_shot_logits(tiny_clip, image_noise):
    clip, tokenizer, _, _ = tiny_clip
    torch.manual_seed(1)
    images = torch.randn(5, 3, 32, 32)
    model = silence(pini.PiNI(clip, tokenizer, CLASSNAMES, image_noise=image_noise))
    expected = zero_shot_logits(clip, tokenizer, images)
    out = model(images, num_samples=3)
    assert out.logits.shape == (3, 5, len(CLASSNAMES))
    for k in range(3):
        torch.testing.assert_close(out.logits[k], expected, atol=1e-5, rtol=0)


def test_no_injector_is_zero_shot_clip(tiny_clip):
    clip, tokenizer, _, _ = tiny_clip
    images = torch.randn(4, 3, 32, 32)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES, text_noise="none", image_noise="none")
    assert model.trainable_parameters() == []
    torch.testing.assert_close(model(images).logits[0], zero_shot_logits(clip, tokenizer, images), atol=1e-5, rtol=0)


def test_text_path_on_embeddings_equals_encode_text(tiny_clip):
    clip, tokenizer, _, _ = tiny_clip
    tokens = tokenizer(["a", "a photo of a golden retriever.", "hot air balloon over the sea at dawn"])
    with torch.no_grad():
        expected = clip.encode_text(tokens)
        got = pini.encode_text_embeddings(clip, clip.token_embedding(tokens), tokens)
    # The context was truncated to the longest EOT (far fewer than 77 positions) and still equal.
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_prompts_mark_placeholder_and_template_positions(tiny_vit):
    _, tokenizer, _, _ = tiny_vit
    prompts = pini.build_prompts(tokenizer, CLASSNAMES, "a type of pet, a photo of a", n_ctx=16)
    # "a type of pet , a photo of a" is 9 BPE tokens; after SOS come 16 placeholders + 9.
    assert (prompts.noise_start, prompts.noise_end) == (1, 1 + 16 + 9)
    first = prompts.tokens[0]
    x_id = tokenizer(["X"])[0][1]
    assert (first[1:17] == x_id).all()
    # the class name starts right after the noised span: "cat" for class 0
    assert first[prompts.noise_end] == tokenizer(["cat"])[0][1]


def test_overlong_prompt_is_rejected(tiny_vit):
    _, tokenizer, _, _ = tiny_vit
    with pytest.raises(ValueError, match="more than the text encoder's context of 77"):
        pini.build_prompts(tokenizer, ["a " * 70], n_ctx=16)


@pytest.mark.parametrize("image_noise", ["cross-attention", "pixel"])
def test_only_injectors_learn_and_clip_is_bit_identical(tiny_clip, image_noise):
    clip, tokenizer, _, _ = tiny_clip
    model = pini.PiNI(clip, tokenizer, CLASSNAMES, image_noise=image_noise)
    before = {name: p.clone() for name, p in clip.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(2):
        out = model(torch.randn(4, 3, 32, 32), num_samples=2)
        loss = pini.pini_objective(out, torch.tensor([0, 1, 2, 3]), kl_weight=1e-3)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith("clip."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    after = clip.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # buffers too (ResNet BN stats)
    assert not clip.training  # PiNI.train() leaves CLIP in eval mode


def test_zero_sigma_samples_equal_the_mean():
    mu = torch.randn(2, 5)
    noise = pini.Gaussian(mu, torch.zeros(2, 5))
    samples = noise.sample(7)
    assert samples.shape == (7, 2, 5)
    assert torch.equal(samples, mu.expand(7, 2, 5))


def test_reparameterised_samples_have_the_right_moments():
    torch.manual_seed(0)
    mu, sigma = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    samples = pini.Gaussian(mu, sigma).sample(200_000)
    torch.testing.assert_close(samples.mean(0), mu, atol=0.03, rtol=0)
    torch.testing.assert_close(samples.std(0), sigma, atol=0.03, rtol=0)


def test_kl_matches_torch_distributions_and_monte_carlo():
    torch.manual_seed(0)
    mu, sigma = torch.randn(3, 4), torch.rand(3, 4) + 0.2
    noise = pini.Gaussian(mu, sigma, batch_dims=1)
    prior = torch.distributions.Normal(0.0, 2.0)
    posterior = torch.distributions.Normal(mu, sigma)
    closed = torch.distributions.kl_divergence(posterior, prior).sum(-1).mean()
    # the KL reads σ as √(σ² + δ²), δ = KL_SIGMA_FLOOR·s: torch's KL for that σ, and within
    # Σ δ²/(2σ²) of the exact one
    floored = torch.distributions.Normal(mu, (sigma.square() + (2.0 * pini.KL_SIGMA_FLOOR) ** 2).sqrt())
    torch.testing.assert_close(pini.gaussian_kl(noise, prior_std=2.0),
                               torch.distributions.kl_divergence(floored, prior).sum(-1).mean())
    bound = ((2.0 * pini.KL_SIGMA_FLOOR) ** 2 / (2 * sigma.square())).sum(-1).mean()
    assert 0 < closed - pini.gaussian_kl(noise, prior_std=2.0) <= bound
    eps = posterior.sample((100_000,))
    monte_carlo = (posterior.log_prob(eps) - prior.log_prob(eps)).sum(-1).mean()
    assert abs(monte_carlo - closed) < 0.05
    # the KL vanishes exactly when the noise *is* the prior
    assert pini.gaussian_kl(pini.Gaussian(torch.zeros(6), torch.full((6,), 2.0)), 2.0).abs() < 1e-6


def test_objective_default_is_the_authors_cross_entropy_and_kl_is_a_switch(tiny_vit):
    clip, tokenizer, _, _ = tiny_vit
    torch.manual_seed(0)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES)
    labels = torch.tensor([3, 0, 1])
    out = model(torch.randn(3, 3, 32, 32), num_samples=4)
    # the authors repeat each label NOISE_NUM times and take plain cross-entropy
    authors = F.cross_entropy(out.logits.transpose(0, 1).reshape(12, -1), labels.repeat_interleave(4))
    default = pini.pini_objective(out, labels)
    torch.testing.assert_close(default["loss"], authors)
    assert default["kl"] == 0
    with_kl = pini.pini_objective(out, labels, kl_weight=0.01, prior_std=0.5)
    expected_kl = pini.gaussian_kl(out.noise["text"], 0.5) + pini.gaussian_kl(out.noise["image"], 0.5)
    torch.testing.assert_close(with_kl["kl"], expected_kl)
    torch.testing.assert_close(with_kl["loss"], authors + 0.01 * expected_kl)
    assert pini.pini_objective(out, labels, ce_weight=0.0)["loss"] == 0


def test_pi_noise_information_is_entropy_minus_bound():
    clean = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    noisy = torch.tensor([[[4.0, 0.0], [0.0, 3.0]]])
    labels = torch.tensor([0, 1])
    info = pini.pi_noise_information(clean, noisy, labels)
    h = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    h_noisy = (math.log(1 + math.exp(-4)) + math.log(1 + math.exp(-3))) / 2
    assert info["task_entropy"].item() == pytest.approx(h)
    assert info["information_estimate"].item() == pytest.approx(h - h_noisy)


def test_inference_modes(tiny_vit):
    clip, tokenizer, _, _ = tiny_vit
    torch.manual_seed(0)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES).eval()
    with torch.no_grad():
        model.text_injector.sigma.mul_(20)  # make the noise large enough to matter
    images = torch.randn(6, 3, 32, 32)
    mean_a, mean_b = model.predict(images, "mean"), model.predict(images, "mean")
    assert torch.equal(mean_a, mean_b)
    assert not torch.equal(model.predict(images, "sample"), model.predict(images, "sample"))
    torch.manual_seed(5)
    averaged = model.predict(images, "average", num_samples=4)
    torch.manual_seed(5)
    logits = model(images, num_samples=4).logits
    torch.testing.assert_close(averaged.exp(), logits.softmax(-1).mean(0))
    torch.testing.assert_close(averaged.exp().sum(-1), torch.ones(6))
    with pytest.raises(ValueError, match="'sample', 'mean', 'average'"):
        model.predict(images, "median")


def test_pixel_noise_maps_have_rms_level():
    injector = pini.PixelNoiseInjector(level=0.1)
    noise = injector(torch.randn(2, 3, 16, 16))
    assert noise.mu.shape == noise.sigma.shape == (2, 3, 16, 16)
    rms = noise.mu.square().mean(dim=(2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.full((2, 3), 0.1))
    assert (noise.sigma >= 0).all()


def test_image_injector_shapes_and_attention(tiny_vit):
    injector = pini.ImageNoiseInjector(dim=24, reduction=2)
    assert injector.query.out_features == 12
    noise, attention = injector(torch.randn(5, 24), torch.randn(3, 7, 24))
    assert noise.mu.shape == noise.sigma.shape == (3, 5, 24)
    assert (noise.sigma >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 5))


def test_training_on_a_separable_task_beats_zero_shot(tiny_vit):
    """Four classes whose image features sit around four random centroids. A random CLIP's
    prompts know nothing of them (zero-shot ≈ chance); PiNI's noise alone — CLIP frozen — must
    learn to move image and text features so that held-out images are classified correctly."""
    clip, tokenizer, _, _ = tiny_vit
    torch.manual_seed(0)
    centroids = 3 * torch.randn(4, clip.text_projection.shape[1])
    labels = torch.arange(4).repeat(8)
    train_features = centroids[labels] + torch.randn(32, centroids.shape[1])
    test_features = centroids[labels] + torch.randn(32, centroids.shape[1])
    images = torch.zeros(32, 3, 32, 32)  # unused: the frozen image features are given
    model = pini.PiNI(clip, tokenizer, CLASSNAMES)

    def accuracy(features):
        return (model.predict(images, image_features=features).argmax(-1) == labels).float().mean().item()

    zero_shot = accuracy(test_features)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        loss = pini.pini_objective(model(images, image_features=train_features), labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert loss.item() < 0.2
    assert accuracy(test_features) >= max(0.9, zero_shot + 0.3), zero_shot


def test_load_clip_errors_name_what_was_given(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'.*ViT-B-16"):
        pini.load_clip("ViT-Q-99", pretrained="none")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*missing.pt"):
        pini.load_clip("RN50", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown pretrained weights 'laion9b'.*'openai'"):
        pini.load_clip("ViT-B-16", pretrained="laion9b")
    with pytest.raises(FileNotFoundError, match="model config file not found"):
        pini.load_clip(str(tmp_path / "nope.json"), pretrained="none")


def test_load_clip_from_local_checkpoint(config_dir, tmp_path):
    torch.manual_seed(3)
    clip, _, train_tf, _ = pini.load_clip(str(config_dir / "tiny-vit.json"), pretrained="none")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), checkpoint)
    torch.manual_seed(4)
    loaded, _, _, _ = pini.load_clip(str(config_dir / "tiny-vit.json"), pretrained=str(checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), loaded.state_dict().values()))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_shared_prefix_equals_full_prompts_with_gradients(tiny_clip, num_samples, dtype, tolerance):
    """Encoding the common prefix once gives the full-prompt features and gradients: to
    rounding in float64, and within `tolerance` of the largest value in float32."""
    clip, tokenizer, _, _ = tiny_clip
    clip = copy.deepcopy(clip).to(dtype)
    names = CLASSNAMES + ["a very long class name of many many tokens indeed"]
    fast = pini.PiNI(clip, tokenizer, names, template="a type of pet, a photo of a", image_noise="none").to(dtype)
    slow = pini.PiNI(clip, tokenizer, names, template="a type of pet, a photo of a", image_noise="none",
                     shared_prefix=False).to(dtype)
    assert fast.shared_prefix and not slow.shared_prefix
    slow.text_injector.load_state_dict(fast.text_injector.state_dict())
    torch.manual_seed(0)
    z = 50 * torch.randn(num_samples, *fast.text_injector.mu.shape, dtype=dtype)  # large, so errors show
    features = {}
    for name, model in [("fast", fast), ("slow", slow)]:
        injector = model.text_injector
        out = model.text_features(injector.mu + injector.sigma.abs() * z)  # the same ε for both
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward()
        features[name] = (out.detach(), injector.mu.grad.clone(), injector.sigma.grad.clone())
    assert features["fast"][0].shape == (num_samples, len(names), clip.text_projection.shape[1])
    for fast_part, slow_part in zip(features["fast"], features["slow"]):
        scale = slow_part.abs().max().item()
        torch.testing.assert_close(fast_part, slow_part, atol=tolerance * scale, rtol=0)


def test_shared_prefix_without_noise_equals_encode_text(tiny_vit):
    clip, tokenizer, _, _ = tiny_vit
    model = pini.PiNI(clip, tokenizer, CLASSNAMES, text_noise="none", image_noise="none")
    prompts = [" ".join(["X"] * 16 + ["a photo of a", c.replace("_", " ")]) + "." for c in CLASSNAMES]
    with torch.no_grad():
        torch.testing.assert_close(model.text_features(None)[0], clip.encode_text(tokenizer(prompts)),
                                   atol=1e-5, rtol=0)


VARIANTS = {
    "default": {},
    "text feature, free": {"text_noise": "feature"},
    "text tokens, conditioned": {"text_generator": "conditioned"},
    "text feature, conditioned": {"text_noise": "feature", "text_generator": "conditioned"},
    "patch query": {"image_noise": "patch"},
    "mlp": {"image_noise": "mlp"},
    "pixel": {"image_noise": "pixel"},
    "no sigma": {"control": "no-sigma"},
    "no mu": {"control": "no-mu"},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_only_its_own_parameters(tiny_vit, variant):
    clip, tokenizer, _, _ = tiny_vit
    torch.manual_seed(0)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES, **VARIANTS[variant]).train()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable
    out = model(torch.randn(3, 3, 32, 32), num_samples=2)
    pini.pini_objective(out, torch.tensor([0, 1, 2]))["loss"].backward()
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:  # CLIP, and the σ (or μ) parameters a control fixes
            assert p.grad is None, name
    control = VARIANTS[variant].get("control")
    frozen = [n for n, p in model.named_parameters() if not n.startswith("clip.") and not p.requires_grad]
    if control:
        fixed = "sigma" if control == "no-sigma" else "mu"
        assert frozen and all(fixed in n.split(".")[1] for n in frozen)
    else:
        assert frozen == []


def test_noise_shapes_of_the_variants(tiny_vit):
    clip, tokenizer, _, _ = tiny_vit
    C, D = len(CLASSNAMES), clip.text_projection.shape[1]
    images = torch.randn(2, 3, 32, 32)

    def noise(**kwargs):
        return pini.PiNI(clip, tokenizer, CLASSNAMES, **kwargs)(images, num_samples=3).noise

    assert noise(text_noise="feature")["text"].mu.shape == (C, D)  # one noise per class feature
    n_tokens = 16 + 4  # placeholders + "a photo of a"
    assert noise(text_generator="conditioned")["text"].mu.shape == (C, n_tokens, 32)  # per class, per token
    patches = noise(image_noise="patch")["image"]
    assert patches.mu.shape == patches.sigma.shape == (3, 2, (32 // 8) ** 2, D)  # one μ, σ per patch
    assert noise(image_noise="mlp")["image"].mu.shape == (2, D)


def test_patch_query_needs_a_vit(tiny_clip):
    clip, tokenizer, _, _ = tiny_clip
    if type(clip.visual).__name__ == "ModifiedResNet":
        with pytest.raises(ValueError, match="needs a ViT image tower.*ModifiedResNet"):
            pini.PiNI(clip, tokenizer, CLASSNAMES, image_noise="patch")
    else:
        assert pini.PiNI(clip, tokenizer, CLASSNAMES, image_noise="patch").image_noise == "patch"


def test_sigma_zero_control_is_deterministic(tiny_vit):
    clip, tokenizer, _, _ = tiny_vit
    model = pini.PiNI(clip, tokenizer, CLASSNAMES, control="no-sigma").train()
    images = torch.randn(3, 3, 32, 32)
    first, second = model(images, num_samples=2), model(images, num_samples=2)
    assert torch.equal(first.logits, second.logits)
    torch.testing.assert_close(first.logits[0], first.logits[1], atol=1e-6, rtol=0)  # the K samples agree
    assert all((g.sigma == 0).all() for g in first.noise.values())


def test_mu_zero_control_has_zero_mean_noise(tiny_vit):
    clip, tokenizer, _, _ = tiny_vit
    model = pini.PiNI(clip, tokenizer, CLASSNAMES, control="no-mu")
    with torch.no_grad():
        model.text_injector.sigma.fill_(0.5)
    out = model(torch.randn(3, 3, 32, 32), num_samples=2)
    assert all((g.mu == 0).all() and (g.sigma > 0).any() for g in out.noise.values())
    torch.manual_seed(0)
    samples = out.noise["text"].sample(20_000)
    assert samples.mean(0).abs().max() < 0.05 and samples.std(0).sub(0.5).abs().max() < 0.05
    assert not torch.equal(out.logits[0], out.logits[1])  # still noise


def test_unknown_variant_names_the_choices(tiny_vit):
    clip, tokenizer, _, _ = tiny_vit
    with pytest.raises(ValueError, match="image_noise must be one of .*'cross-attention'"):
        pini.PiNI(clip, tokenizer, CLASSNAMES, image_noise="attention")


@pytest.mark.parametrize("kwargs", [{}, {"text_noise": "feature", "text_generator": "conditioned"},
                                    {"image_noise": "patch"}, {"text_noise": "none"}])
def test_mean_text_features_computed_once_give_the_same_predictions(tiny_vit, kwargs):
    clip, tokenizer, _, _ = tiny_vit
    torch.manual_seed(0)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES, **kwargs).eval()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.3 * torch.randn_like(p))  # a "trained" model, far from its initialisation
    images = torch.randn(4, 3, 32, 32)
    text = model.mean_text_features()
    assert text.shape == (1, len(CLASSNAMES), clip.text_projection.shape[1])
    torch.testing.assert_close(model.predict(images, "mean", text_features=text), model.predict(images, "mean"),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="use them with mode 'mean'"):
        model.predict(images, "sample", text_features=text)


def test_bf16_autocast_keeps_the_loss_finite_and_close(tiny_vit):
    clip, tokenizer, _, _ = tiny_vit
    torch.manual_seed(0)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    full = pini.pini_objective(model(images, use_mean=True), labels)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = pini.pini_objective(model(images, use_mean=True), labels)["loss"]
        sampled = pini.pini_objective(model(images, num_samples=2), labels)["loss"]
    sampled.backward()
    assert torch.isfinite(half) and abs(half.item() - full.item()) < 0.05 * full.item()
    assert all(torch.isfinite(p.grad).all() for p in model.trainable_parameters())


def test_failed_download_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': no connection")

    monkeypatch.setattr(pini.open_clip, "create_model_and_transforms", offline)
    monkeypatch.setattr(pini, "_check_weights_reachable", lambda name, tag: None)  # as if the host answered
    with pytest.raises(pini.WeightsUnavailable, match="could not download the 'openai' weights of ViT-B-16.*"
                                                      "--pretrained none"):
        pini.load_clip("ViT-B/16", "openai")


# --- weights that cannot be had: answered fast and in one line ------------------------------

def test_offline_tag_is_refused_within_seconds(monkeypatch, tmp_path):
    import time
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    timeouts = []

    def no_network(address, timeout=None):
        timeouts.append(timeout)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(pini.socket, "create_connection", no_network)
    monkeypatch.setattr(pini.open_clip, "create_model_and_transforms",
                        lambda *a, **k: pytest.fail("must not try to download"))
    started = time.time()
    with pytest.raises(pini.WeightsUnavailable, match="cannot be reached"):
        pini.load_clip("ViT-B-16", "openai")
    assert time.time() - started < 10 and timeouts and timeouts[0] <= 10


@pytest.mark.parametrize("content", ["not a checkpoint", "pini"])
def test_a_file_that_is_not_clip_weights_is_refused_in_one_line(config_dir, tmp_path, content):
    path = tmp_path / "weights.pt"
    if content == "pini":  # a PiNI checkpoint given where CLIP weights belong
        torch.save({"injectors": {"text_injector.mu": torch.zeros(3)}, "meta": {"settings": {}}}, path)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=f"--pretrained {path}: not tiny-vit weights") as error:
        pini.load_clip(str(config_dir / "tiny-vit.json"), str(path))
    assert "\n" not in str(error.value)


def test_a_reduction_that_leaves_no_hidden_units_is_refused():
    with pytest.raises(ValueError, match="reduction 25 leaves a hidden size of 0 for features of size 24"):
        pini.ImageNoiseInjector(24, reduction=25)
    assert pini.hidden_size(24, 24) == 1
