"""Layer 1, the kernels: Python wrappers of the ``torch.ops.uaal_ext`` ops with their fake (meta)
kernels and autograd registrations side by side, and the float64 reference they are tested against.

Nothing here knows about models, datasets or experiments; everything above builds on these.

- :mod:`.cross_entropy`: the UAAL cross-entropy (fused forward and backward) and the pixel entropy;
- :mod:`.perturbation`: kernel-noise weight copies and the perturbation statistics;
- :mod:`.scores`: per-pixel acquisition scores and their per-image aggregation;
- :mod:`.reference`: the same math as plain PyTorch, slow and exact.
"""

from .cross_entropy import pixel_entropy, uaal_cross_entropy, uaal_cross_entropy_sums
from .perturbation import GRANULARITIES, kernel_noise, perturbation_statistics
from .scores import aggregate_scores, pixel_score_map

__all__ = [
    "uaal_cross_entropy",
    "uaal_cross_entropy_sums",
    "pixel_entropy",
    "kernel_noise",
    "perturbation_statistics",
    "GRANULARITIES",
    "pixel_score_map",
    "aggregate_scores",
]
