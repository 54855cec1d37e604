"""The fused loss + gradient op (cross_entropy_forward_backward), used for scalar reductions of logits
that require a gradient: its contract, opcheck, and autograd around it (incoming gradients other
than 1, retained graphs, accumulation into .grad)."""

import math

import pytest
import torch
from testing import DEVICES, assert_close, random_logits, random_target

import uaal_ext
from uaal_ext.ops.reference import uaal_cross_entropy_reference

ops = torch.ops.uaal_ext
INF = float("inf")


def _args(device, dtype=torch.float32, mean=True, weight=False, smoothing=0.0, uncertainty=False, shape=(2, 5, 7)):
    num_classes = 6
    x = random_logits((shape[0], num_classes) + shape[1:]).to(device, dtype)
    target = random_target(shape, num_classes, ignore_index=255).to(device)
    u = torch.rand(shape, dtype=torch.float64).to(device, dtype) if uncertainty else None
    c = (torch.rand(num_classes, dtype=torch.float64) + 0.5).to(device, dtype) if weight else None
    inv_scale = 1.0 if uncertainty else 1.0 / math.log(num_classes)
    return [x, target, u, c, 255, smoothing, 0.7, 2.0, inv_scale, INF, mean]


CASES = [
    dict(),
    dict(mean=False),
    dict(weight=True, smoothing=0.1),
    dict(uncertainty=True, dtype=torch.float64),
    dict(dtype=torch.bfloat16, weight=True),
]


@pytest.mark.parametrize("case", CASES, ids=["mean", "sum", "weighted-smoothed", "map-f64", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_loss_and_gradient_match_reference(device, case, seed):
    args = _args(device, **case)
    loss, grad_input = ops.cross_entropy_forward_backward(*args)
    x, target, u, c, ignore_index, eps, alpha, exponent, inv_scale, s_max, mean = args
    x64 = x.double().requires_grad_()
    expected = uaal_cross_entropy_reference(
        x64,
        target,
        u.double() if u is not None else None,
        weight=c.double() if c is not None else None,
        ignore_index=ignore_index,
        label_smoothing=eps,
        alpha=alpha,
        exponent=exponent,
        uncertainty_scale=1.0 / inv_scale,
        reduction="mean" if mean else "sum",
    )
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
def test_training_calls_take_the_fused_path_and_skip_the_backward_op(device, seed):
    x = random_logits((2, 5, 4, 3)).float().to(device).requires_grad_()
    y = random_target((2, 4, 3), 5).to(device)
    loss = uaal_ext.uaal_cross_entropy(x, y, alpha=1.0)
    with torch.autograd.profiler.profile() as prof:
        loss.backward()
    names = {event.name for event in prof.function_events}
    assert "uaal_ext::cross_entropy_backward" not in names
    (expected,) = torch.autograd.grad(uaal_cross_entropy_reference(x.double(), y, alpha=1.0), x)
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
    uaal_cross_entropy_reference(logits, y, alpha=1.0).backward()
    for got, want in zip(ours, [p.grad for p in conv.parameters()]):
        assert_close(got, want, torch.float32, unit=want.abs().max().item())
