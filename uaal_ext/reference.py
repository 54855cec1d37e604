"""Pure-PyTorch reference of the UAAL loss: SPEC section 2 written as ordinary torch ops.

These functions are the specification in code. They are slow and memory-hungry on purpose
(every intermediate is materialized) and are used by the tests and the benchmarks as the
ground truth the fused kernels are compared with. Everything is computed in the input's
dtype, so pass float64 for a tight reference; all of them are differentiable w.r.t. the
logits through autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "pixel_entropy_reference",
    "uncertainty_weight_reference",
    "uaal_cross_entropy_reference",
]


def pixel_entropy_reference(logits: Tensor, normalized: bool = False) -> Tensor:
    """Softmax entropy over dim 1: ``H = -sum_c p_c log p_c``.

    Args:
        logits: ``(N, C, *spatial)`` or ``(N, C)``, floating point.
        normalized: divide by ``log C`` so the result lies in [0, 1] (0 when ``C == 1``).

    Returns:
        ``(N, *spatial)`` (``(N,)`` for ``(N, C)`` input), in the logits' dtype.

    ``p log p`` is taken as 0 where ``p == 0``, so ``-inf`` logits contribute nothing; a pixel
    whose logits are all ``-inf`` (or contain NaN / ``+inf``) gives NaN, as ``softmax`` does.
    """
    logp = torch.log_softmax(logits, dim=1)
    p = logp.exp()
    # Masking log p (not p log p) keeps the backward free of 0 * (-inf) at p == 0.
    safe_logp = torch.where(p > 0, logp, torch.zeros_like(logp))
    entropy = -(p * safe_logp).sum(dim=1)
    if normalized:
        num_classes = logits.shape[1]
        entropy = entropy / math.log(num_classes) if num_classes > 1 else entropy * 0
    return entropy


def uncertainty_weight_reference(
    u: Tensor, *, alpha: float, exponent: float, s_max: float | None = None
) -> Tensor:
    """Per-pixel loss weight ``w = 1 + alpha * min(u ** exponent, s_max)`` (paper Eq. 6)."""
    scaled = u.pow(exponent)
    if s_max is not None:
        scaled = scaled.clamp(max=s_max)
    return 1 + alpha * scaled


def uaal_cross_entropy_reference(
    input: Tensor,
    target: Tensor,
    uncertainty: Tensor | None = None,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    alpha: float = 0.0,
    exponent: float = 2.0,
    uncertainty_scale: float | None = None,
    s_max: float | None = None,
    normalize_by_weight: bool = False,
) -> Tensor:
    """Uncertainty-weighted cross-entropy ``sum_i w_i * l_i`` (SPEC section 2).

    Args:
        input: logits ``(N, C, *spatial)`` or ``(N, C)``.
        target: class indices ``(N, *spatial)`` (any integer dtype).
        uncertainty: per-pixel ``U >= 0`` of the target's shape; ``None`` uses the entropy of
            ``input`` with a default scale of ``log C`` (i.e. the normalized entropy).
        weight: class weights ``c`` of shape ``(C,)``.
        uncertainty_scale: ``u = U / scale``; default ``log C`` for the entropy, 1 for a map.
        The other arguments are those of ``torch.nn.functional.cross_entropy`` and SPEC 2.

    Returns:
        Per-pixel losses ``(N, *spatial)`` (0 at ignored pixels) for ``reduction="none"``,
        otherwise a 0-dim tensor. With ``alpha=0`` this equals ``F.cross_entropy``.
    """
    num_classes = input.shape[1]
    eps = label_smoothing
    target = target.long()
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)

    # The weight is a constant for autograd: no gradient flows through the uncertainty.
    with torch.no_grad():
        if uncertainty is None:
            u = pixel_entropy_reference(input, normalized=uncertainty_scale is None)
        else:
            u = uncertainty.to(input.dtype)
        if uncertainty_scale is not None:
            u = u / uncertainty_scale
        w = uncertainty_weight_reference(u, alpha=alpha, exponent=exponent, s_max=s_max)

    c = torch.ones(num_classes, dtype=input.dtype, device=input.device) if weight is None else weight.to(input.dtype)
    c_b = c.view(1, num_classes, *([1] * (input.dim() - 2)))
    nll = -torch.log_softmax(input, dim=1)  # lse_i - z_ic
    c_y = c[safe_target.squeeze(1)]
    loss = (1 - eps) * c_y * nll.gather(1, safe_target).squeeze(1)
    if eps > 0:  # skipped at eps == 0, where 0 * inf (a -inf logit) would give NaN
        loss = loss + (eps / num_classes) * (c_b * nll).sum(dim=1)
    loss = torch.where(valid, w * loss, torch.zeros_like(loss))

    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        denom = c_y * w if normalize_by_weight else c_y
        return loss.sum() / torch.where(valid, denom, torch.zeros_like(denom)).sum()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
