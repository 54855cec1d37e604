"""Acquisition score ops: per-pixel scores of predictions and their per-image aggregation, as fused
CPU/CUDA kernels (``docs/math.md#acquisition-scores``), with their fake kernels.

These are the raw ops: one method string of the kernel's own per call. ``uaal_ext.acquisition``
builds the acquisition methods (objects with argument checks, pool scoring and selection) on them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registration import register_not_differentiable
from .cross_entropy import accumulation_dtype, pixel_shape

__all__ = ["PIXEL_SCORE_KERNELS", "MONTE_CARLO_KERNELS", "AGGREGATIONS", "pixel_score_map", "aggregate_scores"]

#: The per-pixel maps the kernel computes; the Monte-Carlo ones read (T, N, C, *spatial) samples.
PIXEL_SCORE_KERNELS = ("entropy", "margin", "least_confidence", "mc_entropy", "bald")
MONTE_CARLO_KERNELS = ("mc_entropy", "bald")
#: How an image's valid pixel scores become one number.
AGGREGATIONS = ("mean", "sum", "max", "topk_mean")

_ops = torch.ops.uaal_ext


@torch.library.register_fake("uaal_ext::pixel_scores")
def _pixel_scores_fake(input, method):
    prediction = input[0] if method in MONTE_CARLO_KERNELS else input
    return input.new_empty(pixel_shape(prediction), dtype=accumulation_dtype(input.dtype))


@torch.library.register_fake("uaal_ext::aggregate_scores")
def _aggregate_scores_fake(scores, valid, reduction, q):
    return scores.new_empty((scores.shape[0],))


# Scores rank images for labelling; no gradient flows through them.
register_not_differentiable("uaal_ext::pixel_scores")
register_not_differentiable("uaal_ext::aggregate_scores")


def pixel_score_map(input: Tensor, kernel: str) -> Tensor:
    """Per-pixel scores ``(N, *spatial)`` of logits ``(N, C, *spatial)`` (``"entropy"``, ``"margin"``,
    ``"least_confidence"``) or of Monte-Carlo logits ``(T, N, C, *spatial)`` (``"mc_entropy"``,
    ``"bald"``); higher = more informative; float64 for float64 input, else float32."""
    return _ops.pixel_scores(input, kernel)


def aggregate_scores(scores: Tensor, valid: Tensor | None, reduction: str, q: float) -> Tensor:
    """One score per image ``(N,)`` over the pixels of ``scores`` ``(N, *spatial)`` where ``valid``
    (None: all); ``reduction`` one of :data:`AGGREGATIONS`, ``q`` the fraction of ``"topk_mean"``."""
    return _ops.aggregate_scores(scores, valid, reduction, q)
