"""Segmentation datasets and transforms for the active-learning driver.

Every dataset yields ``(image float32 (3, H, W) normalised, label int64 (H, W))`` with 255 marking
pixels that count for nothing (:mod:`.transforms`). The table of datasets (:mod:`.registry`):

- ``"synthetic"`` (:class:`SyntheticScenes`, the default): procedurally generated street scenes,
  10 classes, no files needed. Item ``i`` of a split is a pure function of ``(seed, split, i)``.
- ``"cityscapes"`` (:class:`CityscapesSegmentation`): the fine annotations, label ids mapped to the
  19 train ids, everything else to 255.
- ``"ade20k"`` (:class:`ADE20KSegmentation`): ``ADEChallengeData2016``, 150 classes; label 0 ("other")
  becomes 255 and ``1..150`` become ``0..149``.

Loaders fail early and by name: a missing root, split folder, image or label file raises
``FileNotFoundError`` with the path; an unreadable image raises ``OSError`` with the path; a label
value outside the dataset's id range raises ``ValueError`` naming the file and the values.
"""

# isort: off
# Each built-in dataset registers itself on import, in the order the table lists them.
from .synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from .cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation
from .ade20k import ADE20K_CLASSES, ADE20KSegmentation

# isort: on
from .registry import AL_SPLITS, DatasetSpec, dataset_info, dataset_names, dataset_spec, make_dataset, register_dataset
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform, with_transform

__all__ = [
    "AL_SPLITS",
    "DatasetSpec",
    "register_dataset",
    "dataset_spec",
    "dataset_names",
    "dataset_info",
    "make_dataset",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "TrainTransform",
    "with_transform",
    "SYNTHETIC_CLASSES",
    "SyntheticScenes",
    "CITYSCAPES_CLASSES",
    "CityscapesSegmentation",
    "ADE20K_CLASSES",
    "ADE20KSegmentation",
]
