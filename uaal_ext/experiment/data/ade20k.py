"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes."""

from __future__ import annotations

import os

import numpy as np

from .label_maps import LabelMapDataset, require_dir
from .registry import DatasetSpec, register_dataset
from .transforms import IGNORE_INDEX, Transform, default_transform

__all__ = ["ADE20K_CLASSES", "ADE20KSegmentation"]

# ADE20K SceneParsing's 150 classes in label order (label k + 1 in the annotation PNGs).
ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)


class ADE20KSegmentation(LabelMapDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes (:data:`ADE20K_CLASSES`).

    ``root`` is the ``ADEChallengeData2016`` folder (or its parent) holding
    ``images/{split}/*.jpg`` and ``annotations/{split}/*.png``; ``split`` is ``"training"`` or
    ``"validation"``. Images and annotations are paired by file stem; one without its partner raises
    ``FileNotFoundError`` naming the missing path. Label 0 ("other") becomes 255, ``1..150`` become
    ``0..149``; a label above 150 raises ``ValueError`` naming the file.
    """

    CLASS_NAMES = ADE20K_CLASSES
    NUM_CLASSES = len(ADE20K_CLASSES)
    IGNORE_INDEX = IGNORE_INDEX
    SPLITS = ("training", "validation")

    def __init__(self, root: str | os.PathLike, split: str = "training", transform: Transform | None = None) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split: expected one of {self.SPLITS}, got {split!r}")
        root = os.fspath(root)
        require_dir(root, "ADE20K root")
        nested = os.path.join(root, "ADEChallengeData2016")
        if not os.path.isdir(os.path.join(root, "images")) and os.path.isdir(nested):
            root = nested
        image_dir, label_dir = os.path.join(root, "images", split), os.path.join(root, "annotations", split)
        require_dir(image_dir, "ADE20K image folder")
        require_dir(label_dir, "ADE20K annotation folder")
        images = {os.path.splitext(n)[0]: n for n in os.listdir(image_dir) if n.lower().endswith((".jpg", ".jpeg"))}
        labels = {os.path.splitext(n)[0]: n for n in os.listdir(label_dir) if n.lower().endswith(".png")}
        for stem in sorted(images.keys() - labels.keys()):
            raise FileNotFoundError(
                f"ADE20K annotation not found for {os.path.join(image_dir, images[stem])}: {os.path.join(label_dir, stem + '.png')}"
            )
        for stem in sorted(labels.keys() - images.keys()):
            raise FileNotFoundError(
                f"ADE20K image not found for {os.path.join(label_dir, labels[stem])}: {os.path.join(image_dir, stem + '.jpg')}"
            )
        if not images:
            raise FileNotFoundError(f"no ADE20K images (*.jpg) in {image_dir}")
        stems = sorted(images)
        self.root, self.split = root, split
        self.images = [os.path.join(image_dir, images[s]) for s in stems]
        self.labels = [os.path.join(label_dir, labels[s]) for s in stems]
        self.transform = default_transform(transform)

        self._table = np.full(257, IGNORE_INDEX, dtype=np.int64)  # indexed by id + 1
        self._table[2:152] = np.arange(150)
        self._valid = np.zeros(257, dtype=bool)
        self._valid[1:152] = True  # ids 0..150
        self._valid_ids = "0..150"


def _build(split: str, *, root: str | None, size: int | None, seed: int, image_size: tuple[int, int]):
    return ADE20KSegmentation(root, "validation" if split == "val" else "training")


register_dataset(DatasetSpec(name="ade20k", class_names=ADE20K_CLASSES, build=_build, display_name="ADE20K"))
