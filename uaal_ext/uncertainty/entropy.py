"""The normalised softmax entropy of the clean logits as an uncertainty source."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..ops.cross_entropy import pixel_entropy
from .base import Logits, Masks, Pair, UncertaintySource, as_logits, register_uncertainty_source
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

    def measure(self, model: nn.Module, images: Tensor, clean: Logits, masks: Masks) -> Pair:
        with torch.no_grad():
            if clean is None:
                with frozen_batch_norm(model), dropout_off(model):
                    clean = as_logits(model(images))
            return clean, pixel_entropy(clean, normalized=True)
