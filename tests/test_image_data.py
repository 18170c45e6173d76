"""Reading training images: seeds that travel with indices, images decoded once, and the two
augmentation paths (--augment pil / tensor) drawing the same crops and flips."""
import os
from functools import partial

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import v2

from experiments import datasets
from experiments import epochs
from experiments import image_data
import pini
from conftest import noise_png, touch_image

CLIP_CFG = {"size": 224, "interpolation": "bicubic", "mean": (0.48145466, 0.4578275, 0.40821073),
            "std": (0.26862954, 0.26130258, 0.27577711)}


def photo(width=500, height=375, seed=0) -> Image.Image:
    """A photograph-like RGB image: smooth shapes (a small random image upsampled) plus fine grain."""
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray((rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8))
    smooth = np.asarray(smooth.resize((width, height), Image.BICUBIC)).astype(np.int16)
    grain = rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------
# Augmentation independent of --workers, across epochs with persistent workers
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def noise_items(tmp_path):
    items = []
    for i in range(8):
        touch_image(tmp_path / f"{i}.png", noise_png(i))
        items.append(datasets.Item(str(tmp_path / f"{i}.png"), i % 2, "ab"[i % 2]))
    return items


AUGMENT = T.Compose([T.RandomResizedCrop(16, scale=(0.2, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


def epochs_of(items, workers: int, seeds):
    loader = epochs.loader(items, AUGMENT, batch_size=3, workers=workers, shuffle=True)
    batches = []
    for seed in seeds:  # the same loader (and, with workers, the same worker processes) for every epoch
        loader.sampler.set_epoch(seed)
        batches.append([(images, labels) for images, labels in loader])
    return batches


def same_batches(a, b) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_augmentation_is_the_same_with_0_and_2_persistent_workers_in_every_epoch(noise_items):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    main = epochs_of(noise_items, 0, seeds=[7, 8])
    assert torch.equal(torch.random.get_rng_state(), before)  # the main process's generator is untouched
    workers = epochs_of(noise_items, 2, seeds=[7, 8])
    assert same_batches(main[0], workers[0]) and same_batches(main[1], workers[1])
    # the second epoch really is another epoch: other order and other crops
    assert not torch.equal(torch.cat([b[0] for b in main[0]]), torch.cat([b[0] for b in main[1]]))


def pid_of(image):  # a transform that says which process ran it
    return torch.tensor(os.getpid())


def test_workers_live_across_epochs(noise_items):
    loader = epochs.loader(noise_items, pid_of, batch_size=3, workers=2, shuffle=True)
    pids = []
    for seed in [1, 2, 3]:
        loader.sampler.set_epoch(seed)
        pids.append({int(p) for batch, _ in loader for p in batch})
    assert len(pids[0]) >= 1 and os.getpid() not in pids[0]
    assert pids[0] == pids[1] == pids[2]  # the same worker processes every epoch, not new ones


def test_loading_leaves_every_random_generator_alone(noise_items, monkeypatch):
    """The noise is drawn from the GPU's generator during training: seeding a sample's crop must
    not reseed it (torch.manual_seed would, through torch.cuda.manual_seed_all)."""
    def refuse(seed):
        raise AssertionError("a sample's seed reached the GPU generators")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    monkeypatch.setattr(torch.cuda, "manual_seed", refuse)
    dataset = image_data.ImageDataset(noise_items, AUGMENT)
    before = torch.random.get_rng_state()
    first = dataset[(5, 0)][0]
    assert torch.equal(torch.random.get_rng_state(), before) and torch.equal(first, dataset[(5, 0)][0])


def test_an_epochs_order_and_seeds_stay_together_when_the_next_epoch_is_set_early():
    sampler = image_data.EpochSampler(6, shuffle=True, seed=1)
    keys = iter(sampler)
    first = [next(keys)]
    sampler.set_epoch(2)  # e.g. a loader prefetching the next epoch
    first += list(keys)
    assert first == list(image_data.EpochSampler(6, shuffle=True, seed=1))


def test_same_sample_same_crop_in_any_order(noise_items):
    dataset = image_data.ImageDataset(noise_items, AUGMENT)
    forward = [dataset[(5, i)][0] for i in range(8)]
    backward = [dataset[(5, i)][0] for i in reversed(range(8))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert sum(torch.equal(a, dataset[(6, i)][0]) for i, a in enumerate(forward)) < 8


def test_sampler_order_depends_on_the_seed_only():
    first = list(image_data.EpochSampler(10, shuffle=True, seed=3))
    assert first == list(image_data.EpochSampler(10, shuffle=True, seed=3))
    assert sorted(i for _, i in first) == list(range(10)) and {s for s, _ in first} == {3}
    assert first != list(image_data.EpochSampler(10, shuffle=True, seed=4))
    assert [i for _, i in image_data.EpochSampler(4, shuffle=False)] == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------------
# Decoded once
# ----------------------------------------------------------------------------------------------

def test_decoded_images_are_loads_pixels_kept_once_and_bounded_by_one_training_set(tmp_path, monkeypatch):
    items = []
    for i, (w, h) in enumerate([(40, 30), (30, 50), (64, 64)]):
        photo(w, h, seed=i).save(tmp_path / f"{i}.jpg", quality=90)
        items.append(datasets.Item(str(tmp_path / f"{i}.jpg"), i, str(i)))
    assert image_data.decoded_bytes(items + items[:1]) == 3 * (40 * 30 + 30 * 50 + 64 * 64)  # distinct paths
    reads = []
    real = image_data.load_image
    monkeypatch.setattr(image_data, "load_image", lambda path: reads.append(path) or real(path))
    cache = image_data.DecodedImages()
    kept = cache.keep(items, progress=False)
    for item in items:
        expected = torch.from_numpy(np.array(real(item.path))).permute(2, 0, 1)
        assert kept[item.path].dtype == torch.uint8 and torch.equal(kept[item.path], expected)
    cache.keep(items[:2], progress=False)  # a second training set within the first: nothing decoded
    assert sorted(reads) == sorted(item.path for item in items)
    assert set(cache.images) == {items[0].path, items[1].path}  # the image no job uses is dropped
    assert cache.missing(items) == [items[2]]
    cache.clear()
    assert cache.missing(items[:1]) == items[:1]


# ----------------------------------------------------------------------------------------------
# The two augmentation paths: same crop boxes, same flips, same kernel
# ----------------------------------------------------------------------------------------------

def draws(transform, image, seeds):
    """The crop box and flip `transform` draws for `image` under each seed."""
    boxes, flips = [], []
    crop, flip = transform.transforms[0], transform.transforms[1]
    real_params, real_flip = crop.make_params, flip.transform
    crop.make_params = lambda inputs: boxes.append(real_params(inputs)) or boxes[-1]
    flip.transform = lambda inpt, params: flips.__setitem__(-1, True) or real_flip(inpt, params)
    try:
        for seed in seeds:
            torch.manual_seed(seed)
            flips.append(False)
            transform(image)
    finally:
        del crop.make_params, flip.transform
    return boxes, flips


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (60, 700)])  # the last: crops often fall back
def test_tensor_path_draws_the_same_crop_boxes_and_flips_as_pil(size):
    image = photo(*size)
    transform = pini.train_transform(CLIP_CFG)
    pil = draws(transform, image, range(300))
    tensor = draws(transform, v2.functional.pil_to_tensor(image), range(300))
    assert pil == tensor
    boxes, flips = pil
    scale = np.array([b["height"] * b["width"] / (size[0] * size[1]) for b in boxes])
    assert 0.07 < scale.min() and scale.max() <= 1 and 100 < sum(flips) < 200  # 0.08 before rounding the box
    assert draws(transform, image, range(1, 301)) != pil  # the test can tell other draws apart


def test_pil_path_is_the_authors_v1_transform():
    """Given a PIL image, the v2 transform computes what CoOp's torchvision v1 pipeline computes."""
    image = photo()
    ours = pini.train_transform(CLIP_CFG)

    def v1(interpolation):
        return T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=interpolation),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CLIP_CFG["mean"], CLIP_CFG["std"])])

    def largest_difference(reference):
        worst = 0.0
        for seed in range(40):
            torch.manual_seed(seed)
            a = ours(image)
            torch.manual_seed(seed)
            worst = max(worst, (a - reference(image)).abs().max().item())
        return worst

    assert largest_difference(v1(T.InterpolationMode.BICUBIC)) < 1e-5  # float rounding of x / 255
    assert largest_difference(v1(T.InterpolationMode.BILINEAR)) > 0.05  # another kernel is seen


def grey_levels(transform_tensor, seeds=range(100)):
    """Mean and largest |tensor path − PIL path| over `seeds`, in grey levels (0–255 scale)."""
    image = photo()
    pixels = v2.functional.pil_to_tensor(image)
    transform = pini.train_transform(CLIP_CFG)
    std = torch.tensor(CLIP_CFG["std"])[:, None, None]
    means, largest = [], 0.0
    for seed in seeds:
        torch.manual_seed(seed)
        reference = transform(image)
        torch.manual_seed(seed)
        levels = ((transform_tensor(transform, pixels) - reference) * std * 255).abs()
        means.append(levels.mean().item())
        largest = max(largest, levels.max().item())
    return float(np.mean(means)), largest


def on_cpu(transform, pixels):
    return transform(pixels)  # torch's native uint8 antialiased bicubic


def resized_in_float(transform, pixels, interpolation=None, antialias=True):
    """The transform with its crop resized in float32, then rounded and clamped to uint8 — what
    torchvision computes for uint8 on CUDA — by the crop's own kernel or by `interpolation`."""
    crop = transform.transforms[0]
    box = crop.make_params([pixels])
    resized = v2.functional.resized_crop(pixels.float(), **box, size=crop.size,
                                         interpolation=interpolation or crop.interpolation, antialias=antialias)
    return v2.Compose(transform.transforms[1:])(resized.round().clamp(0, 255).to(torch.uint8))


as_on_a_gpu = resized_in_float
without_antialias = partial(resized_in_float, antialias=False)  # a wrong version: aliasing on downscaled crops
bilinear = partial(resized_in_float, interpolation=v2.InterpolationMode.BILINEAR)  # a wrong version: another kernel


GREY_LEVEL_BOUND = 0.3  # mean |difference| per pixel the tensor path may have against PIL's


def test_tensor_path_pixels_are_pils_within_a_fraction_of_a_grey_level():
    cpu_mean, cpu_max = grey_levels(on_cpu)
    gpu_mean, gpu_max = grey_levels(as_on_a_gpu)
    assert cpu_mean < 0.1 and cpu_max < 3.01  # measured: 0.02 mean, at most 3 levels (float: 3.000005)
    assert gpu_mean < GREY_LEVEL_BOUND and gpu_max < 3.01  # measured: 0.19 mean, at most 3 levels
    # the wrong versions: 1.8 levels (no antialiasing) and 1.2 (bilinear) on average
    assert grey_levels(without_antialias, range(30))[0] > GREY_LEVEL_BOUND
    assert grey_levels(bilinear, range(30))[0] > GREY_LEVEL_BOUND


# ----------------------------------------------------------------------------------------------
# The tensor path, a batch at once
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(500, 375), (60, 700)])
def test_batch_augmentation_is_the_per_image_transform_stacked_bit_for_bit(size):
    """Crop per image, then flip, convert and normalise once per batch: the same boxes and flips
    (drawn under each sample's seed) and the same values as the whole transform on each image."""
    images = [v2.functional.pil_to_tensor(photo(*size, seed=i)) for i in range(6)]
    items = [datasets.Item(str(i), i % 2, "ab"[i % 2]) for i in range(6)]
    transform = pini.train_transform(CLIP_CFG)
    per_image = image_data.ImageDataset(items, transform, load=lambda path: images[int(path)])
    batched = image_data.ImageDataset(items, image_data.BatchAugmentation(transform), load=lambda path: images[int(path)])
    augment = batched.transform
    for epoch_seed in range(8):
        keys = [(epoch_seed, i) for i in range(6)]
        expected = torch.stack([per_image[key][0] for key in keys])
        pixels, flips = (torch.stack(part) for part in zip(*[batched[key][0] for key in keys]))
        assert pixels.dtype == torch.uint8 and flips.dtype == torch.bool
        assert torch.equal(augment.finish(pixels, flips), expected)
    # a wrong version is seen: the flips not applied
    assert not torch.equal(augment.finish(pixels, torch.zeros_like(flips)), expected)
