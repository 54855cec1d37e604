"""uaal_ext: uncertainty-aware training and active learning for semantic segmentation.

Fused CPU/CUDA kernels for the UAAL loss (cross-entropy weighted by a power of each pixel's
uncertainty, Thoma et al., CVPR 2025 Workshops) and a drop-in ``nn.CrossEntropyLoss`` replacement::

    criterion = uaal_ext.UAALLoss(ignore_index=255)          # was nn.CrossEntropyLoss(ignore_index=255)
    loss = criterion(logits, labels)                          # logits (N, C, H, W), labels (N, H, W)

The low-level ops live under ``torch.ops.uaal_ext``.
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.uaal_ext.*)
from ._build import build_info
from .loss import UAALLoss, pixel_entropy, uaal_cross_entropy
from .perturbation import kernel_noise, perturbation_statistics
from .uncertainty import EntropyUncertainty, KernelNoise, MCDropout, make_uncertainty, record_dropout
from . import acquisition  # noqa: E402  (uaal_ext.acquisition.METHODS, image_scores, select, ...)
from .schedules import SCHEDULES, get_schedule

__version__ = build_info()["version"]

__all__ = [
    "UAALLoss",
    "uaal_cross_entropy",
    "pixel_entropy",
    "kernel_noise",
    "perturbation_statistics",
    "KernelNoise",
    "MCDropout",
    "EntropyUncertainty",
    "make_uncertainty",
    "record_dropout",
    "get_schedule",
    "SCHEDULES",
    "build_info",
    "__version__",
]
