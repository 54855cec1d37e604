"""Devices, dtypes, tolerances and input builders shared by every test file (defined once here)."""

import re

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")

FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
FULL_DTYPES = [torch.float64, torch.float32]
TARGET_DTYPES = [torch.int64, torch.int32, torch.uint8]
REDUCTIONS = ["none", "sum", "mean"]

# (rtol, atol / max|expected|). Half inputs are compared with a float64 reference on the same
# half values, so their error is the final rounding to half, not the inputs' rounding.
TOLERANCES = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (5e-3, 1e-3),
    torch.bfloat16: (3e-2, 1e-2),
}

# Odd sizes on purpose: nothing a power of two, so vector tails and partial blocks are exercised.
SPATIAL_SHAPES = {0: (), 1: (11,), 2: (7, 13), 3: (3, 5, 4)}

LAYOUTS = ["contiguous", "channels_last", "sliced", "transposed", "expanded"]


def layout_allowed(layout, ndim):
    if layout == "channels_last":
        return ndim in (4, 5)
    if layout == "transposed":
        return ndim >= 2
    return True


def strided(shape, layout, draw):
    """Storage for a tensor of `shape` laid out as `layout`.

    Returns (leaf, to_view): `leaf` holds values drawn with `draw(leaf_shape)`; `to_view(leaf)` is a
    differentiable view of shape `shape` with the layout. Gradients are compared on the leaf, so a
    stride-0 view's gradient must add up over its repeats.
    """
    shape = tuple(shape)
    ndim = len(shape)
    if not layout_allowed(layout, ndim):
        layout = "contiguous"
    if layout == "contiguous":
        return draw(shape), lambda t: t
    if layout == "channels_last":
        fmt = torch.channels_last if ndim == 4 else torch.channels_last_3d
        return draw(shape).contiguous(memory_format=fmt), lambda t: t
    if layout == "sliced":  # like x[:, :, ::2, 1:]: strided rows and an offset start
        if ndim == 1:
            return draw((2 * shape[0] + 1,)), lambda t: t[1::2]
        big = tuple(2 * s for s in shape[:-1]) + (shape[-1] + 1,)
        index = (slice(None, None, 2),) * (ndim - 1) + (slice(1, None),)
        return draw(big), lambda t: t[index]
    if layout == "transposed":
        return draw(shape[:-2] + (shape[-1], shape[-2])), lambda t: t.transpose(-1, -2)
    if layout == "expanded":  # the batch repeated with stride 0
        return draw((1,) + shape[1:]), lambda t: t.expand(shape)
    raise ValueError(layout)


def random_logits(shape, scale=2.5):
    """float64 logits with a spread wide enough for both confident and uncertain pixels."""
    return torch.randn(shape, dtype=torch.float64) * scale


def random_target(shape, num_classes, dtype=torch.int64, ignore_index=None, ignore_frac=0.2):
    target = torch.randint(0, num_classes, shape)
    if ignore_index is not None:
        target[torch.rand(shape) < ignore_frac] = ignore_index
    return target.to(dtype)


def assert_close(actual, expected, dtype, unit=1.0):
    """Compare in float64 with `dtype`'s tolerance.

    atol is relative to max(largest |expected|, `unit`): `unit` is the natural size of one entry
    (a pixel's loss or gradient bound), so rounding errors of a near-zero result (C == 1, a
    confident pixel) are judged against the size of the terms it was computed from.
    """
    rtol, atol = TOLERANCES[dtype]
    expected = expected.detach().double()
    finite = expected[torch.isfinite(expected)]
    scale = max(finite.abs().max().item() if finite.numel() else 0.0, float(unit))
    torch.testing.assert_close(actual.detach().double(), expected, rtol=rtol, atol=atol * scale, equal_nan=True)


def gradient_unit(grad_out, weight=None, target=None, ignore_index=-100, reduction="none"):
    """The natural size of a cross-entropy gradient entry: |g_i| * max class weight / mean denominator.

    A pixel's gradient is g_i * w_i * (bounded by ~c); with w_i >= 1 this is the right order of
    magnitude even when every pixel is confident and the largest entry is tiny.
    """
    c_max = 1.0 if weight is None else weight.double().max().item()
    unit = grad_out.double().abs().max().item() * c_max if grad_out.numel() else 0.0
    if reduction == "mean" and target is not None:
        valid = target.long() != ignore_index
        y = torch.where(valid, target.long(), 0)
        c_y = torch.ones(y.shape, dtype=torch.float64, device=y.device) if weight is None else weight.double()[y]
        count = c_y[valid].sum().item()
        if count > 0:
            unit /= count
    return unit


def assert_raises_naming(call, exc, arg, shown=()):
    """`call()` raises `exc` whose message matches `arg` (the argument's name) and every pattern in
    `shown` (the shapes or values involved)."""
    with pytest.raises(exc, match=arg) as excinfo:
        call()
    for pattern in shown:
        assert re.search(pattern, str(excinfo.value)), f"message does not show {pattern!r}: {excinfo.value}"


def argmax_pixels(num_images, size, seed, ignore_index=255):
    """A dataset of random images (N, 3, size, size) labelled by their argmax over the channels (a
    per-pixel rule a small net learns), ~5% of the pixels ``ignore_index``."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, size, size, generator=g)
    labels = images.argmax(dim=1)
    labels[torch.rand(labels.shape, generator=g) < 0.05] = ignore_index
    return TensorDataset(images, labels)
