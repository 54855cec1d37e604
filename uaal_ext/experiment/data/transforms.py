"""Transforms of ``(image, label)`` pairs, and what every dataset of the driver yields.

- ``image``: float32 ``(3, H, W)``, normalised with the ImageNet mean and std (:data:`IMAGENET_MEAN`,
  :data:`IMAGENET_STD`), so roughly zero mean and unit variance per channel;
- ``label``: int64 ``(H, W)``, a class index in ``[0, num_classes)`` or :data:`IGNORE_INDEX` (255).

Transforms accept PIL images (the real loaders hand them over) or tensors: a uint8 ``(3, H, W)``
tensor in ``[0, 255]`` or a float one in ``[0, 1]``; labels as a PIL image, a numpy array or an
integer tensor. :class:`EvalTransform` only normalises (the default of every dataset);
:class:`TrainTransform` adds random scale, crop and flip.

Randomness of :class:`TrainTransform`: from the ``generator`` passed to the call, else torch's global
generator. Inside a ``DataLoader`` each worker's global generator is seeded with ``base_seed +
worker_id``, the base seed drawn from the main process's generator (or the loader's ``generator=``),
so ``torch.manual_seed(s)`` before iterating makes augmentation reproducible for a fixed number of
workers; this module never reseeds anything.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..._validation import check_int

IGNORE_INDEX = 255  # label of pixels that count for nothing (borders, void, padding)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = Union[Tensor, np.ndarray, Any]  # noqa: UP007  (a runtime alias; Any: a PIL image)
Transform = Callable[[Any, Any], tuple[Tensor, Tensor]]


def _image_to_float(image: ImageLike) -> Tensor:
    """A PIL image, uint8 tensor/array (3, H, W) or float tensor in [0, 1] -> float32 (3, H, W) in [0, 1]."""
    if not isinstance(image, (Tensor, np.ndarray)):  # PIL
        from torchvision.transforms.functional import pil_to_tensor

        image = pil_to_tensor(image.convert("RGB"))
    image = torch.as_tensor(image)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    if not image.is_floating_point():
        raise ValueError(f"image: expected uint8 or floating dtype, got {image.dtype}")
    return image.float()


def _label_to_long(label: Any) -> Tensor:
    """A PIL image, numpy array or integer tensor (H, W) -> int64 (H, W)."""
    if not isinstance(label, (Tensor, np.ndarray)):  # PIL
        label = np.array(label)
    elif isinstance(label, np.ndarray) and not label.flags.writeable:
        label = label.copy()  # torch warns on read-only arrays (np.asarray of a PIL image is one)
    label = torch.as_tensor(label)
    if label.dim() != 2:
        raise ValueError(f"label: expected shape (H, W), got {tuple(label.shape)}")
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise ValueError(f"label: expected an integer dtype, got {label.dtype}")
    return label.long()


def _check_pair(image: Tensor, label: Tensor) -> None:
    if image.shape[1:] != label.shape:
        raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in (H, W)")


def _normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image - mean_t) / std_t


@dataclass
class EvalTransform:
    """``(image, label) -> (normalised float32 (3, H, W), int64 (H, W))``; nothing random.

    With ``size_divisor`` > 1 the bottom and right edges are padded up to multiples of it (image with
    0, the mean colour after normalisation; label with ``ignore_index``), since DeepLabv3+ needs
    sides divisible by its output stride and ADE20K's images come in any size; padded pixels never
    count in the metrics. ``generator`` is accepted (and unused) so both transforms are called the
    same way.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN  # subtracted per channel from [0, 1] pixels
    std: tuple[float, float, float] = IMAGENET_STD  # then divided per channel
    size_divisor: int = 1  # pad H and W up to multiples of this
    ignore_index: int = IGNORE_INDEX  # label of padded pixels

    def __post_init__(self) -> None:
        check_int("size_divisor", self.size_divisor, low=1)

    def __call__(self, image: ImageLike, label: Any, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        image_t, label_t = _image_to_float(image), _label_to_long(label)
        _check_pair(image_t, label_t)
        image_t = _normalize(image_t, self.mean, self.std)
        pad_h, pad_w = (-label_t.shape[0]) % self.size_divisor, (-label_t.shape[1]) % self.size_divisor
        if pad_h or pad_w:
            image_t = F.pad(image_t, (0, pad_w, 0, pad_h), value=0.0)
            label_t = F.pad(label_t, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image_t, label_t


@dataclass
class TrainTransform:
    """Random scale, pad-with-ignore and random crop, horizontal flip; then the output is ``crop_size``.

    Order: normalise, rescale by ``s ~ U(scale_range)`` (image bilinear with antialiasing, label
    nearest, so labels only take values they had), pad bottom/right up to ``crop_size`` (image with 0,
    the mean colour after normalisation; label with ``ignore_index``), crop a uniformly placed
    ``crop_size`` window, flip both left-right with probability 0.5.

    Random draws come from ``generator`` when given, else torch's global generator (see the module
    docstring for DataLoader workers).
    """

    crop_size: tuple[int, int]  # (H, W) of every output
    scale_range: tuple[float, float] = (0.5, 2.0)  # rescale factor drawn uniformly from this range
    flip: bool = True  # horizontal flip with probability 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation, as EvalTransform
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = IGNORE_INDEX  # label of padded pixels

    def __post_init__(self) -> None:
        crop = tuple(int(c) for c in self.crop_size)
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop_size: expected two positive ints (H, W), got {self.crop_size}")
        self.crop_size = crop  # type: ignore[assignment]
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: expected 0 < low <= high, got {self.scale_range}")

    def __call__(self, image: ImageLike, label: Any, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        image_t, label_t = _image_to_float(image), _label_to_long(label)
        _check_pair(image_t, label_t)
        image_t = _normalize(image_t, self.mean, self.std)
        # All four draws happen on every call, so one call consumes the same amount of the stream.
        u_scale, u_top, u_left, u_flip = torch.rand(4, generator=generator, dtype=torch.float64).tolist()

        lo, hi = self.scale_range
        scale = lo + (hi - lo) * u_scale
        h, w = label_t.shape
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size != (h, w):
            image_t = F.interpolate(image_t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            # "nearest-exact" samples the source pixel whose centre is nearest, the point bilinear centres on.
            label_t = F.interpolate(label_t[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()

        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(0, crop_h - size[0]), max(0, crop_w - size[1])
        if pad_h or pad_w:
            image_t = F.pad(image_t, (0, pad_w, 0, pad_h), value=0.0)
            label_t = F.pad(label_t, (0, pad_w, 0, pad_h), value=self.ignore_index)
        h, w = label_t.shape
        top = min(int(u_top * (h - crop_h + 1)), h - crop_h)
        left = min(int(u_left * (w - crop_w + 1)), w - crop_w)
        image_t = image_t[:, top : top + crop_h, left : left + crop_w]
        label_t = label_t[top : top + crop_h, left : left + crop_w]

        if self.flip and u_flip < 0.5:
            image_t, label_t = image_t.flip(-1), label_t.flip(-1)
        return image_t.contiguous(), label_t.contiguous()


def _default_transform(transform: Transform | None) -> Transform:
    return EvalTransform() if transform is None else transform


def default_transform(transform: Transform | None) -> Transform:
    return EvalTransform() if transform is None else transform


def with_transform(dataset: Dataset, transform: Transform) -> Dataset:
    """A view of ``dataset`` (any dataset with a ``transform`` attribute, as all of the driver's have)
    that applies ``transform`` instead: a shallow copy, so file lists and caches are shared."""
    if not hasattr(dataset, "transform"):
        raise TypeError(f"{type(dataset).__name__} has no transform attribute to replace")
    view = copy.copy(dataset)
    view.transform = transform  # type: ignore[attr-defined]
    return view
