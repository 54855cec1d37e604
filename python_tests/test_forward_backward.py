"""The fused loss + gradient op (cross_entropy_forward_backward), used for scalar reductions of logits
that require a gradient: its contract in each mode (sum, mean, mean by weight), opcheck, and autograd
around it (incoming gradients other than 1, retained graphs, accumulation into .grad)."""

import math

import pytest
import torch
from testing import DEVICES, assert_close, assert_raises_naming, random_logits, random_target

import uaal_ext
from uaal_ext.ops.reference import uaal_cross_entropy_reference

ops = torch.ops.uaal_ext
INF = float("inf")
# The op's `mode` (csrc/ops.cpp): the reduction and normalize_by_weight of uaal_cross_entropy.
SUM, MEAN, MEAN_BY_WEIGHT = 0, 1, 2
MODE_REDUCTIONS = {SUM: ("sum", False), MEAN: ("mean", False), MEAN_BY_WEIGHT: ("mean", True)}


def _args(
    device,
    dtype=torch.float32,
    mode=MEAN,
    weight=False,
    smoothing=0.0,
    uncertainty=False,
    shape=(2, 5, 7),
    alpha=0.7,
    ignore_frac=0.2,
):
    num_classes = 6
    x = random_logits((shape[0], num_classes) + shape[1:]).to(device, dtype)
    target = random_target(shape, num_classes, ignore_index=255, ignore_frac=ignore_frac).to(device)
    u = (torch.rand(shape, dtype=torch.float64) * 2).to(device, dtype) if uncertainty else None
    c = (torch.rand(num_classes, dtype=torch.float64) + 0.5).to(device, dtype) if weight else None
    inv_scale = 1.0 if uncertainty else 1.0 / math.log(num_classes)
    return [x, target, u, c, 255, smoothing, alpha, 2.0, inv_scale, INF, mode]


CASES = [
    dict(),
    dict(mode=SUM),
    dict(weight=True, smoothing=0.1),
    dict(uncertainty=True, dtype=torch.float64),
    dict(dtype=torch.bfloat16, weight=True),
    # mean by weight: the denominator sum c_y w from each pre-pass (entropy of the logits, the map,
    # the targets alone when alpha = 0)
    dict(mode=MEAN_BY_WEIGHT, weight=True, smoothing=0.1),
    dict(mode=MEAN_BY_WEIGHT, uncertainty=True, weight=True, dtype=torch.float64),
    dict(mode=MEAN_BY_WEIGHT, uncertainty=True, smoothing=0.1, dtype=torch.float16),
    dict(mode=MEAN_BY_WEIGHT, alpha=0.0, weight=True, shape=(3, 11)),
]
CASE_IDS = ["mean", "sum", "weighted-smoothed", "map-f64", "bf16"] + [
    f"by-weight-{name}" for name in ("entropy", "map-f64", "map-f16", "alpha0")
]


def _reference(args, x64):
    x, target, u, c, ignore_index, eps, alpha, exponent, inv_scale, s_max, mode = args
    reduction, normalize_by_weight = MODE_REDUCTIONS[mode]
    return uaal_cross_entropy_reference(
        x64,
        target,
        u.double() if u is not None else None,
        weight=c.double() if c is not None else None,
        ignore_index=ignore_index,
        label_smoothing=eps,
        alpha=alpha,
        exponent=exponent,
        uncertainty_scale=1.0 / inv_scale,
        reduction=reduction,
        normalize_by_weight=normalize_by_weight,
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_loss_and_gradient_match_reference(device, case, seed):
    args = _args(device, **case)
    loss, grad_input = ops.cross_entropy_forward_backward(*args)
    x = args[0]
    x64 = x.double().requires_grad_()
    expected = _reference(args, x64)
    expected.backward()
    assert loss.shape == () and grad_input.shape == x.shape and grad_input.dtype == x.dtype
    assert_close(loss, expected, x.dtype)
    assert_close(grad_input, x64.grad, x.dtype, unit=x64.grad.abs().max().item())


def test_opcheck(seed):
    for case in CASES:
        args = _args("cpu", **case)
        args[0].requires_grad_()
        torch.library.opcheck(ops.cross_entropy_forward_backward, args)


@pytest.mark.parametrize("device", DEVICES)
def test_mean_by_weight_over_no_valid_pixel_is_nan(device, seed):
    """0 / 0 as PyTorch's mean gives it, with a zero gradient: no valid pixel, or no pixel at all."""
    for shape, ignore_frac in [((2, 4, 3), 1.0), ((0, 4, 3), 0.0)]:
        for uncertainty in (False, True):
            args = _args(device, mode=MEAN_BY_WEIGHT, uncertainty=uncertainty, shape=shape, ignore_frac=ignore_frac)
            loss, grad_input = ops.cross_entropy_forward_backward(*args)
            assert torch.isnan(loss)
            assert torch.equal(grad_input, torch.zeros_like(grad_input))


# The CPU's by-weight mean of the entropy weight keeps the softmax in the gradient's buffer and turns it
# into the gradient in place once sum c_y w is known (csrc/loss_common.h); every mode must treat
# non-finite logits the way the forward and backward ops do.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", [SUM, MEAN, MEAN_BY_WEIGHT])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_nonfinite_logits_match_the_forward_and_backward_ops(dtype, mode, layout, smoothing, seed):
    x = (
        random_logits((2, 11, 3, 70)).to(dtype).contiguous(memory_format=layout)
    )  # a full 64-pixel block and a partial one
    target = random_target((2, 3, 70), 11, ignore_index=255)
    x[0, 2, 0, 0] = float("nan")
    x[0, :, 1, 5] = float("-inf")
    x[1, 4, 2, 66] = float("inf")
    # Valid targets there: at ignored pixels with non-finite logits the ops' gradients are left unspecified.
    target[0, 0, 0], target[0, 1, 5], target[1, 2, 66] = 2, 0, 7
    args = [x, target, None, None, 255, smoothing, 1.5, 2.0, 1.0 / math.log(11), INF]
    loss, grad_input = ops.cross_entropy_forward_backward(*args, mode)
    total, log_normalizer, sums = ops.cross_entropy_forward(*args, True)
    denominator = {SUM: torch.ones(()), MEAN: sums[0], MEAN_BY_WEIGHT: sums[1]}[mode]
    expected_grad = ops.cross_entropy_backward(1.0 / denominator, x, target, log_normalizer, *args[2:])
    torch.testing.assert_close(loss, total / denominator, equal_nan=True)
    torch.testing.assert_close(grad_input, expected_grad, equal_nan=True)
    assert grad_input.isnan().any() and not grad_input.isnan().all()


@pytest.mark.parametrize("mode", [-1, 3])
def test_bad_mode_is_named(mode):
    args = _args("cpu", mode=mode)
    assert_raises_naming(lambda: ops.cross_entropy_forward_backward(*args), ValueError, "mode", shown=[str(mode)])


TRAINING_CALLS = {
    "mean": dict(alpha=1.0),
    "by-weight-entropy": dict(alpha=1.0, normalize_by_weight=True, label_smoothing=0.1),
    "by-weight-map": dict(alpha=1.0, normalize_by_weight=True, uncertainty=True),
    "by-weight-alpha0": dict(normalize_by_weight=True, weight=True),
}


@pytest.mark.parametrize("call", list(TRAINING_CALLS))
@pytest.mark.parametrize("device", DEVICES)
def test_training_calls_take_the_fused_path_and_skip_the_backward_op(device, call, seed):
    """A training call (logits that need a gradient, a scalar reduction) runs the fused op in the
    forward and no backward op: a silent fallback to the two-op path fails here."""
    x = random_logits((2, 5, 4, 3)).float().to(device).requires_grad_()
    y = random_target((2, 4, 3), 5, ignore_index=-100).to(device)
    kwargs = dict(TRAINING_CALLS[call])
    u = torch.rand(2, 4, 3, device=device) if kwargs.pop("uncertainty", False) else None
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.rand(5, device=device) + 0.5
    with torch.autograd.profiler.profile() as prof:
        loss = uaal_ext.uaal_cross_entropy(x, y, u, **kwargs)
    forward_names = {event.name for event in prof.function_events}
    assert "uaal_ext::cross_entropy_forward_backward" in forward_names
    assert "uaal_ext::cross_entropy_forward" not in forward_names
    with torch.autograd.profiler.profile() as prof:
        loss.backward()
    names = {event.name for event in prof.function_events}
    assert "uaal_ext::cross_entropy_backward" not in names
    weight64 = kwargs.pop("weight", None)
    weight64 = None if weight64 is None else weight64.double()
    x64 = x.detach().double().requires_grad_()
    u64 = None if u is None else u.double()
    (expected,) = torch.autograd.grad(uaal_cross_entropy_reference(x64, y, u64, weight=weight64, **kwargs), x64)
    assert_close(x.grad, expected, torch.float32)


@pytest.mark.parametrize("scale", [0.5, -3.0, 0.0])
def test_incoming_gradient_other_than_one_scales_the_result(scale, seed):
    x = random_logits((2, 7, 5, 6)).float().requires_grad_()
    y = random_target((2, 5, 6), 7)
    (uaal_ext.uaal_cross_entropy(x, y, alpha=1.0) * scale).backward()
    x64 = x.detach().double().requires_grad_()
    (uaal_cross_entropy_reference(x64, y, alpha=1.0) * scale).backward()
    assert_close(x.grad, x64.grad, torch.float32, unit=x64.grad.abs().max().item() or 1.0)


def test_retained_graph_and_accumulation_give_consistent_gradients(seed):
    """The gradient buffer the forward wrote is handed to autograd as it is: a second backward
    through a retained graph and accumulation into .grad must still see the right values."""
    x = random_logits((2, 4, 6, 5)).float().requires_grad_()
    y = random_target((2, 6, 5), 4)
    loss = uaal_ext.uaal_cross_entropy(x, y, alpha=0.5, label_smoothing=0.1)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    assert_close(x.grad, 2 * first, torch.float32)
    # Two losses of the same logits: the gradients add up.
    x.grad = None
    (uaal_ext.uaal_cross_entropy(x, y) + uaal_ext.uaal_cross_entropy(x, y, reduction="sum")).backward()
    x64 = x.detach().double().requires_grad_()
    (uaal_cross_entropy_reference(x64, y) + uaal_cross_entropy_reference(x64, y, reduction="sum")).backward()
    assert_close(x.grad, x64.grad, torch.float32, unit=x64.grad.abs().max().item())


def test_gradient_flows_into_the_model(seed):
    """Upstream layers receive the fused gradient like any other."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    images = torch.randn(2, 3, 8, 9)
    y = random_target((2, 8, 9), 5)
    uaal_ext.UAALLoss(alpha=1.0)(conv(images), y).backward()
    ours = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    logits = conv(images).double()
    uaal_cross_entropy_reference(logits, y, alpha=1.0, normalize_by_weight=True).backward()
    for got, want in zip(ours, [p.grad for p in conv.parameters()]):
        assert_close(got, want, torch.float32, unit=want.abs().max().item())
