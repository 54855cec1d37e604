"""Acquisition: which unlabeled images to annotate next (SPEC 2, "Acquisition scores").

Score methods give every image one number, and **a higher score always means a more informative
image**; :func:`select` then takes the top ``k``. Per pixel (``p = softmax`` over classes):

- ``"random"``: a uniform number in [0, 1) per image, from a seeded generator (no pixel map);
- ``"entropy"``: ``H = -sum_c p_c log p_c`` (natural log);
- ``"margin"``: ``1 - (p_top1 - p_top2)``;
- ``"least_confidence"``: ``1 - p_top1``;
- ``"mc_entropy"``: ``H(mean_t p_t)`` over T MC-Dropout samples;
- ``"bald"``: ``H(mean_t p_t) - mean_t H(p_t)`` (mutual information, >= 0);
- ``"noise_stability"``: ``ns = mean_k ||p_k - p|| / ||p||`` over K kernel-noise passes
  (:func:`uaal_ext.perturbation_statistics`);
- ``"noise_stability_kcenter"``: the diversity variant of Noise Stability. It has no score: images
  are chosen by greedy k-center (:func:`kcenter_greedy`) on their pooled deviation vectors
  (:func:`pooled_deviations`), as the original method selects; use :func:`select_from_pool`.

Shapes: ``logits (N, C, *spatial)`` or ``(N, C)``; ``mc_logits (T, N, C, *spatial)``;
``perturbed_logits (K, N, C, *spatial)``; pixel maps ``(N, *spatial)``; image scores ``(N,)``.
An image's score aggregates its valid pixels (``ignore_mask`` False) with ``"mean"`` (default),
``"sum"``, ``"max"`` or ``"topk_mean"`` (the mean of its top fraction ``q`` of valid pixels); an
image without a valid pixel scores 0, the least informative value.

Ranking is deterministic: ties go to the lower index, NaN scores rank last.

From a model and a loader over the pool::

    picked = select_from_pool(model, loader, "entropy", k=100, exclude=labeled)   # pool indices
    scores = score_pool(model, loader, "bald", num_samples=10, seed=0)            # {index: score}

The per-pixel maps and the aggregation are the fused ops ``torch.ops.uaal_ext.pixel_scores`` and
``torch.ops.uaal_ext.aggregate_scores``; ``uaal_ext.reference`` holds their plain-PyTorch reference.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from . import _ops  # noqa: F401  (fake kernels of the ops)
from .perturbation import perturbation_statistics
from .uncertainty import KernelNoise, MCDropout

__all__ = [
    "METHODS",
    "SCORE_METHODS",
    "REDUCTIONS",
    "pixel_scores",
    "image_scores",
    "select",
    "kcenter_greedy",
    "pooled_deviations",
    "score_pool",
    "select_from_pool",
]

METHODS = (
    "random",
    "entropy",
    "margin",
    "least_confidence",
    "mc_entropy",
    "bald",
    "noise_stability",
    "noise_stability_kcenter",
)
#: The methods that give each image a score (all but the diversity method).
SCORE_METHODS = METHODS[:-1]
REDUCTIONS = ("mean", "sum", "max", "topk_mean")

# The tensors each method reads; "random" reads any one of them, only for N and the pixel shape.
_INPUTS = {
    "entropy": ("logits",),
    "margin": ("logits",),
    "least_confidence": ("logits",),
    "mc_entropy": ("mc_logits",),
    "bald": ("mc_logits",),
    "noise_stability": ("logits", "perturbed_logits"),
}
_LAYOUTS = {
    "logits": "(N, C, *spatial)",
    "clean_logits": "(N, C, *spatial)",
    "mc_logits": "(T, N, C, *spatial)",
    "perturbed_logits": "(K, N, C, *spatial)",
}
_DEFAULT_SAMPLES = {"mc_entropy": 10, "bald": 10, "noise_stability": 5, "noise_stability_kcenter": 5}
_MASK64 = 2**64 - 1


# ---------------------------------------------------------------------------------------------------
# Argument checks


def _check_method(method: object, allowed: Sequence[str] = METHODS) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method not in allowed:
        if method == "random":
            raise ValueError(
                "method='random' has no per-pixel map: it scores whole images; use image_scores('random', ...)"
            )
        if method == "noise_stability_kcenter":
            raise ValueError(
                "method='noise_stability_kcenter' selects by diversity (greedy k-center on pooled deviation "
                "vectors) and gives no per-image score; use select_from_pool(..., 'noise_stability_kcenter') "
                "or kcenter_greedy(pooled_deviations(...)), or method='noise_stability' for the score"
            )
        raise ValueError(f"method={method!r} is not supported here; choose one of {tuple(allowed)}")


def _check_reduction(reduction: object, q: object) -> float:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise ValueError(f"q must be a number in (0, 1] (the top fraction for 'topk_mean'), got {q!r}")
    return float(q)


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    return k


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def _check_tensor(name: str, value: object, min_dim: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor {_LAYOUTS[name]}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be floating point {_LAYOUTS[name]}, got dtype {value.dtype}")
    if value.dim() < min_dim or value.shape[min_dim - 1] == 0 or (min_dim == 3 and value.shape[0] == 0):
        raise ValueError(
            f"{name} must be {_LAYOUTS[name]} with at least one class"
            f"{' and one sample' if min_dim == 3 else ''}, got shape {tuple(value.shape)}"
        )
    return value


def _check_perturbed(perturbed: Tensor, clean: Tensor, clean_name: str) -> None:
    if perturbed.shape[1:] != clean.shape:
        raise ValueError(
            f"perturbed_logits must be (K, *{clean_name}.shape) = (K, {', '.join(map(str, clean.shape))}), "
            f"got shape {tuple(perturbed.shape)}"
        )
    if perturbed.dtype != clean.dtype:
        raise TypeError(f"perturbed_logits must have the dtype of {clean_name} ({clean.dtype}), got {perturbed.dtype}")
    if perturbed.device != clean.device:
        raise ValueError(f"perturbed_logits is on {perturbed.device} but {clean_name} on {clean.device}")


def _pixel_shape(name: str, value: Tensor) -> tuple[int, ...]:
    """The ``(N, *spatial)`` shape of the score map that ``value`` (an input named ``name``) gives."""
    if name == "logits":
        return (value.shape[0], *value.shape[2:])
    return (value.shape[1], *value.shape[3:])


def _check_inputs(method: str, inputs: Mapping[str, Optional[Tensor]]) -> tuple[int, ...]:
    """Checks that ``method`` gets exactly the tensors it reads; returns the pixel shape."""
    given = [name for name, value in inputs.items() if value is not None]
    if method == "random":
        if not given:
            raise ValueError(
                "method='random' needs one of logits=, mc_logits= or perturbed_logits= to know the number of "
                "images N (and the pixel shape of an ignore mask)"
            )
    else:
        needed = _INPUTS[method]
        for name in needed:
            if inputs[name] is None:
                raise ValueError(f"method={method!r} needs {name}= {_LAYOUTS[name]}; it is missing")
        for name in given:
            if name not in needed:
                raise ValueError(
                    f"{name} is not used by method={method!r}, which reads {', '.join(needed)}; leave {name} out"
                )
    shape: Optional[tuple[int, ...]] = None
    first = ""
    for name in given:
        value = _check_tensor(name, inputs[name], 2 if name == "logits" else 3)
        if name == "perturbed_logits" and inputs["logits"] is not None:
            _check_perturbed(value, inputs["logits"], "logits")
        this = _pixel_shape(name, value)
        if shape is None:
            shape, first = this, name
        elif this != shape:
            raise ValueError(
                f"{name} gives score maps of shape {this} but {first} gives {shape}; they must describe the same images"
            )
    assert shape is not None
    return shape


def _valid_mask(
    ignore_mask: Optional[Tensor],
    labels: Optional[Tensor],
    ignore_index: Optional[int],
    shape: tuple[int, ...],
    device: torch.device,
) -> Optional[Tensor]:
    """``~ignore_mask`` (or ``labels != ignore_index``) after checking it, or None when all pixels count."""
    if labels is not None:
        if ignore_mask is not None:
            raise ValueError("give either ignore_mask or labels= with ignore_index=, not both")
        if ignore_index is None or isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"labels= needs ignore_index= (an int, e.g. 255), got ignore_index={ignore_index!r}")
        integer = isinstance(labels, Tensor) and not (labels.is_floating_point() or labels.is_complex())
        if not integer or labels.dtype == torch.bool:
            got = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
            raise TypeError(f"labels must be an integer tensor (N, *spatial), got {got}")
        name, ignored = "labels", labels == ignore_index
    elif ignore_index is not None:
        raise ValueError("ignore_index= is only used with labels=; pass labels too, or an ignore_mask")
    elif ignore_mask is None:
        return None
    else:
        if not isinstance(ignore_mask, Tensor) or ignore_mask.dtype != torch.bool:
            got = f"dtype {ignore_mask.dtype}" if isinstance(ignore_mask, Tensor) else type(ignore_mask).__name__
            raise TypeError(f"ignore_mask must be a bool tensor (N, *spatial), True = ignored pixel; got {got}")
        name, ignored = "ignore_mask", ignore_mask
    if tuple(ignored.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the score map's shape (N, *spatial) = {tuple(shape)}, got {tuple(ignored.shape)}"
        )
    if ignored.device != device:
        raise ValueError(f"{name} is on {ignored.device} but the scores on {device}")
    return ~ignored


# ---------------------------------------------------------------------------------------------------
# Scores of given predictions


def pixel_scores(
    method: str,
    *,
    logits: Optional[Tensor] = None,
    mc_logits: Optional[Tensor] = None,
    perturbed_logits: Optional[Tensor] = None,
) -> Tensor:
    """Per-pixel acquisition scores ``(N, *spatial)``; higher = more informative.

    Each method reads exactly its inputs: ``logits`` for ``"entropy"``, ``"margin"`` and
    ``"least_confidence"``; ``mc_logits`` (T MC-Dropout samples) for ``"mc_entropy"`` and ``"bald"``;
    ``logits`` (the clean pass) and ``perturbed_logits`` (K kernel-noise passes) for
    ``"noise_stability"``. ``"random"`` and ``"noise_stability_kcenter"`` have no pixel map.

    Args:
        logits: ``(N, C, *spatial)`` or ``(N, C)``; float64, float32, float16 or bfloat16, any strides.
        mc_logits: ``(T, N, C, *spatial)``, T >= 1.
        perturbed_logits: ``(K, *logits.shape)``, K >= 1, the dtype and device of ``logits``.

    Returns:
        float64 for float64 input, else float32; never requires grad. A NaN logit gives NaN at its
        pixel; ``-inf`` logits are classes of probability 0.

    Raises:
        ValueError naming the missing or unused argument, or the one of the wrong shape.
    """
    _check_method(method, tuple(_INPUTS))
    _check_inputs(method, {"logits": logits, "mc_logits": mc_logits, "perturbed_logits": perturbed_logits})
    if method == "noise_stability":
        return perturbation_statistics(logits, perturbed_logits)[1]
    return _pixel_map(logits if mc_logits is None else mc_logits, method)


def image_scores(
    method: str,
    *,
    logits: Optional[Tensor] = None,
    mc_logits: Optional[Tensor] = None,
    perturbed_logits: Optional[Tensor] = None,
    ignore_mask: Optional[Tensor] = None,
    labels: Optional[Tensor] = None,
    ignore_index: Optional[int] = None,
    reduction: str = "mean",
    q: float = 0.1,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
) -> Tensor:
    """One score per image ``(N,)``: :func:`pixel_scores` aggregated over each image's valid pixels.

    Args:
        method: one of :data:`SCORE_METHODS`; inputs as for :func:`pixel_scores`. ``"random"``
            accepts any one (or several agreeing) of them, only for N and the pixel shape.
        ignore_mask: bool ``(N, *spatial)``, True = the pixel is ignored (never changes a score).
        labels, ignore_index: alternatively, a label map ``(N, *spatial)``; pixels equal to
            ``ignore_index`` are ignored (``ignore_mask = labels == ignore_index``).
        reduction: ``"mean"`` (default), ``"sum"``, ``"max"`` or ``"topk_mean"``, the mean of the
            ``ceil(q * n)`` (at least 1) highest of an image's n valid pixel scores.
        q: the fraction for ``"topk_mean"``, in (0, 1] (checked for every reduction).
        generator, seed: ``"random"`` only: draws from ``generator``, else from a fresh generator
            seeded with ``seed`` (default 0), so a call without either is reproducible.

    Returns:
        ``(N,)``, float64 for float64 input, else float32. An image without a valid pixel gets 0
        (every method, ``"random"`` included); one with a NaN among its valid pixels gets NaN.

    ``"noise_stability_kcenter"`` raises ValueError: it selects by diversity and has no score
    (:func:`select_from_pool`, :func:`kcenter_greedy`).
    """
    _check_method(method, SCORE_METHODS)
    q = _check_reduction(reduction, q)
    inputs = {"logits": logits, "mc_logits": mc_logits, "perturbed_logits": perturbed_logits}
    shape = _check_inputs(method, inputs)
    source = next(value for value in inputs.values() if value is not None)
    valid = _valid_mask(ignore_mask, labels, ignore_index, shape, source.device)
    if method != "random":
        if generator is not None or seed is not None:
            raise ValueError(f"generator= and seed= are only used by method='random', not {method!r}")
        return _aggregate(pixel_scores(method, **inputs), valid, reduction, q)
    if generator is not None and seed is not None:
        raise ValueError("give either generator= or seed= for method='random', not both")
    if generator is None:
        generator = torch.Generator().manual_seed(_check_seed(0 if seed is None else seed))
    dtype = torch.float64 if source.dtype == torch.float64 else torch.float32
    scores = torch.rand(shape[0], generator=generator, dtype=dtype, device=generator.device).to(source.device)
    if valid is not None:
        any_valid = valid.reshape(shape[0], math.prod(shape[1:])).any(dim=1)
        scores = torch.where(any_valid, scores, torch.zeros_like(scores))
    return scores


def _pixel_map(input: Tensor, method: str) -> Tensor:
    return torch.ops.uaal_ext.pixel_scores(input, method)


def _aggregate(scores: Tensor, valid: Optional[Tensor], reduction: str, q: float) -> Tensor:
    return torch.ops.uaal_ext.aggregate_scores(scores, valid, reduction, q)


# ---------------------------------------------------------------------------------------------------
# Selection


def select(scores: Union[Tensor, Mapping[int, float]], k: int, *, exclude: Iterable[int] = ()) -> list[int]:
    """The ``k`` most informative images, best first.

    Args:
        scores: a 1-D tensor (an image's index is its position) or ``{pool index: score}`` (then the
            pool indices are returned).
        k: how many to pick, >= 0; more than are available returns all of them.
        exclude: indices never returned (e.g. the labeled set); indices not in ``scores`` are ignored.

    Returns:
        Indices by descending score; equal scores in ascending index order; NaN scores rank after
        every number (``-inf`` included), among themselves by index. The same scores and ``k`` give the
        same list whatever the order of a dict.
    """
    k = _check_k(k)
    if isinstance(scores, Tensor):
        if scores.dim() != 1 or scores.is_complex() or scores.dtype == torch.bool:
            raise ValueError(f"scores must be a 1-D real tensor or a dict {{index: score}}, got shape "
                             f"{tuple(scores.shape)} and dtype {scores.dtype}")
        values = scores.detach().cpu().double()
        indices = torch.arange(values.numel())
    elif isinstance(scores, Mapping):
        keys = sorted(scores)
        if any(isinstance(key, bool) or not isinstance(key, int) for key in keys):
            raise TypeError("scores must map int pool indices to scores")
        indices = torch.tensor(keys, dtype=torch.int64)
        values = torch.tensor([float(scores[key]) for key in keys], dtype=torch.float64)
    else:
        raise TypeError(f"scores must be a 1-D tensor or a dict {{index: score}}, got {type(scores).__name__}")
    excluded = {int(i) for i in exclude}
    if excluded:
        keep = torch.tensor([int(i) not in excluded for i in indices.tolist()], dtype=torch.bool)
        indices, values = indices[keep], values[keep]
    # indices ascend here; two stable sorts then order by (NaN last, score descending, index ascending).
    nan = values.isnan()
    order = torch.sort(values.masked_fill(nan, float("-inf")), descending=True, stable=True).indices
    order = order[torch.sort(nan[order].to(torch.uint8), stable=True).indices]
    return indices[order[:k]].tolist()


def _squared_distances(features: Tensor, centre: Tensor) -> Tensor:
    """``||features_i - centre||^2`` for every row, in float64, a bounded block of rows at a time."""
    rows = max(1, 2**20 // max(1, features.shape[1]))  # at most ~1M float64 temporaries
    centre = centre.to(torch.float64)
    out = torch.empty(features.shape[0], dtype=torch.float64, device=features.device)
    for start in range(0, features.shape[0], rows):
        block = features[start : start + rows].to(torch.float64) - centre
        out[start : start + rows] = block.square().sum(dim=1)
    return out


def kcenter_greedy(features: Tensor, k: int, *, initial: Optional[Iterable[int]] = None) -> list[int]:
    """Greedy k-center (farthest-first traversal): ``k`` rows of ``features`` that cover the rest.

    Each step takes the point farthest (Euclidean) from its nearest centre so far; the chosen set's
    covering radius is within a factor 2 of the best possible (Gonzalez 1985), the selection of
    Core-Set (Sener & Savarese 2018) and of the Noise Stability diversity variant.

    Args:
        features: ``(M, D)`` floating, finite.
        k: how many centres to choose, >= 0; more than the ``M - len(initial)`` available returns all.
        initial: indices of centres already chosen (e.g. the labeled images); they are never
            returned. Without any, the first centre is the point farthest from the mean of
            ``features``.

    Returns:
        Row indices in the order chosen; ties go to the lower index. Deterministic.

    Memory: one float64 vector of M nearest-centre distances (no M x M matrix), plus a bounded
    block of rows while distances to a new centre are computed; distances are computed in float64.
    """
    if not isinstance(features, Tensor) or not features.is_floating_point():
        got = f"dtype {features.dtype}" if isinstance(features, Tensor) else type(features).__name__
        raise TypeError(f"features must be a floating-point tensor (M, D), got {got}")
    if features.dim() != 2:
        raise ValueError(f"features must be (M, D), got shape {tuple(features.shape)}")
    k = _check_k(k)
    num_points = features.shape[0]
    starts = [] if initial is None else initial.tolist() if isinstance(initial, Tensor) else list(initial)
    bad = [i for i in starts if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_points]
    if bad:
        raise ValueError(f"initial must hold row indices in [0, {num_points}), got {bad[:5]}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite (a NaN or inf row has no distance)")
    features = features.detach()
    nearest = torch.full((num_points,), float("inf"), dtype=torch.float64, device=features.device)
    taken = sorted(set(starts))
    for centre in taken:
        torch.minimum(nearest, _squared_distances(features, features[centre]), out=nearest)
    nearest[taken] = -1.0  # below every distance: never picked again
    budget = min(k, num_points - len(taken))
    chosen: list[int] = []
    if budget > 0 and not taken:
        mean = features.sum(dim=0, dtype=torch.float64) / num_points
        first = int(torch.argmax(_squared_distances(features, mean)))
        nearest = _squared_distances(features, features[first])
        nearest[first] = -1.0
        chosen.append(first)
    while len(chosen) < budget:
        centre = int(torch.argmax(nearest))  # the first of equal maxima: the lower index
        torch.minimum(nearest, _squared_distances(features, features[centre]), out=nearest)
        nearest[centre] = -1.0
        chosen.append(centre)
    return chosen


def _grid(grid: Union[int, Sequence[int]], spatial_dims: int) -> tuple[int, ...]:
    sizes = (grid,) * spatial_dims if isinstance(grid, int) and not isinstance(grid, bool) else tuple(grid)
    if len(sizes) != spatial_dims or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(
            f"grid must be an int >= 1 or one int >= 1 per spatial dim ({spatial_dims}), got {grid!r}"
        )
    return sizes


def _pooled_deviation(p: Tensor, logits: Tensor, grid: tuple[int, ...]) -> Tensor:
    """``p_k - p`` averaged over the cells of ``grid``, flattened per image: ``(N, C * prod(grid))``."""
    deviation = torch.softmax(logits.to(p.dtype), dim=1) - p
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    if grid:
        deviation = pool[len(grid)](deviation, grid)
    return deviation.flatten(1)


def pooled_deviations(clean_logits: Tensor, perturbed_logits: Tensor, grid: Union[int, Sequence[int]] = 4) -> Tensor:
    """Noise Stability's diversity features: pooled softmax deviations, concatenated over k.

    With ``p = softmax(clean_logits)`` and ``p_k = softmax(perturbed_logits[k])`` over classes, the
    deviation map ``p_k - p`` ``(N, C, *spatial)`` is adaptive-average-pooled to ``grid`` (a cell
    average per class, so images of any size give vectors of one length) and flattened; the
    features of one image are these K vectors one after the other, ordered ``(k, c, *grid)``. Two
    images whose predictions move alike under the same K weight perturbations lie close together.

    Args:
        clean_logits: ``(N, C, *spatial)`` with 0 to 3 spatial dims (none: nothing to pool).
        perturbed_logits: ``(K, *clean_logits.shape)``, same dtype and device.
        grid: cells per spatial dim: an int for every dim (``4``: a 4 x 4 grid for images), or one
            int per spatial dim.

    Returns:
        ``(N, K * C * prod(grid))``, float64 for float64 logits, else float32; no graph.
    """
    _check_tensor("clean_logits", clean_logits, 2)
    _check_perturbed(_check_tensor("perturbed_logits", perturbed_logits, 3), clean_logits, "clean_logits")
    if clean_logits.dim() > 5:
        raise ValueError(f"clean_logits may have at most 3 spatial dims to pool, got shape {tuple(clean_logits.shape)}")
    sizes = _grid(grid, clean_logits.dim() - 2)
    dtype = torch.float64 if clean_logits.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        p = torch.softmax(clean_logits.to(dtype), dim=1)
        return torch.cat([_pooled_deviation(p, logits, sizes) for logits in perturbed_logits], dim=1)


# ---------------------------------------------------------------------------------------------------
# Scoring a pool with a model


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _image_key(seed: int, index: int) -> int:
    """64 random bits that depend only on ``(seed, pool index)``: not on batch, order or device."""
    return _splitmix64(_splitmix64(seed) ^ (index & _MASK64))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode (running BN statistics, dropout off); each flag restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


def _model_device(model: nn.Module) -> Optional[torch.device]:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device


def _batches(
    loader: Iterable, device: Optional[torch.device], description: str, progress: bool
) -> Iterator[tuple[Tensor, list[int]]]:
    """``(images on the model's device, pool indices)`` per batch of ``loader``, with a progress bar."""
    if progress:
        from tqdm.auto import tqdm  # only needed for the bar

        try:
            total: Optional[int] = len(loader)  # type: ignore[arg-type]
        except TypeError:  # a generator, or a DataLoader over an IterableDataset
            total = None
        loader = tqdm(loader, desc=description, unit="batch", total=total)
    for batch in loader:
        if isinstance(batch, Mapping) and "image" in batch and "index" in batch:
            images, indices = batch["image"], batch["index"]
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            images, indices = batch
        else:
            raise TypeError(
                "the loader must yield (images, indices) pairs or dicts with 'image' and 'index' keys, got "
                f"{type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            )
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() < 1:
            got = f"dtype {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
            raise TypeError(f"the loader's images must be a floating-point tensor (N, ...), got {got}")
        if isinstance(indices, Tensor):
            if indices.dim() != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
                raise TypeError(f"the loader's indices must be a 1-D integer tensor or a list of ints, got "
                                f"shape {tuple(indices.shape)} and dtype {indices.dtype}")
            indices = indices.tolist()
        elif isinstance(indices, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            indices = list(indices)
        else:
            raise TypeError(f"the loader's indices must be a 1-D integer tensor or a list of ints, got {indices!r}")
        if len(indices) != images.shape[0]:
            raise ValueError(f"a batch has {images.shape[0]} images but {len(indices)} indices")
        yield (images if device is None else images.to(device)), indices


def _forward(model: nn.Module, images: Tensor) -> Tensor:
    logits = model(images)
    if not isinstance(logits, Tensor) or logits.dim() < 2 or logits.shape[0] != images.shape[0]:
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return (N, C, *spatial) logits with N = {images.shape[0]}, got {got}")
    return logits


def _record(scores: dict[int, float], indices: list[int], values: list[float]) -> None:
    for index, value in zip(indices, values):
        if index in scores:
            raise ValueError(f"the loader yields pool index {index} twice")
        scores[index] = value


def _check_pool_options(method: str, num_samples: Optional[int], eta: float, seed: int) -> int:
    _check_seed(seed)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if num_samples is None:
        return _DEFAULT_SAMPLES.get(method, 1)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1 or None, got {num_samples!r}")
    return num_samples


def _score_pool(
    model: nn.Module,
    loader: Iterable,
    method: str,
    reduction: str,
    q: float,
    num_samples: int,
    eta: float,
    seed: int,
    progress: bool,
    skip: frozenset[int] = frozenset(),
) -> dict[int, float]:
    """score_pool without the checks; images whose pool index is in ``skip`` are not scored."""
    scores: dict[int, float] = {}
    kernel_noise = KernelNoise(eta=eta, num_samples=num_samples, seed=seed) if method == "noise_stability" else None
    with _eval_mode(model), torch.no_grad():
        for images, indices in _batches(loader, _model_device(model), f"scoring ({method})", progress):
            if skip:
                keep = [j for j, index in enumerate(indices) if index not in skip]
                images, indices = images[keep], [indices[j] for j in keep]
            if not indices:
                continue
            if method == "random":
                values = [(_image_key(seed, index) >> 11) * 2.0**-53 for index in indices]
            elif method in ("mc_entropy", "bald"):
                # One image at a time, its dropout masks seeded by (seed, pool index).
                values = []
                for j, index in enumerate(indices):
                    mc = MCDropout(num_samples=num_samples, seed=_image_key(seed, index) >> 1)
                    maps = _pixel_map(mc(model, images[j : j + 1]), method)
                    values += _aggregate(maps, None, reduction, q).tolist()
            elif method == "noise_stability":
                # The same K perturbed models for every batch: the noise of call 0, every time.
                kernel_noise.load_state_dict({"calls": 0})
                _, _, ns = kernel_noise.scores(model, images)
                values = _aggregate(ns, None, reduction, q).tolist()
            else:
                values = _aggregate(_pixel_map(_forward(model, images), method), None, reduction, q).tolist()
            _record(scores, indices, values)
    return scores


def score_pool(
    model: nn.Module,
    loader: Iterable,
    method: str,
    *,
    reduction: str = "mean",
    q: float = 0.1,
    num_samples: Optional[int] = None,
    eta: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, float]:
    """Scores every image of a pool with ``model``: ``{pool index: score}``, higher = more informative.

    The loader yields ``(images, indices)`` batches (images ``(B, ...)``; indices a 1-D integer
    tensor or a list of B ints, the images' pool indices, each at most once over the loader) or dicts
    with ``"image"`` and ``"index"`` keys. Images move to the device of the model's parameters.

    The model runs in eval mode under ``torch.no_grad`` (batch norm with running statistics, dropout
    off except for MC-Dropout's passes); every module's ``training`` flag is restored afterwards and
    no parameter or buffer changes. Only the scores are kept (memory bounded by one batch); a tqdm
    bar shows progress unless ``progress=False``.

    Scores do not depend on batch size, order or composition (beyond float rounding of the model's
    batched forward):

    - ``"random"``: a uniform in [0, 1) from 64 random bits keyed by ``(seed, pool index)`` (the
      model is not run);
    - ``"mc_entropy"``, ``"bald"``: each image is run on its own, T copies in one forward, with
      dropout masks seeded by ``(seed, pool index)`` (``uaal_ext.MCDropout``);
    - ``"noise_stability"``: every batch sees the same K perturbed models, the noise that
      ``KernelNoise(eta, num_samples, seed)`` draws at its first call;
    - the rest are functions of the model's logits alone.

    Args:
        method: one of :data:`SCORE_METHODS`.
        reduction, q: the aggregation over pixels (:func:`image_scores`); every pixel counts.
        num_samples: T for MC-Dropout (default 10), K for kernel noise (default 5).
        eta: the kernel-noise size (``"noise_stability"``).
        seed: the key of every random draw.
        progress: show a tqdm progress bar.
    """
    _check_method(method, SCORE_METHODS)
    q = _check_reduction(reduction, q)
    num_samples = _check_pool_options(method, num_samples, eta, seed)
    return _score_pool(model, loader, method, reduction, q, num_samples, eta, seed, progress)


def _deviation_features(
    model: nn.Module,
    loader: Iterable,
    num_samples: int,
    eta: float,
    seed: int,
    grid: Union[int, Sequence[int]],
    progress: bool,
) -> tuple[Tensor, list[int]]:
    """:func:`pooled_deviations` of every image in the loader ``(M, F)`` and their pool indices."""
    kernel_noise = KernelNoise(eta=eta, num_samples=num_samples, seed=seed)
    features: list[Tensor] = []
    indices_seen: dict[int, None] = {}
    perturbed: Optional[dict[str, Tensor]] = None
    with _eval_mode(model), torch.no_grad():
        for images, indices in _batches(loader, _model_device(model), "features (noise_stability_kcenter)", progress):
            if perturbed is None:  # the noise of KernelNoise's first call, as "noise_stability" uses
                perturbed = kernel_noise.perturbed_parameters(model)
            clean = _forward(model, images)
            sizes = _grid(grid, clean.dim() - 2)
            dtype = torch.float64 if clean.dtype == torch.float64 else torch.float32
            p = torch.softmax(clean.to(dtype), dim=1)
            # One perturbed pass at a time: only the pooled deviations are kept.
            parts = [
                _pooled_deviation(
                    p, functional_call(model, {name: w[k] for name, w in perturbed.items()}, (images,)), sizes
                )
                for k in range(num_samples)
            ]
            features.append(torch.cat(parts, dim=1))
            for index in indices:
                if index in indices_seen:
                    raise ValueError(f"the loader yields pool index {index} twice")
                indices_seen[index] = None
    if not features:
        return torch.empty(0, 0), []
    return torch.cat(features), list(indices_seen)


def select_from_pool(
    model: nn.Module,
    loader: Iterable,
    method: str,
    k: int,
    *,
    exclude: Iterable[int] = (),
    reduction: str = "mean",
    q: float = 0.1,
    num_samples: Optional[int] = None,
    eta: float = 0.01,
    seed: int = 0,
    grid: Union[int, Sequence[int]] = 4,
    progress: bool = True,
) -> list[int]:
    """The ``k`` pool indices to label next, by ``method`` (any of :data:`METHODS`).

    Score methods: :func:`score_pool` (images in ``exclude`` are skipped, not scored), then
    :func:`select` (best first, ties to the lower index).

    ``"noise_stability_kcenter"``: the :func:`pooled_deviations` (``grid``) of every image the loader
    yields under the K perturbed models of ``"noise_stability"``, then :func:`kcenter_greedy`, with
    the images in ``exclude`` that the loader also yields (the labeled set) as the initial centres;
    labeled images the loader does not yield cannot act as centres, so give it the labeled images
    too for the full method. Returned in the order the greedy traversal picks them.

    The options are those of :func:`score_pool`; ``grid`` is only used by the k-center method.
    """
    _check_method(method)
    k = _check_k(k)
    q = _check_reduction(reduction, q)
    num_samples = _check_pool_options(method, num_samples, eta, seed)
    excluded = frozenset(int(i) for i in exclude)
    if method != "noise_stability_kcenter":
        scores = _score_pool(model, loader, method, reduction, q, num_samples, eta, seed, progress, skip=excluded)
        return select(scores, k, exclude=excluded)
    features, indices = _deviation_features(model, loader, num_samples, eta, seed, grid, progress)
    initial = [position for position, index in enumerate(indices) if index in excluded]
    return [indices[position] for position in kcenter_greedy(features, k, initial=initial)]
