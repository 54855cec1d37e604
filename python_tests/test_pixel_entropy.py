"""uaal_ext.pixel_entropy against the float64 reference."""

import math

import pytest
import torch
from testing import (
    DEVICES,
    FLOAT_DTYPES,
    LAYOUTS,
    SPATIAL_SHAPES,
    assert_close,
    gradient_unit,
    layout_allowed,
    random_logits,
    strided,
)

import uaal_ext
from uaal_ext.ops.reference import pixel_entropy_reference


def _check(device, dtype, shape, normalized, layout="contiguous"):
    x_leaf, x_view = strided(shape, layout, random_logits)
    x_leaf = x_leaf.to(device, dtype).requires_grad_()
    out = uaal_ext.pixel_entropy(x_view(x_leaf), normalized=normalized)

    x_ref = x_leaf.detach().double().requires_grad_()
    expected = pixel_entropy_reference(x_view(x_ref), normalized=normalized)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype)

    grad_out = torch.randn(expected.shape, dtype=torch.float64, device=device).to(dtype)
    out.backward(grad_out)
    expected.backward(grad_out.double())
    assert_close(x_leaf.grad, x_ref.grad, dtype, unit=gradient_unit(grad_out))


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize(
    "ndim,layout", [(nd, lay) for nd in SPATIAL_SHAPES for lay in LAYOUTS if layout_allowed(lay, nd + 2)]
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device, dtype, ndim, layout, normalized, seed):
    _check(device, dtype, (2, 5) + SPATIAL_SHAPES[ndim], normalized, layout)


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize(
    "shape",
    [(1, 1), (3, 2), (1, 3, 1, 1), (2, 150, 7, 13), (1, 19, 1, 33), (0, 4, 3, 3), (2, 3, 0)],
    ids=["C1", "C2", "single-pixel", "C150", "1x33", "N0", "L0"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_odd_sizes(device, dtype, shape, normalized, seed):
    _check(device, dtype, shape, normalized)


def test_known_extremes(seed):
    """Uniform logits reach the maximum log C; a one-hot-like pixel has (almost) none."""
    num_classes = int(torch.randint(2, 40, ()))
    x = torch.full((3, num_classes, 2), float(torch.randn(())), dtype=torch.float64)
    log_c = torch.full((3, 2), math.log(num_classes), dtype=torch.float64)
    torch.testing.assert_close(uaal_ext.pixel_entropy(x), log_c)
    torch.testing.assert_close(uaal_ext.pixel_entropy(x, normalized=True), torch.ones(3, 2, dtype=torch.float64))
    x[:, 0] += 1000.0
    assert uaal_ext.pixel_entropy(x).abs().max() < 1e-12


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_minus_inf_logits_contribute_nothing(dtype, normalized, seed):
    """A -inf logit is a class of probability 0: entropy and gradient are those without it."""
    x = random_logits((2, 6, 4, 5)).to(dtype)
    masked = torch.rand(2, 6, 4, 5) < 0.3
    masked[:, 0] = False  # at least one finite class per pixel
    x_inf = x.masked_fill(masked, float("-inf")).requires_grad_()
    out = uaal_ext.pixel_entropy(x_inf, normalized=normalized)
    assert torch.isfinite(out).all()

    # Spot checks independent of the reference's masking: the entropy of only the finite classes.
    x_ref = x_inf.detach().double().requires_grad_()
    expected = pixel_entropy_reference(x_ref, normalized=normalized)
    assert_close(out, expected, dtype)
    for n, i, j in [(0, 0, 0), (1, 3, 4), (1, 2, 1)]:
        kept = x[n, ~masked[n, :, i, j], i, j].double().view(1, -1)
        dropped = pixel_entropy_reference(kept)
        if normalized:
            dropped = dropped / math.log(6)
        assert_close(out[n, i, j], dropped[0], dtype)

    grad_out = torch.randn(out.shape, dtype=dtype)
    out.backward(grad_out)
    expected.backward(grad_out.double())
    assert torch.equal(x_inf.grad[masked], torch.zeros_like(x_inf.grad[masked]))
    assert_close(x_inf.grad, x_ref.grad, dtype, unit=gradient_unit(grad_out))


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4])
def test_float32_accuracy_with_a_common_logit_offset(offset, seed):
    """The entropy ignores a common offset of the logits; in float32 the extension must stay as
    accurate as the plain-PyTorch formula run in float32 (same tolerance for both)."""
    x = (random_logits((2, 19, 8, 9)) + offset).float()
    grad_out = torch.randn(2, 8, 9)
    x_ref = x.double().requires_grad_()
    expected = pixel_entropy_reference(x_ref)
    expected.backward(grad_out.double())
    for fn in (pixel_entropy_reference, uaal_ext.pixel_entropy):
        xg = x.clone().requires_grad_()
        out = fn(xg)
        out.backward(grad_out)
        assert_close(out, expected, torch.float32)
        assert_close(xg.grad, x_ref.grad, torch.float32, unit=gradient_unit(grad_out))


def test_nonfinite_like_softmax(seed):
    """NaN, +inf, or all -inf in a pixel give NaN there, as softmax does; other pixels are untouched."""
    x = random_logits((2, 4, 3))
    x[0, 1, 0] = float("nan")
    x[0, 2, 1] = float("inf")
    x[1, :, 2] = float("-inf")
    out = uaal_ext.pixel_entropy(x)
    expected_nan = torch.softmax(x, dim=1).isnan().any(dim=1)
    assert torch.equal(out.isnan(), expected_nan)
    assert_close(out, pixel_entropy_reference(x), torch.float64)


@pytest.mark.parametrize("normalized", [False, True])
def test_thread_count_does_not_change_results(normalized, seed):
    x = random_logits((2, 19, 64, 96)).float()
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xg = x.clone().requires_grad_()
            out = uaal_ext.pixel_entropy(xg, normalized=normalized)
            out.backward(torch.ones_like(out))
            results.append((out.detach(), xg.grad))
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-7)


def test_input_is_not_modified(seed):
    x = random_logits((2, 5, 6, 7)).float().requires_grad_()
    copy, version = x.detach().clone(), x._version
    uaal_ext.pixel_entropy(x, normalized=True).sum().backward()
    assert torch.equal(x.detach(), copy) and x._version == version


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("shape", [(3, 4), (2, 5, 3), (1, 3, 2, 3)])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, shape, normalized, seed):
    x = random_logits(shape).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: uaal_ext.pixel_entropy(x, normalized=normalized), (x,))


# Full blocks of more than 8 classes go through contiguous staging on the CPU (csrc/cpu/pixel_blocks.h);
# channels-last full blocks are converted from one pixel-major run: by gathers below 16 classes, by
# 16 x 16 transposes from 16 (17: a last tile overlapping all but one class of the first).
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("num_classes", [8, 9, 16, 17, 19, 150])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_wide_rows_around_the_staging_threshold(dtype, num_classes, layout, seed):
    _check("cpu", dtype, (2, num_classes, 3, 131), normalized=True, layout=layout)
