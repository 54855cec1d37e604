"""Choosing images: the top ``k`` by score, greedy k-center on features, and the features and random
keys the built-in methods use. Everything here is deterministic: ties go to the lower index."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_int
from .inputs import check_perturbed, check_tensor

__all__ = ["select", "kcenter_greedy", "pooled_deviations", "image_key"]

_MASK64 = 2**64 - 1


def _check_k(k: object) -> int:
    return check_int("k", k, low=0)


def select(scores: Tensor | Mapping[int, float], k: int, *, exclude: Iterable[int] = ()) -> list[int]:
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
            raise ValueError(
                f"scores must be a 1-D real tensor or a dict {{index: score}}, got shape "
                f"{tuple(scores.shape)} and dtype {scores.dtype}"
            )
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


def kcenter_greedy(features: Tensor, k: int, *, initial: Iterable[int] | None = None) -> list[int]:
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


def _grid(grid: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    sizes = (grid,) * spatial_dims if isinstance(grid, int) and not isinstance(grid, bool) else tuple(grid)
    if len(sizes) != spatial_dims or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"grid must be an int >= 1 or one int >= 1 per spatial dim ({spatial_dims}), got {grid!r}")
    return sizes


def _pooled_deviation(p: Tensor, logits: Tensor, grid: tuple[int, ...]) -> Tensor:
    """``p_k - p`` averaged over the cells of ``grid``, flattened per image: ``(N, C * prod(grid))``."""
    deviation = torch.softmax(logits.to(p.dtype), dim=1) - p
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    if grid:
        deviation = pool[len(grid)](deviation, grid)
    return deviation.flatten(1)


def pooled_deviations(clean_logits: Tensor, perturbed_logits: Tensor, grid: int | Sequence[int] = 4) -> Tensor:
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
    check_tensor("clean_logits", clean_logits, 2)
    check_perturbed(check_tensor("perturbed_logits", perturbed_logits, 3), clean_logits, "clean_logits")
    if clean_logits.dim() > 5:
        raise ValueError(f"clean_logits may have at most 3 spatial dims to pool, got shape {tuple(clean_logits.shape)}")
    sizes = _grid(grid, clean_logits.dim() - 2)
    dtype = torch.float64 if clean_logits.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        p = torch.softmax(clean_logits.to(dtype), dim=1)
        return torch.cat([_pooled_deviation(p, logits, sizes) for logits in perturbed_logits], dim=1)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def image_key(seed: int, index: int) -> int:
    """64 random bits that depend only on ``(seed, pool index)``: not on batch, order or device."""
    return _splitmix64(_splitmix64(seed) ^ (index & _MASK64))
