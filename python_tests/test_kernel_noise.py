"""uaal_ext.ops.perturbation.kernel_noise against the Philox4x32-10 / Box-Muller reference (docs/math.md#kernel-noise-perturbation)."""

import math

import pytest
import torch
from testing import DEVICES, FLOAT_DTYPES, FULL_DTYPES, assert_close, cuda_only, strided

import uaal_ext  # noqa: F401  (registers torch.ops.uaal_ext.*)
from uaal_ext.ops.perturbation import kernel_noise
from uaal_ext.ops.reference import kernel_noise_normals_reference, kernel_noise_reference, philox4x32_10

ops = torch.ops.uaal_ext
GRANULARITIES = ["tensor", "filter"]

# A small network's weights: conv, linear, 1-D, 0-dim, depthwise conv and one big conv. Most
# element counts are not multiples of 4, so the last Philox block of a tensor is partly used.
NET_SHAPES = [(8, 3, 3, 3), (10, 7), (13,), (), (5, 1, 3, 3), (64, 32, 3, 3)]


def _weights(shapes, dtype=torch.float32, device="cpu", scale=0.1):
    """Weights drawn in float64 and rounded to `dtype` (the reference then sees the same values)."""
    return [(torch.randn(shape, dtype=torch.float64) * scale).to(device, dtype) for shape in shapes]


def _groups(x, per_filter):
    """`x` of a weight's shape as (groups, elements): one row per filter (dim-0 slice) or one row."""
    return x.reshape(x.shape[0], -1) if per_filter and x.dim() > 0 else x.reshape(1, -1)


def _direction(noise, w, eta, per_filter):
    """noise / (eta * ||w||) per group, in float64: the unit direction the op drew."""
    w_norm = _groups(w.double(), per_filter).norm(dim=1, keepdim=True)
    return _groups(noise.double(), per_filter) / (eta * w_norm)


def _normal_direction(w, per_filter, **counter):
    """The reference normals of `w`'s shape, each group scaled to unit norm (float64)."""
    n = kernel_noise_normals_reference(w.numel(), **counter).double().view(w.shape)
    n = _groups(n, per_filter)
    return n / n.norm(dim=1, keepdim=True)


def _check_direction(out_k, w, eta, per_filter, **counter):
    """(out_k - w) / (eta * ||w||) equals the reference normals / ||n|| per group, to 1e-5 of the
    largest entry plus the rounding of out_k to its dtype (which grows as eta shrinks)."""
    live = _groups(w, per_filter).norm(dim=1) > 0  # a zero group has no direction
    if not live.any():
        return
    expected = _normal_direction(w, per_filter, **counter)[live]
    got = _direction(out_k.double() - w.double(), w, eta, per_filter)[live]
    w_norm = _groups(w.double(), per_filter).norm(dim=1)[live]
    out_max = _groups(out_k.double().abs(), per_filter).amax(dim=1)[live]
    rounding = (torch.finfo(out_k.dtype).eps * out_max / (eta * w_norm)).max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item() + rounding)


def _corr(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return (a @ b / (a.norm() * b.norm())).item()


def _check(weights, num_samples, eta, granularity, *, seed=0, offset=0):
    per_filter = granularity == "filter"
    out = kernel_noise(weights, num_samples, eta, seed=seed, offset=offset, granularity=granularity)
    cpu = [w.cpu() for w in weights]
    expected = kernel_noise_reference(cpu, num_samples, eta, seed=seed, offset=offset, per_filter=per_filter)
    assert isinstance(out, (list, tuple)) and len(out) == len(weights)
    for t, (w, got, want) in enumerate(zip(cpu, out, expected)):
        assert got.shape == (num_samples, *w.shape) and got.dtype == w.dtype
        assert got.device == weights[t].device and got.is_contiguous()
        got = got.cpu()
        # The noise is drawn in float32 for every dtype, so float64 output is float32-accurate
        # around exact weights; the full float64 precision of w is checked separately.
        assert_close(got, want, torch.float32 if w.dtype == torch.float64 else w.dtype)
        if w.dtype in FULL_DTYPES and w.numel() > 0:
            for k in range(num_samples):
                _check_direction(got[k], w, eta, per_filter, seed=seed, offset=offset, sample=k, tensor_index=t)
    return out


# --- The reference generator -------------------------------------------------------------------

# Random123's known-answer vectors for philox4x32_10 (kat_vectors): counter, key, output.
PHILOX_KATS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KATS, ids=["zeros", "ones", "pi"])
def test_reference_philox_known_answers(counter, key, expected):
    out = philox4x32_10(torch.tensor(counter), torch.tensor(key))
    assert out.dtype == torch.int64 and [hex(v) for v in out.tolist()] == [hex(v) for v in expected]


def test_reference_philox_is_elementwise():
    """A batch of counters with broadcast keys gives what each row gives alone."""
    counters = torch.tensor([c for c, _, _ in PHILOX_KATS])
    keys = torch.tensor([k for _, k, _ in PHILOX_KATS])
    assert torch.equal(philox4x32_10(counters, keys), torch.tensor([e for _, _, e in PHILOX_KATS]))
    many = torch.randint(0, 2**32, (50, 4))
    key = torch.tensor([0xDEADBEEF, 12345])
    batched = philox4x32_10(many, key)
    assert torch.equal(batched, torch.stack([philox4x32_10(row, key) for row in many]))
    assert batched.min() >= 0 and batched.max() < 2**32


def test_reference_normals_are_a_stream():
    """Element e's normal depends only on e (and the counter), not on how many are drawn."""
    counter = dict(seed=2**40 + 3, offset=9, sample=2, tensor_index=5)
    long = kernel_noise_normals_reference(23, **counter)
    assert long.dtype == torch.float32 and long.shape == (23,) and torch.isfinite(long).all()
    for numel in (0, 1, 4, 10):
        assert torch.equal(kernel_noise_normals_reference(numel, **counter), long[:numel])


# --- The op against the reference --------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device, dtype, granularity, num_samples, seed):
    _check(_weights(NET_SHAPES, dtype, device), num_samples, 0.1, granularity, seed=seed, offset=7)


@pytest.mark.parametrize(
    "op_seed,offset,eta",
    [(0, 0, 0.1), (2**63 - 1, 2**32 - 1, 1.0), (2**32 + 5, 1, 1e-3), (123456789012, 99, 3.0)],
    ids=["zero", "max", "high-key-word", "large-eta"],
)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_seeds_offsets_and_eta(op_seed, offset, eta, granularity, seed):
    _check(_weights(NET_SHAPES), 2, eta, granularity, seed=op_seed, offset=offset)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed", "expanded"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_non_contiguous_weights(layout, granularity, seed):
    """Strided weights are read by their row-major element index: the result is that of a copy."""
    weights = []
    for shape in NET_SHAPES:
        leaf, view = strided(shape, layout if shape else "contiguous", lambda s: torch.randn(s) * 0.1)
        weights.append(view(leaf))
    assert any(not w.is_contiguous() for w in weights)
    out = _check(weights, 2, 0.1, granularity, seed=seed, offset=1)
    dense = kernel_noise([w.contiguous() for w in weights], 2, 0.1, seed=seed, offset=1, granularity=granularity)
    for got, want in zip(out, dense):
        assert torch.equal(got, want)


def test_float64_keeps_full_precision(seed):
    """A float64 weight is not rounded through float32: noise far below float32's resolution of w
    is still there, with the right size and direction."""
    weights = _weights([(6, 5, 3, 3), (11,)], torch.float64, scale=1.0)
    eta = 1e-9
    out = kernel_noise(weights, 2, eta, seed=seed, offset=0)
    for t, (w, got) in enumerate(zip(weights, out)):
        for k in range(2):
            # The sum w + noise rounds at ~1e-16 |w|, i.e. ~1e-7 of the noise; through float32 it
            # would be ~1e-8 |w|, ten times the noise.
            _check_direction(got[k], w, eta, False, seed=seed, offset=0, sample=k, tensor_index=t)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_noise_has_eta_times_weight_norm(dtype, granularity, seed):
    per_filter = granularity == "filter"
    eta = 0.05
    weights = _weights(NET_SHAPES, dtype)
    out = kernel_noise(weights, 3, eta, seed=seed, granularity=granularity)
    rtol = 1e-6 if dtype == torch.float64 else 1e-5
    for w, got in zip(weights, out):
        w_norm = _groups(w.double(), per_filter).norm(dim=1)
        for k in range(3):
            noise_norm = _groups(got[k].double() - w.double(), per_filter).norm(dim=1)
            torch.testing.assert_close(noise_norm, eta * w_norm, rtol=rtol, atol=0)


# --- Independence, reproducibility ---------------------------------------------------------------


def test_samples_and_tensors_get_independent_noise(seed):
    """Identical weights at list positions 0 and 2 get different noise; so do samples k."""
    w = torch.randn(32, 16, 3, 3) * 0.1
    out = kernel_noise([w, torch.randn(7, 5), w.clone()], 3, 0.1, seed=seed)
    noises = [out[0][k] - w for k in range(3)] + [out[2][0] - w]
    for i in range(len(noises)):
        for j in range(i):
            assert not torch.equal(noises[i], noises[j])
            # 4608 elements: an independent pair correlates at ~0.015 (1 sigma).
            assert abs(_corr(noises[i], noises[j])) < 0.1, (i, j)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_noise_depends_only_on_seed_offset_sample_and_index(granularity, seed):
    """A tensor's noise is the same whatever the other tensors are and however many samples are drawn."""
    a, b, c = _weights([(4, 3, 3, 3), (9, 5), (6, 2)])
    kwargs = dict(seed=seed, offset=3, granularity=granularity)
    first = kernel_noise([a, b], 3, 0.2, **kwargs)
    assert torch.equal(kernel_noise([c, b], 3, 0.2, **kwargs)[1], first[1])
    fewer = kernel_noise([a, b], 2, 0.2, **kwargs)
    assert torch.equal(fewer[0], first[0][:2]) and torch.equal(fewer[1], first[1][:2])


def test_reproducible_and_seeded(seed):
    weights = _weights([(16, 8, 3, 3), (21,)])
    base = kernel_noise(weights, 2, 0.1, seed=seed, offset=5)
    again = kernel_noise(weights, 2, 0.1, seed=seed, offset=5)
    assert all(torch.equal(x, y) for x, y in zip(base, again))
    others = {
        "seed+1": dict(seed=seed + 1, offset=5),
        "seed+2^32": dict(seed=seed + 2**32, offset=5),  # the key's high word
        "offset+1": dict(seed=seed, offset=6),
    }
    for name, kwargs in others.items():
        other = kernel_noise(weights, 2, 0.1, **kwargs)
        noise, other_noise = base[0][0] - weights[0], other[0][0] - weights[0]
        assert not torch.equal(noise, other_noise), name
        assert abs(_corr(noise, other_noise)) < 0.15, name  # 1152 elements: sigma ~0.03


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_thread_count_does_not_change_results(granularity, seed):
    weights = _weights([(128, 64, 3, 3), (200_003,), (7,)])
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(kernel_noise(weights, 2, 0.1, seed=seed, granularity=granularity))
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_noise_is_standard_normal():
    """The direction times sqrt(numel) is N(0, 1): moments, sample and pair correlations, KS test."""
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    w = torch.randn(500, 400, dtype=torch.float64)
    num_samples, eta = 4, 0.1
    out = kernel_noise([w], num_samples, eta, seed=20240607, offset=0)[0]
    z = (out - w).flatten(1) / (eta * w.norm()) * math.sqrt(w.numel())  # (K, 200000)
    n = z.shape[1]
    bound = 5 / math.sqrt(n)  # 5 standard errors
    assert z.mean(dim=1).abs().max() < bound
    assert (z.var(dim=1) - 1).abs().max() < 5 * math.sqrt(2 / n)
    assert (z.pow(4).mean(dim=1) - 3).abs().max() < 5 * math.sqrt(96 / n)  # kurtosis of a normal
    for i in range(num_samples):
        for j in range(i):
            assert abs(_corr(z[i], z[j])) < bound, (i, j)
    # Box-Muller pairs (cos, sin) and neighbouring pairs are uncorrelated too.
    assert abs(_corr(z[:, 0::2], z[:, 1::2])) < bound
    assert abs(_corr(z[:, :-2], z[:, 2:])) < bound
    result = stats.kstest(z.flatten().numpy(), "norm")
    assert result.pvalue > 1e-3, result


# --- Edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_eta_zero_returns_exact_copies(dtype, granularity, seed):
    weights = _weights(NET_SHAPES, dtype)
    weights[0] = weights[0].transpose(0, 1)
    out = kernel_noise(weights, 3, 0.0, seed=seed, granularity=granularity)
    for w, got in zip(weights, out):
        assert got.shape == (3, *w.shape) and got.dtype == dtype
        assert torch.equal(got, w.expand_as(got))
        if w.numel():
            assert got.data_ptr() != w.data_ptr()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_zero_weights_get_zero_noise(granularity, seed):
    w = torch.randn(6, 4, 3, 3) * 0.1
    w[2] = 0  # one dead filter
    zeros = torch.zeros(5, 7)
    out = _check([w, zeros, torch.zeros(())], 2, 0.3, granularity, seed=seed)
    assert all(torch.isfinite(o).all() for o in out)
    assert torch.equal(out[1], torch.zeros(2, 5, 7)) and torch.equal(out[2], torch.zeros(2))
    if granularity == "filter":
        assert torch.equal(out[0][:, 2], torch.zeros(2, 4, 3, 3))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_empty_tensors_and_empty_list(granularity, seed):
    assert list(kernel_noise([], 2, 0.1, granularity=granularity)) == []
    weights = _weights([(0,), (0, 3, 3, 3), (4, 0, 3), (5, 3)])
    out = _check(weights, 2, 0.1, granularity, seed=seed)
    assert [tuple(o.shape) for o in out] == [(2, 0), (2, 0, 3, 3, 3), (2, 4, 0, 3), (2, 5, 3)]


def test_inputs_are_not_modified(seed):
    weights = [w.requires_grad_() for w in _weights(NET_SHAPES)]
    copies, versions = [w.detach().clone() for w in weights], [w._version for w in weights]
    kernel_noise(weights, 2, 0.5, seed=seed, granularity="filter")
    for w, copy, version in zip(weights, copies, versions):
        assert torch.equal(w.detach(), copy) and w._version == version


def test_outputs_do_not_require_grad(seed):
    weights = [torch.nn.Parameter(w) for w in _weights([(4, 3, 3, 3), (5,)])]
    with torch.enable_grad():
        outs = [kernel_noise(weights, 2, 0.1, seed=seed), ops.kernel_noise(list(weights), 2, 0.1, seed, 0, True)]
    for out in outs:
        assert all(not o.requires_grad and o.grad_fn is None for o in out)


# --- Bad inputs ----------------------------------------------------------------------------------


def _w(*dtypes):
    return [torch.randn(3, 2).to(d) for d in dtypes]


F32 = torch.float32
# (id, call, exception type, the argument named in the message)
BAD_INPUTS = [
    ("K=0", lambda: kernel_noise(_w(F32), 0, 0.1), ValueError, "num_samples"),
    ("K<0", lambda: kernel_noise(_w(F32), -2, 0.1), ValueError, "num_samples"),
    ("eta<0", lambda: kernel_noise(_w(F32), 2, -0.1), ValueError, "eta"),
    ("eta-nan", lambda: kernel_noise(_w(F32), 2, float("nan")), ValueError, "eta"),
    ("eta-inf", lambda: kernel_noise(_w(F32), 2, float("inf")), ValueError, "eta"),
    ("seed<0", lambda: kernel_noise(_w(F32), 2, 0.1, seed=-1), ValueError, "seed"),
    ("offset<0", lambda: kernel_noise(_w(F32), 2, 0.1, offset=-1), ValueError, "offset"),
    ("offset-2^32", lambda: kernel_noise(_w(F32), 2, 0.1, offset=2**32), ValueError, "offset"),
    ("mixed-dtypes", lambda: kernel_noise(_w(F32, F32, torch.float64), 2, 0.1), TypeError, r"weights\[2\]"),
    (
        "integer-weight",
        lambda: kernel_noise(_w(torch.int64, torch.int64, torch.int64), 2, 0.1),
        TypeError,
        r"weights\[0\]",
    ),
    ("integer-later", lambda: kernel_noise(_w(F32, F32, torch.int32), 2, 0.1), TypeError, r"weights\[2\]"),
    ("bool-weight", lambda: kernel_noise(_w(torch.bool), 2, 0.1), TypeError, r"weights\[0\]"),
    ("granularity", lambda: kernel_noise(_w(F32), 2, 0.1, granularity="channel"), ValueError, "granularity"),
]


@pytest.mark.parametrize("call,exc,arg", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(call, exc, arg):
    with pytest.raises(exc, match=arg):
        call()


RAW_BAD_INPUTS = [
    ("K=0", (_w(F32), 0, 0.1, 0, 0, False), ValueError, "num_samples"),
    ("eta<0", (_w(F32), 2, -1.0, 0, 0, False), ValueError, "eta"),
    ("eta-nan", (_w(F32), 2, float("nan"), 0, 0, True), ValueError, "eta"),
    ("seed<0", (_w(F32), 2, 0.1, -5, 0, False), ValueError, "seed"),
    ("offset", (_w(F32), 2, 0.1, 0, 2**32, False), ValueError, "offset"),
    ("mixed-dtypes", (_w(F32, torch.float16), 2, 0.1, 0, 0, False), TypeError, r"weights\[1\]"),
    ("integer", (_w(torch.int32), 2, 0.1, 0, 0, False), TypeError, r"weights\[0\]"),
]


@pytest.mark.parametrize("args,exc,arg", [c[1:] for c in RAW_BAD_INPUTS], ids=[c[0] for c in RAW_BAD_INPUTS])
def test_raw_op_checks_its_arguments(args, exc, arg):
    """The low-level op is reachable by anyone: it checks what the wrapper checks."""
    with pytest.raises(exc, match=arg):
        ops.kernel_noise(*args)


@cuda_only
def test_devices_differ():
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        kernel_noise([torch.randn(3, 2, device="cuda"), torch.randn(4)], 2, 0.1)


@cuda_only
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_cpu_and_cuda_agree(granularity, seed):
    """Same stream on both devices: equal up to the last-bit differences of float32 log/sin/cos."""
    weights = _weights(NET_SHAPES + [(300_001,)])
    cpu = kernel_noise(weights, 3, 0.1, seed=seed, offset=2, granularity=granularity)
    cuda = kernel_noise([w.cuda() for w in weights], 3, 0.1, seed=seed, offset=2, granularity=granularity)
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b.cpu(), a, rtol=2e-6, atol=1e-7 * max(a.abs().max().item(), 1e-30))


# --- opcheck and torch.compile -------------------------------------------------------------------


@pytest.mark.parametrize("per_filter", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_opcheck(dtype, per_filter, seed):
    weights = _weights([(4, 3, 3, 3), (5, 7), (6,), ()], dtype)
    torch.library.opcheck(ops.kernel_noise, (weights, 2, 0.1, seed, 3, per_filter))
    params = [w.clone().requires_grad_() for w in weights]
    torch.library.opcheck(ops.kernel_noise, (params, 1, 0.5, 0, 0, per_filter))


def test_compile_fullgraph(seed):
    torch._dynamo.reset()
    conv, fc = _weights([(6, 3, 3, 3), (4, 9)])

    def perturb(conv, fc):
        noisy_conv, noisy_fc = kernel_noise([conv, fc], 2, 0.1, seed=11, offset=2, granularity="filter")
        return noisy_conv - conv, noisy_fc.sum(dim=0)

    compiled = torch.compile(perturb, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(conv, fc), perturb(conv, fc)):
        assert torch.equal(got, want)
