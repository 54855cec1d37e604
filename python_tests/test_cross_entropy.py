"""uaal_ext.uaal_cross_entropy against the float64 reference and against F.cross_entropy."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from testing import (
    DEVICES,
    FLOAT_DTYPES,
    FULL_DTYPES,
    LAYOUTS,
    REDUCTIONS,
    SPATIAL_SHAPES,
    TARGET_DTYPES,
    assert_close,
    gradient_unit,
    layout_allowed,
    random_logits,
    random_target,
    strided,
)

import uaal_ext
from uaal_ext.ops.reference import uaal_cross_entropy_reference

NUM_CLASSES = 5


def _check(
    device,
    dtype,
    shape,
    num_classes,
    *,
    layout="contiguous",
    target_dtype=torch.int64,
    use_weight=False,
    use_uncertainty=False,
    ignore_frac=0.2,
    **kwargs,
):
    """Forward and backward of the extension vs the float64 reference on the same (rounded) values.

    `shape` is (N, *spatial); kwargs go to both implementations unchanged.
    """
    full_shape = (shape[0], num_classes) + tuple(shape[1:])
    ignore_index = kwargs.get("ignore_index")

    x_leaf, x_view = strided(full_shape, layout, random_logits)
    x_leaf = x_leaf.to(device=device, dtype=dtype).requires_grad_()
    t_leaf, t_view = strided(
        shape, layout, lambda s: random_target(s, num_classes, target_dtype, ignore_index, ignore_frac)
    )
    target = t_view(t_leaf.to(device))
    weight = (torch.rand(num_classes, dtype=torch.float64) * 2 + 0.1).to(device, dtype) if use_weight else None
    uncertainty = None
    if use_uncertainty:  # values above 1 so that the exponent and s_max both matter
        u_leaf, u_view = strided(shape, layout, lambda s: torch.rand(s, dtype=torch.float64) * 2)
        uncertainty = u_view(u_leaf.to(device, dtype))

    out = uaal_ext.uaal_cross_entropy(x_view(x_leaf), target, uncertainty, weight=weight, **kwargs)

    x_ref = x_leaf.detach().double().requires_grad_()
    expected = uaal_cross_entropy_reference(
        x_view(x_ref),
        target,
        None if uncertainty is None else uncertainty.double(),
        weight=None if weight is None else weight.double(),
        **kwargs,
    )
    assert out.dtype == dtype
    assert out.shape == expected.shape
    assert_close(out, expected, dtype)

    grad_out = torch.randn(expected.shape, dtype=torch.float64, device=device).to(dtype)
    out.backward(grad_out)
    expected.backward(grad_out.double())
    assert x_leaf.grad.dtype == dtype
    unit = gradient_unit(grad_out, weight, target, kwargs.get("ignore_index", -100), kwargs["reduction"])
    assert_close(x_leaf.grad, x_ref.grad, dtype, unit=unit)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "ndim,layout", [(nd, lay) for nd in SPATIAL_SHAPES for lay in LAYOUTS if layout_allowed(lay, nd + 2)]
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes_and_layouts(device, dtype, ndim, layout, reduction, seed):
    _check(
        device,
        dtype,
        (2,) + SPATIAL_SHAPES[ndim],
        NUM_CLASSES,
        layout=layout,
        use_weight=True,
        ignore_index=-100,
        reduction=reduction,
        label_smoothing=0.1,
        alpha=2.0,
    )


@pytest.mark.parametrize("normalize_by_weight", [False, True])
@pytest.mark.parametrize("use_uncertainty", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
# ignore_index: none present; the default -100; 255 with uint8 targets; a valid class index.
@pytest.mark.parametrize("ignore", [None, -100, 255, 1])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_arguments(
    device, dtype, use_weight, ignore, label_smoothing, reduction, use_uncertainty, normalize_by_weight, seed
):
    kwargs = {} if ignore is None else {"ignore_index": ignore}
    _check(
        device,
        dtype,
        (2, 7, 13),
        NUM_CLASSES,
        target_dtype=torch.uint8 if ignore == 255 else torch.int64,
        ignore_frac=0.0 if ignore is None else 0.25,
        use_weight=use_weight,
        use_uncertainty=use_uncertainty,
        reduction=reduction,
        label_smoothing=label_smoothing,
        normalize_by_weight=normalize_by_weight,
        alpha=1.5,
        **kwargs,
    )


@pytest.mark.parametrize("alpha", [0.5, 4.0])
@pytest.mark.parametrize("use_uncertainty", [False, True])
@pytest.mark.parametrize("uncertainty_scale", [None, 0.7])
@pytest.mark.parametrize("s_max", [None, 0.3])
@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_uncertainty_weighting(device, dtype, exponent, s_max, uncertainty_scale, use_uncertainty, alpha, seed):
    _check(
        device,
        dtype,
        (2, 9, 6),
        NUM_CLASSES,
        use_uncertainty=use_uncertainty,
        ignore_index=-100,
        reduction="mean",
        normalize_by_weight=True,  # the weights then reach the result through both sums
        alpha=alpha,
        exponent=exponent,
        uncertainty_scale=uncertainty_scale,
        s_max=s_max,
    )


# normalize_by_weight=True for logits that need a gradient runs the fused op with its pre-pass for
# the denominator sum c_y w: the entropy of the logits (no map) or the map, read through every dtype
# and layout.
BY_WEIGHT_LAYOUTS = [(2, "contiguous"), (2, "channels_last"), (3, "channels_last"), (2, "sliced"), (1, "transposed")]


@pytest.mark.parametrize("use_uncertainty", [False, True])
@pytest.mark.parametrize("ndim,layout", BY_WEIGHT_LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_normalize_by_weight_dtypes_and_layouts(device, dtype, ndim, layout, use_uncertainty, seed):
    _check(
        device,
        dtype,
        (2,) + SPATIAL_SHAPES[ndim],
        NUM_CLASSES,
        layout=layout,
        use_weight=True,
        use_uncertainty=use_uncertainty,
        ignore_index=-100,
        reduction="mean",
        label_smoothing=0.1,
        alpha=2.0,
        normalize_by_weight=True,
    )


@pytest.mark.parametrize("use_uncertainty", [False, True])
@pytest.mark.parametrize(
    "shape", [(1,), (1, 1, 1), (3, 1), (1, 7, 13)], ids=["one-row", "single-pixel", "1-wide", "7x13"]
)
@pytest.mark.parametrize("num_classes", [1, 2, 150])
def test_normalize_by_weight_odd_sizes(num_classes, shape, use_uncertainty, seed):
    _check(
        "cpu",
        torch.float32,
        shape,
        num_classes,
        target_dtype=torch.int32,
        use_weight=True,
        use_uncertainty=use_uncertainty,
        ignore_index=-100,
        ignore_frac=0.1,
        reduction="mean",
        label_smoothing=0.05,
        alpha=1.0,
        normalize_by_weight=True,
    )


@pytest.mark.parametrize("target_dtype", TARGET_DTYPES)
@pytest.mark.parametrize(
    "shape",
    [(1,), (4,), (1, 1, 1), (1, 7, 13), (3, 1), (3, 1, 1, 1)],
    ids=["one-row", "N4", "single-pixel", "7x13", "1-wide", "3d-single-pixel"],
)
@pytest.mark.parametrize("num_classes", [1, 2, 3, 150])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_odd_sizes(device, dtype, num_classes, shape, target_dtype, seed):
    ignore = 255 if target_dtype == torch.uint8 else -100
    _check(
        device,
        dtype,
        shape,
        num_classes,
        target_dtype=target_dtype,
        use_weight=True,
        ignore_index=ignore,
        ignore_frac=0.1,
        reduction="sum",
        label_smoothing=0.05,
        alpha=1.0,
    )


def test_uncertainty_gets_no_gradient(seed):
    """w is a constant: an uncertainty computed from the logits must not feed gradient back."""
    x = random_logits((2, NUM_CLASSES, 6, 5)).requires_grad_()
    target = random_target((2, 6, 5), NUM_CLASSES)
    uncertainty = uaal_ext.pixel_entropy(x)  # differentiable, so a leak would change x.grad
    uaal_ext.uaal_cross_entropy(x, target, uncertainty, alpha=2.0).backward()

    x_ref = x.detach().clone().requires_grad_()
    uaal_cross_entropy_reference(x_ref, target, uncertainty.detach(), alpha=2.0).backward()
    assert_close(x.grad, x_ref.grad, torch.float64, unit=gradient_unit(torch.ones(()), target=target, reduction="mean"))


# --- alpha = 0 is plain cross-entropy --------------------------------------------------------


def _f_cross_entropy_case(
    impl, dtype, ndim, use_weight, ignore, label_smoothing, reduction, shape=None, ignore_frac=0.3, alpha=0.0
):
    shape = (3,) + SPATIAL_SHAPES[ndim] if shape is None else shape
    x = random_logits((shape[0], NUM_CLASSES) + tuple(shape[1:])).to(dtype)
    target = random_target(shape, NUM_CLASSES, ignore_index=ignore, ignore_frac=ignore_frac)
    weight = (torch.rand(NUM_CLASSES, dtype=torch.float64) + 0.2).to(dtype) if use_weight else None
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    if ignore is not None:
        kwargs["ignore_index"] = ignore

    x_ours = x.clone().requires_grad_()
    fn = uaal_ext.uaal_cross_entropy if impl == "extension" else uaal_cross_entropy_reference
    ours = fn(x_ours, target, alpha=alpha, **kwargs)
    x_torch = x.clone().requires_grad_()
    theirs = F.cross_entropy(x_torch, target, **kwargs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert_close(ours, theirs, dtype)

    grad_out = torch.randn(theirs.shape, dtype=dtype)
    ours.backward(grad_out)
    theirs.backward(grad_out)
    unit = gradient_unit(grad_out, weight, target, kwargs.get("ignore_index", -100), reduction)
    assert_close(x_ours.grad, x_torch.grad, dtype, unit=unit)


IMPLS = ["reference", "extension"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("ignore", [None, -100, 2])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("ndim", list(SPATIAL_SHAPES))
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_alpha0_matches_f_cross_entropy(impl, dtype, ndim, use_weight, ignore, label_smoothing, reduction, seed):
    _f_cross_entropy_case(impl, dtype, ndim, use_weight, ignore, label_smoothing, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "shape", [(0,), (0, 4), (0, 3, 5), (2, 0, 5), (0, 2, 3, 4)], ids=["N0", "N0-1d", "N0-2d", "H0", "N0-3d"]
)
@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch(impl, shape, reduction, seed):
    """mean over nothing is NaN, sum is 0, none is empty: PyTorch's answers, whatever alpha is."""
    for use_weight, label_smoothing, alpha in itertools.product([False, True], [0.0, 0.1], [0.0, 1.0]):
        _f_cross_entropy_case(
            impl, torch.float64, None, use_weight, None, label_smoothing, reduction, shape=shape, alpha=alpha
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ndim", [0, 2])
@pytest.mark.parametrize("impl", IMPLS)
def test_alpha0_all_ignored(impl, ndim, reduction, seed):
    for use_weight, label_smoothing in itertools.product([False, True], [0.0, 0.1]):
        _f_cross_entropy_case(impl, torch.float64, ndim, use_weight, -100, label_smoothing, reduction, ignore_frac=1.0)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("normalize_by_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight", [False, True])
def test_all_pixels_ignored(use_weight, reduction, normalize_by_weight, alpha, seed):
    """mean -> NaN like PyTorch (0 / 0); the gradient is still 0, as PyTorch's is."""
    x = random_logits((2, NUM_CLASSES, 4, 3)).requires_grad_()
    target = torch.full((2, 4, 3), -100)
    weight = torch.rand(NUM_CLASSES, dtype=torch.float64) + 0.2 if use_weight else None
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=0.1)
    ours = uaal_ext.uaal_cross_entropy(x, target, alpha=alpha, normalize_by_weight=normalize_by_weight, **kwargs)
    (grad,) = torch.autograd.grad(ours.sum(), x)

    x_ref = x.detach().clone().requires_grad_()
    if alpha == 0:
        expected = F.cross_entropy(x_ref, target, **kwargs)
    else:
        expected = uaal_cross_entropy_reference(
            x_ref, target, alpha=alpha, normalize_by_weight=normalize_by_weight, **kwargs
        )
    (expected_grad,) = torch.autograd.grad(expected.sum(), x_ref)
    assert_close(ours, expected, torch.float64)
    assert_close(grad, expected_grad, torch.float64)


# --- non-finite logits -----------------------------------------------------------------------


def _nonfinite_case():
    """Logits (2, 5, 3, 4) with one non-finite pattern per pixel position (see the comments)."""
    x = random_logits((2, NUM_CLASSES, 3, 4))
    target = random_target((2, 3, 4), NUM_CLASSES)
    x[0, 2, 0, 0] = float("nan")
    x[0, 0, 0, 1] = float("inf")
    x[0, 3, 0, 2] = float("-inf")  # the target class: infinite loss
    target[0, 0, 2] = 3
    x[0, :, 1, 0] = float("-inf")  # every class: NaN, as softmax gives
    x[0, 4, 1, 1] = float("-inf")  # one non-target class: harmless
    target[0, 1, 1] = 0
    x[1, :2, 2, 2] = float("-inf")
    target[1, 2, 2] = 3
    x[1, 1, 0, 3] = float("nan")  # ignored pixel: must not leak into the result
    target[1, 0, 3] = -100
    return x, target


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("impl", IMPLS)
def test_nonfinite_logits_like_pytorch(impl, label_smoothing, reduction):
    x, target = _nonfinite_case()
    fn = uaal_ext.uaal_cross_entropy if impl == "extension" else uaal_cross_entropy_reference
    ours = fn(x, target, reduction=reduction, label_smoothing=label_smoothing)
    theirs = F.cross_entropy(x, target, reduction=reduction, label_smoothing=label_smoothing)
    assert_close(ours, theirs, torch.float64)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_nonfinite_logits_weighted(dtype, label_smoothing):
    x, target = _nonfinite_case()
    x = x.to(dtype)
    kwargs = dict(reduction="none", label_smoothing=label_smoothing, alpha=1.5)
    ours = uaal_ext.uaal_cross_entropy(x, target, **kwargs)
    assert_close(ours, uaal_cross_entropy_reference(x.double(), target, **kwargs), dtype)
    if label_smoothing == 0:  # (smoothing puts mass on the -inf class: infinite loss, as in PyTorch)
        # A non-target class at -inf has zero probability and adds nothing to the entropy.
        assert torch.isfinite(ours[0, 1, 1]) and torch.isfinite(ours[1, 2, 2])


def test_minus_inf_logit_is_a_dropped_class(seed):
    """A class at -inf has zero probability: same loss and gradient as without that class."""
    x = random_logits((3, NUM_CLASSES, 4, 5))
    target = random_target((3, 4, 5), NUM_CLASSES - 1)
    x_inf = x.clone()
    x_inf[:, -1] = float("-inf")
    x_inf.requires_grad_()
    x_drop = x[:, :-1].clone().requires_grad_()
    # scale = log(C - 1) for both, so the weights use the same normalized entropy
    kwargs = dict(alpha=1.0, label_smoothing=0.0, uncertainty_scale=torch.log(torch.tensor(4.0)).item())
    ours = uaal_ext.uaal_cross_entropy(x_inf, target, **kwargs)
    dropped = uaal_ext.uaal_cross_entropy(x_drop, target, **kwargs)
    assert_close(ours, dropped, torch.float64)
    ours.backward()
    dropped.backward()
    unit = gradient_unit(torch.ones(()), target=target, reduction="mean")
    assert_close(x_inf.grad[:, :-1], x_drop.grad, torch.float64, unit=unit)
    assert torch.equal(x_inf.grad[:, -1], torch.zeros_like(x_inf.grad[:, -1]))


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4])
def test_float32_accuracy_with_a_common_logit_offset(offset, seed):
    """Softmax ignores a common offset of the logits, and so does F.cross_entropy's float32
    accuracy; the extension must be as accurate (checked with the same tolerance on both)."""
    x = (random_logits((2, 19, 8, 9)) + offset).float()
    target = random_target((2, 8, 9), 19, ignore_index=-100)
    grad_out = torch.randn(2, 8, 9)
    kwargs = dict(reduction="none", label_smoothing=0.1)
    x_ref = x.double().requires_grad_()
    expected = uaal_cross_entropy_reference(x_ref, target, **kwargs)
    expected.backward(grad_out.double())
    for fn in (F.cross_entropy, uaal_ext.uaal_cross_entropy):
        xg = x.clone().requires_grad_()
        out = fn(xg, target, **kwargs)
        out.backward(grad_out)
        assert_close(out, expected, torch.float32)
        assert_close(xg.grad, x_ref.grad, torch.float32, unit=gradient_unit(grad_out))


# --- threads and inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction,normalize_by_weight,use_uncertainty",
    [("none", False, False), ("mean", False, False), ("mean", True, False), ("mean", True, True)],
    ids=["none", "mean", "mean-by-weight", "mean-by-weight-map"],
)
def test_thread_count_does_not_change_results(reduction, normalize_by_weight, use_uncertainty, seed):
    x = random_logits((2, 19, 64, 96)).float()
    target = random_target((2, 64, 96), 19, ignore_index=-100, ignore_frac=0.1)
    weight = torch.rand(19) + 0.5
    uncertainty = torch.rand(2, 64, 96) if use_uncertainty else None
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xg = x.clone().requires_grad_()
            out = uaal_ext.uaal_cross_entropy(
                xg,
                target,
                uncertainty,
                weight=weight,
                reduction=reduction,
                label_smoothing=0.1,
                alpha=2.0,
                normalize_by_weight=normalize_by_weight,
            )
            out.backward(torch.ones_like(out))
            results.append((out.detach(), xg.grad))
    finally:
        torch.set_num_threads(previous)
    (out1, grad1), (out2, grad2) = results
    torch.testing.assert_close(out1, out2, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad1, grad2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("use_uncertainty", [False, True])
def test_inputs_are_not_modified(use_uncertainty, seed):
    """The backward must not reuse an input's storage: autograd would not notice (docs/architecture.md)."""
    x = random_logits((2, NUM_CLASSES, 5, 6)).float().requires_grad_()
    target = random_target((2, 5, 6), NUM_CLASSES, ignore_index=-100)
    weight = torch.rand(NUM_CLASSES) + 0.5
    uncertainty = torch.rand(2, 5, 6) if use_uncertainty else None
    tensors = [t for t in (x, target, weight, uncertainty) if t is not None]
    before = [(t.detach().clone(), t._version) for t in tensors]

    for reduction in REDUCTIONS:
        out = uaal_ext.uaal_cross_entropy(
            x, target, uncertainty, weight=weight, reduction=reduction, label_smoothing=0.1, alpha=1.0
        )
        out.backward(torch.ones_like(out))
    for normalize in ("scale", "mean", "max"):
        uaal_ext.UAALLoss(weight=weight, normalize=normalize)(x, target, uncertainty).backward()

    for t, (copy, version) in zip(tensors, before):
        assert torch.equal(t.detach(), copy)
        assert t._version == version


# --- gradcheck (float64) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(reduction="mean"),
        dict(reduction="sum", label_smoothing=0.2, ignore_index=1),
        dict(reduction="none", weight=True, label_smoothing=0.1),
        dict(reduction="mean", weight=True, ignore_index=-100, normalize_by_weight=True),
        dict(reduction="mean", label_smoothing=0.1, exponent=3.5, s_max=0.8, normalize_by_weight=True),
        dict(reduction="none", exponent=3.5, s_max=0.8, uncertainty_scale=0.5),
    ],
    ids=[
        "mean",
        "sum-ls-ignore",
        "none-weight-ls",
        "mean-normalize-by-weight",
        "mean-normalize-by-weight-ls-cap",
        "none-exponent-cap",
    ],
)
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, kwargs, seed):
    # A user map, because finite differences would also move an entropy-based weight,
    # which autograd (correctly) treats as a constant.
    kwargs = dict(kwargs)
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.rand(4, dtype=torch.float64, device=device) + 0.5
    x = random_logits((2, 4, 3, 2)).to(device).requires_grad_()
    target = random_target((2, 3, 2), 4, ignore_index=kwargs.get("ignore_index")).to(device)
    uncertainty = torch.rand(2, 3, 2, dtype=torch.float64, device=device) * 2
    assert torch.autograd.gradcheck(
        lambda x: uaal_ext.uaal_cross_entropy(x, target, uncertainty, alpha=1.5, **kwargs), (x,)
    )


# The CPU kernels copy a full block's rows into contiguous staging when there are more than 8
# classes (csrc/cpu/pixel_blocks.h), and read them in place otherwise. Channels-last full blocks of
# float logits are read four classes of a pixel at a time from 4 classes (5: a last quad overlapping
# three of the first) and below 4 by gathers; the loss and its gradient work on those quads as read
# and write them back 16 classes at a time and the rest four at a time (16: no rest; 17: one quad
# overlapping the tile; 20: one quad); the other ops transpose them to class rows. A full block needs
# a row of at least 64 pixels: 131 gives two full blocks and a partial one. Reduction "none" takes
# the forward and backward ops, "mean" the fused one.
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("reduction,normalize_by_weight", [("none", False), ("mean", False), ("mean", True)])
@pytest.mark.parametrize("use_uncertainty", [False, True])
@pytest.mark.parametrize("num_classes", [3, 4, 5, 8, 9, 16, 17, 19, 20, 150])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_wide_rows_around_the_staging_threshold(
    dtype, num_classes, use_uncertainty, reduction, normalize_by_weight, layout, seed
):
    _check(
        "cpu",
        dtype,
        (2, 3, 131),
        num_classes,
        layout=layout,
        use_weight=True,
        use_uncertainty=use_uncertainty,
        ignore_index=-100,
        reduction=reduction,
        label_smoothing=0.1,
        alpha=1.5,
        normalize_by_weight=normalize_by_weight,
    )


# Outputs far larger than the caches are written with streaming stores (csrc/cpu/pixel_blocks.h),
# channels-last ones as whole pixel-major runs: the contiguous layout's numbers, to rounding (the
# channels-last forward adds a pixel's class terms in another order, see "pixel quads" there).
def _contiguous_and_channels_last(logits, target, **kwargs):
    """uaal_cross_entropy and its gradient (as contiguous tensors) for `logits` in each layout."""
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        x = logits.clone(memory_format=layout).requires_grad_()
        loss = uaal_ext.uaal_cross_entropy(x, target, **kwargs)
        loss.backward(torch.ones_like(loss))
        assert x.grad.is_contiguous(memory_format=layout)
        results.append((loss.detach(), x.grad.contiguous()))
    return results


@pytest.mark.parametrize("normalize_by_weight", [False, True])
def test_a_large_channels_last_batch_gives_the_contiguous_results(normalize_by_weight, seed):
    logits = random_logits((2, 19, 128, 513)).float()  # 20 MB of gradient; 513 = 8 full blocks and 1 pixel
    target = random_target((2, 128, 513), 19, ignore_index=255)
    (loss_contiguous, grad_contiguous), (loss_channels_last, grad_channels_last) = _contiguous_and_channels_last(
        logits, target, ignore_index=255, alpha=1.0, normalize_by_weight=normalize_by_weight
    )
    assert_close(loss_channels_last, loss_contiguous, torch.float32)
    assert_close(grad_channels_last, grad_contiguous, torch.float32)


# Channels-last full blocks of float logits are worked on as loaded, four classes of a pixel to each
# 128-bit lane (csrc/cpu/pixel_blocks.h, "pixel quads"): for a class count not divisible by 4 the last
# quad repeats classes of the one before, and sums must count them once. NaN, +inf and -inf logits in
# such a repeated class and elsewhere give what the contiguous layout gives, through the fused op
# (reduction "mean") and the forward and backward ops (reduction "none").
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("normalize_by_weight", [False, True])
@pytest.mark.parametrize("num_classes", [5, 19, 20])
def test_nonfinite_logits_in_channels_last_full_blocks(num_classes, normalize_by_weight, reduction, seed):
    if normalize_by_weight and reduction == "none":
        pytest.skip("normalize_by_weight only changes the mean")
    logits = random_logits((2, num_classes, 2, 64)).float()
    repeated = num_classes - 4  # the first class of the last quad
    logits[0, repeated, 0, 3] = float("inf")
    logits[0, repeated, 0, 9] = float("nan")
    logits[1, repeated, 1, 40] = float("-inf")
    logits[1, :, 1, 17] = float("-inf")
    logits[1, 0, 0, 63] = float("nan")
    target = random_target((2, 2, 64), num_classes, ignore_index=255)
    target[0, 0, 3], target[0, 0, 9], target[1, 1, 40], target[1, 1, 17], target[1, 0, 63] = 1, 2, 0, 3, 1
    (loss_contiguous, grad_contiguous), (loss_channels_last, grad_channels_last) = _contiguous_and_channels_last(
        logits,
        target,
        weight=torch.rand(num_classes) + 0.5,
        ignore_index=255,
        label_smoothing=0.1,
        alpha=1.0,
        reduction=reduction,
        normalize_by_weight=normalize_by_weight,
    )
    assert_close(loss_channels_last, loss_contiguous, torch.float32)
    assert_close(grad_channels_last, grad_contiguous, torch.float32)
    assert grad_contiguous.isnan().any()
    if reduction == "none" or not normalize_by_weight:
        assert not grad_contiguous.isnan().all()


# Full blocks of int64 targets take a vectorised gather on AVX-512 CPUs (csrc/cpu/loss_kernels.cpp):
# a bad target there is reported with its pixel like anywhere else, whichever lane it sits in.
@pytest.mark.parametrize("pixel", [0, 15, 16, 77, 130])
@pytest.mark.parametrize("bad", [19, -1])
def test_a_bad_target_inside_a_full_block_is_named(bad, pixel, seed):
    x = random_logits((1, 19, 1, 131)).float().requires_grad_()
    target = random_target((1, 1, 131), 19)
    target[0, 0, pixel] = bad
    for call in (
        lambda: uaal_ext.uaal_cross_entropy(x, target),
        lambda: uaal_ext.uaal_cross_entropy(x.detach(), target),
    ):
        with pytest.raises(ValueError, match=rf"target holds class {bad} at pixel {pixel} "):
            call()
