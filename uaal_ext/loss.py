"""The UAAL cross-entropy: a drop-in replacement for ``torch.nn.CrossEntropyLoss``.

Each valid pixel's cross-entropy ``l_i`` is multiplied by ``w_i = 1 + alpha * min(u_i ** exponent,
s_max)``, where ``u_i`` is the pixel's uncertainty divided by a scale (SPEC section 2, paper Eq. 6).
With ``alpha = 0`` the loss is exactly ``torch.nn.functional.cross_entropy``. The weight is a constant
for autograd: no gradient flows through the uncertainty.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from . import _ops  # noqa: F401  (fake kernels and autograd formulas)
from .schedules import get_schedule

__all__ = ["uaal_cross_entropy", "pixel_entropy", "UAALLoss", "NORMALIZE_MODES"]

_REDUCTIONS = ("none", "mean", "sum")
NORMALIZE_MODES = ("scale", "mean", "max")  # how UAALLoss scales the uncertainty


def _inverse_scale(uncertainty_scale: Optional[float], uses_entropy: bool, num_classes: int) -> float:
    """1 / scale, where the default scale is log C for the entropy (so u is the normalised entropy)
    and 1 for a map the caller supplies."""
    if uncertainty_scale is None:
        if not uses_entropy:
            return 1.0
        # One class has zero entropy whatever the scale; 0 keeps u = 0 instead of 0 / log 1.
        return 1.0 / math.log(num_classes) if num_classes > 1 else 0.0
    scale = float(uncertainty_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"uncertainty_scale must be a positive finite number (or None), got {uncertainty_scale!r}")
    return 1.0 / scale


def uaal_cross_entropy(
    input: Tensor,
    target: Tensor,
    uncertainty: Optional[Tensor] = None,
    *,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    alpha: float = 0.0,
    exponent: float = 2.0,
    uncertainty_scale: Optional[float] = None,
    s_max: Optional[float] = None,
    normalize_by_weight: bool = False,
) -> Tensor:
    """Uncertainty-weighted cross-entropy of logits ``input`` against class indices ``target``.

    Args:
        input: logits ``(N, C, *spatial)``, ``(N, C)`` or unbatched ``(C,)``; float64, float32,
            float16 or bfloat16 (float32 accumulation), any strides.
        target: class indices of shape ``(N, *spatial)`` (``()`` for unbatched input); int64, int32
            or uint8. Values are in ``[0, C)`` or equal ``ignore_index``.
        uncertainty: optional per-pixel uncertainty ``U >= 0`` shaped like ``target``. When None, the
            softmax entropy of ``input`` itself is used (computed in the same pass).
        weight, ignore_index, reduction, label_smoothing: as in ``torch.nn.functional.cross_entropy``.
        alpha: strength of the uncertainty weighting; 0 gives plain cross-entropy.
        exponent: power ``E`` applied to the scaled uncertainty (the paper's best: 2).
        uncertainty_scale: ``u = U / uncertainty_scale``. Default: ``log C`` for the entropy
            (normalised entropy in [0, 1]) and 1 for a given map (pass ``eta`` for kernel-noise sigma).
        s_max: optional cap on ``u ** E``.
        normalize_by_weight: divide the ``mean`` by ``sum(c_y * w)`` instead of ``sum(c_y)``.

    Returns:
        The loss in ``input``'s dtype: a scalar for ``mean`` / ``sum``, per pixel for ``none``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"input and target must be tensors, got {type(input).__name__} and {type(target).__name__}"
        )
    unbatched = input.dim() == 1
    if unbatched:
        # torch's convention: (C,) logits with a 0-dim target are one sample.
        input, target = input.unsqueeze(0), target.unsqueeze(0)
        uncertainty = uncertainty.unsqueeze(0) if uncertainty is not None else None
    num_classes = input.shape[1] if input.dim() >= 2 else 0
    args = (
        input,
        target,
        uncertainty,
        weight,
        int(ignore_index),
        float(label_smoothing),
        float(alpha),
        float(exponent),
        _inverse_scale(uncertainty_scale, uncertainty is None, num_classes),
        math.inf if s_max is None else float(s_max),
    )
    fuses_backward = (
        torch.is_grad_enabled()
        and input.requires_grad
        and reduction != "none"
        and not (reduction == "mean" and normalize_by_weight)
    )
    if fuses_backward:
        # A training step: the gradient is computed while the logits are in cache (see
        # cross_entropy_forward_backward in csrc/ops.cpp); backward() then costs nothing.
        loss, _ = torch.ops.uaal_ext.cross_entropy_forward_backward(*args, reduction == "mean")
        return loss.to(input.dtype)
    loss, _, sums = torch.ops.uaal_ext.cross_entropy_forward(*args, reduction != "none")
    if reduction == "mean":
        loss = loss / sums[1 if normalize_by_weight else 0]
    elif reduction == "none" and unbatched:
        loss = loss.squeeze(0)
    return loss.to(input.dtype)


def pixel_entropy(logits: Tensor, normalized: bool = False) -> Tensor:
    """Softmax entropy ``-sum_c p_c log p_c`` over dim 1 of ``logits`` ``(N, C, *spatial)``.

    Returns ``(N, *spatial)`` in the logits' dtype; ``normalized=True`` divides by ``log C`` so values
    lie in [0, 1]. Differentiable. Classes with ``-inf`` logits contribute 0.
    """
    return torch.ops.uaal_ext.pixel_entropy(logits, bool(normalized))


class UAALLoss(nn.Module):
    """Drop-in replacement for ``nn.CrossEntropyLoss`` that weights pixels by their uncertainty.

    ``nn.CrossEntropyLoss(ignore_index=255)`` becomes ``UAALLoss(ignore_index=255)``; with
    ``alpha=0`` both compute the same thing. The strength follows a schedule over training:
    call :meth:`set_epoch` each epoch (fractions allowed) and
    ``alpha(t) = alpha * schedule(epoch / max_epochs)``.

    Args:
        weight, ignore_index, reduction, label_smoothing: as in ``nn.CrossEntropyLoss``.
        alpha: peak strength of the uncertainty weighting.
        exponent: power applied to the scaled uncertainty (paper: 1, 2, 3, 5; best 2).
        schedule: one of :data:`uaal_ext.SCHEDULES`.
        max_epochs: the training length the schedule spans; required unless ``schedule`` is
            ``"constant"``.
        uncertainty_scale: divisor of the uncertainty when ``normalize="scale"`` (see
            :func:`uaal_cross_entropy`; use ``eta`` for kernel-noise sigma).
        normalize: ``"scale"`` (divide by ``uncertainty_scale``), ``"mean"`` (by the mean
            uncertainty over the batch's valid pixels) or ``"max"`` (by each image's maximum over
            its valid pixels); a zero mean or maximum gives ``u = 0``.
        s_max: optional cap on ``u ** exponent``.
        normalize_by_weight: divide the ``mean`` by ``sum(c_y * w)`` instead of ``sum(c_y)``.
    """

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        alpha: float = 1.0,
        exponent: float = 2.0,
        schedule: str = "constant",
        max_epochs: Optional[float] = None,
        uncertainty_scale: Optional[float] = None,
        normalize: str = "scale",
        s_max: Optional[float] = None,
        normalize_by_weight: bool = False,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
        if not (math.isfinite(exponent) and exponent >= 0):
            raise ValueError(f"exponent must be finite and >= 0, got {exponent!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        if s_max is not None and not s_max >= 0:
            raise ValueError(f"s_max must be >= 0 or None, got {s_max!r}")
        if schedule != "constant" and (max_epochs is None or not max_epochs > 0):
            raise ValueError(f"schedule {schedule!r} needs max_epochs > 0, got max_epochs={max_epochs!r}")
        _inverse_scale(uncertainty_scale, True, 2)  # validates the value early
        self.register_buffer("weight", weight)  # moves with .to(device), like nn.CrossEntropyLoss
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.alpha = alpha
        self.exponent = exponent
        self.schedule = schedule
        self.max_epochs = max_epochs
        self.uncertainty_scale = uncertainty_scale
        self.normalize = normalize
        self.s_max = s_max
        self.normalize_by_weight = normalize_by_weight
        self._schedule = get_schedule(schedule)
        self.epoch = 0.0

    def set_epoch(self, epoch: float) -> None:
        """Advances the schedule to ``epoch`` (fractions allowed, e.g. ``i / iters_per_epoch``)."""
        if not (math.isfinite(epoch) and epoch >= 0):
            raise ValueError(f"epoch must be finite and >= 0, got {epoch!r}")
        self.epoch = float(epoch)

    @property
    def progress(self) -> float:
        """Training progress t = epoch / max_epochs, clamped to [0, 1]."""
        if self.max_epochs is None:
            return 0.0
        return min(max(self.epoch / self.max_epochs, 0.0), 1.0)

    @property
    def current_alpha(self) -> float:
        """The strength in use now: ``alpha * schedule(progress)``."""
        return self.alpha * self._schedule(self.progress)

    def forward(self, input: Tensor, target: Tensor, uncertainty: Optional[Tensor] = None) -> Tensor:
        scale = self.uncertainty_scale
        if self.normalize != "scale" and self.current_alpha != 0:
            raw = uncertainty if uncertainty is not None else pixel_entropy(input.detach())
            uncertainty = _normalize_uncertainty(raw.detach(), target, self.ignore_index, self.normalize)
            scale = 1.0
        return uaal_cross_entropy(
            input,
            target,
            uncertainty,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            alpha=self.current_alpha,
            exponent=self.exponent,
            uncertainty_scale=scale,
            s_max=self.s_max,
            normalize_by_weight=self.normalize_by_weight,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, exponent={self.exponent}, schedule={self.schedule!r}, "
            f"max_epochs={self.max_epochs}, normalize={self.normalize!r}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}"
        )


def _normalize_uncertainty(uncertainty: Tensor, target: Tensor, ignore_index: int, mode: str) -> Tensor:
    """Divides ``uncertainty`` by its mean over the batch's valid pixels ("mean") or by each image's
    maximum over its valid pixels ("max"); a zero denominator gives 0."""
    if uncertainty.shape != target.shape:
        raise ValueError(
            f"uncertainty must have the shape of target {tuple(target.shape)}, got {tuple(uncertainty.shape)}"
        )
    valid = target != ignore_index
    masked = torch.where(valid, uncertainty, torch.zeros((), dtype=uncertainty.dtype, device=uncertainty.device))
    if masked.numel() == 0:
        return masked
    if mode == "mean":
        denominator = masked.sum() / valid.sum().clamp_min(1)
    else:
        batch = uncertainty.shape[0]
        denominator = masked.reshape(batch, -1).amax(dim=1).clamp_min(0)
        denominator = denominator.reshape((batch,) + (1,) * (uncertainty.dim() - 1))
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, masked / safe, torch.zeros_like(masked))
