"""Cityscapes fine annotations, 19 train-id classes."""

from __future__ import annotations

import os

import numpy as np

from .label_maps import LabelMapDataset, require_dir
from .registry import DatasetSpec, register_dataset
from .transforms import IGNORE_INDEX, Transform, default_transform

__all__ = ["CITYSCAPES_CLASSES", "CityscapesSegmentation"]

# Cityscapes' 19 evaluation classes in train-id order (torchvision.datasets.Cityscapes.classes).
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)


class CityscapesSegmentation(LabelMapDataset):
    """Cityscapes fine annotations (``torchvision.datasets.Cityscapes``, ``target_type="semantic"``).

    ``root`` holds ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
    ``gtFine/{split}/{city}/*_gtFine_labelIds.png``; ``split`` is ``"train"``, ``"val"`` or ``"test"``.
    Label ids 0..33 map to the 19 train ids of torchvision's class table (:data:`CITYSCAPES_CLASSES`),
    all others and -1 / 255 to 255; any other id raises ``ValueError`` naming the file. Images are
    sorted by path. Every label file is checked to exist when the dataset is built.
    """

    CLASS_NAMES = CITYSCAPES_CLASSES
    NUM_CLASSES = len(CITYSCAPES_CLASSES)
    IGNORE_INDEX = IGNORE_INDEX

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Transform | None = None) -> None:
        from torchvision.datasets import Cityscapes

        root = os.fspath(root)
        require_dir(root, "Cityscapes root")
        try:
            base = Cityscapes(root, split=split, mode="fine", target_type="semantic")
        except RuntimeError as err:  # torchvision's "Dataset not found or incomplete"
            missing = [
                p
                for p in (os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split))
                if not os.path.isdir(p)
            ]
            raise FileNotFoundError(f"Cityscapes split folder not found: {', '.join(missing) or root}") from err
        pairs = sorted(zip(base.images, (t[0] for t in base.targets)))
        if not pairs:
            raise FileNotFoundError(f"no Cityscapes images in {base.images_dir}")
        for _, label_path in pairs:
            if not os.path.isfile(label_path):
                raise FileNotFoundError(f"Cityscapes label file not found: {label_path}")
        self.root, self.split = root, split
        self.images = [p[0] for p in pairs]
        self.labels = [p[1] for p in pairs]
        self.transform = default_transform(transform)

        # Lookup table indexed by id + 1: ids -1..255; valid: -1, 0..33 and 255.
        self._table = np.full(257, IGNORE_INDEX, dtype=np.int64)
        self._valid = np.zeros(257, dtype=bool)
        self._valid[[0, 256]] = True
        self._valid[1:35] = True
        for c in Cityscapes.classes:
            if 0 <= c.id <= 33 and 0 <= c.train_id < self.NUM_CLASSES:
                self._table[c.id + 1] = c.train_id
        self._valid_ids = "0..33 (or -1/255)"


def _build(split: str, *, root: str | None, size: int | None, seed: int, image_size: tuple[int, int]):
    return CityscapesSegmentation(root, "val" if split == "val" else "train")


register_dataset(
    DatasetSpec(name="cityscapes", class_names=CITYSCAPES_CLASSES, build=_build, display_name="CityScapes")
)
