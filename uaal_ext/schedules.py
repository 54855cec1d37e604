"""Schedules of the UAAL strength alpha over training (supplementary material, Eq. A1-A5).

Each schedule maps training progress ``t = epoch / max_epochs`` in [0, 1] to a factor in [0, 1] that
multiplies the peak ``alpha``. Increasing schedules let the model learn the task before uncertainty
reshapes the loss; decreasing ones emphasise uncertainty early and return to plain cross-entropy;
``sin_cos`` rises and falls again.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["SCHEDULES", "get_schedule"]


def _constant(t: float) -> float:
    return 1.0


def _linear_increase(t: float) -> float:  # A1
    return t


def _sine_increase(t: float) -> float:  # A2
    return 0.5 * (math.sin(math.pi * t - math.pi / 2) + 1.0)


def _linear_decrease(t: float) -> float:  # A3
    return 1.0 - t


def _cosine_decrease(t: float) -> float:  # A4
    return 0.5 * (math.cos(math.pi * t) + 1.0)


def _sin_cos(t: float) -> float:  # A5
    return 0.5 * (math.sin(2.0 * math.pi * t - math.pi / 2) + 1.0)


_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": _constant,
    "linear_increase": _linear_increase,
    "sine_increase": _sine_increase,
    "linear_decrease": _linear_decrease,
    "cosine_decrease": _cosine_decrease,
    "sin_cos": _sin_cos,
}

SCHEDULES: tuple[str, ...] = tuple(_SCHEDULES)


def get_schedule(name: str) -> Callable[[float], float]:
    """Returns the schedule ``name`` as a function of progress ``t`` in [0, 1].

    Raises ValueError for an unknown name (listing the valid ones) and, when called, for a ``t``
    outside [0, 1].
    """
    try:
        schedule = _SCHEDULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}") from None

    def at_progress(t: float) -> float:
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"schedule {name!r}: progress t must be in [0, 1], got {t}")
        return schedule(t)

    at_progress.__name__ = name
    at_progress.__doc__ = schedule.__doc__
    return at_progress
