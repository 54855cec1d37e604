"""uaal_ext.acquisition: pixel scores against the float64 reference, aggregation, image scores, pooled deviations, purity and opcheck (docs/math.md#acquisition-scores)."""

import math

import pytest
import scipy.stats
import torch
from testing import DEVICES, FLOAT_DTYPES, FULL_DTYPES, LAYOUTS, SPATIAL_SHAPES, assert_close, random_logits, strided

import uaal_ext
from uaal_ext import acquisition
from uaal_ext.acquisition import REDUCTIONS, image_scores, method_class, method_names, pixel_scores, pooled_deviations
from uaal_ext.ops.reference import aggregate_scores_reference, pixel_scores_reference

ops = torch.ops.uaal_ext
LOGIT_METHODS = ["entropy", "margin", "least_confidence"]
MC_METHODS = ["mc_entropy", "bald"]
MAP_METHODS = LOGIT_METHODS + MC_METHODS
# The built-in methods that give each image a score (all but the k-center diversity method).
SCORE_METHODS = ("random", *MAP_METHODS, "noise_stability")
NUM_SAMPLES = 3  # T or K
# Dyadic fractions: q * n is exact in any float format, so ceil(q * n) has one answer.
QS = [0.125, 0.25, 0.5, 1.0]


def _result_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _unit(method, num_classes):
    """The natural size of a score: log C for the entropies, 1 for probabilities."""
    return max(math.log(num_classes), 1.0) if method in ("entropy", "mc_entropy", "bald") else 1.0


def _input_shape(method, num_classes, ndim, n=3):
    shape = (n, num_classes) + SPATIAL_SHAPES[ndim]
    return (NUM_SAMPLES,) + shape if method in MC_METHODS else shape


def _inputs(method, dtype, shape, spread=1.0):
    """Inputs of `method` for image_scores/pixel_scores, rounded to dtype, as a dict of keyword args.

    MC samples and perturbed passes scatter around one set of logits, so they disagree moderately.
    """
    if method in MC_METHODS:
        base = random_logits(shape[1:])
        return {"mc_logits": (base + spread * torch.randn(shape, dtype=torch.float64)).to(dtype)}
    logits = random_logits(shape)
    if method == "noise_stability":
        perturbed = logits + spread * torch.randn((NUM_SAMPLES, *shape), dtype=torch.float64)
        return {"logits": logits.to(dtype), "perturbed_logits": perturbed.to(dtype)}
    return {"logits": logits.to(dtype)}


def _pixel_shape(inputs):
    if "mc_logits" in inputs:
        x = inputs["mc_logits"]
        return (x.shape[1], *x.shape[3:])
    x = inputs["logits"]
    return (x.shape[0], *x.shape[2:])


def _check_map(method, input, device="cpu"):
    """pixel_scores(method) of `input` against the float64 reference on the same (rounded) values."""
    dtype = input.dtype
    key = "mc_logits" if method in MC_METHODS else "logits"
    got = pixel_scores(method, **{key: input.to(device)})
    want = pixel_scores_reference(method, input.double())
    assert got.shape == want.shape and got.dtype == _result_dtype(dtype) and got.device.type == device
    assert not got.requires_grad
    assert_close(got.cpu(), want, _result_dtype(dtype), unit=_unit(method, input.shape[-1 - len(want.shape[1:])]))
    return got


# --- Pixel maps against the float64 reference -----------------------------------------------------------


@pytest.mark.parametrize("method", MAP_METHODS)
@pytest.mark.parametrize("ndim", list(SPATIAL_SHAPES))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_pixel_scores_match_reference(device, dtype, ndim, method, seed):
    (input,) = _inputs(method, dtype, _input_shape(method, 5, ndim)).values()
    _check_map(method, input, device)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("method", MAP_METHODS)
def test_pixel_scores_any_strides(method, ndim, layout, seed):
    leaf, view = strided(_input_shape(method, 6, ndim), layout, lambda shape: random_logits(shape).float())
    input = view(leaf)
    got = _check_map(method, input)
    key = "mc_logits" if method in MC_METHODS else "logits"
    assert torch.equal(got, pixel_scores(method, **{key: input.contiguous()}))


@pytest.mark.parametrize("num_samples", [1, 4])
@pytest.mark.parametrize("num_classes", [1, 2, 19])
@pytest.mark.parametrize("method", MAP_METHODS)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_classes_and_samples(dtype, method, num_classes, num_samples, seed):
    shape = (2, num_classes, 5, 3)
    if method in MC_METHODS:
        shape = (num_samples,) + shape
    got = _check_map(method, (random_logits(shape) * 2).to(dtype))
    if num_classes == 1 or (method == "bald" and num_samples == 1):
        assert got.abs().max() <= 1e-6  # one class, or one sample: nothing is uncertain


@pytest.mark.parametrize("ndim", [0, 2])
def test_entropy_matches_scipy(ndim, seed):
    logits = random_logits((3, 7) + SPATIAL_SHAPES[ndim])
    got = pixel_scores("entropy", logits=logits)
    p = torch.softmax(logits, dim=1).numpy()
    expected = torch.from_numpy(scipy.stats.entropy(p, axis=1))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # mc_entropy of T identical samples is the entropy of one.
    mc = pixel_scores("mc_entropy", mc_logits=logits.expand(4, *logits.shape))
    torch.testing.assert_close(mc, expected, rtol=1e-10, atol=1e-12)


def test_scores_by_hand():
    """Three classes with probabilities (0.5, 0.3, 0.2): H, margin and least confidence by hand."""
    logits = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()[None]
    assert pixel_scores("entropy", logits=logits).item() == pytest.approx(
        -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)), rel=1e-12
    )
    assert pixel_scores("margin", logits=logits).item() == pytest.approx(0.8, rel=1e-12)
    assert pixel_scores("least_confidence", logits=logits).item() == pytest.approx(0.5, rel=1e-12)
    # Two MC samples, certain of different classes: H(mean) = log 2, mean H = 0.
    mc = torch.tensor([[[30.0, 0.0]], [[0.0, 30.0]]], dtype=torch.float64)  # (T=2, N=1, C=2)
    assert pixel_scores("bald", mc_logits=mc).item() == pytest.approx(math.log(2), rel=1e-9)
    assert pixel_scores("mc_entropy", mc_logits=mc).item() == pytest.approx(math.log(2), rel=1e-9)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_bald_is_nonnegative_and_zero_when_samples_agree(dtype, seed):
    (mc,) = _inputs("bald", dtype, (6, 2, 11, 7, 5), spread=3.0).values()
    bald = pixel_scores("bald", mc_logits=mc)
    assert (bald >= 0).all() and bald.max() > 0.05
    assert bald.double().le(pixel_scores("mc_entropy", mc_logits=mc).double() + 1e-6).all()  # BALD <= H(mean)
    logits = random_logits((2, 11, 7, 5)).to(dtype)
    agree = pixel_scores("bald", mc_logits=logits.expand(5, *logits.shape))
    assert (agree >= 0).all() and agree.max() <= (1e-12 if dtype == torch.float64 else 1e-6)


def _peaked_and_flat(num_classes, strengths):
    """(len(strengths), C) logits: class 0 raised by s, the rest 0; larger s is more confident."""
    logits = torch.zeros(len(strengths), num_classes, dtype=torch.float64)
    logits[:, 0] = torch.tensor(strengths, dtype=torch.float64)
    return logits


@pytest.mark.parametrize("method", SCORE_METHODS[1:])
def test_confident_predictions_score_lower(method, seed):
    """Higher = more informative: scores fall strictly as the prediction grows more confident/stable."""
    strengths = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]  # flat ... peaked
    logits = _peaked_and_flat(5, strengths)[:, :, None].expand(-1, -1, 3).contiguous()  # (6, 5, 3)
    if method in LOGIT_METHODS:
        scores = image_scores(method, logits=logits)
    elif method == "mc_entropy":
        scores = image_scores(method, mc_logits=logits.expand(4, *logits.shape))
    elif method == "bald":
        # Four confident samples that agree more and more: their classes, most disagreement first.
        patterns = [[0, 1, 2, 3], [0, 1, 2, 2], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
        mc = torch.zeros(4, len(patterns), 5, 3, dtype=torch.float64)
        for image, classes in enumerate(patterns):
            for t, c in enumerate(classes):
                mc[t, image, c] = 8.0
        scores = image_scores(method, mc_logits=mc)
    else:  # noise_stability: perturbations of shrinking size around the same prediction
        base = random_logits((1, 5, 3)).expand(len(strengths), -1, -1)
        noise = torch.randn(NUM_SAMPLES, 1, 5, 3, dtype=torch.float64)
        sizes = torch.tensor([0.4, 0.2, 0.1, 0.05, 0.02, 0.0], dtype=torch.float64)[None, :, None, None]
        scores = image_scores(method, logits=base.contiguous(), perturbed_logits=base + sizes * noise)
    assert (scores[:-1] > scores[1:]).all(), scores
    assert scores[-1] >= 0


# --- Non-finite logits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", MAP_METHODS)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_minus_inf_logits_have_zero_probability(dtype, method, seed):
    (input,) = _inputs(method, dtype, _input_shape(method, 6, 2)).values()
    masked = torch.rand(input.shape) < 0.3
    masked.select(-3, 0).fill_(False)  # the class dim: one finite class per pixel
    input = input.masked_fill(masked, float("-inf"))
    got = _check_map(method, input)
    assert torch.isfinite(got).all()
    # A class at -inf is absent: the scores equal those of the logits without it.
    first_two = input.narrow(-3, 0, 2).clone()
    three = torch.cat([first_two, torch.full_like(first_two[..., :1, :, :], float("-inf"))], dim=-3)
    key = "mc_logits" if method in MC_METHODS else "logits"
    torch.testing.assert_close(pixel_scores(method, **{key: three}), pixel_scores(method, **{key: first_two}))


@pytest.mark.parametrize("method", MAP_METHODS)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_nan_logits_give_nan_at_their_pixel(dtype, method, seed):
    (input,) = _inputs(method, dtype, _input_shape(method, 5, 2, n=2)).values()
    nan_pixels = torch.zeros(2, 7, 13, dtype=torch.bool)
    if method in MC_METHODS:
        input[1, 0, 3, 2, 4] = float("nan")  # one sample's logit
        input[2, 1, 0, 6, 12] = float("nan")
        nan_pixels[0, 2, 4] = nan_pixels[1, 6, 12] = True
    else:
        input[0, 3, 2, 4] = float("nan")
        input[1, 0, 6, 12] = float("nan")
        nan_pixels[0, 2, 4] = nan_pixels[1, 6, 12] = True
    got = _check_map(method, input)
    assert torch.equal(got.isnan(), nan_pixels)


# --- Aggregation -------------------------------------------------------------------------------------------


def _scores_and_mask(shape, layout="contiguous", masked=True, dtype=torch.float32):
    """Scores >= 0 and a valid mask (about 30% ignored, image 1 entirely) with `layout`'s strides."""
    leaf, view = strided(shape, layout, lambda s: (torch.rand(s, dtype=torch.float64) * 3).to(dtype))
    scores = view(leaf)
    if not masked:
        return scores, None
    mask_layout = layout if layout != "expanded" else "contiguous"
    valid_leaf, valid_view = strided(shape, mask_layout, lambda s: torch.rand(s) > 0.3)
    valid = valid_view(valid_leaf)
    if shape[0] > 1:
        valid = valid.clone()
        valid[1] = False
    return scores, valid


@pytest.mark.parametrize("masked", [False, True], ids=["all-valid", "masked"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ndim", list(SPATIAL_SHAPES))
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_aggregate_matches_reference(device, dtype, ndim, reduction, masked, seed):
    scores, valid = _scores_and_mask((4,) + SPATIAL_SHAPES[ndim], masked=masked, dtype=dtype)
    for q in QS:
        got = ops.aggregate_scores(scores.to(device), None if valid is None else valid.to(device), reduction, q)
        want = aggregate_scores_reference(scores.double(), valid, reduction, q)
        assert got.shape == (4,) and got.dtype == dtype and got.device.type == device
        assert_close(got.cpu(), want, dtype)
        if masked and ndim > 0:
            assert got[1] == 0  # no valid pixel: the least informative score


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_aggregate_any_strides(reduction, layout, seed):
    scores, valid = _scores_and_mask((3, 6, 9), layout)
    got = ops.aggregate_scores(scores, valid, reduction, 0.25)
    assert_close(got, aggregate_scores_reference(scores.double(), valid, reduction, 0.25), torch.float32)
    assert torch.equal(got, ops.aggregate_scores(scores.contiguous(), valid.contiguous(), reduction, 0.25))


def test_topk_mean_by_hand():
    scores = torch.arange(10, dtype=torch.float64).reshape(1, 2, 5)  # 0 ... 9
    valid = torch.ones(1, 2, 5, dtype=torch.bool)
    assert ops.aggregate_scores(scores, valid, "topk_mean", 0.25).item() == 8.0  # ceil(2.5) = 3: 9, 8, 7
    assert ops.aggregate_scores(scores, valid, "topk_mean", 0.01).item() == 9.0  # at least one pixel
    valid[0, 1] = False  # only 0 ... 4 count
    assert ops.aggregate_scores(scores, valid, "topk_mean", 0.5).item() == 3.0  # ceil(2.5) = 3: 4, 3, 2
    assert ops.aggregate_scores(scores, valid, "max", 0.5).item() == 4.0
    assert ops.aggregate_scores(scores, valid, "sum", 0.5).item() == 10.0
    assert ops.aggregate_scores(scores, valid, "mean", 0.5).item() == 2.0


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True], ids=["all-valid", "masked"])
def test_topk_mean_with_q_one_is_the_mean(masked, ndim, seed):
    scores, valid = _scores_and_mask((5,) + SPATIAL_SHAPES[ndim], masked=masked)
    torch.testing.assert_close(
        ops.aggregate_scores(scores, valid, "topk_mean", 1.0), ops.aggregate_scores(scores, valid, "mean", 1.0)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_aggregate_nan_only_where_valid(reduction, seed):
    scores, valid = _scores_and_mask((3, 4, 5))
    valid[0, 1, 1], valid[2, 0, 0] = True, False
    scores[0, 1, 1] = float("nan")  # a valid pixel: NaN
    scores[2, 0, 0] = float("nan")  # an ignored one: no effect
    got = ops.aggregate_scores(scores, valid, reduction, 0.25)
    assert got[0].isnan() and got[1] == 0 and torch.isfinite(got[2])
    assert_close(got, aggregate_scores_reference(scores.double(), valid, reduction, 0.25), torch.float32)


@pytest.mark.parametrize("shape", [(0, 4, 5), (0,), (3, 0, 2)], ids=["N0", "N0-flat", "no-pixels"])
def test_aggregate_empty(shape):
    scores = torch.rand(shape)
    for reduction in REDUCTIONS:
        got = ops.aggregate_scores(scores, torch.ones(shape, dtype=torch.bool), reduction, 0.5)
        assert torch.equal(got, torch.zeros(shape[0]))
        assert torch.equal(ops.aggregate_scores(scores, None, reduction, 0.5), torch.zeros(shape[0]))


def test_empty_batch_pixel_scores():
    assert pixel_scores("entropy", logits=torch.randn(0, 4, 3, 2)).shape == (0, 3, 2)
    assert pixel_scores("bald", mc_logits=torch.randn(2, 0, 4, 3)).shape == (0, 3)
    assert image_scores("margin", logits=torch.randn(0, 4, 3, 2)).shape == (0,)


# --- image_scores: ignore masks, labels, random ------------------------------------------------------------


def _scramble(inputs, ignored):
    """Copies of `inputs` whose logits at ignored pixels are replaced by huge, infinite and NaN values."""
    wild = {}
    for key, value in inputs.items():
        if key == "logits":
            mask = ignored[:, None].expand(value.shape)
        else:  # (T|K, N, C, *spatial)
            mask = ignored[None, :, None].expand(value.shape)
        junk = torch.randn(value.shape, dtype=torch.float64) * 1e4
        junk.view(-1)[::7] = float("nan")
        junk.view(-1)[1::11] = float("inf")
        junk.view(-1)[2::13] = float("-inf")
        wild[key] = torch.where(mask, junk.to(value.dtype), value)
    return wild


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("method", SCORE_METHODS)
def test_ignored_pixels_never_change_a_score(method, reduction, seed):
    inputs = _inputs(method, torch.float32, _input_shape("entropy" if method == "random" else method, 5, 2))
    ignored = torch.rand(_pixel_shape(inputs)) < 0.4
    ignored[2] = True  # an image without a valid pixel
    extra = {"seed": seed} if method == "random" else {}
    scores = image_scores(method, **inputs, ignore_mask=ignored, reduction=reduction, q=0.25, **extra)
    wild = _scramble(inputs, ignored)
    again = image_scores(method, **wild, ignore_mask=ignored, reduction=reduction, q=0.25, **extra)
    assert torch.equal(scores, again)
    assert scores[2] == 0 and torch.isfinite(scores).all() and (scores[:2] > 0).all()
    # The mask matters: scoring every pixel changes the scores (so the check above can fail).
    unmasked = image_scores(method, **inputs, reduction=reduction, q=0.25, **extra)
    assert not torch.equal(unmasked, scores)
    if method != "random":
        valid = ~ignored
        maps = pixel_scores(method, **inputs)
        assert_close(scores, aggregate_scores_reference(maps.double(), valid, reduction, 0.25), torch.float32)


@pytest.mark.parametrize("method", ["entropy", "bald", "noise_stability"])
def test_labels_with_ignore_index_equal_an_ignore_mask(method, seed):
    inputs = _inputs(method, torch.float32, _input_shape(method, 5, 2))
    labels = torch.randint(0, 5, _pixel_shape(inputs))
    labels[torch.rand(labels.shape) < 0.3] = 255
    by_labels = image_scores(method, **inputs, labels=labels, ignore_index=255, reduction="topk_mean", q=0.5)
    by_mask = image_scores(method, **inputs, ignore_mask=labels == 255, reduction="topk_mean", q=0.5)
    assert torch.equal(by_labels, by_mask)


def test_noise_stability_scores_are_perturbation_statistics(seed):
    inputs = _inputs("noise_stability", torch.float64, (3, 5, 7, 6))
    expected = uaal_ext.perturbation_statistics(inputs["logits"], inputs["perturbed_logits"])[1]
    assert torch.equal(pixel_scores("noise_stability", **inputs), expected)
    torch.testing.assert_close(image_scores("noise_stability", **inputs, reduction="sum"), expected.sum(dim=(1, 2)))


def test_random_scores(seed):
    logits = torch.randn(50, 3, 4, 4)
    first = image_scores("random", logits=logits, seed=seed)
    assert first.shape == (50,) and first.dtype == torch.float32 and ((first >= 0) & (first < 1)).all()
    assert torch.equal(first, image_scores("random", mc_logits=logits[None], seed=seed))  # any input: only N
    assert not torch.equal(first, image_scores("random", logits=logits, seed=seed + 1))
    generator = torch.Generator().manual_seed(seed)
    assert torch.equal(image_scores("random", logits=logits, generator=generator), first)
    assert not torch.equal(image_scores("random", logits=logits, generator=generator), first)  # the generator moved
    assert torch.equal(image_scores("random", logits=logits), image_scores("random", logits=logits, seed=0))
    assert image_scores("random", logits=logits.double()).dtype == torch.float64
    assert len(set(first.tolist())) == 50


# --- pooled_deviations ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_pooled_deviations(dtype, seed):
    inputs = _inputs("noise_stability", dtype, (3, 5, 8, 12))
    clean, perturbed = inputs["logits"], inputs["perturbed_logits"]
    deviation = torch.softmax(perturbed.double(), dim=2) - torch.softmax(clean.double(), dim=1)  # (K, N, C, H, W)
    # A grid as fine as the map pools nothing: the deviations themselves, ordered (k, c, h, w).
    full = pooled_deviations(clean, perturbed, grid=(8, 12))
    assert full.shape == (3, NUM_SAMPLES * 5 * 96) and full.dtype == _result_dtype(dtype)
    assert_close(full, deviation.permute(1, 0, 2, 3, 4).reshape(3, -1), _result_dtype(dtype))
    # One cell: the mean deviation per (k, c).
    one = pooled_deviations(clean, perturbed, grid=1)
    assert_close(one, deviation.mean(dim=(3, 4)).permute(1, 0, 2).reshape(3, -1), _result_dtype(dtype))
    # 2 x 3 cells of 4 x 4 pixels.
    cells = pooled_deviations(clean, perturbed, grid=(2, 3)).reshape(3, NUM_SAMPLES, 5, 2, 3)
    expected = deviation.reshape(NUM_SAMPLES, 3, 5, 2, 4, 3, 4).mean(dim=(4, 6)).permute(1, 0, 2, 3, 4)
    assert_close(cells, expected, _result_dtype(dtype))
    # Default grid: 4 cells per spatial dim; other spatial ranks.
    assert pooled_deviations(clean, perturbed).shape == (3, NUM_SAMPLES * 5 * 16)
    assert pooled_deviations(clean[..., 0], perturbed[..., 0]).shape == (3, NUM_SAMPLES * 5 * 4)
    assert pooled_deviations(clean[..., 0, 0], perturbed[..., 0, 0], grid=()).shape == (3, NUM_SAMPLES * 5)


# --- Purity, threads, opcheck -----------------------------------------------------------------------------------


def test_no_graph_and_inputs_unchanged(seed):
    for method in MAP_METHODS + ["noise_stability"]:
        inputs = {k: v.requires_grad_() for k, v in _inputs(method, torch.float32, _input_shape(method, 5, 2)).items()}
        copies = {k: v.detach().clone() for k, v in inputs.items()}
        versions = {k: v._version for k, v in inputs.items()}
        with torch.enable_grad():
            for out in (pixel_scores(method, **inputs), image_scores(method, **inputs, reduction="topk_mean")):
                assert not out.requires_grad and out.grad_fn is None
        for k, v in inputs.items():
            assert torch.equal(v.detach(), copies[k]) and v._version == versions[k]


def test_thread_count_does_not_change_results(seed):
    logits = random_logits((2, 19, 40, 50)).float()
    mc = random_logits((4, 2, 19, 40, 50)).float()
    valid = torch.rand(2, 40, 50) > 0.2
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            maps = [ops.pixel_scores(logits, m) for m in LOGIT_METHODS] + [ops.pixel_scores(mc, m) for m in MC_METHODS]
            results.append(maps + [ops.aggregate_scores(maps[0], valid, r, 0.25) for r in REDUCTIONS])
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        torch.testing.assert_close(one, two, rtol=1e-6, atol=1e-7)


PIXEL_OPCHECK = [
    ("entropy", (2, 5, 3, 4), torch.float32),
    ("margin", (3, 7), torch.float64),
    ("least_confidence", (2, 4, 6), torch.float16),
    ("mc_entropy", (2, 2, 3, 2, 2, 3), torch.bfloat16),
    ("bald", (3, 2, 5, 4, 4), torch.float32),
]


@pytest.mark.parametrize("method,shape,dtype", PIXEL_OPCHECK, ids=[c[0] for c in PIXEL_OPCHECK])
def test_opcheck_pixel_scores(method, shape, dtype, seed):
    input = random_logits(shape).to(dtype)
    torch.library.opcheck(ops.pixel_scores, (input, method))
    torch.library.opcheck(ops.pixel_scores, (input.requires_grad_(), method))


AGGREGATE_OPCHECK = [
    ("mean", (2, 3, 4), torch.float32, False),
    ("topk_mean", (3, 5), torch.float64, True),
    ("max", (2, 7), torch.float32, True),
    ("sum", (2, 2, 3, 2), torch.float64, False),
]


@pytest.mark.parametrize("reduction,shape,dtype,masked", AGGREGATE_OPCHECK, ids=[c[0] for c in AGGREGATE_OPCHECK])
def test_opcheck_aggregate_scores(reduction, shape, dtype, masked, seed):
    scores = torch.rand(shape, dtype=dtype)
    valid = torch.rand(shape) > 0.3 if masked else None
    torch.library.opcheck(ops.aggregate_scores, (scores, valid, reduction, 0.5))
    torch.library.opcheck(ops.aggregate_scores, (scores.requires_grad_(), valid, reduction, 0.5))


def test_method_lists():
    builtin = (
        "random",
        "entropy",
        "margin",
        "least_confidence",
        "mc_entropy",
        "bald",
        "noise_stability",
        "noise_stability_kcenter",
    )
    assert method_names()[: len(builtin)] == builtin
    assert [m for m in builtin if method_class(m).ranks_by_score] == list(builtin[:-1])
    assert [m for m in builtin if not method_class(m).has_pixel_map] == ["random"]
    assert REDUCTIONS == ("mean", "sum", "max", "topk_mean")
    assert set(acquisition.__all__) >= {
        "pixel_scores",
        "image_scores",
        "select",
        "kcenter_greedy",
        "score_pool",
        "select_from_pool",
        "pooled_deviations",
    }


@pytest.mark.parametrize("num_classes", [3, 19])
@pytest.mark.parametrize("method", MC_METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_monte_carlo_samples_stored_next_to_the_classes(device, method, num_classes, seed):
    """(T, N, C, H, W) samples stored as (N, H, W, T, C), the layout torch.vmap gives batched passes
    over a channels-last model: each pixel's classes are contiguous (the CUDA kernel's group of lanes)
    and the samples are C values apart."""
    samples = (random_logits((4, 2, num_classes, 5, 37)) * 2).float()
    stored = samples.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)
    assert stored.stride(2) == 1 and stored.stride(0) == num_classes
    got = _check_map(method, stored, device)
    assert_close(got.cpu(), pixel_scores(method, mc_logits=samples.contiguous()), torch.float32)


# Full blocks of more than 8 classes go through contiguous staging on the CPU (csrc/cpu/pixel_blocks.h),
# channels-last ones are converted from a pixel-major run (gathers below 4 classes, four classes at
# a time from 4): rows of 131 pixels hold two full blocks and a partial one.
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("num_classes", [3, 5, 8, 9, 19])
@pytest.mark.parametrize("method", MAP_METHODS)
def test_wide_rows_around_the_staging_threshold(method, num_classes, channels_last, seed):
    logits = (random_logits((2, num_classes, 3, 131)) * 2).float()
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    if method in MC_METHODS:  # (T, N, C, H, W): three samples, each in the layout
        logits = torch.stack([logits, logits.roll(1, dims=1), logits * 0.5])
        if channels_last:
            logits = logits.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    _check_map(method, logits)
