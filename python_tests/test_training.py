"""Tests of the training driver (uaal_ext.experiment.training): the loop, its schedules, determinism,
checkpoints and resume, config validation, and evaluate.

Most tests use a tiny stand-in (a conv net with BatchNorm and Dropout2d; random 16x16 images whose
label is the argmax over the channels) so they run in seconds; two tests train the real
DeepLabv3+ ``build_model("small")`` on ``SyntheticScenes``.
"""

import dataclasses
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from testing import argmax_pixels, cuda_only
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import uaal_ext
from uaal_ext.experiment.training import CheckpointError, TrainConfig, evaluate, make_criterion, train, train_step
from uaal_ext.schedules import get_schedule

NUM_CLASSES = 3
IGNORE = 255
FAST = dict(epochs=3, batch_size=4, lr=0.05, num_samples=2)  # 12 images -> 3 steps per epoch


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: with 2+ threads the OpenMP hand-offs cost far more than the work
    (80x slower on a busy 2-core machine), so each test runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dataset(num_images=12, size=16, seed=1):
    return argmax_pixels(num_images, size, seed, IGNORE)


class TinyNet(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES, dropout=0.1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):  # (N, 3, H, W) -> (N, C, H, W)
        return self.classifier(self.dropout(self.features(x)))


def _tiny_net(init_seed=0, **kwargs):
    torch.manual_seed(init_seed)
    return TinyNet(**kwargs)


def _config(**overrides):
    return TrainConfig(**{**FAST, **overrides})


def _assert_same_state(a, b, exact=True):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if exact:
            assert torch.equal(sa[key], sb[key]), key
        else:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-4, atol=1e-5, msg=key)


# ---------------------------------------------------------------------------------------------------
# The loop


@pytest.mark.parametrize(
    "overrides",
    [dict(mode="standard"), dict(mode="uaal", uncertainty="kernel_noise")],
    ids=["standard", "uaal-kernel_noise"],
)
def test_loss_decreases(overrides):
    result = train(_tiny_net(), _dataset(), _config(epochs=6, lr=0.3, **overrides), progress=False)
    assert len(result.losses) == 6 and all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses
    assert result.steps == 6 * 3 and result.wall_time > 0 and result.start_epoch == 0


@pytest.mark.parametrize("uncertainty", uaal_ext.uncertainty.uncertainty_source_names())
def test_every_source_trains_and_adds_no_batch_norm_updates(uncertainty):
    model = _tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        # KernelNoise must not be handed logits from a forward with active dropout.
        warnings.filterwarnings("error", message=".*active dropout.*")
        result = train(model, _dataset(), _config(mode="uaal", uncertainty=uncertainty), progress=False)
    assert all(math.isfinite(x) for x in result.losses)
    bn = model.features[1]
    # Running statistics move (sanity), but only the training forwards count: the kernel-noise and
    # MC-Dropout passes normalise without updating anything.
    assert int(bn.num_batches_tracked) == result.steps == 9
    assert not torch.equal(bn.running_mean, before["features.1.running_mean"])
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])
    assert model.training  # the caller's mode is restored


def test_kernel_noise_reuses_training_logits_with_or_without_dropout():
    """The training forward is always the clean pass (with dropout, the perturbed passes replay its
    masks): no extra forward per step either way."""
    calls = {}
    for dropout in (0.0, 0.1):
        model = _tiny_net(dropout=dropout)
        calls[dropout] = 0

        def count(*_, dropout=dropout):
            calls[dropout] += 1

        model.register_forward_hook(count)
        result = train(model, _dataset(), _config(mode="uaal", uncertainty="kernel_noise"), progress=False)
    assert calls[0.1] == calls[0.0] > result.steps


def test_channels_last_changes_layout_not_results():
    """channels_last trains the model in channels-last layout (its conv weights keep it) and
    contiguous otherwise, to the same weights up to float rounding (same dropout draws)."""
    weights = {}
    for channels_last in (True, False):
        model = _tiny_net()
        train(model, _dataset(), _config(epochs=2, channels_last=channels_last), progress=False)
        conv = model.features[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert conv.is_contiguous() != channels_last
        weights[channels_last] = model
    _assert_same_state(weights[True], weights[False], exact=False)


def test_standard_mode_counts_batch_norm_updates_and_restores_modes():
    model = _tiny_net().eval()
    result = train(model, _dataset(), _config(), progress=False)
    assert int(model.features[1].num_batches_tracked) == result.steps == 9
    assert not any(m.training for m in model.modules())  # trained in training mode, handed back in eval


def test_schedule_advances_per_epoch():
    config = _config(mode="uaal", uncertainty="entropy", schedule="linear_decrease", alpha=2.0, epochs=4)
    result = train(_tiny_net(), _dataset(), config, progress=False)
    assert result.alphas == pytest.approx([2.0 * (1 - e / 4) for e in range(4)])
    sine = get_schedule("sin_cos")
    result = train(_tiny_net(), _dataset(), dataclasses.replace(config, schedule="sin_cos"), progress=False)
    assert result.alphas == pytest.approx([2.0 * sine(e / 4) for e in range(4)])
    result = train(_tiny_net(), _dataset(), _config(mode="standard", epochs=2), progress=False)
    assert result.alphas == [0.0, 0.0]


def test_standard_mode_equals_hand_written_cross_entropy_loop():
    config = _config(epochs=2, weight_decay=1e-3, poly_power=0.9)
    dataset = _dataset()
    model = _tiny_net()
    train(model, dataset, config, progress=False)

    # The same run written out by hand with F.cross_entropy.
    reference = _tiny_net()
    torch.manual_seed(config.seed)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(config.seed)
    )
    optimizer = torch.optim.SGD(
        reference.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    max_iter, it = config.epochs * len(loader), 0
    reference.train()
    for _ in range(config.epochs):
        for images, labels in loader:
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (1 - it / max_iter) ** config.poly_power
            loss = F.cross_entropy(reference(images), labels, ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            it += 1
    _assert_same_state(model, reference, exact=False)


@pytest.mark.parametrize("normalize, s_max", [("scale", None), ("mean", 4.0), ("max", None)])
@pytest.mark.parametrize("by_weight", [False, True])
def test_criterion_takes_normalize_and_cap(normalize, s_max, by_weight):
    """The UAAL criterion of a config scales and caps the uncertainty as the config says."""
    criterion, source = make_criterion(
        _config(
            mode="uaal",
            uncertainty="kernel_noise",
            eta=0.02,
            normalize=normalize,
            s_max=s_max,
            exponent=2.0,
            alpha=1.5,
            normalize_by_weight=by_weight,
        )
    )
    assert criterion.normalize == normalize and criterion.s_max == s_max and source.uncertainty_scale == 0.02
    logits = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 6, 7))
    sigma = torch.rand(2, 6, 7, dtype=torch.float64) * 0.1
    if normalize == "scale":
        u = sigma / 0.02
    elif normalize == "mean":
        u = sigma / sigma.mean()
    else:
        u = sigma / sigma.amax(dim=(1, 2), keepdim=True)
    s = u**2 if s_max is None else (u**2).clamp(max=s_max)
    w = 1 + 1.5 * s
    expected = (w * F.cross_entropy(logits, labels, reduction="none")).sum() / (w.sum() if by_weight else w.numel())
    torch.testing.assert_close(criterion(logits, labels, sigma), expected)


def test_fused_entropy_equals_the_entropy_source():
    """mode="uaal", uncertainty="entropy": the source says the loss computes it, so the step hands the
    loss no map and the kernel computes Hn itself: the same step as calling EntropyUncertainty."""
    criterion, source = make_criterion(_config(mode="uaal", uncertainty="entropy", alpha=3.0))
    assert isinstance(source, uaal_ext.EntropyUncertainty) and source.computed_in_loss
    images, labels = _dataset()[:4]
    models = []
    for explicit in (False, True):
        model = _tiny_net().train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(5)  # same dropout mask
        if explicit:
            logits = model(images)
            _, entropy = uaal_ext.EntropyUncertainty()(model, images, clean_logits=logits.detach())
            loss = uaal_ext.UAALLoss(ignore_index=IGNORE, alpha=3.0, uncertainty_scale=1.0)(logits, labels, entropy)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            loss = train_step(model, (images, labels), criterion, optimizer, source)
        models.append((model, loss.detach()))
    torch.testing.assert_close(models[0][1], models[1][1], rtol=1e-5, atol=1e-6)
    _assert_same_state(models[0][0], models[1][0], exact=False)


@pytest.mark.parametrize("uncertainty", ["kernel_noise", "mc_dropout"])
def test_same_seed_gives_identical_weights(uncertainty):
    config = _config(mode="uaal", uncertainty=uncertainty, epochs=2)
    a, b = _tiny_net(), _tiny_net()
    ra = train(a, _dataset(), config, progress=False)
    rb = train(b, _dataset(), config, progress=False)
    _assert_same_state(a, b)
    assert ra.losses == rb.losses
    c = _tiny_net()
    train(c, _dataset(), dataclasses.replace(config, seed=1), progress=False)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_progress_bar_shows_loss_and_lr(capsys):
    train(_tiny_net(), _dataset(), _config(epochs=1), progress=True)
    err = capsys.readouterr().err
    # The bar ends on the last step's rate (step 2 of 3), not the next one's (0).
    assert "loss=" in err and f"lr={0.05 * (1 / 3) ** 0.9:.2e}" in err


def test_last_batch_of_one_image_is_dropped():
    # 13 images, batch 4: a last batch of 1 would break batch norm after global pooling.
    result = train(_tiny_net(), _dataset(num_images=13), _config(epochs=1), progress=False)
    assert result.steps == 3


# ---------------------------------------------------------------------------------------------------
# Checkpoints


class _Interrupted(Exception):
    pass


class _InterruptAfter(Dataset):
    """Raises after `limit` item reads: a run killed in the middle of an epoch."""

    def __init__(self, base, limit):
        self.base, self.limit, self.reads = base, limit, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        self.reads += 1
        if self.reads > self.limit:
            raise _Interrupted
        return self.base[index]


@pytest.mark.parametrize("mode", ["standard", "kernel_noise"])
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, mode):
    overrides = dict(mode="standard") if mode == "standard" else dict(mode="uaal", uncertainty=mode)
    config = _config(schedule="linear_increase", **overrides)
    dataset = _dataset()
    full = _tiny_net()
    expected = train(full, dataset, config, progress=False)

    path = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(_Interrupted):  # killed during the second epoch, after the first checkpoint
        train(_tiny_net(), _InterruptAfter(dataset, limit=12 + 5), config, checkpoint_path=path, progress=False)
    assert torch.load(path, weights_only=True)["epochs_done"] == 1
    resumed = _tiny_net(init_seed=123)  # the checkpoint, not the init, decides the weights
    result = train(resumed, dataset, config, checkpoint_path=path, progress=False)

    _assert_same_state(resumed, full)
    assert result.start_epoch == 1
    assert result.losses == expected.losses and result.alphas == expected.alphas and result.steps == expected.steps
    assert os.listdir(path.parent) == ["checkpoint.pt"]  # no temporary file left behind


def test_checkpoint_round_trip(tmp_path):
    config = _config(mode="uaal", uncertainty="kernel_noise", epochs=2)
    path = str(tmp_path / "ck.pt")
    model = _tiny_net()
    result = train(model, _dataset(), config, checkpoint_path=path, progress=False)
    state = torch.load(path, weights_only=True)  # plain types and tensors only
    assert state["epochs_done"] == 2 and state["config"] == dataclasses.asdict(config)
    assert state["source"] == {"calls": result.steps}
    assert state["history"] == {"losses": result.losses, "alphas": result.alphas, "steps": result.steps}
    assert state["scheduler"]["last_epoch"] == result.steps
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key

    # A finished checkpoint: the call trains no further and hands back the trained weights.
    again = _tiny_net(init_seed=7)
    repeat = train(again, _dataset(), config, checkpoint_path=path, progress=False)
    _assert_same_state(again, model)
    assert repeat.losses == result.losses and repeat.start_epoch == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_checkpoint"])
def test_corrupt_checkpoint_raises_and_is_kept(tmp_path, damage):
    path = tmp_path / "ck.pt"
    if damage == "garbage":
        path.write_bytes(b"\x00 definitely not a torch file")
    elif damage == "truncated":
        train(_tiny_net(), _dataset(), _config(epochs=1), checkpoint_path=path, progress=False)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    content = path.read_bytes()
    with pytest.raises(CheckpointError, match="ck.pt"):
        train(_tiny_net(), _dataset(), _config(), checkpoint_path=path, progress=False)
    assert path.read_bytes() == content


def test_checkpoint_of_another_config_or_dataset_is_refused(tmp_path):
    path = tmp_path / "ck.pt"
    train(_tiny_net(), _dataset(), _config(epochs=1), checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.05 -> 0\.1"):
        train(_tiny_net(), _dataset(), _config(epochs=1, lr=0.1), checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="12 images"):
        train(_tiny_net(), _dataset(num_images=16), _config(epochs=1), checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="does not fit this model"):
        train(_tiny_net(num_classes=4), _dataset(), _config(epochs=1), checkpoint_path=path, progress=False)
    # Where it runs is not part of the computation: another worker count resumes.
    train(_tiny_net(), _dataset(), _config(epochs=1, num_workers=1), checkpoint_path=path, progress=False)


def test_checkpoint_written_before_a_key_existed_resumes_only_with_what_it_computed(tmp_path):
    """A checkpoint without ``normalize_by_weight`` was trained with the by-count mean, today's
    default divides by the weights: resuming it needs the old value, and says so."""
    path = tmp_path / "ck.pt"
    config = _config(epochs=1, mode="uaal", uncertainty="entropy", normalize_by_weight=False)
    train(_tiny_net(), _dataset(), config, checkpoint_path=path, progress=False)
    state = torch.load(path, weights_only=False)
    del state["config"]["normalize_by_weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"normalize_by_weight: \(unset: False\) -> True"):
        train(_tiny_net(), _dataset(), _config(epochs=1, mode="uaal", uncertainty="entropy"), checkpoint_path=path,
              progress=False)  # fmt: skip
    result = train(_tiny_net(), _dataset(), config, checkpoint_path=path, progress=False)
    assert result.start_epoch == 1 and len(result.losses) == 1  # nothing left to train, nothing lost


# ---------------------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("mode", "sgd", "standard"),
        ("uncertainty", "bald", "kernel_noise"),
        ("schedule", "cosine", "linear_decrease"),
        ("epochs", 0, ">= 1"),
        ("batch_size", -2, ">= 1"),
        ("batch_size", 2.0, "int"),
        ("num_samples", 0, ">= 1"),
        ("lr", 0.0, "> 0"),
        ("lr", float("nan"), "finite"),
        ("momentum", 1.0, r"\[0, 1\)"),
        ("weight_decay", -1e-4, ">= 0"),
        ("alpha", -1.0, ">= 0"),
        ("eta", 0.0, "> 0"),
        ("normalize", "median", "scale"),
        ("s_max", -1.0, ">= 0"),
        ("seed", -1, "2\\*\\*63"),
        ("amp", "yes", "True or False"),
        ("channels_last", 1, "True or False"),
        ("device", "gpu0", "torch device"),
    ],
)
def test_config_validation(key, value, allowed):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{key} must be .*{allowed}"):
        TrainConfig(**{key: value})
    config = TrainConfig()
    setattr(config, key, value)  # changed after construction: train() validates again
    with pytest.raises(ValueError, match=rf"TrainConfig\.{key}"):
        train(_tiny_net(), _dataset(), config, progress=False)


def test_non_finite_loss_stops_training(tmp_path):
    images, labels = _dataset().tensors
    images = images.clone()
    images[5, 0, 3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="epoch 0"):
        train(_tiny_net(), TensorDataset(images, labels), _config(), progress=False)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty"):
        train(_tiny_net(), _dataset(num_images=0), _config(), progress=False)


# ---------------------------------------------------------------------------------------------------
# evaluate


class _Oracle(nn.Module):
    """Predicts the class written in channel 0 of the image: a perfect predictor."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return self.scale * F.one_hot(x[:, 0].long(), NUM_CLASSES).permute(0, 3, 1, 2).float()


def test_evaluate_perfect_and_constant_predictors():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (5, 9, 11), generator=g)
    images = torch.stack([labels.float(), torch.zeros_like(labels, dtype=torch.float), labels.float()], dim=1)
    labels[:, 0, :] = IGNORE  # ignored pixels never count
    dataset = TensorDataset(images, labels)
    oracle = _Oracle().train()
    metrics = evaluate(oracle, dataset, NUM_CLASSES, batch_size=2)
    assert metrics.miou == pytest.approx(1.0) and metrics.pixel_accuracy == pytest.approx(1.0)
    assert metrics.mean_class_accuracy == pytest.approx(1.0)
    assert oracle.training  # mode restored

    constant = TensorDataset(torch.zeros_like(images), labels)  # the oracle now always says class 0
    metrics = evaluate(oracle.eval(), constant, NUM_CLASSES, batch_size=4)
    valid = labels[labels != IGNORE]
    assert metrics.pixel_accuracy == pytest.approx((valid == 0).double().mean().item())
    assert 0 < metrics.miou < 1 and not oracle.training


def test_evaluate_after_training_beats_chance():
    model = _tiny_net()
    train(model, _dataset(num_images=16), _config(epochs=6, lr=0.1), progress=False)
    metrics = evaluate(model, _dataset(num_images=8, seed=2), NUM_CLASSES)
    assert metrics.pixel_accuracy > 0.6 and metrics.miou > 0.4


# ---------------------------------------------------------------------------------------------------
# The real model and data set


def _small_model_and_data(num_images=6):
    models = pytest.importorskip("uaal_ext.experiment.models")
    data = pytest.importorskip("uaal_ext.experiment.data")
    torch.manual_seed(0)
    dataset = data.SyntheticScenes("train", size=num_images, seed=0, image_size=(32, 64))
    model = models.build_model("small", num_classes=dataset.NUM_CLASSES)
    return model, dataset, data


@pytest.mark.parametrize("uncertainty", ["kernel_noise", "mc_dropout"])
def test_small_deeplab_on_synthetic_scenes(uncertainty):
    model, dataset, data = _small_model_and_data()
    config = TrainConfig(
        epochs=2,
        batch_size=3,
        lr=0.02,
        mode="uaal",
        uncertainty=uncertainty,
        num_samples=2,
        schedule="linear_decrease",
        ignore_index=data.IGNORE_INDEX,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*active dropout.*")
        result = train(model, dataset, config, progress=False)
    assert all(math.isfinite(x) for x in result.losses) and result.steps == 4
    assert result.alphas == pytest.approx([1.0, 0.5])
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    assert bns and all(int(m.num_batches_tracked) == result.steps for m in bns)
    metrics = evaluate(model, dataset, dataset.NUM_CLASSES, ignore_index=data.IGNORE_INDEX, batch_size=3)
    assert 0.0 <= metrics.miou <= 1.0 and 0.0 <= metrics.pixel_accuracy <= 1.0


def test_small_deeplab_resume_equals_uninterrupted(tmp_path):
    model, dataset, data = _small_model_and_data(num_images=4)
    config = TrainConfig(
        epochs=2,
        batch_size=2,
        lr=0.02,
        mode="uaal",
        uncertainty="mc_dropout",
        num_samples=2,
        ignore_index=data.IGNORE_INDEX,
    )
    train(model, dataset, config, progress=False)
    path = tmp_path / "ck.pt"
    killed = _InterruptAfter(dataset, limit=4 + 1)  # in the second epoch
    with pytest.raises(_Interrupted):
        train(_small_model_and_data(4)[0], killed, config, checkpoint_path=path, progress=False)
    resumed, fresh = _small_model_and_data(num_images=4)[0], _small_model_and_data(num_images=4)[0]
    train(resumed, dataset, config, checkpoint_path=path, progress=False)
    _assert_same_state(resumed, model)
    key = "segmentation_head.0.weight"  # the classifier conv
    assert not torch.equal(resumed.state_dict()[key], fresh.state_dict()[key])


# ---------------------------------------------------------------------------------------------------
# CUDA


@cuda_only
def test_cuda_mixed_precision_training():
    model = _tiny_net()
    config = _config(mode="uaal", uncertainty="kernel_noise", device="cuda", amp=True)
    result = train(model, _dataset(), config, progress=False)
    assert all(math.isfinite(x) for x in result.losses)
    assert next(model.parameters()).device.type == "cuda"
    metrics = evaluate(model, _dataset(num_images=4, seed=2), NUM_CLASSES, device="cuda")
    assert 0.0 <= metrics.miou <= 1.0


def test_evaluate_judges_each_quality_source_on_the_models_own_errors():
    from uaal_ext.metrics import UncertaintyQuality

    model = _tiny_net().eval()
    data = _dataset(num_images=6)
    metrics = evaluate(model, data, NUM_CLASSES, ignore_index=IGNORE, batch_size=4,
                       quality_sources=("entropy", "mc_dropout"), num_samples=3, seed=2)  # fmt: skip
    images, labels = data[:]
    with torch.no_grad():
        logits = model(images)
    expected = UncertaintyQuality(ignore_index=IGNORE)
    p = logits.softmax(dim=1)
    expected.update(uaal_ext.pixel_entropy(logits, normalized=True), logits.argmax(dim=1), labels, p.amax(dim=1))
    got = metrics.uncertainty_quality
    assert set(got) == {"entropy", "mc_dropout"}
    assert got["entropy"].auroc == pytest.approx(expected.compute().auroc, abs=1e-6)
    assert got["entropy"].ece == pytest.approx(expected.compute().ece, abs=1e-6)
    assert got["mc_dropout"].num_pixels == got["entropy"].num_pixels == metrics.num_pixels
    assert metrics.as_dict()["uncertainty_quality"]["entropy"]["auroc"] == got["entropy"].auroc
    assert "uncertainty_quality" not in evaluate(model, data, NUM_CLASSES, ignore_index=IGNORE).as_dict()
