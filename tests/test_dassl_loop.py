"""train.py's loop against Dassl's (KaiyangZhou/Dassl.pytorch, as bundled by the authors' hyzhang98/PiNI),
item by item, each re-expressed here from Dassl's source and the authors' config
(configs/trainers/CLIP_VPN/imagenet_config.yaml: SGD, lr 1e-3, 100 epochs, cosine, 1 constant
warm-up epoch at 1e-5, batch 32; Dassl's defaults: momentum 0.9, dampening 0, no Nesterov,
weight decay 5e-4, WARMUP_RECOUNT True, test transform resize + centre crop)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from experiments import epochs
import pini
import train
from test_train import base_args, data_root, read_result  # noqa: F401 (fixtures)


class DasslConstantWarmup(torch.optim.lr_scheduler.LRScheduler):
    """Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py), re-expressed: while its own
    count is below warmup_epoch the lr is cons_lr; from then on every step() is handed to the
    successor scheduler and its lr is used."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()


def dassl_lrs(lr, epochs_, warmup, cons_lr, recount=True):
    """The lr each epoch trains at, as Dassl's build_lr_scheduler builds it and its trainer steps
    it (update_lr after the last batch of every epoch)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(epochs_))
    if not recount:
        cosine.last_epoch = warmup
    scheduler = DasslConstantWarmup(optimizer, cosine, warmup, cons_lr)
    out = []
    for _ in range(epochs_):
        out.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return out


def our_lrs(lr, epochs_, warmup, cons_lr):
    """The same as train.run_training builds it: LambdaLR(lr_factor), one step per epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: epochs.lr_factor(e, epochs_, warmup, cons_lr, lr))
    out = []
    for _ in range(epochs_):
        out.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return out


@pytest.mark.parametrize("epochs_, warmup", [(100, 1), (10, 3), (2, 1)])
def test_learning_rate_of_every_epoch_is_dasslss(epochs_, warmup):
    expected = dassl_lrs(1e-3, epochs_, warmup, 1e-5)
    np.testing.assert_allclose(our_lrs(1e-3, epochs_, warmup, 1e-5), expected, rtol=1e-9, atol=1e-15)
    # the schedule it replaces (cosine counted from epoch 0, through the warm-up) is not Dassl's
    not_recounted = [1e-5 if e < warmup else 1e-3 * 0.5 * (1 + np.cos(np.pi * e / epochs_)) for e in range(epochs_)]
    assert not np.allclose(not_recounted, expected, rtol=1e-6)


def test_sgd_and_its_parameters_are_dasslss(base_args, monkeypatch):
    """build_optimizer(None, OPTIM, [prompt generator params, image generator params]): SGD with
    momentum 0.9, dampening 0, no Nesterov, weight decay 5e-4 on every parameter of both injectors."""
    built = []

    class Recorded(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "SGD", Recorded)
    models = []
    real_build = train.build_model
    monkeypatch.setattr(train, "build_model", lambda *a: models.append(real_build(*a)) or models[-1])
    assert train.main(base_args + ["--dataset", "caltech101", "--shots", "1", "--epochs", "1"]) == 0
    (group,) = built[0].param_groups
    assert (group["momentum"], group["dampening"], group["nesterov"], group["weight_decay"]) == (0.9, 0, False, 5e-4)
    injector_params = [p for i in models[0].injectors for p in i.parameters()]
    assert {id(p) for p in group["params"]} == {id(p) for p in injector_params}


def test_loss_over_noise_samples_is_the_authors(tiny_vit):
    """The authors repeat each label NOISE_NUM times (b0 b0 b1 b1 …, logits in the same order) and
    take F.cross_entropy's mean over all B·K rows; ours pairs (k, b) rows k-major: the same mean."""
    torch.manual_seed(0)
    K, B, C = 3, 5, 4
    logits, labels = torch.randn(K, B, C), torch.randint(C, (B,))
    authors = F.cross_entropy(logits.transpose(0, 1).reshape(B * K, C),
                              labels.expand(K, B).transpose(0, 1).reshape(-1))
    ours = pini.pini_objective(pini.PiNIOutput(logits, {}), labels)["loss"]
    torch.testing.assert_close(ours, authors)


def test_training_batches_are_dasslss():
    """Dassl's train loader: RandomSampler, batch 32, drop_last when there is at least one full batch."""
    items = [type("Item", (), {"path": f"{i}", "label": 0})() for i in range(70)]
    loader = epochs.loader(items, None, 32, 0, shuffle=True)
    assert (loader.batch_size, loader.drop_last, len(loader)) == (32, True, 2)
    assert epochs.loader(items[:20], None, 32, 0, shuffle=True).drop_last is False
    order = [index for _, index in loader.sampler]  # (epoch seed, index) keys
    assert sorted(order) == list(range(70)) and order != list(range(70))  # shuffled, every image once


def test_test_transform_is_dasslss(tiny_vit):
    """Dassl's test transform for INPUT.SIZE (s, s), bicubic: resize the smaller edge to s,
    centre crop s × s, ToTensor, normalise with CLIP's mean and std."""
    eval_tf = tiny_vit[3]
    size, mean, std = 32, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    dassl = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((size, size)),
                       T.ToTensor(), T.Normalize(mean, std)])
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))
    torch.testing.assert_close(eval_tf(image), dassl(image), atol=1e-6, rtol=0)


def test_the_last_epoch_model_is_tested(base_args, monkeypatch):
    """TEST.FINAL_MODEL = last_step: the injectors tested are those after the last epoch."""
    tested = []
    real = epochs.evaluate
    monkeypatch.setattr(train, "evaluate", lambda model, *a: tested.append(
        {k: v.clone() for k, v in train.injector_state(model).items()}) or real(model, *a))
    assert train.main(base_args + ["--dataset", "caltech101", "--shots", "1", "--epochs", "2"]) == 0
    out = base_args[base_args.index("--output-dir") + 1]
    saved = torch.load(f"{out}/caltech101/shots_1/seed_1/checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.equal(tested[0][k], saved["injectors"][k]) for k in saved["injectors"])
