"""Kernel-noise perturbation ops: the perturbed weights and the per-pixel statistics of the perturbed
passes, as fused CPU/CUDA kernels (``docs/math.md#kernel-noise-perturbation``,
``docs/math.md#perturbation-statistics``), with their fake kernels.

``uaal_ext.uncertainty`` builds the model-level API (perturbed passes, MC-Dropout) on these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._validation import check_choice
from ._registration import register_not_differentiable
from .cross_entropy import accumulation_dtype, pixel_shape

__all__ = ["GRANULARITIES", "kernel_noise", "perturbation_statistics"]

#: Where the noise's norm is matched to the weight's: the whole tensor, or each output filter
#: (each slice along dim 0 of the weight).
GRANULARITIES = ("tensor", "filter")


# Not differentiable: the perturbed weights and the statistics are a measurement of the model, a
# constant for autograd, so their outputs never require grad.


@torch.library.register_fake("uaal_ext::kernel_noise")
def _kernel_noise_fake(weights, num_samples, eta, seed, offset, per_filter):
    return [w.new_empty((num_samples, *w.shape)) for w in weights]


@torch.library.register_fake("uaal_ext::perturbation_statistics")
def _perturbation_statistics_fake(clean, perturbed):
    acc = accumulation_dtype(clean.dtype)
    return clean.new_empty(pixel_shape(clean), dtype=acc), clean.new_empty(pixel_shape(clean), dtype=acc)


register_not_differentiable("uaal_ext::kernel_noise")
register_not_differentiable("uaal_ext::perturbation_statistics")


def kernel_noise(
    weights: Sequence[Tensor],
    num_samples: int,
    eta: float,
    *,
    seed: int = 0,
    offset: int = 0,
    granularity: str = "tensor",
) -> list[Tensor]:
    """K perturbed copies of every weight, in one call for the whole list.

    ``theta_k = theta + eta * ||theta|| * n_k / ||n_k||`` with ``n_k`` standard normal noise
    (Philox4x32-10, keyed by ``seed`` and counted by ``(element, k, position in weights, offset)``), so
    the same arguments give the same noise on every device and for any thread count. Norms are taken
    over the whole tensor (``granularity="tensor"``) or over each slice along dim 0
    (``"filter"``: an output filter of a conv or linear weight). A zero weight stays zero.

    Args:
        weights: floating tensors of one dtype, on one device; any shapes (dim 0 is the filter dim).
        num_samples: K >= 1.
        eta: relative noise magnitude, finite and >= 0 (0 gives exact copies).
        seed: in [0, 2^63). offset: in [0, 2^32); use a new offset per draw (training step).
        granularity: ``"tensor"`` or ``"filter"``.

    Returns:
        One contiguous ``(K, *w.shape)`` tensor per weight, in its dtype. Never requires grad.
    """
    check_choice("kernel_noise: granularity", granularity, GRANULARITIES)
    if len(weights) == 0:  # nothing for the dispatcher to pick a device from
        return []
    return torch.ops.uaal_ext.kernel_noise(
        list(weights), int(num_samples), float(eta), int(seed), int(offset), granularity == "filter"
    )


def perturbation_statistics(clean: Tensor, perturbed: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel deviation of perturbed predictions from the clean one, in one pass.

    With ``p = softmax(clean, 1)`` and ``p_k = softmax(perturbed[k], 1)``, ``d_k = ||p_k - p||_2``
    over classes:

    - ``sigma = sqrt(mean_k d_k^2)``: the kernel-noise uncertainty UAAL trains with (divide by eta,
      e.g. ``UAALLoss(uncertainty_scale=eta)``);
    - ``ns = mean_k d_k / ||p||_2``: the Noise Stability acquisition score.

    Args:
        clean: logits ``(N, C, *spatial)`` or ``(N, C)``; float64, float32, float16 or bfloat16.
        perturbed: ``(K, *clean.shape)``, same dtype and device; any strides.

    Returns:
        ``(sigma, ns)``, each ``(N, *spatial)``; float64 for float64 input, else float32. NaN where
        softmax is NaN (a NaN or +inf logit). Never requires grad.
    """
    return torch.ops.uaal_ext.perturbation_statistics(clean, perturbed)
