"""``UAALLoss``: a drop-in replacement for ``torch.nn.CrossEntropyLoss`` with a scheduled strength.

Each valid pixel's cross-entropy ``l_i`` is multiplied by ``w_i = 1 + alpha(t) * min(u_i ** exponent,
s_max)``, where ``u_i`` is the pixel's uncertainty divided by a scale (``docs/math.md#uncertainty-weight``)
and ``alpha(t)`` follows a schedule over training (``docs/math.md#schedules``). With ``alpha = 0`` the
loss is exactly ``torch.nn.functional.cross_entropy``. The functional form is
:func:`uaal_ext.ops.uaal_cross_entropy`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import distributed
from ._validation import check_choice
from .ops.cross_entropy import (
    REDUCTIONS,
    accumulation_dtype,
    inverse_scale,
    pixel_entropy,
    uaal_cross_entropy,
    uaal_cross_entropy_sums,
)
from .schedules import get_schedule

__all__ = ["UAALLoss", "NORMALIZE_MODES", "normalize_uncertainty"]

NORMALIZE_MODES = ("scale", "mean", "max")  # how UAALLoss scales the uncertainty


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
        normalize_by_weight: divide the ``mean`` by ``sum(c_y * w)`` instead of ``sum(c_y)``, so the
            weighting shifts the gradient between pixels without scaling its size: with
            ``sum(c_y)`` a mean weight of 2 trains at twice the learning rate
            (``docs/study/README.md``). Unlike :func:`uaal_cross_entropy`, whose defaults follow
            ``torch.nn.functional.cross_entropy``, the module defaults to ``True``.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        alpha: float = 1.0,
        exponent: float = 2.0,
        schedule: str = "constant",
        max_epochs: float | None = None,
        uncertainty_scale: float | None = None,
        normalize: str = "scale",
        s_max: float | None = None,
        normalize_by_weight: bool = True,
        sync_ranks: bool = False,
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("normalize", normalize, NORMALIZE_MODES)
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
        inverse_scale(uncertainty_scale, True, 2)  # validates the value early
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
        self.sync_ranks = bool(sync_ranks)
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

    def forward(self, input: Tensor, target: Tensor, uncertainty: Tensor | None = None) -> Tensor:
        ranks = distributed.world_size() if self.sync_ranks else 1
        scale = self.uncertainty_scale
        if self.normalize != "scale" and self.current_alpha != 0:
            raw = uncertainty if uncertainty is not None else pixel_entropy(input.detach())
            # Class probabilities have no ignored pixels: every pixel counts in the normalisation.
            pixels = (
                target
                if not target.is_floating_point()
                else torch.zeros((), dtype=torch.long, device=raw.device).expand(raw.shape)
            )
            uncertainty = normalize_uncertainty(
                raw.detach(), pixels, self.ignore_index, self.normalize, sync_ranks=ranks > 1
            )
            scale = 1.0
        options = dict(
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            alpha=self.current_alpha,
            exponent=self.exponent,
            uncertainty_scale=scale,
            s_max=self.s_max,
        )
        if ranks > 1 and self.reduction == "mean":
            total, denominators = uaal_cross_entropy_sums(input, target, uncertainty, **options)
            denominator = distributed.all_reduce_sum(denominators[1 if self.normalize_by_weight else 0])
            return (total * ranks / denominator).to(total.dtype)
        loss = uaal_cross_entropy(
            input,
            target,
            uncertainty,
            reduction=self.reduction,
            normalize_by_weight=self.normalize_by_weight,
            **options,
        )
        return loss * ranks if self.reduction == "sum" and ranks > 1 else loss

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, exponent={self.exponent}, schedule={self.schedule!r}, "
            f"max_epochs={self.max_epochs}, normalize={self.normalize!r}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}"
        )


def normalize_uncertainty(
    uncertainty: Tensor, target: Tensor, ignore_index: int, mode: str, *, sync_ranks: bool = False
) -> Tensor:
    """Divides ``uncertainty`` by its mean over the batch's valid pixels ("mean") or by each image's
    maximum over its valid pixels ("max"); a zero denominator gives 0. ``sync_ranks``: the mean is
    over the valid pixels of every rank's batch (a ``torch.distributed`` group's global batch)."""
    if uncertainty.shape != target.shape:
        raise ValueError(
            f"uncertainty must have the shape of target {tuple(target.shape)}, got {tuple(uncertainty.shape)}"
        )
    valid = target != ignore_index
    masked = torch.where(valid, uncertainty, torch.zeros((), dtype=uncertainty.dtype, device=uncertainty.device))
    if mode == "mean":
        # Summed in the accumulation dtype: a float16 map (the entropy of autocast logits) would sum to
        # inf past 65504, and u / inf switch the weighting off without a word. With sync_ranks, one
        # all-reduce of (sum, count), every rank taking part, an empty one too.
        accumulation = accumulation_dtype(masked.dtype)
        totals = torch.stack([masked.sum(dtype=accumulation), valid.sum().to(accumulation)])
        if sync_ranks:
            totals = distributed.all_reduce_sum(totals)
        denominator = totals[0] / totals[1].clamp_min(1)
    elif masked.numel() == 0:
        return masked
    else:
        batch = uncertainty.shape[0]
        denominator = masked.reshape(batch, -1).amax(dim=1).clamp_min(0)
        denominator = denominator.reshape((batch,) + (1,) * (uncertainty.dim() - 1))
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, masked / safe, torch.zeros_like(masked))
