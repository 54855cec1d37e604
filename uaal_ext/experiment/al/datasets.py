"""The splits an experiment reads: the pool (a training view and a scoring view of the same images)
and the validation split, built from the dataset table."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from ..data import EvalTransform, TrainTransform, dataset_spec, with_transform
from .config import ExperimentConfig

__all__ = ["Datasets", "build_datasets", "IndexedImages"]


@dataclass
class Datasets:
    pool_train: Dataset  # the pool with training augmentation (labeled subsets are taken from it)
    pool_eval: Dataset  # the same images without augmentation (scored by the acquisition methods)
    val: Dataset  # the validation split
    num_classes: int
    ignore_index: int
    class_names: tuple[str, ...]


class IndexedImages(Dataset):
    """``(image, pool index)`` items of a dataset: what ``select_from_pool``'s loader yields."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index][0], index


def _first(dataset: Dataset, size: int | None, key: str) -> Dataset:
    if size is None or size == len(dataset):  # type: ignore[arg-type]
        return dataset
    if size > len(dataset):  # type: ignore[arg-type]
        raise ValueError(f"config key {key!r} is {size} but the split has only {len(dataset)} images")
    return Subset(dataset, range(size))


def build_datasets(config: ExperimentConfig) -> Datasets:
    """The pool (training and scoring views) and validation split of ``config``: the first
    ``pool_size`` / ``val_size`` images of the dataset's pool and validation splits."""
    spec = dataset_spec(config.dataset)
    train_transform = TrainTransform(
        crop_size=config.image_size, scale_range=config.scale_range, ignore_index=spec.ignore_index
    )
    eval_transform = EvalTransform(size_divisor=spec.eval_size_divisor, ignore_index=spec.ignore_index)
    options = dict(root=config.root, seed=config.data_seed, image_size=config.image_size, **config.dataset_options)
    pool = spec.build("pool", size=config.pool_size, **options)
    val = spec.build("val", size=config.val_size, **options)
    return Datasets(
        pool_train=_first(with_transform(pool, train_transform), config.pool_size, "pool_size"),
        pool_eval=_first(with_transform(pool, eval_transform), config.pool_size, "pool_size"),
        val=_first(with_transform(val, eval_transform), config.val_size, "val_size"),
        num_classes=spec.num_classes,
        ignore_index=spec.ignore_index,
        class_names=spec.class_names,
    )
