"""uaal_ext.UAALLoss: the nn.Module drop-in for nn.CrossEntropyLoss."""

import pytest
import torch
from testing import DEVICES, REDUCTIONS, assert_close, gradient_unit, random_logits, random_target
from torch import nn

import uaal_ext
from uaal_ext.ops.reference import pixel_entropy_reference, uaal_cross_entropy_reference

NUM_CLASSES = 6


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("ignore", [None, -100, 3])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("shape", [(4,), (2, 5, 7)], ids=["NC", "NCHW"])
def test_alpha0_is_cross_entropy_loss(shape, use_weight, ignore, label_smoothing, reduction, seed):
    x = random_logits((shape[0], NUM_CLASSES) + shape[1:])
    target = random_target(shape, NUM_CLASSES, ignore_index=ignore)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    if use_weight:
        kwargs["weight"] = torch.rand(NUM_CLASSES, dtype=torch.float64) + 0.2
    if ignore is not None:
        kwargs["ignore_index"] = ignore
    ours_x, torch_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = uaal_ext.UAALLoss(alpha=0.0, **kwargs)(ours_x, target)
    theirs = nn.CrossEntropyLoss(**kwargs)(torch_x, target)
    assert_close(ours, theirs, torch.float64)
    ours.sum().backward()
    theirs.sum().backward()
    unit = gradient_unit(torch.ones(()), kwargs.get("weight"), target, kwargs.get("ignore_index", -100), reduction)
    assert_close(ours_x.grad, torch_x.grad, torch.float64, unit=unit)


def test_is_a_module():
    loss = uaal_ext.UAALLoss()
    assert isinstance(loss, nn.Module)
    assert loss.current_alpha == 1.0  # constant schedule at the default peak


@pytest.mark.parametrize("normalize_by_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_uncertainty", [False, True])
@pytest.mark.parametrize("uncertainty_scale", [None, 0.4])
@pytest.mark.parametrize("device", DEVICES)
def test_scale_mode(device, uncertainty_scale, use_uncertainty, reduction, normalize_by_weight, seed):
    x = random_logits((2, NUM_CLASSES, 5, 7)).to(device).requires_grad_()
    target = random_target((2, 5, 7), NUM_CLASSES, ignore_index=-100).to(device)
    weight = torch.rand(NUM_CLASSES, dtype=torch.float64, device=device) + 0.2
    uncertainty = torch.rand(2, 5, 7, dtype=torch.float64, device=device) if use_uncertainty else None
    kwargs = dict(
        weight=weight,
        reduction=reduction,
        label_smoothing=0.1,
        alpha=1.7,
        exponent=3.0,
        uncertainty_scale=uncertainty_scale,
        normalize_by_weight=normalize_by_weight,
    )
    out = uaal_ext.UAALLoss(normalize="scale", **kwargs)(x, target, uncertainty)
    x_ref = x.detach().clone().requires_grad_()
    expected = uaal_cross_entropy_reference(x_ref, target, uncertainty, **kwargs)
    assert_close(out, expected, torch.float64)
    out.sum().backward()
    expected.sum().backward()
    assert_close(x.grad, x_ref.grad, torch.float64, unit=gradient_unit(torch.ones(()), weight, target, -100, reduction))


def _normalized_by_hand(U, valid, mode):
    """u = U / (batch mean | per-image max) of U over valid pixels; 0 where that is 0."""
    if mode == "mean":
        denom = U[valid].mean().expand_as(U)
    else:
        per_image = U.masked_fill(~valid, 0).flatten(1).amax(dim=1)
        denom = per_image.view(-1, *([1] * (U.dim() - 1))).expand_as(U)
    return torch.where(denom > 0, U / denom, torch.zeros_like(U))


@pytest.mark.parametrize("normalize_by_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_uncertainty", [False, True])
@pytest.mark.parametrize("mode", ["mean", "max"])
@pytest.mark.parametrize("device", DEVICES)
def test_mean_and_max_modes(device, mode, use_uncertainty, reduction, normalize_by_weight, seed):
    x = random_logits((3, NUM_CLASSES, 4, 9)).to(device).requires_grad_()
    target = random_target((3, 4, 9), NUM_CLASSES, ignore_index=-100, ignore_frac=0.3).to(device)
    valid = target != -100
    if use_uncertainty:
        U = torch.rand(3, 4, 9, dtype=torch.float64, device=device)
        # Large values at ignored pixels: they must not enter the mean / max.
        U = torch.where(valid, U, U + 10)
    else:
        U = pixel_entropy_reference(x.detach())
    kwargs = dict(
        reduction=reduction,
        label_smoothing=0.1,
        alpha=1.3,
        exponent=2.0,
        normalize_by_weight=normalize_by_weight,
        weight=torch.rand(NUM_CLASSES, dtype=torch.float64, device=device) + 0.2,
    )
    out = uaal_ext.UAALLoss(normalize=mode, **kwargs)(x, target, U if use_uncertainty else None)

    x_ref = x.detach().clone().requires_grad_()
    expected = uaal_cross_entropy_reference(x_ref, target, _normalized_by_hand(U, valid, mode), **kwargs)
    assert_close(out, expected, torch.float64)
    out.sum().backward()
    expected.sum().backward()
    unit = gradient_unit(torch.ones(()), kwargs["weight"], target, -100, reduction)
    assert_close(x.grad, x_ref.grad, torch.float64, unit=unit)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_zero_denominator_gives_zero_u(mode, seed):
    """An all-zero uncertainty (whole batch for mean, one image for max) means w = 1 there."""
    x = random_logits((2, NUM_CLASSES, 3, 5)).requires_grad_()
    target = random_target((2, 3, 5), NUM_CLASSES)
    U = torch.rand(2, 3, 5, dtype=torch.float64)
    U[0] = 0.0
    if mode == "mean":
        U[1] = 0.0
    kwargs = dict(alpha=2.0, exponent=1.0, reduction="none")
    out = uaal_ext.UAALLoss(normalize=mode, **kwargs)(x, target, U)
    assert torch.isfinite(out).all()
    expected = uaal_cross_entropy_reference(x.detach(), target, _normalized_by_hand(U, target >= 0, mode), **kwargs)
    assert_close(out, expected, torch.float64)
    # Image 0 is plain cross-entropy.
    assert_close(out[0], uaal_cross_entropy_reference(x.detach()[:1], target[:1], reduction="none")[0], torch.float64)


def test_max_mode_with_an_image_fully_ignored(seed):
    x = random_logits((2, NUM_CLASSES, 3, 4))
    target = random_target((2, 3, 4), NUM_CLASSES)
    target[1] = -100
    U = torch.rand(2, 3, 4, dtype=torch.float64)
    out = uaal_ext.UAALLoss(normalize="max", alpha=1.0, reduction="sum")(x, target, U)
    valid = target != -100
    expected = uaal_cross_entropy_reference(x, target, _normalized_by_hand(U, valid, "max"), alpha=1.0, reduction="sum")
    assert_close(out, expected, torch.float64)
