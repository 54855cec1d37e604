"""Class-probability targets (a float target shaped like the logits), as torch.nn.functional.cross_entropy
takes them: against F.cross_entropy at alpha = 0 over its argument matrix, against the float64
reference with the UAAL weighting, through both paths (the fused op of a training step and the forward
and backward ops), with gradients for the target too, and bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from testing import (
    DEVICES,
    FLOAT_DTYPES,
    LAYOUTS,
    REDUCTIONS,
    SPATIAL_SHAPES,
    assert_close,
    assert_raises_naming,
    layout_allowed,
    random_logits,
    strided,
)

import uaal_ext
from uaal_ext.ops.reference import uaal_cross_entropy_reference

NUM_CLASSES = 5


def random_probabilities(shape, generator=None):
    """Rows of class probabilities over dim 1, some of them one-hot-like and some exactly 0."""
    logits = torch.randn(shape, dtype=torch.float64, generator=generator) * 3
    probabilities = logits.softmax(dim=1)
    return torch.where(probabilities < 0.02, torch.zeros_like(probabilities), probabilities)


def _inputs(device, dtype, shape, num_classes, layout, use_weight=False, use_uncertainty=False):
    full_shape = (shape[0], num_classes) + tuple(shape[1:])
    x_leaf, x_view = strided(full_shape, layout, random_logits)
    t_leaf, t_view = strided(full_shape, layout, random_probabilities)
    x_leaf = x_leaf.to(device, dtype)
    target = t_view(t_leaf.to(device, dtype))
    weight = (torch.rand(num_classes, dtype=torch.float64) * 2 + 0.1).to(device, dtype) if use_weight else None
    uncertainty = (torch.rand(shape, dtype=torch.float64) * 2).to(device, dtype) if use_uncertainty else None
    return x_leaf, x_view, target, weight, uncertainty


def _unit(grad_out, weight, reduction, num_pixels):
    """The natural size of one gradient entry: |g| * max class weight (over the pixels for a mean)."""
    unit = grad_out.double().abs().max().item() if grad_out.numel() else 0.0
    unit *= 1.0 if weight is None else weight.double().max().item()
    return unit / max(num_pixels, 1) if reduction == "mean" else unit


def _compare(device, dtype, shape, num_classes, layout, reduction, requires_grad=True, against="torch", **kwargs):
    """uaal_cross_entropy with a probability target vs F.cross_entropy (`against="torch"`, alpha 0)
    or the float64 reference, forward and backward. requires_grad picks the path: the fused op of a
    training step (scalar reductions) or the forward op alone."""
    use_weight = kwargs.pop("use_weight", False)
    use_uncertainty = kwargs.pop("use_uncertainty", False)
    x_leaf, x_view, target, weight, uncertainty = _inputs(
        device, dtype, shape, num_classes, layout, use_weight, use_uncertainty
    )
    x = x_leaf.clone().requires_grad_(requires_grad)
    out = uaal_ext.uaal_cross_entropy(x_view(x), target, uncertainty, weight=weight, reduction=reduction, **kwargs)
    x64 = x_leaf.detach().double().requires_grad_()
    t64, w64 = target.double(), None if weight is None else weight.double()
    if against == "torch":
        expected = F.cross_entropy(x_view(x64), t64, weight=w64, reduction=reduction, **kwargs)
    else:
        u64 = None if uncertainty is None else uncertainty.double()
        expected = uaal_cross_entropy_reference(x_view(x64), t64, u64, weight=w64, reduction=reduction, **kwargs)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype)
    if requires_grad:
        grad_out = torch.randn(expected.shape, dtype=torch.float64).to(device, dtype)
        out.backward(grad_out)
        expected.backward(grad_out.double())
        num_pixels = target.numel() // max(num_classes, 1)
        assert_close(x.grad, x64.grad, dtype, unit=_unit(grad_out, weight, reduction, num_pixels))


# --- alpha = 0: exactly F.cross_entropy --------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "ndim,layout", [(nd, lay) for nd in SPATIAL_SHAPES for lay in LAYOUTS if layout_allowed(lay, nd + 2)]
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_f_cross_entropy_over_dtypes_and_layouts(device, dtype, ndim, layout, reduction, seed):
    _compare(device, dtype, (2,) + SPATIAL_SHAPES[ndim], NUM_CLASSES, layout, reduction)


@pytest.mark.parametrize("requires_grad", [True, False], ids=["fused", "forward-op"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_f_cross_entropy_over_its_arguments(
    device, use_weight, label_smoothing, reduction, requires_grad, seed
):
    _compare(
        device,
        torch.float32,
        (2, 7, 13),
        NUM_CLASSES,
        "contiguous",
        reduction,
        requires_grad=requires_grad,
        use_weight=use_weight,
        label_smoothing=label_smoothing,
    )


# 131 pixels a row: two full 64-pixel CPU blocks and a partial one; 8 / 9 classes on both sides of
# the CPU's in-place / staged row threshold, 150 like ADE20K.
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("num_classes", [1, 2, 8, 9, 16, 17, 19, 150])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_wide_rows_and_class_counts(dtype, num_classes, layout, seed):
    for reduction in ("mean", "none"):
        _compare("cpu", dtype, (2, 3, 131), num_classes, layout, reduction, use_weight=True, label_smoothing=0.1)


@pytest.mark.parametrize("shape", [(1,), (1, 1, 1), (3, 1), (0, 4, 3)], ids=["one", "single-pixel", "1-wide", "empty"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_odd_sizes(shape, reduction, seed):
    _compare("cpu", torch.float32, shape, 3, "contiguous", reduction)


def test_unbatched_logits_take_a_probability_vector(seed):
    x = torch.randn(NUM_CLASSES, requires_grad=True)
    target = torch.rand(NUM_CLASSES).softmax(0)
    out = uaal_ext.uaal_cross_entropy(x, target, label_smoothing=0.1)
    expected = F.cross_entropy(x, target, label_smoothing=0.1)
    torch.testing.assert_close(out, expected)
    (grad,) = torch.autograd.grad(out, x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(grad, expected_grad)


def test_a_one_hot_target_gives_the_class_index_loss(seed):
    """The same loss and gradient as the class indices it encodes, with any UAAL weighting."""
    x = random_logits((2, NUM_CLASSES, 6, 9)).float()
    labels = torch.randint(0, NUM_CLASSES, (2, 6, 9))
    one_hot = F.one_hot(labels, NUM_CLASSES).movedim(-1, 1).float()
    for kwargs in (dict(), dict(alpha=1.5, label_smoothing=0.1), dict(alpha=2.0, normalize_by_weight=True)):
        results = []
        for target in (labels, one_hot):
            xg = x.clone().requires_grad_()
            loss = uaal_ext.uaal_cross_entropy(xg, target, **kwargs)
            loss.backward()
            results.append((loss.detach(), xg.grad))
        torch.testing.assert_close(results[0][0], results[1][0])
        torch.testing.assert_close(results[0][1], results[1][1])


# --- the UAAL weighting: the reference -----------------------------------------------------------------


@pytest.mark.parametrize("requires_grad", [True, False], ids=["fused", "forward-op"])
@pytest.mark.parametrize(
    "reduction,normalize_by_weight", [("none", False), ("sum", False), ("mean", False), ("mean", True)]
)
@pytest.mark.parametrize("use_uncertainty", [False, True], ids=["entropy", "map"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_uaal_weighting_matches_the_reference(
    device, dtype, layout, use_uncertainty, reduction, normalize_by_weight, requires_grad, seed
):
    _compare(
        device,
        dtype,
        (2, 7, 70),
        NUM_CLASSES,
        layout,
        reduction,
        requires_grad=requires_grad,
        against="reference",
        use_weight=True,
        use_uncertainty=use_uncertainty,
        label_smoothing=0.1,
        alpha=1.5,
        exponent=2.0,
        s_max=0.8,
        normalize_by_weight=normalize_by_weight,
    )


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["sum", "mean", "mean-by-weight"])
@pytest.mark.parametrize("use_uncertainty", [False, True], ids=["entropy", "map"])
def test_fused_op_equals_forward_and_backward_ops(mode, use_uncertainty, seed):
    x, _, target, weight, uncertainty = _inputs(
        "cpu", torch.float32, (2, 9, 70), 19, "contiguous", True, use_uncertainty
    )
    args = [x, target, uncertainty, weight, -100, 0.1, 1.5, 2.0, 1.0 if use_uncertainty else 1 / math.log(19), 0.9]
    loss, grad_input = torch.ops.uaal_ext.cross_entropy_forward_backward(*args, mode)
    total, log_normalizer, sums = torch.ops.uaal_ext.cross_entropy_forward(*args, True)
    assert sums[0].item() == 2 * 9 * 70  # every pixel counts once
    denominator = (torch.ones(()), sums[0], sums[1])[mode]
    expected_grad = torch.ops.uaal_ext.cross_entropy_backward(1 / denominator, x, target, log_normalizer, *args[2:])
    torch.testing.assert_close(loss, total / denominator)
    torch.testing.assert_close(grad_input, expected_grad)


def test_gradcheck_for_logits_and_target(seed):
    """With a given map the weight is a constant, so the logits' gradient is checked there; the
    entropy weight is a constant for autograd by design (docs/math.md#uaal-loss), so with it only the
    target's gradient (the weight does not depend on the target)."""
    x = random_logits((2, 4, 3, 5))
    target = random_probabilities((2, 4, 3, 5)).requires_grad_()
    uncertainty = torch.rand(2, 3, 5, dtype=torch.float64)
    weight = torch.rand(4, dtype=torch.float64) + 0.5
    for reduction in REDUCTIONS:
        for u in (None, uncertainty):

            def fn(x, t, reduction=reduction, u=u):
                return uaal_ext.uaal_cross_entropy(
                    x, t, u, weight=weight, reduction=reduction, label_smoothing=0.1, alpha=1.5
                )

            assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(u is not None), target))


def test_target_gradient_matches_f_cross_entropy(seed):
    """Distillation from a teacher being trained: the target gets PyTorch's gradient at alpha = 0."""
    x = torch.randn(2, NUM_CLASSES, 4, 6)
    teacher = torch.randn(2, NUM_CLASSES, 4, 6, requires_grad=True)
    results = []
    for fn in (uaal_ext.uaal_cross_entropy, F.cross_entropy):
        xg = x.clone().requires_grad_()
        loss = fn(xg, teacher.softmax(1), label_smoothing=0.2)
        results.append(torch.autograd.grad(loss, (xg, teacher)))
    torch.testing.assert_close(results[0], results[1])


def test_opcheck_and_compile(seed):
    x, _, target, weight, uncertainty = _inputs("cpu", torch.float32, (2, 5, 9), NUM_CLASSES, "contiguous", True, True)
    scalars = [-100, 0.1, 1.5, 2.0, 1.0, math.inf]
    ops = torch.ops.uaal_ext
    torch.library.opcheck(ops.cross_entropy_forward, [x.requires_grad_(), target, uncertainty, weight, *scalars, True])
    torch.library.opcheck(ops.cross_entropy_forward_backward, [x, target, None, weight, *scalars, 2])

    def loss_fn(x, t):
        return uaal_ext.uaal_cross_entropy(x, t, alpha=1.0, normalize_by_weight=True)

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    xg, xc = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    eager, traced = loss_fn(xg, target), compiled(xc, target)
    torch.testing.assert_close(traced, eager)
    eager.backward()
    traced.backward()
    torch.testing.assert_close(xc.grad, xg.grad)


def test_module_with_probability_targets(seed):
    """UAALLoss takes them too, with every uncertainty normalisation (all pixels count)."""
    x = torch.randn(2, NUM_CLASSES, 6, 7)
    target = random_probabilities((2, NUM_CLASSES, 6, 7)).float()
    for normalize in ("scale", "mean", "max"):
        loss = uaal_ext.UAALLoss(alpha=1.0, normalize=normalize)(x.clone().requires_grad_(), target)
        assert torch.isfinite(loss)
    # alpha = 0 is nn.CrossEntropyLoss, which it replaces
    plain = uaal_ext.UAALLoss(alpha=0.0, label_smoothing=0.1)(x, target)
    torch.testing.assert_close(plain, torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, target))


def test_other_target_dtypes_are_read_in_the_logits_dtype(seed):
    x = torch.randn(2, NUM_CLASSES, 5)
    target = random_probabilities((2, NUM_CLASSES, 5))  # float64
    out = uaal_ext.uaal_cross_entropy(x, target)
    torch.testing.assert_close(out, F.cross_entropy(x, target.float()))


def test_nonfinite_logits_like_pytorch():
    x = torch.randn(2, NUM_CLASSES, 4)
    target = random_probabilities((2, NUM_CLASSES, 4)).float()
    x[0, 1, 0] = float("nan")
    x[0, 2, 1] = float("inf")
    x[1, 3, 2] = float("-inf")
    target[1, 3, 2] = 0.0  # 0 * log 0: NaN in PyTorch too
    x[1, 0, 3] = float("-inf")
    target[1, :, 3] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])  # mass on a -inf class: infinite loss
    ours = uaal_ext.uaal_cross_entropy(x, target, reduction="none")
    theirs = F.cross_entropy(x, target, reduction="none")
    torch.testing.assert_close(ours, theirs, equal_nan=True)


# --- bad inputs ----------------------------------------------------------------------------------


def test_bad_probability_targets_are_named():
    x = torch.randn(2, NUM_CLASSES, 4)
    call = uaal_ext.uaal_cross_entropy
    assert_raises_naming(lambda: call(x, torch.rand(2, NUM_CLASSES, 5)), ValueError, "target", shown=[r"\[2, 5, 4\]"])
    assert_raises_naming(lambda: call(x, torch.rand(2, 4)), ValueError, "target", shown=[r"\[2, 4\]"])
    assert_raises_naming(
        lambda: call(x, torch.rand(2, NUM_CLASSES, 4), ignore_index=255), ValueError, "ignore_index", shown=["255"]
    )
    assert_raises_naming(
        lambda: call(x, torch.rand(2, NUM_CLASSES, 4), torch.full((2, 4), -1.0), alpha=1.0),
        ValueError,
        "uncertainty",
        shown=[">= 0"],
    )
    assert_raises_naming(lambda: call(x, torch.ones(2, NUM_CLASSES, 4, dtype=torch.bool)), TypeError, "target")
