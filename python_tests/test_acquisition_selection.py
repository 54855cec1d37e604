"""uaal_ext.acquisition: top-k selection, greedy k-center, scoring a pool with a model, and the bad
inputs every acquisition function reports by name (docs/math.md#acquisition-scores)."""

import itertools
import math

import pytest
import torch
from testing import assert_raises_naming
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import uaal_ext
from uaal_ext.acquisition import (
    image_scores,
    kcenter_greedy,
    pixel_scores,
    pooled_deviations,
    score_pool,
    select,
    select_from_pool,
)

ops = torch.ops.uaal_ext
LOGIT_METHODS = ["entropy", "margin", "least_confidence"]


# --- select -----------------------------------------------------------------------------------------------------


def _select_reference(values, k, exclude=()):
    """Sorted by (NaN last, score descending, index ascending)."""
    items = [(i, v) for i, v in values.items() if i not in set(exclude)]
    items.sort(key=lambda item: (math.isnan(item[1]), -item[1] if not math.isnan(item[1]) else 0.0, item[0]))
    return [i for i, _ in items[:k]]


def test_select_ties_nan_and_exclude():
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([1.0, 3.0, 3.0, nan, -inf, 3.0, inf, nan, 0.0])
    assert select(scores, 20) == [6, 1, 2, 5, 0, 8, 4, 3, 7]
    assert select(scores, 3) == [6, 1, 2]
    assert select(scores, 3, exclude=[6, 2]) == [1, 5, 0]
    assert select(scores, 0) == []
    assert select(scores.double(), 4) == select(scores.half(), 4) == [6, 1, 2, 5]
    assert select(torch.tensor([]), 5) == []


def test_select_dict_returns_pool_indices_whatever_the_order(seed):
    values = {int(i): float(v) for i, v in zip(torch.randperm(1000)[:300] * 3, torch.randint(0, 20, (300,)) / 4)}
    for i in list(values)[:10]:
        values[i] = float("nan")
    exclude = list(values)[10:40] + [-5, 10**9]  # indices outside the pool are ignored
    expected = _select_reference(values, 120, exclude)
    for _ in range(3):
        keys = list(values)
        shuffled = {keys[j]: values[keys[j]] for j in torch.randperm(len(keys)).tolist()}
        assert select(shuffled, 120, exclude=exclude) == expected
    assert select(values, 10**6) == _select_reference(values, 10**6)  # k > available: all of them
    tensor = torch.tensor(list(values.values()))
    assert select(tensor, 50) == _select_reference(dict(enumerate(tensor.tolist())), 50)


# --- kcenter_greedy ---------------------------------------------------------------------------------------------


def _distances(features):
    x = features.double()
    return (x[:, None] - x[None]).pow(2).sum(-1).sqrt()  # M x M: fine for the small reference inputs


def _kcenter_reference(features, k, initial=()):
    """Farthest-first traversal written out with the full distance matrix and Python max."""
    d = _distances(features)
    m = features.shape[0]
    centres, chosen = list(initial), []
    if not centres and k > 0 and m > 0:
        from_mean = (features.double() - features.double().mean(dim=0)).pow(2).sum(-1)
        first = max(range(m), key=lambda i: (from_mean[i].item(), -i))
        centres.append(first)
        chosen.append(first)
    while len(chosen) < k:
        candidates = [i for i in range(m) if i not in centres]
        if not candidates:
            break
        best = max(candidates, key=lambda i: (min(d[i, c].item() for c in centres), -i))
        centres.append(best)
        chosen.append(best)
    return chosen


def _objective(features, centres):
    """The covering radius: the largest distance from a point to its nearest centre."""
    return _distances(features)[:, list(centres)].min(dim=1).values.max().item()


@pytest.mark.parametrize("with_initial", [False, True])
@pytest.mark.parametrize("size", [(1, 3), (7, 2), (40, 5), (123, 17)])
def test_kcenter_matches_reference(size, with_initial, seed):
    features = torch.randn(size, dtype=torch.float64)
    initial = torch.randperm(size[0])[: size[0] // 4].tolist() if with_initial else []
    for k in (0, 1, 3, size[0] // 2, size[0] + 5):
        got = kcenter_greedy(features, k, initial=initial)
        expected = _kcenter_reference(features, k, initial)
        assert got == expected
        assert not set(got) & set(initial) and len(set(got)) == len(got)
        if got and initial:
            assert _objective(features, got + initial) == _objective(features, expected + initial)
    assert kcenter_greedy(features.float(), 5, initial=initial) == _kcenter_reference(features.float(), 5, initial)


def test_kcenter_is_within_twice_the_optimum(seed):
    """Brute force over every choice of k centres (and the labeled ones) on tiny inputs."""
    for trial in range(4):
        features = torch.randn(9, 2, dtype=torch.float64) * (1 + trial)
        initial = [] if trial % 2 == 0 else [int(torch.randint(0, 9, ()))]
        for k in (2, 3):
            greedy = _objective(features, kcenter_greedy(features, k, initial=initial) + initial)
            optimum = min(_objective(features, list(c) + initial) for c in itertools.combinations(range(9), k))
            assert optimum <= greedy <= 2 * optimum + 1e-12


def test_kcenter_ties_and_duplicates():
    line = torch.tensor([[0.0], [2.0], [-2.0], [1.0], [-1.0]])
    # Farthest from the mean (0): 1 and 2 tie -> 1; then 2; then 0 (2 from both); then 3 and 4 tie -> 3.
    assert kcenter_greedy(line, 5) == [1, 2, 0, 3, 4]
    assert kcenter_greedy(line, 2, initial=[0]) == [1, 2]
    same = torch.ones(6, 3)
    assert kcenter_greedy(same, 4) == [0, 1, 2, 3]
    assert kcenter_greedy(same, 10, initial=[0, 2, 2]) == [1, 3, 4, 5]
    assert kcenter_greedy(torch.empty(0, 4), 3) == []


def test_kcenter_memory_is_linear_in_the_points():
    """300k points: an M x M matrix would need 720 GB."""
    features = torch.zeros(300_000, 2)
    features[123_456] = torch.tensor([100.0, 0.0])
    features[7] = torch.tensor([-50.0, 0.0])
    assert kcenter_greedy(features, 2) == [123_456, 7]


# --- score_pool and select_from_pool on a small model ----------------------------------------------------------

POOL = 11
CLASSES = 4


class TinyNet(nn.Module):
    """Conv + BatchNorm + Dropout2d + 1x1 head: every mode-dependent layer the scorers must handle."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.3))
        self.head = nn.Conv2d(8, CLASSES, 1)

    def forward(self, x):
        return self.head(self.body(x))


def _model():
    model = TinyNet()
    with torch.no_grad():
        model.body[1].running_mean.normal_(0, 0.3)
        model.body[1].running_var.uniform_(0.5, 2.0)
    return model.train()  # score_pool must switch it to eval and back


def _pool():
    return torch.randn(POOL, 3, 7, 9)


def _loader(images, batch_size, shuffle_seed=None, first_index=100):
    """A DataLoader over (image, pool index) pairs; pool indices start at `first_index`."""
    indices = torch.arange(first_index, first_index + images.shape[0])
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(
        TensorDataset(images, indices), batch_size=batch_size, shuffle=generator is not None, generator=generator
    )


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def _assert_same_state(model, state):
    tensors, flags = state
    assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags


def _close_dicts(got, expected, rtol=1e-5, atol=1e-6):
    assert list(sorted(got)) == list(sorted(expected))
    torch.testing.assert_close(
        torch.tensor([got[i] for i in sorted(got)], dtype=torch.float64),
        torch.tensor([expected[i] for i in sorted(expected)], dtype=torch.float64),
        rtol=rtol,
        atol=atol,
    )


@pytest.mark.parametrize("method", LOGIT_METHODS)
@pytest.mark.parametrize("reduction", ["mean", "topk_mean"])
def test_score_pool_equals_scoring_the_whole_pool_at_once(method, reduction, seed):
    model, images = _model(), _pool()
    state = _state(model)
    got = score_pool(model, _loader(images, 3, shuffle_seed=seed), method, reduction=reduction, q=0.25, progress=False)
    _assert_same_state(model, state)
    assert list(got) != sorted(got)  # shuffled: the dict follows the loader's order
    with torch.no_grad():
        expected = image_scores(method, logits=model.eval()(images), reduction=reduction, q=0.25)
    _close_dicts(got, dict(zip(range(100, 100 + POOL), expected.tolist())))


def test_score_pool_noise_stability_uses_the_same_perturbed_models_for_every_batch(seed):
    model, images = _model(), _pool()
    state = _state(model)
    got = score_pool(model, _loader(images, 4), "noise_stability", num_samples=3, eta=0.05, seed=seed, progress=False)
    _assert_same_state(model, state)
    _, _, ns = uaal_ext.KernelNoise(eta=0.05, num_samples=3, seed=seed).scores(model.eval(), images)
    _close_dicts(got, dict(zip(range(100, 100 + POOL), ns.mean(dim=(1, 2)).tolist())), rtol=1e-4)
    other = score_pool(
        model.train(), _loader(images, POOL), "noise_stability", num_samples=3, eta=0.05, seed=seed + 1, progress=False
    )
    assert all(abs(other[i] - got[i]) > 1e-7 for i in got)  # another seed, other perturbations


@pytest.mark.parametrize("method", ["random", "mc_entropy", "bald"])
def test_stochastic_scores_do_not_depend_on_batches(method, seed):
    model, images = _model(), _pool()
    state = _state(model)
    options = dict(num_samples=4, seed=seed, progress=False)
    one_batch = score_pool(model, _loader(images, POOL), method, **options)
    for batch_size, shuffle in ((1, None), (4, seed)):
        _close_dicts(score_pool(model, _loader(images, batch_size, shuffle), method, **options), one_batch)
    _assert_same_state(model, state)
    assert one_batch == score_pool(model, _loader(images, POOL), method, **options)  # deterministic
    reseeded = score_pool(model, _loader(images, POOL), method, **{**options, "seed": seed + 1})
    assert all(reseeded[i] != one_batch[i] for i in one_batch)
    values = torch.tensor(list(one_batch.values()))
    assert (values >= 0).all() and len(set(values.tolist())) == POOL
    if method == "random":
        assert (values < 1).all()
    else:  # dropout was active: MC entropy differs from the deterministic prediction's entropy
        entropy = score_pool(model, _loader(images, POOL), "entropy", progress=False)
        assert all(abs(one_batch[i] - entropy[i]) > 1e-6 for i in one_batch)


def test_score_pool_accepts_dict_and_list_batches(seed):
    model, images = _model(), _pool()
    batches = [{"image": images[:5], "index": torch.arange(5)}, {"image": images[5:], "index": torch.arange(5, POOL)}]
    tuples = [(images[:6], list(range(6))), (images[6:], list(range(6, POOL)))]
    by_dict = score_pool(model, batches, "margin", progress=False)
    by_list = score_pool(model, tuples, "margin", progress=False)
    _close_dicts(by_dict, by_list)
    assert sorted(by_dict) == list(range(POOL))


def test_score_pool_progress_bar(capsys, seed):
    score_pool(_model(), _loader(_pool(), 4), "entropy", progress=True)
    assert "scoring (entropy)" in capsys.readouterr().err
    score_pool(_model(), _loader(_pool(), 4), "entropy", progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("method", ["entropy", "least_confidence", "bald", "random"])
def test_select_from_pool_with_scores(method, seed):
    model, images = _model(), _pool()
    options = dict(num_samples=3, seed=seed, progress=False)
    labeled = [101, 104, 110]
    picked = select_from_pool(model, _loader(images, 4), method, 5, exclude=labeled, **options)
    expected = select(score_pool(model, _loader(images, 4), method, **options), 5, exclude=labeled)
    assert picked == expected and len(picked) == 5 and not set(picked) & set(labeled)
    assert select_from_pool(model, _loader(images, 4), method, 50, exclude=labeled, **options) == select(
        score_pool(model, _loader(images, 4), method, **options), 50, exclude=labeled
    )


def _kcenter_expected(model, images, k, initial, eta, num_samples, seed, grid=4):
    """pooled_deviations under KernelNoise's first-call weights, then kcenter_greedy, by hand."""
    model.eval()
    perturbed = uaal_ext.KernelNoise(eta=eta, num_samples=num_samples, seed=seed).perturbed_parameters(model)
    with torch.no_grad():
        clean = model(images)
        outputs = torch.stack(
            [functional_call(model, {n: w[i] for n, w in perturbed.items()}, (images,)) for i in range(num_samples)]
        )
    return clean, outputs, kcenter_greedy(pooled_deviations(clean, outputs, grid=grid), k, initial=initial)


def test_select_from_pool_kcenter(seed):
    model, images = _model(), _pool()
    state = _state(model)
    options = dict(num_samples=3, eta=0.1, seed=seed, progress=False)
    labeled = [102, 107]
    picked = select_from_pool(model, _loader(images, 4), "noise_stability_kcenter", 4, exclude=labeled, **options)
    _assert_same_state(model, state)
    shuffled = select_from_pool(
        model, _loader(images, 3, seed), "noise_stability_kcenter", 4, exclude=labeled, **options
    )
    assert picked == shuffled  # batch size and order do not matter
    clean, outputs, expected = _kcenter_expected(model, images, 4, [2, 7], 0.1, 3, seed)
    model.train()
    assert picked == [100 + i for i in expected] and not set(picked) & set(labeled)
    # The perturbed models are those "noise_stability" scores with.
    ns = uaal_ext.perturbation_statistics(clean, outputs)[1].mean(dim=(1, 2))
    scores = score_pool(model, _loader(images, 4), "noise_stability", **options)
    _close_dicts(scores, dict(zip(range(100, 100 + POOL), ns.tolist())), rtol=1e-4)
    # Without labeled images in the loader: no initial centre; k > pool: everything.
    everything = select_from_pool(model, _loader(images, 5), "noise_stability_kcenter", 50, **options)
    assert sorted(everything) == list(range(100, 100 + POOL))
    assert everything[:4] == [100 + i for i in _kcenter_expected(model, images, 4, [], 0.1, 3, seed)[2]]
    model.train()


# --- Bad inputs ------------------------------------------------------------------------------------------------


def _x(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


def _shape(*sizes):
    """A shape as a message may print it: [2, 4, 7], (2, 4, 7) or torch.Size([2, 4, 7])."""
    return r"[\[(]" + r",\s*".join(map(str, sizes)) + r",?[\])]"


# (id, call, exception type, regex naming the argument, regexes the message must also show)
BAD_INPUTS = [
    ("unknown-method", lambda: image_scores("entropyy", logits=_x(2, 3)), ValueError, "method", ["entropyy"]),
    ("missing-logits", lambda: image_scores("entropy", mc_logits=_x(2, 2, 3)), ValueError, "logits", ["missing"]),
    ("missing-mc", lambda: pixel_scores("bald"), ValueError, "mc_logits", []),
    (
        "extra-mc",
        lambda: pixel_scores("margin", logits=_x(2, 3), mc_logits=_x(1, 2, 3)),
        ValueError,
        "mc_logits",
        ["not used"],
    ),
    (
        "ns-missing-perturbed",
        lambda: pixel_scores("noise_stability", logits=_x(2, 3)),
        ValueError,
        "perturbed_logits",
        [],
    ),
    (
        "ns-shape",
        lambda: pixel_scores("noise_stability", logits=_x(2, 3, 4), perturbed_logits=_x(2, 2, 3, 5)),
        ValueError,
        "perturbed_logits",
        [_shape(2, 2, 3, 5)],
    ),
    (
        "ns-dtype",
        lambda: pixel_scores("noise_stability", logits=_x(2, 3), perturbed_logits=_x(2, 2, 3, dtype=torch.float64)),
        TypeError,
        "perturbed_logits",
        [],
    ),
    ("logits-1d", lambda: pixel_scores("entropy", logits=_x(5)), ValueError, "logits", [_shape(5)]),
    ("logits-C0", lambda: pixel_scores("entropy", logits=_x(2, 0, 3)), ValueError, "logits", [_shape(2, 0, 3)]),
    (
        "logits-int",
        lambda: pixel_scores("entropy", logits=torch.ones(2, 3, dtype=torch.int64)),
        TypeError,
        "logits",
        ["int64"],
    ),
    ("mc-2d", lambda: pixel_scores("mc_entropy", mc_logits=_x(2, 3)), ValueError, "mc_logits", [_shape(2, 3)]),
    ("mc-T0", lambda: pixel_scores("bald", mc_logits=_x(0, 2, 3)), ValueError, "mc_logits", [_shape(0, 2, 3)]),
    ("pixel-random", lambda: pixel_scores("random", logits=_x(2, 3)), ValueError, "random", ["image_scores"]),
    (
        "kcenter-score",
        lambda: image_scores("noise_stability_kcenter", logits=_x(2, 3)),
        ValueError,
        "noise_stability_kcenter",
        ["select_from_pool"],
    ),
    ("random-no-input", lambda: image_scores("random"), ValueError, "logits", []),
    (
        "random-seed-and-generator",
        lambda: image_scores("random", logits=_x(2, 3), seed=1, generator=torch.Generator()),
        ValueError,
        "generator",
        [],
    ),
    ("seed-not-random", lambda: image_scores("entropy", logits=_x(2, 3), seed=1), ValueError, "seed", []),
    (
        "mask-shape",
        lambda: image_scores("entropy", logits=_x(2, 3, 4, 5), ignore_mask=torch.zeros(2, 5, 4, dtype=torch.bool)),
        ValueError,
        "ignore_mask",
        [_shape(2, 5, 4), _shape(2, 4, 5)],
    ),
    (
        "mask-dtype",
        lambda: image_scores("entropy", logits=_x(2, 3, 4), ignore_mask=torch.zeros(2, 4)),
        TypeError,
        "ignore_mask",
        ["float32"],
    ),
    (
        "labels-no-index",
        lambda: image_scores("entropy", logits=_x(2, 3, 4), labels=torch.zeros(2, 4, dtype=torch.long)),
        ValueError,
        "ignore_index",
        [],
    ),
    (
        "labels-and-mask",
        lambda: image_scores(
            "entropy",
            logits=_x(2, 3, 4),
            labels=torch.zeros(2, 4, dtype=torch.long),
            ignore_index=255,
            ignore_mask=torch.zeros(2, 4, dtype=torch.bool),
        ),
        ValueError,
        "ignore_mask",
        [],
    ),
    (
        "labels-shape",
        lambda: image_scores(
            "entropy", logits=_x(2, 3, 4), labels=torch.zeros(2, 5, dtype=torch.long), ignore_index=255
        ),
        ValueError,
        "labels",
        [_shape(2, 5)],
    ),
    (
        "reduction",
        lambda: image_scores("entropy", logits=_x(2, 3), reduction="median"),
        ValueError,
        "reduction",
        ["median"],
    ),
    (
        "q-zero",
        lambda: image_scores("entropy", logits=_x(2, 3), reduction="topk_mean", q=0.0),
        ValueError,
        r"\bq\b",
        [],
    ),
    (
        "q-above-one",
        lambda: image_scores("entropy", logits=_x(2, 3), reduction="topk_mean", q=1.5),
        ValueError,
        r"\bq\b",
        ["1.5"],
    ),
    (
        "q-nan",
        lambda: image_scores("entropy", logits=_x(2, 3), reduction="topk_mean", q=float("nan")),
        ValueError,
        r"\bq\b",
        [],
    ),
    ("select-k-negative", lambda: select(torch.rand(4), -1), ValueError, r"\bk\b", ["-1"]),
    ("select-k-float", lambda: select(torch.rand(4), 2.0), ValueError, r"\bk\b", []),
    ("select-2d", lambda: select(torch.rand(2, 2), 1), ValueError, "scores", [_shape(2, 2)]),
    ("select-list", lambda: select([0.1, 0.2], 1), TypeError, "scores", []),
    ("kcenter-1d", lambda: kcenter_greedy(torch.rand(5), 2), ValueError, "features", [_shape(5)]),
    ("kcenter-int", lambda: kcenter_greedy(torch.ones(5, 2, dtype=torch.long), 2), TypeError, "features", []),
    ("kcenter-initial", lambda: kcenter_greedy(torch.rand(5, 2), 2, initial=[1, 5]), ValueError, "initial", ["5"]),
    ("kcenter-nan", lambda: kcenter_greedy(torch.full((3, 2), float("nan")), 2), ValueError, "features", []),
    ("kcenter-k", lambda: kcenter_greedy(torch.rand(5, 2), -2), ValueError, r"\bk\b", []),
    (
        "pooled-shape",
        lambda: pooled_deviations(_x(2, 3, 4, 4), _x(2, 2, 3, 4, 5)),
        ValueError,
        "perturbed_logits",
        ["clean_logits", _shape(2, 2, 3, 4, 5)],
    ),
    ("pooled-clean-1d", lambda: pooled_deviations(_x(3), _x(2, 3)), ValueError, "clean_logits", [_shape(3)]),
    ("grid", lambda: pooled_deviations(_x(2, 3, 4, 4), _x(2, 2, 3, 4, 4), grid=(2, 2, 2)), ValueError, "grid", []),
    (
        "pool-method",
        lambda: score_pool(_model(), [], "noise_stability_kcenter", progress=False),
        ValueError,
        "select_from_pool",
        [],
    ),
    (
        "pool-num-samples",
        lambda: score_pool(_model(), [], "bald", num_samples=0, progress=False),
        ValueError,
        "num_samples",
        [],
    ),
    ("pool-seed", lambda: score_pool(_model(), [], "random", seed=-1, progress=False), ValueError, "seed", []),
    ("pool-batch", lambda: score_pool(_model(), [_x(2, 3, 5, 5)], "entropy", progress=False), TypeError, "indices", []),
    (
        "pool-lengths",
        lambda: score_pool(_model(), [(_x(2, 3, 5, 5), [0, 1, 2])], "entropy", progress=False),
        ValueError,
        "indices",
        ["2 images", "3"],
    ),
    (
        "pool-twice",
        lambda: score_pool(_model(), [(_x(2, 3, 5, 5), [0, 1]), (_x(1, 3, 5, 5), [1])], "entropy", progress=False),
        ValueError,
        "twice",
        ["1"],
    ),
    (
        "pool-no-dropout",
        lambda: score_pool(nn.Conv2d(3, 2, 1), [(_x(2, 3, 5, 5), [0, 1])], "bald", progress=False),
        ValueError,
        "dropout",
        [],
    ),
    ("pool-k", lambda: select_from_pool(_model(), [], "entropy", -3, progress=False), ValueError, r"\bk\b", []),
]


@pytest.mark.parametrize("call,exc,arg,shown", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(call, exc, arg, shown):
    assert_raises_naming(call, exc, arg, shown)


def test_raw_ops_name_the_argument():
    with pytest.raises(ValueError, match="method"):
        ops.pixel_scores(_x(2, 3, 4), "entropyy")
    with pytest.raises(ValueError, match="input"):
        ops.pixel_scores(_x(5), "entropy")
    with pytest.raises(ValueError, match="input"):
        ops.pixel_scores(_x(2, 3), "bald")  # MC methods need (T, N, C, ...)
    with pytest.raises(ValueError, match="reduction"):
        ops.aggregate_scores(_x(2, 3), None, "median", 0.5)
    with pytest.raises(ValueError, match=r"\bq\b"):
        ops.aggregate_scores(_x(2, 3), None, "topk_mean", 0.0)
    with pytest.raises(ValueError, match="valid"):
        ops.aggregate_scores(_x(2, 3), torch.ones(2, 4, dtype=torch.bool), "mean", 0.5)
