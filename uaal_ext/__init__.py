"""uaal_ext: uncertainty-aware training and active learning for semantic segmentation.

Fused CPU/CUDA kernels for the UAAL loss (cross-entropy weighted by a power of each pixel's
uncertainty, Thoma et al., CVPR 2025 Workshops) and a drop-in ``nn.CrossEntropyLoss`` replacement::

    criterion = uaal_ext.UAALLoss(ignore_index=255)          # was nn.CrossEntropyLoss(ignore_index=255)
    loss = criterion(logits, labels)                          # logits (N, C, H, W), labels (N, H, W)

The package has three layers, each importing only from those below it (docs/architecture.md):

- ``uaal_ext.ops``: the kernels' Python face (``torch.ops.uaal_ext.*`` with fake and autograd
  registrations) and their float64 reference;
- the library: ``uaal_ext.loss`` (UAALLoss), ``uaal_ext.schedules``, ``uaal_ext.uncertainty``,
  ``uaal_ext.acquisition``, ``uaal_ext.metrics``;
- ``uaal_ext.experiment``: the active-learning driver (data, models, training, the AL loop, reports,
  figures and the ``uaal`` command). It is not imported here: it needs smp, torchvision, matplotlib.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from . import (
    _C,  # noqa: F401  (registers torch.ops.uaal_ext.*)
    acquisition,
    distributed,
    uncertainty,
)
from ._build import build_info
from .loss import UAALLoss
from .ops import kernel_noise, perturbation_statistics, pixel_entropy, uaal_cross_entropy
from .schedules import SCHEDULES, get_schedule
from .uncertainty import EntropyUncertainty, KernelNoise, MCDropout, make_uncertainty, record_dropout

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
    "acquisition",
    "uncertainty",
    "distributed",
    "get_schedule",
    "SCHEDULES",
    "build_info",
    "__version__",
]
