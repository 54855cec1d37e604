"""Argument checks shared by every layer, so that each bad value is reported the same way: the
argument's name, what it allows, and what it got.

``bool`` is an ``int`` in Python but never a count, a seed or a size here, so every integer check
refuses it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "SEED_LIMIT",
    "is_int",
    "is_number",
    "check_int",
    "check_number",
    "check_seed",
    "check_choice",
    "changed_keys",
]

SEED_LIMIT = 2**63  # seeds are int64 values >= 0, what torch.Generator.manual_seed and Philox keys take

T = TypeVar("T")


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class _Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = self.low, self.high
        if low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        return "" if high is None else f"{'<' if self.high_open else '<='} {high}"


def _check(name: str, value: Any, right_kind: bool, kind: str, bounds: _Range, allow_none: bool) -> Any:
    if allow_none and value is None:
        return None
    if not right_kind or value not in bounds:
        allowed = " ".join(filter(None, (kind, str(bounds))))
        raise ValueError(f"{name} must be {allowed}{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_int(name: str, value: Any, *, low=None, high=None, high_open=False, allow_none=False) -> Any:
    """``value`` if it is an int (not a bool) within ``[low, high]`` (or ``[low, high)``), else
    ValueError ``"{name} must be an int >= low ..., got value"``. None passes when ``allow_none``."""
    return _check(name, value, is_int(value), "an int", _Range(low, high, False, high_open), allow_none)


def check_number(name: str, value: Any, *, low=None, high=None, low_open=False, high_open=False, allow_none=False):
    """``float(value)`` if it is a finite number (not a bool) within the bounds, else ValueError
    naming ``name``, the allowed range and the value. None passes when ``allow_none``."""
    bounds = _Range(low, high, low_open, high_open)
    checked = _check(name, value, is_number(value), "a finite number", bounds, allow_none)
    return None if checked is None else float(checked)


def check_seed(name: str, value: object) -> int:
    """A seed: an int in ``[0, 2**63)``."""
    if not is_int(value) or not 0 <= value < SEED_LIMIT:  # type: ignore[operator]
        raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")
    return value  # type: ignore[return-value]


def check_choice(name: str, value: T, choices: Sequence[T]) -> T:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    try:
        known = value in choices
    except TypeError:  # an unhashable value asked of a dict's keys
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def changed_keys(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> str:
    """``"key: old -> new, ..."`` for the keys whose values differ (those in ``ignore`` aside), or
    ``""`` when none does: what a resumed run reports when its config is not the one it started with.

    A key that ``saved`` lacks (written before the key existed) counts as its value in ``defaults``;
    without one, a key only one side has counts as a difference.
    """
    skipped = set(ignore)
    missing = object()
    defaults = defaults or {}

    def old(key: str) -> Any:
        return saved[key] if key in saved else defaults.get(key, missing)

    keys = sorted(k for k in saved.keys() | current.keys() if k not in skipped and old(k) != current.get(k, missing))

    def shown(key: str) -> str:
        if key in saved:
            return repr(saved[key])
        return "(unset)" if old(key) is missing else f"(unset: {old(key)!r})"

    return ", ".join(f"{key}: {shown(key)} -> {current.get(key, '(unset)')!r}" for key in keys)
