"""Value checks shared by the config dataclasses (bool is an int in Python, but never a count here)."""
from __future__ import annotations

import math

__all__ = ["is_int", "is_number"]


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
