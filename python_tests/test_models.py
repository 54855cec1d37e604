"""uaal_ext.experiment.models: DeepLabv3+ presets, the classifier dropout, local weights, and the uncertainty sources."""

import re
import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from uaal_ext import KernelNoise, MCDropout
from uaal_ext.experiment.models import MODELS, build_model, classifier_dropout, count_parameters, model_info

NUM_CLASSES = 5


def _batch(n, height, width):
    return torch.randn(n, 3, height, width), torch.randint(0, NUM_CLASSES, (n, height, width))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def small():
    """One small model shared by the read-only tests (each puts it in the mode it needs)."""
    torch.manual_seed(0)
    return build_model("small", NUM_CLASSES)


# ---------------------------------------------------------------------------------------------------
# Every preset builds and trains


@pytest.mark.parametrize("name", MODELS)
def test_preset_builds_and_a_few_steps_reduce_the_loss(name, seed):
    # Dropout off so the loss on the fixed batch is a deterministic function of the weights (batch
    # statistics in train mode); 32x48 keeps resnet50/xception65 quick on a 2-core CPU.
    model = build_model(name, NUM_CLASSES, dropout=0.0, aspp_dropout=0.0).train()
    images, labels = _batch(2, 32, 48)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)  # 1e-3 overshoots now and then by step 3
    losses = []
    for _ in range(3):
        logits = model(images)
        assert logits.shape == (2, NUM_CLASSES, 32, 48)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(F.cross_entropy(model(images), labels).item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", MODELS)
def test_preset_encoder(name):
    info = model_info(name, NUM_CLASSES)
    expected = {"mobilenetv3": "tu-mobilenetv3_large_100", "resnet50": "resnet50", "xception65": "tu-xception65"}
    if name in expected:
        assert info["encoder"] == expected[name]
    assert info["num_classes"] == NUM_CLASSES
    assert 0 < info["encoder_params"] < info["params"]


def test_model_info_counts_the_built_model(small):
    assert model_info("small", NUM_CLASSES)["params"] == count_parameters(small)
    assert count_parameters(small, trainable_only=True) == count_parameters(small)
    assert model_info("small")["num_classes"] == 19


# ---------------------------------------------------------------------------------------------------
# Shapes and the input-size requirement


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("size", [(16, 16), (48, 80), (112, 48)])
def test_output_shape(size, output_stride, seed):
    model = build_model("small", NUM_CLASSES, output_stride=output_stride).eval()
    assert model.encoder.output_stride == output_stride
    with torch.no_grad():
        out = model(torch.randn(3, 3, *size))
    assert out.shape == (3, NUM_CLASSES, *size)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("size", [(40, 48), (48, 50)])
def test_size_not_divisible_by_the_output_stride_is_refused(small, size):
    small.eval()
    with pytest.raises(RuntimeError, match="divisible by 16"):
        small(torch.randn(1, 3, *size))


# ---------------------------------------------------------------------------------------------------
# Dropout before the classifier


def test_dropout_feeds_the_classifier(small):
    head = small.segmentation_head
    assert list(dict(head.named_children())) == ["dropout", "0", "1", "2"]
    assert classifier_dropout(small) is head.dropout
    assert isinstance(head.dropout, nn.Dropout) and head.dropout.p == 0.1
    assert isinstance(head[1], nn.Conv2d) and head[1].out_channels == NUM_CLASSES and head[1].kernel_size == (1, 1)
    seen = {}
    handles = [
        head.dropout.register_forward_hook(lambda m, args, out: seen.__setitem__("dropout", out)),
        head[1].register_forward_pre_hook(lambda m, args: seen.__setitem__("classifier", args[0])),
    ]
    try:
        small.eval()
        with torch.no_grad():
            small(torch.randn(1, 3, 32, 32))
    finally:
        for handle in handles:
            handle.remove()
    assert seen["classifier"] is seen["dropout"]


def test_dropout_active_in_train_mode_only(seed):
    # Only the head dropout (ASPP's off), at a high rate so two train-mode passes surely differ.
    model = build_model("small", NUM_CLASSES, dropout=0.5, aspp_dropout=0.0)
    assert model.decoder.aspp[0].project[-1].p == 0.0
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        model.train()
        a, b = model(images), model(images)
        model.eval()
        c, d = model(images), model(images)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)


def test_aspp_dropout_is_kept(small):
    assert small.decoder.aspp[0].project[-1].p == 0.5
    assert build_model("small", NUM_CLASSES, aspp_dropout=0.2).decoder.aspp[0].project[-1].p == 0.2


def test_eval_output_equals_plain_smp_model(small, seed):
    """The inserted dropout changes nothing in eval mode, and the state_dict keys are smp's own."""
    plain = smp.DeepLabV3Plus(
        encoder_name="tu-mobilenetv3_small_050",
        encoder_weights=None,
        encoder_output_stride=16,
        decoder_channels=64,
        decoder_atrous_rates=(2, 4, 6),
        classes=NUM_CLASSES,
    )
    plain.load_state_dict(_state(small))
    small.eval()
    plain.eval()
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(images), plain(images), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# Local weights


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_weights_round_trip(tmp_path, wrap, seed):
    small = build_model("small", NUM_CLASSES)
    with torch.no_grad():  # move the weights away from their init so a silent no-load would show
        for p in small.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "weights.pt"
    torch.save(small.state_dict() if wrap is None else {wrap: small.state_dict(), "epoch": 3}, path)
    loaded = build_model("small", NUM_CLASSES, weights=str(path))
    for key, value in small.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    small.eval()
    loaded.eval()
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(small(images), loaded(images))
    assert torch.equal(
        build_model("small", NUM_CLASSES, weights=path).segmentation_head[1].weight, small.segmentation_head[1].weight
    )  # os.PathLike accepted too


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        build_model("small", NUM_CLASSES, weights=path)
    with pytest.raises(FileNotFoundError):
        build_model("small", NUM_CLASSES, weights=tmp_path)  # a directory is not a weights file


def test_unreadable_weights_file_names_the_path(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(OSError, match=re.escape(str(path))):
        build_model("small", NUM_CLASSES, weights=path)
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        build_model("small", NUM_CLASSES, weights=path)


def test_weights_with_wrong_keys_list_them(small, tmp_path):
    state = _state(small)
    state["not.a.layer"] = torch.zeros(1)
    del state["segmentation_head.0.bias"]
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"missing keys: 1 \(segmentation_head.0.bias\).*unexpected keys: 1 \(not.a.layer\)"
    ):
        build_model("small", NUM_CLASSES, weights=path)


def test_weights_for_other_num_classes_list_the_shapes(small, tmp_path):
    path = tmp_path / "classes.pt"
    torch.save(small.state_dict(), path)
    with pytest.raises(
        ValueError, match=r"shape mismatches: 2 \(segmentation_head.0.weight \(5, 64, 1, 1\) vs model \(7, 64, 1, 1\)"
    ):
        build_model("small", 7, weights=path)


# ---------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("name", ["resnet", "Small", "", None])
def test_unknown_name(name):
    with pytest.raises(ValueError, match=r"name must be one of \('mobilenetv3', 'resnet50', 'xception65', 'small'\)"):
        build_model(name, NUM_CLASSES)
    with pytest.raises(ValueError, match="name must be one of"):
        model_info(name)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"aspp_dropout": 1.5}, "aspp_dropout"),
        ({"output_stride": 32}, "output_stride"),
        ({"output_stride": 4}, "output_stride"),
    ],
)
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        build_model("small", **{"num_classes": NUM_CLASSES, **kwargs})


# ---------------------------------------------------------------------------------------------------
# Uncertainty sources on the small model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_kernel_noise_runs_batched(small, mode, seed):
    small.train(mode == "train")
    before = _state(small)
    images = torch.randn(2, 3, 32, 48)
    kn = KernelNoise(eta=0.05, num_samples=3, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a vmap fallback would warn
        logits, sigma = kn(small, images)
    assert logits.shape == (2, NUM_CLASSES, 32, 48)
    assert sigma.shape == (2, 32, 48)
    assert torch.isfinite(sigma).all() and (sigma >= 0).all() and sigma.max() > 0
    assert small.training == (mode == "train")
    for key, value in small.state_dict().items():  # no weight and no BN running statistic changed
        assert torch.equal(value, before[key]), key
    sequential = KernelNoise(eta=0.05, num_samples=3, seed=seed, batched=False)
    torch.testing.assert_close(sequential(small, images)[1], sigma, rtol=1e-4, atol=1e-6)


def test_kernel_noise_perturbs_the_classifier(small):
    perturbed = KernelNoise(num_samples=2).perturbed_parameters(small)
    assert "segmentation_head.0.weight" in perturbed
    assert "segmentation_head.0.bias" not in perturbed


def test_mc_dropout_samples_differ(small, seed):
    small.eval()
    images = torch.randn(2, 3, 32, 48)
    samples = MCDropout(num_samples=4, seed=seed)(small, images)
    assert samples.shape == (4, 2, NUM_CLASSES, 32, 48)
    assert not torch.equal(samples[0], samples[1])
    assert torch.isfinite(samples).all()
    assert not small.training and not small.segmentation_head.dropout.training


def test_mc_dropout_refuses_a_model_without_dropout():
    model = build_model("small", NUM_CLASSES, dropout=0.0, aspp_dropout=0.0)
    with pytest.raises(ValueError, match="dropout module"):
        MCDropout(num_samples=2)(model, torch.randn(1, 3, 16, 16))
