"""uaal_ext.ops.perturbation.perturbation_statistics against the float64 reference (docs/math.md#perturbation-statistics)."""

import math

import pytest
import torch
from testing import (
    DEVICES,
    FLOAT_DTYPES,
    FULL_DTYPES,
    SPATIAL_SHAPES,
    assert_close,
    assert_raises_naming,
    cuda_only,
    random_logits,
)

import uaal_ext  # noqa: F401  (registers torch.ops.uaal_ext.*)
from uaal_ext.ops.perturbation import perturbation_statistics
from uaal_ext.ops.reference import perturbation_statistics_reference

ops = torch.ops.uaal_ext
# samples_inner: the perturbed logits as (N, *spatial, K, C) in memory, the layout torch.vmap gives
# KernelNoise's batched passes (classes contiguous, the samples next to them).
LAYOUTS = ["contiguous", "channels_last", "samples_inner", "sliced", "transposed"]


def _result_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _laid_out(values, layout, channel_dim):
    """A tensor equal to `values` with `layout`'s strides (channels last: classes innermost)."""
    if layout == "contiguous" or values.dim() <= channel_dim + 1:
        return values.contiguous()
    if layout == "channels_last" or (layout == "samples_inner" and channel_dim == 1):
        return values.movedim(channel_dim, -1).contiguous().movedim(-1, channel_dim)
    if layout == "samples_inner":  # (K, N, C, *spatial) stored as (N, *spatial, K, C)
        stored = values.movedim(0, -1).movedim(channel_dim - 1, -1).contiguous()
        return stored.movedim(-1, channel_dim - 1).movedim(-1, 0)
    if layout == "transposed":
        return values.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":  # every other row of each leading dim and an offset start in the last
        big = values.new_full(tuple(2 * s for s in values.shape[:-1]) + (values.shape[-1] + 1,), float("nan"))
        view = big[(slice(None, None, 2),) * (values.dim() - 1) + (slice(1, None),)]
        view.copy_(values)
        return view
    raise ValueError(layout)


def _inputs(shape, num_samples, dtype, spread=1.0):
    """Clean logits (N, C, *spatial) and K perturbed copies (K, N, C, *spatial), rounded to dtype."""
    clean = random_logits(shape)
    perturbed = clean + spread * torch.randn((num_samples, *shape), dtype=torch.float64)
    return clean.to(dtype), perturbed.to(dtype)


def _check(clean, perturbed, device="cpu", layout="contiguous"):
    dtype = clean.dtype
    clean_in = _laid_out(clean.to(device), layout, 1)
    perturbed_in = _laid_out(perturbed.to(device), layout, 2)
    sigma, ns = perturbation_statistics(clean_in, perturbed_in)
    # Half inputs: the float64 reference on the same rounded values; the op accumulates in float32.
    expected_sigma, expected_ns = perturbation_statistics_reference(clean.double(), perturbed.double())
    for got, want in ((sigma, expected_sigma), (ns, expected_ns)):
        assert got.shape == want.shape and got.dtype == _result_dtype(dtype) and got.device == clean_in.device
        assert_close(got.cpu(), want, _result_dtype(dtype))
    return sigma, ns


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ndim", list(SPATIAL_SHAPES))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device, dtype, ndim, layout, seed):
    if layout in ("channels_last", "samples_inner") and ndim == 0:
        pytest.skip("(N, C) has no channels-last layout")
    clean, perturbed = _inputs((2, 5) + SPATIAL_SHAPES[ndim], 3, dtype)
    _check(clean, perturbed, device, layout)


@pytest.mark.parametrize("ndim", [0, 2])
@pytest.mark.parametrize("num_samples", [1, 3, 10])
@pytest.mark.parametrize("num_classes", [1, 2, 19])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_classes_and_samples(device, dtype, num_classes, num_samples, ndim, seed):
    shape = (3, num_classes) + SPATIAL_SHAPES[ndim]
    # With C == 1, p = 1 whatever the logits: the reference's 0 is checked to atol 1e-6 (float32).
    _check(*_inputs(shape, num_samples, dtype), device)


@pytest.mark.parametrize("spread", [1e-2, 3.0, 30.0])
def test_perturbation_sizes(spread, seed):
    """From barely moved to completely different predictions."""
    _check(*_inputs((2, 19, 6, 7), 4, torch.float32, spread))
    _check(*_inputs((2, 19, 6, 7), 4, torch.float64, spread))


def test_small_perturbations_keep_relative_accuracy(seed):
    """p_k - p must not be formed from two rounded probabilities: with logits moved by ~1e-4 that
    difference would lose most of its float32 digits. The result must stay relatively accurate."""
    clean = random_logits((2, 19, 8, 9)).float()
    perturbed = (clean.double() + 1e-4 * torch.randn(4, 2, 19, 8, 9, dtype=torch.float64)).float()
    sigma, ns = perturbation_statistics(clean, perturbed)
    expected_sigma, expected_ns = perturbation_statistics_reference(clean.double(), perturbed.double())
    assert expected_sigma.min() > 0
    assert ((sigma.double() - expected_sigma) / expected_sigma).abs().max() < 1e-3
    assert ((ns.double() - expected_ns) / expected_ns).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_identical_predictions_give_exact_zero(dtype, seed):
    clean = random_logits((2, 7, 5, 6)).to(dtype)
    clean[0, 3, 1] = float("-inf")
    perturbed = _laid_out(clean.expand(3, *clean.shape), "contiguous", 2)
    sigma, ns = perturbation_statistics(clean, perturbed)
    assert torch.equal(sigma, torch.zeros(2, 5, 6, dtype=_result_dtype(dtype)))
    assert torch.equal(ns, torch.zeros(2, 5, 6, dtype=_result_dtype(dtype)))


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_bounds(dtype, seed):
    """0 <= mean_k d_k <= sigma (RMS >= mean) and d_k <= sqrt(2) (two probability vectors)."""
    clean, perturbed = _inputs((3, 11, 9, 8), 5, dtype, spread=2.0)
    sigma, ns = perturbation_statistics(clean, perturbed)
    mean_deviation = ns.double() * torch.softmax(clean.double(), dim=1).norm(dim=1)
    assert (ns >= 0).all() and (sigma >= 0).all()
    assert (mean_deviation <= sigma.double() * (1 + 1e-5)).all()
    assert (sigma <= math.sqrt(2) * (1 + 1e-6)).all()


# --- Non-finite logits ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_minus_inf_logits_have_zero_probability(dtype, seed):
    """A -inf logit is a class of probability 0, in the clean or in a perturbed prediction."""
    clean, perturbed = _inputs((2, 6, 4, 5), 3, dtype)
    masked = torch.rand(2, 6, 4, 5) < 0.3
    masked[:, 0] = False  # at least one finite class per pixel
    clean = clean.masked_fill(masked, float("-inf"))
    perturbed = perturbed.masked_fill(masked, float("-inf"))  # the same classes switched off...
    perturbed[1] = perturbed[1].masked_fill(torch.rand(2, 6, 4, 5) < 0.2, float("-inf"))  # ...and some more
    perturbed[1][:, 0] = clean[:, 0] + 0.5
    sigma, ns = _check(clean, perturbed)
    assert torch.isfinite(sigma).all() and torch.isfinite(ns).all()
    # Spot check without the reference: a pixel whose perturbed logits equal the clean ones.
    perturbed[:, 1, :, 2, 3] = clean[1, :, 2, 3]
    sigma, ns = perturbation_statistics(clean, perturbed)
    assert sigma[1, 2, 3] == 0 and ns[1, 2, 3] == 0


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_nan_logits_give_nan_at_their_pixel(dtype, seed):
    clean, perturbed = _inputs((2, 5, 3, 4), 3, dtype)
    clean[0, 2, 1, 1] = float("nan")
    perturbed[2, 1, 4, 0, 3] = float("nan")
    perturbed[0, 0, 0, 2, 2] = float("nan")
    sigma, ns = _check(clean, perturbed)
    nan_pixels = torch.zeros(2, 3, 4, dtype=torch.bool)
    nan_pixels[0, 1, 1] = nan_pixels[1, 0, 3] = nan_pixels[0, 2, 2] = True
    assert torch.equal(sigma.isnan(), nan_pixels) and torch.equal(ns.isnan(), nan_pixels)


# --- Sizes, threads, purity ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 5), (0, 5, 3, 4), (2, 5, 0), (2, 3, 4, 0, 2)], ids=["N0-NC", "N0", "L0", "W0"])
@pytest.mark.parametrize("device", DEVICES)
def test_empty(device, shape):
    clean, perturbed = _inputs(shape, 2, torch.float32)
    sigma, ns = _check(clean, perturbed, device)
    assert sigma.shape == (shape[0],) + shape[2:] and ns.shape == sigma.shape


def test_thread_count_does_not_change_results(seed):
    clean, perturbed = _inputs((2, 19, 48, 64), 4, torch.float32)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(perturbation_statistics(clean, perturbed))
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        torch.testing.assert_close(one, two, rtol=1e-6, atol=1e-7)


def test_inputs_are_not_modified(seed):
    clean, perturbed = _inputs((2, 5, 6, 7), 3, torch.float32)
    clean.requires_grad_()
    perturbed.requires_grad_()
    copies = clean.detach().clone(), perturbed.detach().clone()
    versions = clean._version, perturbed._version
    perturbation_statistics(clean, perturbed)
    assert torch.equal(clean.detach(), copies[0]) and torch.equal(perturbed.detach(), copies[1])
    assert (clean._version, perturbed._version) == versions


def test_outputs_do_not_require_grad(seed):
    clean, perturbed = _inputs((2, 5, 6), 3, torch.float32)
    clean.requires_grad_()
    perturbed.requires_grad_()
    with torch.enable_grad():
        for out in (perturbation_statistics(clean, perturbed), ops.perturbation_statistics(clean, perturbed)):
            assert all(not o.requires_grad and o.grad_fn is None for o in out)


# --- Bad inputs ----------------------------------------------------------------------------------


def _shape(*sizes):
    """A shape as a message may print it: [2, 4, 7], (2, 4, 7) or torch.Size([2, 4, 7])."""
    return r"[\[(]" + r",\s*".join(map(str, sizes)) + r",?[\])]"


def _x(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


stats = perturbation_statistics
# (id, call, exception type, argument name, regexes the message must also show)
BAD_INPUTS = [
    (
        "spatial-mismatch",
        lambda: stats(_x(2, 5, 4, 6), _x(3, 2, 5, 4, 7)),
        ValueError,
        "perturbed",
        [_shape(3, 2, 5, 4, 7), _shape(2, 5, 4, 6)],
    ),
    (
        "class-mismatch",
        lambda: stats(_x(2, 5, 4), _x(3, 2, 6, 4)),
        ValueError,
        "perturbed",
        [_shape(3, 2, 6, 4), _shape(2, 5, 4)],
    ),
    ("no-K-dim", lambda: stats(_x(2, 5, 4, 6), _x(2, 5, 4, 6)), ValueError, "perturbed", [_shape(2, 5, 4, 6)]),
    ("K=0", lambda: stats(_x(2, 5, 4), _x(0, 2, 5, 4)), ValueError, "perturbed", [_shape(0, 2, 5, 4)]),
    ("dtype-mismatch", lambda: stats(_x(2, 5, 4), _x(3, 2, 5, 4, dtype=torch.float64)), TypeError, "perturbed", []),
    ("clean-1d", lambda: stats(_x(5), _x(3, 5)), ValueError, "clean", []),
    ("clean-0d", lambda: stats(_x(), _x(3)), ValueError, "clean", []),
    ("C=0", lambda: stats(_x(2, 0, 3), _x(2, 2, 0, 3)), ValueError, "clean", []),
    ("integer", lambda: stats(_x(2, 5, dtype=torch.int64), _x(3, 2, 5, dtype=torch.int64)), TypeError, "clean", []),
]


@pytest.mark.parametrize("call,exc,arg,shown", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(call, exc, arg, shown):
    assert_raises_naming(call, exc, arg, shown)


def test_raw_op_checks_shapes():
    with pytest.raises(ValueError, match="perturbed"):
        ops.perturbation_statistics(_x(2, 5, 4), _x(3, 2, 5, 5))


@cuda_only
def test_devices_differ():
    with pytest.raises(ValueError, match="perturbed"):
        stats(_x(2, 5, 4).cuda(), _x(3, 2, 5, 4))


# --- opcheck and torch.compile -------------------------------------------------------------------

OPCHECK_CASES = [
    ((2, 5, 3, 4), 3, torch.float32),
    ((3, 7), 1, torch.float64),
    ((2, 4, 6), 2, torch.float16),
    ((1, 3, 2, 2, 3), 2, torch.bfloat16),
]


@pytest.mark.parametrize("shape,num_samples,dtype", OPCHECK_CASES, ids=["f32-2d", "f64-NC", "f16-1d", "bf16-3d"])
def test_opcheck(shape, num_samples, dtype, seed):
    clean, perturbed = _inputs(shape, num_samples, dtype)
    torch.library.opcheck(ops.perturbation_statistics, (clean, perturbed))
    torch.library.opcheck(ops.perturbation_statistics, (clean.requires_grad_(), perturbed.requires_grad_()))


def test_compile_fullgraph(seed):
    torch._dynamo.reset()
    clean, perturbed = _inputs((2, 5, 6, 7), 3, torch.float32)

    def uncertainty(clean, perturbed):
        sigma, ns = perturbation_statistics(clean, perturbed)
        return sigma / 0.1, ns.mean(dim=(1, 2))

    compiled = torch.compile(uncertainty, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(clean, perturbed), uncertainty(clean, perturbed)):
        assert torch.equal(got, want)


# Full blocks of more than 8 classes go through contiguous staging on the CPU (csrc/cpu/pixel_blocks.h):
# rows of 131 pixels hold two full blocks and a partial one.
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("num_classes", [8, 9, 19])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_wide_rows_around_the_staging_threshold(dtype, num_classes, layout, seed):
    _check(*_inputs((2, num_classes, 3, 131), 3, dtype), layout=layout)
