"""The normalised softmax entropy of the clean logits as an uncertainty source."""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from ..ops.cross_entropy import pixel_entropy
from .base import UncertaintySource, as_logits, check_clean_logits, check_images, register_uncertainty_source
from .dropout_recording import DropoutRecording
from .modes import dropout_off, frozen_batch_norm

__all__ = ["EntropyUncertainty"]


@register_uncertainty_source
class EntropyUncertainty(UncertaintySource):
    """The normalised softmax entropy ``H / log C`` in [0, 1] of the clean logits (scale 1).

    Without ``clean_logits`` it runs one forward like KernelNoise's clean pass: dropout off, batch
    norm as the model's mode says, no statistic updated. In training the loss kernel computes the
    same numbers from the logits it reads anyway (``computed_in_loss``), so no call is needed there.
    """

    name: ClassVar[str] = "entropy"
    computed_in_loss: ClassVar[bool] = True
    uncertainty_scale = 1.0

    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        clean_logits: Optional[Tensor] = None,
        *,
        dropout_masks: Optional[DropoutRecording] = None,
    ) -> tuple[Tensor, Tensor]:
        check_images(images)
        with torch.no_grad():
            if clean_logits is None:
                with frozen_batch_norm(model), dropout_off(model):
                    logits = as_logits(model(images))
            else:
                logits = check_clean_logits(clean_logits, images)
            return logits, pixel_entropy(logits, normalized=True)
