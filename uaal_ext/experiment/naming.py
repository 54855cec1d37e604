"""How tables and figures name what experiments hold: methods, modes, datasets, models, metrics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..acquisition import method_class
from .data import dataset_spec
from .models import MODEL_NAMES

MODE_NAMES: dict[str, str] = {"standard": "standard", "uaal": "UAAL", "uaal_select": "UAAL selector"}


def method_title(name: str) -> str:
    """How tables and figures name an acquisition method: its registered display name."""
    try:
        return method_class(name).display_name
    except ValueError:  # an experiment's method that this process has not registered
        return name


def dataset_title(name: str) -> str:
    try:
        return dataset_spec(name).title
    except ValueError:
        return name


def model_title(name: str) -> str:
    return MODEL_NAMES.get(name, name)


def unique_in_order(values: Iterable[Any]) -> list[Any]:
    """The distinct values in the order they first appear."""
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class Metric:
    """A result column and how tables and figures show it."""

    key: str  # the row key, e.g. "miou" or "entropy_auroc"
    label: str  # e.g. "mIoU (%)"
    scale: float = 100.0  # shown value = value * scale
    digits: int = 2


MIOU = Metric("miou", "mIoU (%)")


def quality_metric(source: str, selector: bool = False) -> Metric:
    """The AUROC of ``source``'s uncertainty as a detector of the (selector's) errors."""
    prefix = "selector_" if selector else ""
    whose = "the selector's " if selector else ""
    return Metric(f"{prefix}{source}_auroc", f"AUROC of {whose}{source} as an error detector", 1.0, 3)


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"  # 0.1 -> "10%" (:g hides 10.000000000000002)


def column_name(model: str, variant: str) -> str:
    name = model_title(model)
    return f"{name}, {variant}" if variant else name
