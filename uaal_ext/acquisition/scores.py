"""Scores of given predictions, by method name: the functional face of the acquisition methods.

Shapes: ``logits (N, C, *spatial)`` or ``(N, C)``; ``mc_logits (T, N, C, *spatial)``;
``perturbed_logits (K, N, C, *spatial)``; pixel maps ``(N, *spatial)``; image scores ``(N,)``. Each
method reads exactly the tensors its passes produce (:class:`~.base.Passes`). An image's score
aggregates its valid pixels (``ignore_mask`` False); an image without a valid pixel scores 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_seed
from .base import AcquisitionMethod, Predictions, make_method, method_class
from .inputs import check_inputs, valid_mask

__all__ = ["pixel_scores", "image_scores"]


def _with_map(method: AcquisitionMethod) -> AcquisitionMethod:
    if not method.has_pixel_map:
        raise ValueError(
            f"method={method.name!r} has no per-pixel map: it scores whole images; "
            f"use image_scores({method.name!r}, ...)"
        )
    return method


def _with_score(method: AcquisitionMethod) -> AcquisitionMethod:
    if not method.ranks_by_score:
        raise ValueError(
            f"method={method.name!r} selects by diversity and gives no per-image score; use "
            f"select_from_pool(..., {method.name!r}), or the features it chooses from "
            f"(image_features of its method object)"
        )
    return method


def pixel_scores(
    method: str,
    *,
    logits: Tensor | None = None,
    mc_logits: Tensor | None = None,
    perturbed_logits: Tensor | None = None,
) -> Tensor:
    """Per-pixel acquisition scores ``(N, *spatial)`` of ``method``; higher = more informative.

    Each method reads exactly its inputs: ``logits`` for ``"entropy"``, ``"margin"`` and
    ``"least_confidence"``; ``mc_logits`` (T MC-Dropout samples) for ``"mc_entropy"`` and ``"bald"``;
    ``logits`` (the clean pass) and ``perturbed_logits`` (K kernel-noise passes) for
    ``"noise_stability"`` (and its k-center variant, whose pixel-wise signal this is). ``"random"``
    has no pixel map.

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
    chosen = _with_map(make_method(method))
    inputs = {"logits": logits, "mc_logits": mc_logits, "perturbed_logits": perturbed_logits}
    check_inputs(chosen, inputs)
    return chosen.pixel_map(Predictions(**inputs))


def image_scores(
    method: str,
    *,
    logits: Tensor | None = None,
    mc_logits: Tensor | None = None,
    perturbed_logits: Tensor | None = None,
    ignore_mask: Tensor | None = None,
    labels: Tensor | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    q: float = 0.1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """One score per image ``(N,)``: :func:`pixel_scores` aggregated over each image's valid pixels.

    Args:
        method: a registered method that ranks by score; inputs as for :func:`pixel_scores`.
            ``"random"`` accepts any one (or several agreeing) of them, only for N and the pixel shape.
        ignore_mask: bool ``(N, *spatial)``, True = the pixel is ignored (never changes a score).
        labels, ignore_index: alternatively, a label map ``(N, *spatial)``; pixels equal to
            ``ignore_index`` are ignored (``ignore_mask = labels == ignore_index``).
        reduction: ``"mean"`` (default), ``"sum"``, ``"max"`` or ``"topk_mean"``, the mean of the
            ``ceil(q * n)`` (at least 1) highest of an image's n valid pixel scores.
        q: the fraction for ``"topk_mean"``, in (0, 1] (checked for every reduction).
        generator, seed: methods whose scores are random draws (``"random"``) only: draws from
            ``generator``, else from a fresh generator seeded with ``seed`` (default 0), so a call
            without either is reproducible.

    Returns:
        ``(N,)``, float64 for float64 input, else float32. An image without a valid pixel gets 0
        (every method, ``"random"`` included); one with a NaN among its valid pixels gets NaN.

    A diversity method (``"noise_stability_kcenter"``) raises ValueError: it has no score.
    """
    cls = method_class(method)
    draws: dict = {}
    if cls.random_scores:  # the constructor of a random method takes the generator
        if generator is not None and seed is not None:
            raise ValueError(f"give either generator= or seed= for method={method!r}, not both")
        draws = {"seed": check_seed("seed", 0 if seed is None else seed), "generator": generator}
    elif generator is not None or seed is not None:
        raise ValueError(f"generator= and seed= are only used by random methods such as 'random', not {method!r}")
    chosen = _with_score(cls(reduction=reduction, q=q, **draws))
    inputs = {"logits": logits, "mc_logits": mc_logits, "perturbed_logits": perturbed_logits}
    shape = check_inputs(chosen, inputs)
    source = next(value for value in inputs.values() if value is not None)
    valid = valid_mask(ignore_mask, labels, ignore_index, shape, source.device)
    return chosen.image_scores(Predictions(**inputs), valid)
