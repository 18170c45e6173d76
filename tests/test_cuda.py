"""The CUDA paths, tested without a GPU.

Under torch's FakeTensorMode a tensor on device "cuda" has shapes, dtypes and a device but no data,
and every operator checks its inputs' devices as a real GPU does: a CPU tensor mixed into a CUDA
computation fails here as it fails there. CUDA autocast runs its real casting rules. What fake
tensors cannot do is read a value on the host (`.item()`, `.tolist()`, `nonzero()`): that is a
device sync on a real GPU, and the training step must not need one.
"""
import copy
from contextlib import contextmanager
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                           FakeTensorMode, unset_fake_temporarily)

from experiments import epochs
from experiments import image_data
import pini
from conftest import CLASSNAMES


@contextmanager
def fake_cuda():
    """A FakeTensorMode in which torch believes it has a GPU with native bf16.

    The mode is entered first: it then sees no real GPU and routes CUDA device calls to a no-op
    guard; `is_available` is patched only afterwards, so that torch.autocast("cuda") switches on."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, mock.patch.object(torch.cuda, "is_available", lambda: True), \
            mock.patch.object(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True):
        yield mode


def to_fake_cuda(module: torch.nn.Module, mode: FakeTensorMode) -> torch.nn.Module:
    """Every parameter and buffer of `module` (a deep copy) as a fake CUDA tensor; Python
    attributes (the suffix-length groups) stay as they are. Call inside `mode`."""
    for sub in module.modules():
        for name, p in sub._parameters.items():
            if p is not None:
                sub._parameters[name] = torch.nn.Parameter(mode.from_tensor(p).to("cuda"), p.requires_grad)
        for name, b in sub._buffers.items():
            if b is not None:
                sub._buffers[name] = mode.from_tensor(b).to("cuda")
    return module


PRECISIONS = ["fp16", "bf16"]
OPTIONS = SimpleNamespace(noise_samples=2, ce_weight=1.0, kl_weight=0.1, prior_std=1.0, batch_size=2)


@pytest.fixture
def fake_model(tiny_vit):
    """(model, ctx factory): PiNI on the tiny ViT, copied before the fake mode starts."""
    clip, tokenizer, train_tf, eval_tf = tiny_vit
    model = copy.deepcopy(pini.PiNI(clip, tokenizer, CLASSNAMES))
    return model, lambda m, precision: epochs.Context(m.clip, tokenizer, train_tf, eval_tf,
                                                      torch.device("cuda"), precision)


def batch(B=2):
    return torch.randn(B, 3, 32, 32, device="cuda"), torch.arange(B, device="cuda") % len(CLASSNAMES)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_training_forward_and_loss_run_on_cuda_under_autocast(fake_model, precision):
    model, context = fake_model
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        ctx = context(model, precision)
        images, labels = batch()
        with ctx.autocast():
            assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == ctx.amp_dtype
            output = model(images, num_samples=OPTIONS.noise_samples)
            losses = pini.pini_objective(output, labels, 1.0, OPTIONS.kl_weight, 1.0)
        assert output.logits.shape == (2, 2, len(CLASSNAMES)) and output.logits.is_cuda
        assert all(loss.is_cuda and loss.dtype == torch.float32 and loss.dim() == 0 for loss in losses.values())
        # the text tower really ran in the autocast dtype: autocast is on, not silently off
        with ctx.autocast():
            text = model.text_features(model.text_injector.mu.unsqueeze(0))
        assert text.dtype == ctx.amp_dtype and text.is_cuda


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_whole_training_step_runs_on_cuda(fake_model, precision):
    """Forward, loss, backward and the optimiser (with fp16's gradient scaler) — `epochs.train_step`."""
    model, context = fake_model
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        ctx = context(model, precision)
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        images, labels = batch()
        try:
            loss, correct = epochs.train_step(model, images, None, labels, optimizer, scaler, OPTIONS, ctx)
        except RuntimeError as error:
            if "hasPrimaryContext" in str(error):  # pytorch#92627: a CUDA build on a machine without a driver
                pytest.skip("torch's autograd engine wants a real CUDA context for a backward pass on this build")
            raise
        assert loss.is_cuda and correct.is_cuda and model.text_injector.mu.grad.is_cuda


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode_name", ["mean", "sample", "average"])
def test_predict_runs_on_cuda_in_every_mode(fake_model, precision, mode_name):
    model, context = fake_model
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode).eval()
        ctx = context(model, precision)
        images, _ = batch(3)
        with ctx.autocast():
            text = model.mean_text_features() if mode_name == "mean" else None
            scores = model.predict(images, mode_name, 4, text_features=text)
        assert scores.shape == (3, len(CLASSNAMES)) and scores.is_cuda


@pytest.mark.parametrize("variant", [{"text_generator": "conditioned"}, {"image_noise": "pixel"},
                                     {"image_noise": "patch"}, {"text_noise": "feature", "image_noise": "mlp"}])
def test_the_variants_run_on_cuda(tiny_vit, variant):
    clip, tokenizer, train_tf, eval_tf = tiny_vit
    model = copy.deepcopy(pini.PiNI(clip, tokenizer, CLASSNAMES, **variant))
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        ctx = epochs.Context(model.clip, tokenizer, train_tf, eval_tf, torch.device("cuda"), "fp16")
        images, labels = batch()
        with ctx.autocast():
            loss = pini.pini_objective(model(images, num_samples=2), labels)["loss"]
        assert loss.is_cuda and loss.dtype == torch.float32


@pytest.mark.parametrize("precision", PRECISIONS)
def test_zero_shot_scores_run_on_cuda(fake_model, precision):
    model, context = fake_model
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        ctx = context(model, precision)
        scores = epochs.zero_shot_scores(ctx, CLASSNAMES, "a photo of a {}.")  # tokens made on the CPU, moved
        with ctx.autocast():
            out = scores(batch(3)[0])
        assert out.shape == (3, len(CLASSNAMES)) and out.is_cuda


def test_a_planted_cpu_tensor_fails_the_cuda_step(fake_model):
    """The tests above can fail: noise drawn on the CPU (torch.randn without a device — the
    classic bug) into the CUDA forward is refused, as a GPU refuses it."""
    model, context = fake_model

    def sample_on_the_cpu(self, num_samples, use_mean=False):
        mu = self.mu.unsqueeze(0).expand(num_samples, *self.mu.shape)
        return mu + self.sigma * torch.randn(mu.shape)  # no device=: a CPU tensor

    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        ctx = context(model, "fp16")
        images, labels = batch()
        with ctx.autocast():
            model(images)  # the real sampler: fine
            with mock.patch.object(pini.Gaussian, "sample", sample_on_the_cpu), \
                    pytest.raises(RuntimeError, match="same device"):
                model(images)


def test_a_buffer_left_on_the_cpu_fails_the_cuda_step(fake_model):
    model, context = fake_model
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        model.suffix_order = mode.from_tensor(model.suffix_order.cpu())  # as if registered without .to(device)
        ctx = context(model, "bf16")
        with ctx.autocast(), pytest.raises(RuntimeError, match="same device"):
            model(batch()[0])


def test_finding_the_suffix_groups_reads_values_so_it_is_done_once_before(fake_model):
    """A value read on the host (a sync on a GPU) fails under fake CUDA: the forward passes above
    show that PiNI needs none, because the suffix-length groups are found when it is built."""
    model, _ = fake_model
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        with pytest.raises((DataDependentOutputException, DynamicOutputShapeException)):
            pini.suffix_groups(model.prompt_tokens[:, model.noise_end:])


@contextmanager
def real_random_draws(crop):
    """The crop box is drawn from torch's CPU generator and read on the host (never a GPU sync:
    that generator and its tensors are on the CPU); under the fake mode those CPU tensors are
    fake too, so the draw runs outside it."""
    real = crop.make_params

    def draw(inputs):
        with unset_fake_temporarily():
            return real(inputs)

    crop.make_params = draw
    try:
        yield
    finally:
        del crop.make_params


CFG = {"size": 32, "interpolation": "bicubic", "mean": (0.48, 0.46, 0.41), "std": (0.27, 0.26, 0.28)}


@pytest.mark.parametrize("on_cuda", [True, False])
def test_the_batch_augmentation_runs_on_cuda_and_fails_with_its_statistics_on_the_cpu(on_cuda):
    """The tensor path on the GPU: crop each kept image, stack, then flip/convert/normalise with
    mean and std on the device. Mean and std left on the CPU (planted) fail, as on a GPU."""
    transform = pini.train_transform(CFG)
    with fake_cuda(), real_random_draws(transform.transforms[0]):
        augment = image_data.BatchAugmentation(transform, "cuda" if on_cuda else "cpu")
        kept = [torch.empty(3, 40 + 7 * i, 50, dtype=torch.uint8, device="cuda") for i in range(4)]
        crops, flips = zip(*[augment(pixels) for pixels in kept])
        pixels = torch.stack(crops)
        assert pixels.is_cuda and pixels.shape == (4, 3, 32, 32) and pixels.dtype == torch.uint8
        if not on_cuda:
            with pytest.raises(RuntimeError, match="same device"):
                augment.finish(pixels, torch.stack(flips))
            return
        images = augment.finish(pixels, torch.stack(flips))
        assert images.is_cuda and images.dtype == torch.float32 and images.shape == (4, 3, 32, 32)


# ----------------------------------------------------------------------------------------------
# Host syncs in the step, counted on the CPU
# ----------------------------------------------------------------------------------------------

READS = ["item", "tolist", "nonzero", "unique", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"]


@contextmanager
def counting_host_reads():
    """Counts the Tensor methods that read device values on the host (each a sync on a GPU)."""
    counts = {name: 0 for name in READS}

    def counted(name, real):
        def method(self, *args, **kwargs):
            counts[name] += 1
            return real(self, *args, **kwargs)
        return method

    with mock.patch.multiple(torch.Tensor, **{name: counted(name, getattr(torch.Tensor, name)) for name in READS}):
        yield counts


def test_a_training_step_reads_nothing_on_the_host_and_an_epoch_once(tiny_vit):
    clip, tokenizer, train_tf, eval_tf = tiny_vit
    torch.manual_seed(0)
    model = pini.PiNI(clip, tokenizer, CLASSNAMES)  # names of 3 suffix lengths: 3 groups
    assert len(model.suffix_sizes) == 3
    ctx = epochs.Context(clip, tokenizer, train_tf, eval_tf, torch.device("cpu"), "fp32")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(2, 3, 32, 32), None, torch.tensor([0, 3])) for _ in range(3)]
    with counting_host_reads() as counts:
        for images, _, labels in batches:
            epochs.train_step(model, images, None, labels, optimizer, None, OPTIONS, ctx)
    assert sum(counts.values()) == 0, counts
    with counting_host_reads() as counts:
        stats = epochs.train_epoch(model, batches, optimizer, None, OPTIONS, ctx)
    assert counts["tolist"] == 1 and sum(counts.values()) == 1, counts  # the sums, read at the end
    assert stats["loss"] > 0 and 0 <= stats["acc"] <= 100
    with counting_host_reads() as counts:
        epochs.train_epoch(model, batches * 4, optimizer, None, OPTIONS, ctx, check_every=5)
    assert counts["item"] == 2 and counts["tolist"] == 1, counts  # after steps 5 and 10, and the end


def test_a_non_finite_loss_stops_the_epoch_at_the_next_check(tiny_vit):
    clip, tokenizer, train_tf, eval_tf = tiny_vit
    model = pini.PiNI(clip, tokenizer, CLASSNAMES)
    ctx = epochs.Context(clip, tokenizer, train_tf, eval_tf, torch.device("cpu"), "fp32")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.01)
    steps = []
    good = (torch.randn(2, 3, 32, 32), None, torch.tensor([0, 1]))
    bad = (torch.full((2, 3, 32, 32), float("nan")), None, torch.tensor([0, 1]))

    def counted(batches):
        for b in batches:
            steps.append(1)
            yield b

    with pytest.raises(epochs.UsageError, match="non-finite"):
        epochs.train_epoch(model, counted([good, bad] + [good] * 10), optimizer, None, OPTIONS, ctx, check_every=4)
    assert len(steps) == 4  # stopped at the first check after the NaN, not at the end of the epoch


# ----------------------------------------------------------------------------------------------
# CUDA failures as messages (torch.cuda's functions patched: no GPU needed)
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


def test_a_gpu_number_beyond_the_count_is_refused_up_front(two_gpus):
    assert epochs.pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(epochs.UsageError, match=r"--device cuda:2: torch sees 2 GPUs, use cuda:0 to cuda:1"):
        epochs.pick_device("cuda:2")


@pytest.mark.parametrize("capability, refused", [((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_bf16_is_refused_where_the_gpu_only_emulates_it(two_gpus, monkeypatch, capability, refused):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    if refused:
        with pytest.raises(epochs.UsageError, match=r"Tesla T4 \(compute capability 7.5\) has no native bf16"):
            epochs.resolve_precision("bf16", cuda)
    else:
        assert epochs.resolve_precision("bf16", cuda) == "bf16"
    assert epochs.resolve_precision("fp16", cuda) == "fp16" and epochs.resolve_precision("bf16", torch.device("cpu"))


def test_pinned_memory_follows_the_chosen_device_not_the_machine(two_gpus, noise_items):
    assert not epochs.loader(noise_items, None, 2, 0, device=torch.device("cpu")).pin_memory  # --device cpu
    assert epochs.loader(noise_items, None, 2, 0, device=torch.device("cuda")).pin_memory
    assert not epochs.loader(noise_items, None, 2, 0, device=torch.device("cuda"), load=lambda p: p).pin_memory


@pytest.fixture
def noise_items(tmp_path):
    from experiments import datasets
    from conftest import noise_png, touch_image
    items = []
    for i in range(2):
        touch_image(tmp_path / f"{i}.png", noise_png(i))
        items.append(datasets.Item(str(tmp_path / f"{i}.png"), i, str(i)))
    return items


def test_out_of_memory_is_one_line_that_says_what_to_try_and_lets_go_of_kept_images(tiny_vit, monkeypatch):
    clip, tokenizer, train_tf, eval_tf = tiny_vit
    model = pini.PiNI(clip, tokenizer, CLASSNAMES)
    ctx = epochs.Context(clip, tokenizer, train_tf, eval_tf, torch.device("cpu"), "fp32")

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total)")

    monkeypatch.setattr(epochs, "train_step", no_memory)
    monkeypatch.setattr(image_data.DECODED, "images", {"a.jpg": SimpleNamespace(is_cuda=True)})  # kept on a GPU
    batches = [(torch.randn(2, 3, 32, 32), None, torch.tensor([0, 1]))]
    with pytest.raises(epochs.UsageError) as error:
        epochs.train_epoch(model, batches, None, None, OPTIONS, ctx)
    message = str(error.value)
    assert "\n" not in message and message.startswith("out of GPU memory while training (4 classes, batch 2)")
    assert "--augment pil" in message and "--batch-size (now 2)" in message and "--precision fp16" in message
    assert image_data.DECODED.images == {}  # the decoded images no longer hold the GPU's memory


def test_a_cuda_error_while_loading_is_reported_as_one_not_as_bad_weights(config_dir, tmp_path, monkeypatch):
    import open_clip
    path = tmp_path / "weights.pt"
    path.write_bytes(b"fine weights, for all we know")

    def fails(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 600.00 MiB")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fails)
    with pytest.raises(pini.CUDAError, match=r"loading tiny-vit onto cuda:1 failed with out of GPU memory: CUDA out "):
        pini.load_clip(str(config_dir / "tiny-vit.json"), str(path), device="cuda:1")
    monkeypatch.setattr(open_clip, "create_model_and_transforms",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA error: invalid device ordinal")))
    with pytest.raises(pini.CUDAError, match="failed with a CUDA error: CUDA error: invalid device ordinal"):
        pini.load_clip(str(config_dir / "tiny-vit.json"), "none", device="cuda:7")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_training_step_runs_on_cuda_with_clip_cast_once(fake_model, precision):
    """train.py's CUDA set-up: CLIP's matrices stored in the autocast dtype (pini.freeze_in_dtype),
    the injectors in fp32, logits and loss in fp32 (the backward pass: test_precision.py, on the CPU)."""
    model, context = fake_model
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        ctx = context(model, precision)
        pini.freeze_in_dtype(model.clip, ctx.amp_dtype)
        assert model.clip.transformer.resblocks[0].mlp.c_fc.weight.dtype == ctx.amp_dtype
        assert {p.dtype for p in model.trainable_parameters()} == {torch.float32}
        images, labels = batch()
        with ctx.autocast():
            output = model(images, num_samples=OPTIONS.noise_samples)
            losses = pini.pini_objective(output, labels, 1.0, OPTIONS.kl_weight, 1.0)
        assert output.logits.dtype == losses["loss"].dtype == torch.float32 and output.logits.is_cuda
