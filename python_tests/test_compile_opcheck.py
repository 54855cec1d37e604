"""The low-level ops: their contract, opcheck (schema, fake kernels, autograd registration) and
torch.compile(fullgraph=True) of a model trained with UAALLoss."""

import math

import pytest
import torch
from testing import DEVICES, assert_close, gradient_unit, random_logits, random_target
from torch import nn

import uaal_ext
from uaal_ext.ops.reference import pixel_entropy_reference, uaal_cross_entropy_reference

INF = float("inf")
ops = torch.ops.uaal_ext


def _forward_args(
    dtype,
    shape,
    num_classes,
    *,
    uncertainty,
    weight,
    ignore_index=-100,
    label_smoothing=0.0,
    alpha=1.0,
    exponent=2.0,
    inv_scale=None,
    s_max=INF,
    reduce=True,
    device="cpu",
):
    x = random_logits((shape[0], num_classes) + shape[1:]).to(device, dtype)
    target = random_target(shape, num_classes, ignore_index=ignore_index).to(device)
    u = torch.rand(shape, dtype=torch.float64).to(device, dtype) * 2 if uncertainty else None
    c = (torch.rand(num_classes, dtype=torch.float64) + 0.3).to(device, dtype) if weight else None
    if (
        inv_scale is None
    ):  # the op's own default is the caller's job: log C for the entropy (docs/math.md#uncertainty-weight)
        inv_scale = 1.0 if uncertainty else 1.0 / math.log(num_classes)
    return [x, target, u, c, ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max, reduce]


FORWARD_CASES = [
    dict(dtype=torch.float32, shape=(2, 3, 4), num_classes=5, uncertainty=False, weight=False),
    dict(
        dtype=torch.float64,
        shape=(3,),
        num_classes=5,
        uncertainty=True,
        weight=True,
        label_smoothing=0.1,
        alpha=0.5,
        exponent=3.5,
        inv_scale=2.0,
        s_max=0.8,
        reduce=False,
    ),
    dict(
        dtype=torch.float16,
        shape=(2, 5),
        num_classes=4,
        uncertainty=False,
        weight=True,
        ignore_index=1,
        label_smoothing=0.2,
        reduce=False,
    ),
    dict(dtype=torch.bfloat16, shape=(1, 2, 3, 2), num_classes=3, uncertainty=True, weight=False, exponent=1.0),
]
FORWARD_IDS = ["f32-2d-reduce", "f64-NC-all-options", "f16-1d-none", "bf16-3d"]


def _unpack(args):
    x, target, u, c, ignore_index, eps, alpha, exponent, inv_scale, s_max, reduce = args
    return (
        x,
        target,
        u,
        c,
        dict(
            ignore_index=ignore_index,
            label_smoothing=eps,
            alpha=alpha,
            exponent=exponent,
            uncertainty_scale=1.0 / inv_scale,
            s_max=None if s_max == INF else s_max,
        ),
    )


def _accumulation_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("case", FORWARD_CASES, ids=FORWARD_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_forward_op_contract(device, case, seed):
    """(loss, log_normalizer, sums) as csrc/ops.cpp documents them, checked against the reference."""
    args = _forward_args(device=device, **case)
    loss, log_normalizer, sums = ops.cross_entropy_forward(*args)
    x, target, u, c, kwargs = _unpack(args)
    reduce, inv_scale, s_max = args[-1], args[8], args[9]
    acc = _accumulation_dtype(x.dtype)
    x64 = x.double()
    # The op takes inv_scale explicitly: give the reference the raw entropy as a map and the same scale.
    u64 = pixel_entropy_reference(x64) if u is None else u.double()
    c64 = None if c is None else c.double()
    reduction = "sum" if reduce else "none"
    expected = uaal_cross_entropy_reference(x64, target, u64, weight=c64, reduction=reduction, **kwargs)
    # Half inputs are summed in float32 and the op returns that sum unrounded.
    assert loss.dtype == acc and loss.shape == expected.shape
    assert_close(loss, expected, acc)

    valid = target != kwargs["ignore_index"]
    assert log_normalizer.dtype == acc and log_normalizer.shape == target.shape
    # Relative to the max logit, so a large common offset of the logits costs no precision.
    assert_close(log_normalizer[valid], (torch.logsumexp(x64, dim=1) - x64.amax(dim=1))[valid], acc)

    c_all = torch.ones(x.shape[1], dtype=torch.float64, device=device) if c64 is None else c64
    c_y = c_all[target.long().clamp(min=0)]
    w = 1 + kwargs["alpha"] * (u64 * inv_scale).pow(kwargs["exponent"]).clamp(max=s_max)
    assert sums.shape == (2,)
    assert_close(sums, torch.stack([c_y[valid].sum(), (c_y * w)[valid].sum()]), acc)


@pytest.mark.parametrize("case", FORWARD_CASES, ids=FORWARD_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_contract(device, case, seed):
    args = _forward_args(device=device, **case)
    _, log_normalizer, _ = ops.cross_entropy_forward(*args)
    x, target, u, c, kwargs = _unpack(args)
    reduce = args[-1]
    # The incoming gradient has the loss's dtype: the accumulation dtype.
    grad = torch.randn(() if reduce else target.shape, dtype=torch.float64, device=device)
    grad = grad.to(_accumulation_dtype(x.dtype))
    grad_input = ops.cross_entropy_backward(grad, *args[:2], log_normalizer, *args[2:-1])

    x64 = x.double().requires_grad_()
    u64 = pixel_entropy_reference(x64.detach()) if u is None else u.double()
    c64 = None if c is None else c.double()
    reduction = "sum" if reduce else "none"
    expected = uaal_cross_entropy_reference(x64, target, u64, weight=c64, reduction=reduction, **kwargs)
    expected.backward(grad.double())
    assert grad_input.dtype == x.dtype and grad_input.shape == x.shape
    assert_close(grad_input, x64.grad, x.dtype, unit=gradient_unit(grad, c))


def test_opcheck_cross_entropy_forward(seed):
    for case in FORWARD_CASES:
        args = _forward_args(**case)
        args[0].requires_grad_()
        torch.library.opcheck(ops.cross_entropy_forward, args)


def test_opcheck_cross_entropy_backward(seed):
    for case in FORWARD_CASES:
        args = _forward_args(**case)
        _, log_normalizer, _ = ops.cross_entropy_forward(*args)
        grad = torch.randn(() if args[-1] else args[1].shape).to(_accumulation_dtype(args[0].dtype))
        torch.library.opcheck(ops.cross_entropy_backward, [grad, *args[:2], log_normalizer, *args[2:-1]])


ENTROPY_CASES = [((2, 5, 3, 4), torch.float32, False), ((3, 7), torch.float64, True), ((2, 4, 6), torch.float16, True)]


def test_opcheck_pixel_entropy(seed):
    for shape, dtype, normalized in ENTROPY_CASES:
        x = random_logits(shape).to(dtype).requires_grad_()
        torch.library.opcheck(ops.pixel_entropy, (x, normalized))


def test_opcheck_pixel_entropy_backward(seed):
    for shape, dtype, normalized in ENTROPY_CASES:
        x = random_logits(shape).to(dtype)
        grad = torch.randn((shape[0],) + shape[2:]).to(dtype)
        torch.library.opcheck(ops.pixel_entropy_backward, (grad, x, normalized))
        expected_x = x.double().requires_grad_()
        pixel_entropy_reference(expected_x, normalized).backward(grad.double())
        assert_close(ops.pixel_entropy_backward(grad, x, normalized), expected_x.grad, dtype, unit=gradient_unit(grad))


# --- torch.compile ---------------------------------------------------------------------------


class TinySegmenter(nn.Module):
    """A one-conv "segmenter" trained with UAALLoss: enough to put the loss inside a graph."""

    def __init__(self, num_classes, normalize, normalize_by_weight=False):
        super().__init__()
        self.head = nn.Conv2d(3, num_classes, 3, padding=1)
        self.loss = uaal_ext.UAALLoss(
            weight=torch.rand(num_classes) + 0.5,
            label_smoothing=0.1,
            alpha=1.5,
            normalize=normalize,
            normalize_by_weight=normalize_by_weight,
        )

    def forward(self, image, target, uncertainty=None):
        logits = self.head(image)
        return self.loss(logits, target, uncertainty) + 0.1 * uaal_ext.pixel_entropy(logits, normalized=True).mean()


@pytest.mark.parametrize(
    "backend,normalize,use_uncertainty,normalize_by_weight",
    [
        ("aot_eager", "scale", False, False),
        ("aot_eager", "max", True, False),
        ("inductor", "scale", False, False),
        # the fused op with the by-weight denominator (entropy pre-pass)
        ("aot_eager", "scale", False, True),
    ],
)
def test_compile_fullgraph(backend, normalize, use_uncertainty, normalize_by_weight, seed):
    torch._dynamo.reset()
    model = TinySegmenter(5, normalize, normalize_by_weight)
    image = torch.randn(2, 3, 6, 7)
    target = random_target((2, 6, 7), 5, ignore_index=-100)
    uncertainty = torch.rand(2, 6, 7) if use_uncertainty else None

    eager_loss = model(image, target, uncertainty)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    compiled_loss = compiled(image, target, uncertainty)
    compiled_grads = torch.autograd.grad(compiled_loss, list(model.parameters()))

    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
