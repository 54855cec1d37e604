"""Acquisition: which unlabeled images to annotate next.

Each method is a class (:class:`AcquisitionMethod`) that declares the forward passes it needs from
the model (:class:`Passes`: one clean pass, T MC-Dropout samples, K kernel-noise passes), its pixel
map, how pixels become one score per image, and how images are chosen. The built-in methods
(:mod:`.methods`) are registered under their config names; :func:`register_method` adds one of
yours, which then works everywhere a name does (the experiment loop, ``uaal maps``, the reports).

**A higher score always means a more informative image.** Ranking is deterministic: ties go to the
lower index, NaN scores rank last.

- :mod:`.base`: the method base class, ``Passes``, ``Predictions``, the registry;
- :mod:`.methods`: Random, Entropy, Margin, Least confidence, MC-Dropout (entropy), BALD, Noise
  Stability and its k-center variant;
- :mod:`.scores`: scores of given predictions by method name (``pixel_scores``, ``image_scores``);
- :mod:`.selection`: top-k ``select``, ``kcenter_greedy``, ``pooled_deviations``;
- :mod:`.pool`: a model over a DataLoader (``score_pool``, ``select_from_pool``).
"""

from ..ops.scores import AGGREGATIONS
from . import methods
from .base import AcquisitionMethod, Passes, Predictions, make_method, method_class, method_names, register_method
from .pool import PassRunner, score_pool, select_from_pool
from .scores import image_scores, pixel_scores
from .selection import kcenter_greedy, pooled_deviations, select

#: The per-image aggregations of pixel scores.
REDUCTIONS = AGGREGATIONS

__all__ = [
    "AcquisitionMethod",
    "Passes",
    "Predictions",
    "register_method",
    "method_names",
    "method_class",
    "make_method",
    "methods",
    "REDUCTIONS",
    "pixel_scores",
    "image_scores",
    "select",
    "kcenter_greedy",
    "pooled_deviations",
    "PassRunner",
    "score_pool",
    "select_from_pool",
]
