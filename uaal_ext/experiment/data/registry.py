"""The dataset table: every dataset the driver can run on, by the name experiment configs use.

A dataset is registered once, in its own module, as a :class:`DatasetSpec`; the experiment config,
the loop, the reports and the maps all read this table, so adding a dataset means one file (the
dataset class and its ``register_dataset`` call) plus its import in ``data/__init__.py`` -- or, for a
dataset of your own, calling :func:`register_dataset` before running the experiment.

Active-learning splits: ``"pool"`` is what the loop draws its labeled set from, ``"val"`` what it
evaluates on (``"train"`` is a third split for users who want one). For the synthetic scenes these
are disjoint generated sets; for the real datasets ``"train"`` and ``"pool"`` are both the official
training split and ``"val"`` the official validation split, since their test labels are not public.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from ..._registry import Registry
from .transforms import IGNORE_INDEX, Transform, with_transform

AL_SPLITS = ("train", "pool", "val")

# build(split, *, root, size, seed, image_size) -> a Dataset of (image, label) with a `transform`
# attribute (EvalTransform by default); split is one of AL_SPLITS.
Builder = Callable[..., Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset, and what the driver needs to know about it."""

    name: str  # the config value, e.g. "cityscapes"
    class_names: tuple[str, ...]  # in label order; their number is the model's output channels
    build: Builder  # build(split, *, root, size, seed, image_size, **options) -> Dataset
    display_name: str = ""  # for tables and figure titles (default: name)
    ignore_index: int = IGNORE_INDEX  # label value of pixels that count for nothing
    generated: bool = False  # items are generated (needs a size, no root), else read from `root`
    eval_size_divisor: int = 16  # evaluation pads image sides up to multiples of this (output stride)
    options: tuple[str, ...] = ()  # extra keyword options the builder takes (config key dataset_options)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def title(self) -> str:
        return self.display_name or self.name


#: Every dataset by name.
DATASETS: Registry[DatasetSpec] = Registry("dataset", "name")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Adds ``spec`` to the table under ``spec.name`` and returns it; a taken name raises ValueError."""
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register_dataset takes a DatasetSpec, got {type(spec).__name__}")
    if not spec.class_names:
        raise ValueError(f"dataset {spec.name!r} needs at least one class name")
    return DATASETS.add(spec.name, spec)


def dataset_names() -> tuple[str, ...]:
    """The registered datasets, in registration order."""
    return DATASETS.names()


def dataset_spec(name: object) -> DatasetSpec:
    """The spec registered as ``name``; ValueError listing the names otherwise."""
    return DATASETS.get(name)


def dataset_info(name: str) -> tuple[int, int, tuple[str, ...]]:
    """``(num_classes, ignore_index, class_names)`` of dataset ``name``."""
    spec = dataset_spec(name)
    return spec.num_classes, spec.ignore_index, spec.class_names


def make_dataset(
    name: str,
    split: str,
    *,
    root: str | None = None,
    size: int | None = None,
    seed: int = 0,
    image_size: tuple[int, int] = (64, 128),
    transform: Transform | None = None,
    **options: Any,
) -> Dataset:
    """Dataset ``name`` for the active-learning split ``split`` (``"train"``, ``"pool"`` or ``"val"``).

    Generated datasets (synthetic) use ``size`` (None: their default), ``seed`` and ``image_size``
    and ignore ``root``; the others need ``root`` and return the whole split. ``transform`` replaces
    the default :class:`~.transforms.EvalTransform`; ``options`` are the dataset's own
    (:attr:`DatasetSpec.options`, e.g. the synthetic scenes' ``frames_per_scene``).
    """
    spec = dataset_spec(name)
    if split not in AL_SPLITS:
        raise ValueError(f"split: expected one of {AL_SPLITS}, got {split!r}")
    if not spec.generated and root is None:
        raise ValueError(f"root: dataset {name!r} needs the folder it is stored in, got None")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"dataset {name!r} takes the options {list(spec.options)}, not {unknown}")
    dataset = spec.build(split, root=root, size=size, seed=seed, image_size=image_size, **options)
    return dataset if transform is None else with_transform(dataset, transform)
