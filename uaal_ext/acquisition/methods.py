"""The built-in acquisition methods (``docs/math.md#acquisition-scores``), one class each, registered
under the names the experiment configs use. Per pixel, with ``p = softmax`` over classes:

- ``"random"``: no map; a uniform number in [0, 1) per image;
- ``"entropy"``: ``H = -sum_c p_c log p_c``; ``"margin"``: ``1 - (p_top1 - p_top2)``;
  ``"least_confidence"``: ``1 - p_top1``;
- ``"mc_entropy"``: ``H(mean_t p_t)`` over T MC-Dropout samples; ``"bald"``:
  ``H(mean_t p_t) - mean_t H(p_t)``;
- ``"noise_stability"``: ``mean_k ||p_k - p|| / ||p||`` over K kernel-noise passes;
- ``"noise_stability_kcenter"``: Noise Stability's diversity variant, greedy k-center on pooled
  deviation vectors (no score).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..ops.perturbation import perturbation_statistics
from ..ops.scores import pixel_score_map
from .base import AcquisitionMethod, Passes, Predictions, register_method, result_dtype
from .selection import image_key, kcenter_greedy, pooled_deviations


@register_method
class RandomSelection(AcquisitionMethod):
    """A uniform number in [0, 1) per image: the baseline every method is compared with.

    Scoring a pool, the number comes from 64 random bits keyed by ``(seed, pool index)``, so it does
    not depend on batches or their order. Scoring given predictions without pool indices, the N
    numbers are drawn from ``generator`` (default: a fresh one seeded with ``seed``).
    """

    name = "random"
    display_name = "Random"
    passes = Passes()
    has_pixel_map = False
    random_scores = True

    def __init__(self, *, generator: torch.Generator | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.generator = generator

    def image_scores(self, predictions: Predictions, valid: Tensor | None = None) -> Tensor:
        source = predictions.reference()
        dtype = result_dtype(source.dtype)
        if predictions.indices is not None:
            values = [(image_key(self.seed, index) >> 11) * 2.0**-53 for index in predictions.indices]
            scores = torch.tensor(values, dtype=dtype, device=source.device)
        else:
            generator = self.generator or torch.Generator().manual_seed(self.seed)
            count = predictions.num_images
            scores = torch.rand(count, generator=generator, dtype=dtype, device=generator.device).to(source.device)
        if valid is not None:
            any_valid = valid.reshape(valid.shape[0], math.prod(valid.shape[1:])).any(dim=1)
            scores = torch.where(any_valid, scores, torch.zeros_like(scores))
        return scores


class _PixelKernelMethod(AcquisitionMethod):
    """A method whose map is the fused per-pixel score kernel of its name."""

    def pixel_map(self, predictions: Predictions) -> Tensor:
        source = predictions.mc_logits if self.passes.mc_dropout else predictions.logits
        return pixel_score_map(source, self.name)


@register_method
class Entropy(_PixelKernelMethod):
    """Softmax entropy of one clean pass."""

    name, display_name, passes = "entropy", "Entropy", Passes(clean=True)
    map_label = "softmax entropy (nats)"


@register_method
class Margin(_PixelKernelMethod):
    """One minus the gap between the two most probable classes."""

    name, display_name, passes = "margin", "Margin", Passes(clean=True)
    map_label = "1 - (p top1 - p top2)"


@register_method
class LeastConfidence(_PixelKernelMethod):
    """One minus the top class probability."""

    name, display_name, passes = "least_confidence", "Least confidence", Passes(clean=True)
    map_label = "1 - p top1"


@register_method
class MCEntropy(_PixelKernelMethod):
    """The entropy of the mean of T MC-Dropout predictions (the "MC-Dropout" method of the tables)."""

    name, display_name, passes, default_samples = "mc_entropy", "MC-Dropout", Passes(mc_dropout=True), 10
    map_label = "entropy of the MC-Dropout mean (nats)"


@register_method
class BALD(_PixelKernelMethod):
    """Mutual information between the prediction and the dropout masks, over T samples (>= 0)."""

    name, display_name, passes, default_samples = "bald", "BALD", Passes(mc_dropout=True), 10
    map_label = "mutual information (nats)"


@register_method
class NoiseStability(AcquisitionMethod):
    """How far K kernel-noise perturbations move the prediction, relative to its norm."""

    name = "noise_stability"
    display_name = "Noise Stability"
    map_label = "mean ||p_k - p|| / ||p|| (K kernel-noise passes)"
    passes = Passes(clean=True, kernel_noise=True)
    default_samples = 5

    def pixel_map(self, predictions: Predictions) -> Tensor:
        return perturbation_statistics(predictions.logits, predictions.perturbed_logits)[1]


@register_method
class NoiseStabilityKCenter(NoiseStability):
    """Noise Stability's diversity variant: greedy k-center on each image's pooled softmax deviations
    under the K perturbed models (``grid`` cells per spatial dim), the labeled images as the initial
    centres. Its pixel-wise signal (for maps) is the Noise Stability map."""

    name = "noise_stability_kcenter"
    display_name = "Noise Stability (k-center)"
    ranks_by_score = False

    def __init__(self, *, grid: int | Sequence[int] = 4, **options: Any) -> None:
        super().__init__(**options)
        self.grid = grid

    def image_features(self, predictions: Predictions) -> Tensor:
        return pooled_deviations(predictions.logits, predictions.perturbed_logits, grid=self.grid)

    def choose(self, features: Tensor, k: int, initial: list[int]) -> list[int]:
        return kcenter_greedy(features, k, initial=initial)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "grid": self.grid}
