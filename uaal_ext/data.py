"""Segmentation datasets and transforms for the active-learning driver.

Every dataset here yields ``(image, label)``:

- ``image``: float32 ``(3, H, W)``, normalised with the ImageNet mean and std (:data:`IMAGENET_MEAN`,
  :data:`IMAGENET_STD`), so roughly zero mean and unit variance per channel;
- ``label``: int64 ``(H, W)``, a class index in ``[0, num_classes)`` or :data:`IGNORE_INDEX` (255).

Datasets (``make_dataset(name, split)``; ``dataset_info(name) -> (num_classes, ignore_index,
class_names)``):

- ``"synthetic"`` (:class:`SyntheticScenes`, the default): procedurally generated street scenes,
  10 classes, no files needed. Item ``i`` of a split is a pure function of ``(seed, split, i)``.
- ``"cityscapes"`` (:class:`CityscapesSegmentation`): the fine annotations, label ids mapped to the
  19 train ids, everything else to 255.
- ``"ade20k"`` (:class:`ADE20KSegmentation`): ``ADEChallengeData2016``, 150 classes; label 0 ("other")
  becomes 255 and ``1..150`` become ``0..149``.

Active-learning splits: ``"train"`` and ``"pool"`` are what the loop draws its labeled set and its
unlabeled pool from, ``"val"`` is what it evaluates on. For the synthetic scenes these are three
disjoint generated sets. For the real datasets ``"train"`` and ``"pool"`` are both the official
training split (the loop keeps the labeled subset itself) and ``"val"`` is the official validation
split, since their test labels are not public.

Transforms take and return ``(image, label)``. They accept PIL images (the real loaders hand them
over) or tensors: a uint8 ``(3, H, W)`` tensor in ``[0, 255]`` or a float one in ``[0, 1]``; labels
as a PIL image, a numpy array or an integer tensor. :class:`EvalTransform` only normalises (the
default of every dataset); :class:`TrainTransform` adds random scale, crop and flip.

Randomness of :class:`TrainTransform`: from the ``generator`` passed to the call, else torch's global
generator. Inside a ``DataLoader`` each worker's global generator is seeded with ``base_seed +
worker_id``, the base seed drawn from the main process's generator (or the loader's ``generator=``),
so ``torch.manual_seed(s)`` before iterating makes augmentation reproducible for a fixed number of
workers; this module never reseeds anything.

Loaders fail early and by name: a missing root, split folder, image or label file raises
``FileNotFoundError`` with the path; an unreadable image raises ``OSError`` with the path; a label
value outside the dataset's id range raises ``ValueError`` naming the file and the values.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNTHETIC_CLASSES",
    "CITYSCAPES_CLASSES",
    "ADE20K_CLASSES",
    "EvalTransform",
    "TrainTransform",
    "SyntheticScenes",
    "CityscapesSegmentation",
    "ADE20KSegmentation",
    "make_dataset",
    "dataset_info",
]

DATASETS = ("synthetic", "cityscapes", "ade20k")
IGNORE_INDEX = 255  # label of pixels that count for nothing (borders, void, padding)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AL_SPLITS = ("train", "pool", "val")

SYNTHETIC_CLASSES = (
    "road", "sidewalk", "building", "vegetation", "terrain", "sky", "pole", "sign", "person", "car",
)
# Cityscapes' 19 evaluation classes in train-id order (torchvision.datasets.Cityscapes.classes).
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
# ADE20K SceneParsing's 150 classes in label order (label k + 1 in the annotation PNGs).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

ImageLike = Union[Tensor, np.ndarray, Any]  # Any: a PIL image
Transform = Callable[[Any, Any], tuple[Tensor, Tensor]]


# --------------------------------------------------------------------------------------------------
# Transforms


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
        if isinstance(self.size_divisor, bool) or not isinstance(self.size_divisor, int) or self.size_divisor < 1:
            raise ValueError(f"size_divisor: expected an int >= 1, got {self.size_divisor!r}")

    def __call__(self, image: ImageLike, label: Any, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
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

    def __call__(self, image: ImageLike, label: Any, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
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


def _default_transform(transform: Optional[Transform]) -> Transform:
    return EvalTransform() if transform is None else transform


# --------------------------------------------------------------------------------------------------
# Synthetic street scenes

ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, POLE, SIGN, PERSON, CAR = range(len(SYNTHETIC_CLASSES))
_SPLIT_CODES = {"train": 0, "pool": 1, "val": 2}
_DEFAULT_SIZES = {"train": 200, "pool": 200, "val": 50}

# Scene statistics (probabilities are per image unless stated); chosen for a long tail:
# road, sidewalk, sky, building in nearly every image; cars in about half; poles ~35%; people ~15%;
# signs (only ever on a pole) ~10%.
_P_TERRAIN_SIDE = 0.35  # per side of the road
_P_TREES = 0.6
_P_CARS = 0.5
_P_PEOPLE = 0.15
_P_POLES = 0.35
_P_SIGN_PER_POLE = 0.22

_BUILDING_PALETTE = torch.tensor(
    [[0.50, 0.50, 0.50], [0.70, 0.62, 0.50], [0.55, 0.30, 0.22], [0.80, 0.80, 0.78], [0.32, 0.32, 0.35]]
)
_CAR_PALETTE = torch.tensor(
    [[0.08, 0.08, 0.09], [0.85, 0.85, 0.86], [0.45, 0.46, 0.48], [0.65, 0.66, 0.68], [0.60, 0.10, 0.10],
     [0.15, 0.22, 0.50], [0.30, 0.40, 0.25]]
)
_SIGN_PALETTE = torch.tensor([[0.80, 0.10, 0.10], [0.10, 0.25, 0.70], [0.90, 0.75, 0.10], [0.90, 0.90, 0.90]])


class _Scene:
    """One image being painted back to front: a label map and an RGB canvas in [0, 1], one generator."""

    def __init__(self, generator: torch.Generator, height: int, width: int) -> None:
        self.g = generator
        self.h, self.w = height, width
        self.y = torch.arange(height, dtype=torch.float32).view(-1, 1) + 0.5  # (H, 1) pixel centres
        self.x = torch.arange(width, dtype=torch.float32).view(1, -1) + 0.5  # (1, W)
        self.label = torch.full((height, width), SKY, dtype=torch.int64)
        self.rgb = torch.zeros(3, height, width)

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * torch.rand((), generator=self.g).item()

    def chance(self, p: float) -> bool:
        return self.uniform() < p

    def integer(self, low: int, high: int) -> int:
        """Uniform in [low, high], both ends included."""
        return int(torch.randint(low, high + 1, (), generator=self.g))

    def jitter(self, colour: Tensor, amount: float) -> Tensor:
        """A colour (3,) moved by a random brightness and a random tint, kept in [0, 1]."""
        brightness = 1.0 + amount * torch.randn((), generator=self.g)
        tint = amount * 0.5 * torch.randn(3, generator=self.g)
        return (colour * brightness + tint).clamp(0.0, 1.0)

    def smooth_noise(self, cell: float) -> Tensor:
        """(H, W) noise of unit scale varying over about ``cell`` pixels (bilinearly upsampled randn)."""
        gh, gw = math.ceil(self.h / cell) + 1, math.ceil(self.w / cell) + 1
        coarse = torch.randn(1, 1, gh, gw, generator=self.g)
        return F.interpolate(coarse, size=(self.h, self.w), mode="bilinear", align_corners=False)[0, 0]

    def paint(self, mask: Tensor, cls: int, colour: Tensor, texture: Optional[Tensor] = None) -> None:
        """Sets ``mask`` (H, W) to class ``cls`` and colour (3,) [+ texture (H, W) added to every channel]."""
        fill = colour.view(3, 1, 1).expand(3, self.h, self.w)
        if texture is not None:
            fill = fill + texture
        self.label.masked_fill_(mask, cls)
        self.rgb = torch.where(mask, fill, self.rgb)

    def recolour(self, mask: Tensor, colour: Tensor) -> None:
        """Changes colour only: markings, posters, puddles keep the class beneath them."""
        self.rgb = torch.where(mask, colour.view(3, 1, 1), self.rgb)

    def box(self, top: float, bottom: float, left: float, right: float) -> Tensor:
        return ((self.y >= top) & (self.y < bottom)) & ((self.x >= left) & (self.x < right))  # (H, 1) & (1, W)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> Tensor:
        return ((self.y - cy) / ry) ** 2 + ((self.x - cx) / rx) ** 2 <= 1.0


def _render_scene(g: torch.Generator, height: int, width: int) -> tuple[Tensor, Tensor, dict[str, float]]:
    """One street scene: image float32 (3, H, W) in [0, 1], label int64 (H, W), and its parameters.

    Layout: sky; a skyline of buildings and trees standing on the horizon; below it the ground
    (sidewalk, optional terrain verges) and a road narrowing towards a vanishing point; then cars on
    the road and poles (some carrying signs) and people on the sidewalks, painted far to near with
    sizes that grow towards the bottom. Colours come from overlapping per-class distributions with
    textures and colour-only distractors; a per-image difficulty in [0, 1] sets noise, blur, contrast
    loss and clutter. Label boundaries (a pixel differing from its right or lower neighbour) are 255.
    """
    s = _Scene(g, height, width)
    H, W = float(height), float(width)
    difficulty = s.uniform()
    horizon = H * s.uniform(0.38, 0.55)

    # Sky: blue to overcast, brighter towards the horizon, soft clouds.
    sky = torch.lerp(torch.tensor([0.40, 0.60, 0.90]), torch.tensor([0.80, 0.82, 0.85]), s.uniform())
    sky_texture = 0.12 * s.y / H + 0.12 * s.smooth_noise(H / 4).clamp(min=0)
    s.paint(torch.ones(height, width, dtype=torch.bool), SKY, s.jitter(sky, 0.08), sky_texture)

    # Buildings along the horizon, with rows of windows; some windows mirror the sky.
    left = -s.uniform(0.0, 0.2) * W
    while left < W:
        right = left + s.uniform(0.12, 0.35) * W
        top = horizon * s.uniform(0.05, 0.75)
        colour = s.jitter(_BUILDING_PALETTE[s.integer(0, len(_BUILDING_PALETTE) - 1)], 0.12)
        if s.chance(0.85):
            s.paint(s.box(top, horizon + 1, left, right), BUILDING, colour, 0.03 * s.smooth_noise(3))
            pitch_x, pitch_y = s.uniform(4, 9) * H / 64, s.uniform(5, 10) * H / 64
            window_colour = sky if s.chance(0.3) else s.jitter(torch.tensor([0.15, 0.17, 0.22]), 0.2)
            windows = (
                ((s.x - left) % pitch_x < 0.5 * pitch_x)
                & ((s.y - top) % pitch_y < 0.5 * pitch_y)
                & s.box(top + 2, horizon - 2, left + 1, right - 1)
                & (s.label == BUILDING)
            )
            s.recolour(windows, window_colour)
        left = right

    # Trees (vegetation) in front of the buildings: a trunk and a crown of overlapping discs.
    if s.chance(_P_TREES):
        for _ in range(s.integer(1, 4)):
            cx, r = s.uniform(0, W), s.uniform(0.06, 0.16) * H
            cy = horizon - s.uniform(0.1, 0.35) * H
            crown = torch.zeros(height, width, dtype=torch.bool)
            for _ in range(3):
                crown |= s.ellipse(cy + s.uniform(-0.5, 0.5) * r, cx + s.uniform(-0.7, 0.7) * r, r, r * s.uniform(0.8, 1.3))
            trunk_w = max(2.0, 0.25 * r)
            trunk = s.box(cy, horizon + 1, cx - trunk_w / 2, cx + trunk_w / 2)
            s.paint(trunk, VEGETATION, s.jitter(torch.tensor([0.30, 0.22, 0.15]), 0.15))
            leaves = 0.08 * s.smooth_noise(2) + 0.06 * s.smooth_noise(5)
            s.paint(crown, VEGETATION, s.jitter(torch.tensor([0.22, 0.36, 0.16]), 0.15), leaves)

    # Ground in perspective: a row's depth scale grows from 0 at the horizon to 1 at the bottom.
    depth = ((s.y - horizon) / (H - horizon)).clamp(min=0)  # (H, 1)
    vx = W * s.uniform(0.3, 0.7)
    axis = vx + (W * s.uniform(-0.25, 0.25)) * depth  # road centre line per row (H, 1)
    half_road = W * s.uniform(0.3, 0.55) * depth + 0.5
    walk = W * s.uniform(0.08, 0.2) * depth + 0.5  # sidewalk width per row
    ground = s.y >= horizon
    tiles = (((s.x % 6) < 1) | ((s.y % 4) < 1)).float()  # paving joints
    s.paint(ground.expand(height, width), SIDEWALK, s.jitter(torch.tensor([0.52, 0.50, 0.46]), 0.12),
            0.04 * s.smooth_noise(2) - 0.05 * tiles)
    offset = s.x - axis  # (H, W) signed distance from the road axis
    for side in (-1.0, 1.0):
        if s.chance(_P_TERRAIN_SIDE):
            verge = ground & (side * offset > half_road + walk)
            s.paint(verge, TERRAIN, s.jitter(torch.tensor([0.38, 0.42, 0.22]), 0.15), 0.07 * s.smooth_noise(2))
    road = ground & (offset.abs() <= half_road)
    s.paint(road, ROAD, s.jitter(torch.tensor([0.36, 0.36, 0.38]), 0.15),
            0.04 * torch.randn(height, width, generator=s.g) + 0.05 * s.smooth_noise(6))
    dashes = torch.sin(12.0 * torch.log1p((s.y - horizon).clamp(min=0))) > 0.2
    s.recolour(road & (offset.abs() < 0.05 * half_road + 0.3) & dashes, s.jitter(torch.tensor([0.85, 0.85, 0.80]), 0.05))

    # Objects stand on the ground at a row y0; drawn far (small y0) to near.
    def row_geometry(y0: float) -> tuple[float, float, float, float]:
        f = max(0.05, (y0 - horizon) / (H - horizon))
        return f, axis[int(y0), 0].item(), half_road[int(y0), 0].item(), walk[int(y0), 0].item()

    objects: list[tuple[float, int, float]] = []  # (y0, class, side or lane offset)
    if s.chance(_P_CARS):
        objects += [(s.uniform(horizon + 0.12 * (H - horizon), H), CAR, s.uniform(-0.6, 0.6)) for _ in range(s.integer(1, 3))]
    if s.chance(_P_PEOPLE):
        objects += [(s.uniform(horizon + 0.15 * (H - horizon), H), PERSON, s.uniform(-1, 1)) for _ in range(s.integer(1, 3))]
    if s.chance(_P_POLES):
        objects += [(s.uniform(horizon + 0.1 * (H - horizon), H), POLE, s.uniform(-1, 1)) for _ in range(s.integer(1, 2))]
    objects.sort(key=lambda o: o[0])
    for y0, cls, where in objects:
        f, centre, half, side_w = row_geometry(min(y0, H - 1))
        side = 1.0 if where >= 0 else -1.0
        if cls == CAR:
            cx, w = centre + where * half, f * 0.32 * W + 4
            h = 0.55 * w
            colour = s.jitter(_CAR_PALETTE[s.integer(0, len(_CAR_PALETTE) - 1)], 0.1)
            body = s.box(y0 - 0.6 * h, y0 - 0.1 * h, cx - w / 2, cx + w / 2)
            cabin = s.box(y0 - h, y0 - 0.55 * h, cx - 0.32 * w, cx + 0.32 * w)
            wheels = s.ellipse(y0 - 0.12 * h, cx - 0.3 * w, 0.14 * h + 0.5, 0.1 * w + 0.5)
            wheels |= s.ellipse(y0 - 0.12 * h, cx + 0.3 * w, 0.14 * h + 0.5, 0.1 * w + 0.5)
            s.paint(body | cabin, CAR, colour, 0.03 * s.smooth_noise(3))
            s.paint(wheels, CAR, s.jitter(torch.tensor([0.08, 0.08, 0.08]), 0.2))
            glass = s.box(y0 - 0.92 * h, y0 - 0.6 * h, cx - 0.27 * w, cx + 0.27 * w)
            s.recolour(glass, sky * 0.6 if s.chance(0.4) else s.jitter(torch.tensor([0.12, 0.14, 0.18]), 0.2))
        elif cls == PERSON:
            cx = centre + side * (half + side_w * s.uniform(0.2, 0.9))
            h = f * 0.55 * H + 5
            w = max(2.0, 0.28 * h)
            clothes = s.jitter(torch.rand(3, generator=s.g) * 0.85, 0.1)
            s.paint(s.box(y0 - 0.82 * h, y0 - 0.45 * h, cx - w / 2, cx + w / 2), PERSON, clothes)
            s.paint(s.box(y0 - 0.45 * h, y0, cx - 0.4 * w, cx + 0.4 * w), PERSON, s.jitter(torch.tensor([0.15, 0.15, 0.25]), 0.3))
            head = max(1.0, 0.1 * h)
            s.paint(s.ellipse(y0 - 0.82 * h - head, cx, head, head), PERSON, s.jitter(torch.tensor([0.78, 0.60, 0.50]), 0.2))
        else:  # a pole, perhaps carrying a sign
            cx = centre + side * (half + side_w * s.uniform(0.6, 1.0))
            h = f * 0.8 * H + 0.25 * H
            w = max(2.0, 3.0 * f)
            top = y0 - h
            s.paint(s.box(top, y0, cx - w / 2, cx + w / 2), POLE, s.jitter(torch.tensor([0.35, 0.35, 0.36]), 0.2))
            if s.chance(_P_SIGN_PER_POLE):
                r = max(2.0, 0.12 * f * H + 1.5)
                plate = s.ellipse(top + r, cx, r, r) if s.chance(0.5) else s.box(top, top + 2 * r, cx - r, cx + r)
                colour = s.jitter(_SIGN_PALETTE[s.integer(0, len(_SIGN_PALETTE) - 1)], 0.1)
                s.paint(plate, SIGN, colour, 0.05 * s.smooth_noise(2))

    # Clutter: colour-only distractors (posters, graffiti, puddles, patches) on walls and ground.
    clutter = int(round(10 * difficulty * s.uniform(0.5, 1.5)))
    can_hold = (s.label == BUILDING) | (s.label == ROAD) | (s.label == SIDEWALK) | (s.label == TERRAIN)
    for _ in range(clutter):
        ph, pw = s.uniform(0.03, 0.12) * H, s.uniform(0.03, 0.15) * W
        py, px = s.uniform(0, H), s.uniform(0, W)
        s.recolour(s.box(py, py + ph, px, px + pw) & can_hold, torch.rand(3, generator=s.g))

    # Photometry: uneven light, global gain and colour cast, contrast loss, blur, sensor noise.
    image = s.rgb * (1.0 + 0.25 * s.smooth_noise(H / 3)).clamp(min=0.3)
    gain = s.uniform(0.65, 1.3)
    cast = 1.0 + 0.08 * torch.randn(3, 1, 1, generator=s.g)
    image = image * gain * cast
    contrast = 1.0 - 0.6 * difficulty * s.uniform(0.5, 1.0)
    image = image.mean() + contrast * (image - image.mean())
    blur = 1.2 * difficulty * s.uniform(0.3, 1.0)
    if blur > 0.2:
        image = _gaussian_blur(image, blur)
    noise_std = 0.01 + 0.12 * difficulty
    image = (image + noise_std * torch.randn(3, height, width, generator=s.g)).clamp(0.0, 1.0)

    label = s.label
    border = torch.zeros_like(label, dtype=torch.bool)
    border[:, :-1] |= label[:, :-1] != label[:, 1:]
    border[:-1, :] |= label[:-1, :] != label[1:, :]
    label = label.masked_fill(border, IGNORE_INDEX)
    info = {"difficulty": difficulty, "noise_std": noise_std, "blur_sigma": blur if blur > 0.2 else 0.0,
            "contrast": contrast, "gain": gain, "clutter": float(clutter)}
    return image.float(), label, info


def _gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (3, H, W), borders replicated.

    Weighted sums of shifted copies: at these sizes far cheaper than conv2d (whose setup dominates).
    """
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1)
    kernel = torch.exp(-0.5 * (t.to(image.dtype) / sigma) ** 2)
    kernel = kernel / kernel.sum()
    _, h, w = image.shape
    # Replicate-pad by concatenation and sum sliced views, one tap at a time: every op stays
    # elementwise at the image's size (gather-based indexing was 10x slower on a busy 2-core box).
    taps = kernel.tolist()
    padded = torch.cat([image[:, :, :1].expand(-1, -1, radius), image, image[:, :, -1:].expand(-1, -1, radius)], dim=2)
    across = sum(k * padded[:, :, i : i + w] for i, k in enumerate(taps))
    padded = torch.cat([across[:, :1].expand(-1, radius, -1), across, across[:, -1:].expand(-1, radius, -1)], dim=1)
    return sum(k * padded[:, i : i + h] for i, k in enumerate(taps))


class SyntheticScenes(Dataset):
    """Procedurally generated street scenes: the default dataset, needing no files.

    Classes (:data:`SYNTHETIC_CLASSES`): road, sidewalk, building, vegetation, terrain, sky, pole,
    sign, person, car. Long-tailed by construction: road, sidewalk, building and sky are in nearly
    every image, cars in about half, poles in ~35%, people in ~15%, signs in ~10% (always on a pole).
    Colours are drawn from overlapping per-class distributions, with textures (windows that may
    mirror the sky, tiles, lane markings, leaves), colour-only clutter, uneven light, per-image gain
    and colour cast, so colour alone does not separate classes. Each image has a difficulty in
    [0, 1] that sets its noise, blur, contrast loss and clutter (:meth:`scene_info`). One-pixel
    borders between regions are labelled 255.

    Item ``i`` is generated from its own ``torch.Generator`` seeded by ``SeedSequence((seed, split,
    i))``: any item can be produced alone, in any order, in any worker, and always comes out the same.
    The splits ``"train"``, ``"pool"`` and ``"val"`` use different seed streams (disjoint sets).
    A 64x128 item takes a few milliseconds.

    Items: ``transform(image, label)``, image float32 (3, H, W) in [0, 1], label int64 (H, W); the
    default transform :class:`EvalTransform` normalises with the ImageNet mean and std.
    """

    CLASS_NAMES = SYNTHETIC_CLASSES
    NUM_CLASSES = len(SYNTHETIC_CLASSES)
    IGNORE_INDEX = IGNORE_INDEX
    SPLITS = tuple(_SPLIT_CODES)
    DEFAULT_SIZES = dict(_DEFAULT_SIZES)  # items per split when ``size`` is None

    def __init__(
        self,
        split: str = "train",
        size: Optional[int] = None,
        *,
        seed: int = 0,
        image_size: tuple[int, int] = (64, 128),
        transform: Optional[Transform] = None,
    ) -> None:
        if split not in _SPLIT_CODES:
            raise ValueError(f"split: expected one of {self.SPLITS}, got {split!r}")
        if size is None:
            size = _DEFAULT_SIZES[split]
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size: expected a non-negative int, got {size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        image_size = tuple(int(v) for v in image_size)
        if len(image_size) != 2 or min(image_size) < 16:
            raise ValueError(f"image_size: expected (H, W) with both >= 16, got {image_size}")
        self.split, self.size, self.seed = split, size, seed
        self.image_size: tuple[int, int] = image_size  # type: ignore[assignment]
        self.transform = _default_transform(transform)

    def __len__(self) -> int:
        return self.size

    def _generator(self, index: int) -> torch.Generator:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a {self.split!r} split of {self.size} items")
        index %= self.size
        state = np.random.SeedSequence([self.seed, _SPLIT_CODES[self.split], index]).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(state[0]))

    def raw(self, index: int) -> tuple[Tensor, Tensor]:
        """Item ``index`` before the transform: image float32 (3, H, W) in [0, 1], label int64 (H, W)."""
        image, label, _ = _render_scene(self._generator(index), *self.image_size)
        return image, label

    def scene_info(self, index: int) -> dict[str, float]:
        """The drawn parameters of item ``index``: difficulty, noise_std, blur_sigma, contrast, gain, clutter."""
        return _render_scene(self._generator(index), *self.image_size)[2]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.raw(index)
        return self.transform(image, label)

    def class_frequencies(self) -> tuple[Tensor, Tensor]:
        """``(pixel, image)`` float64 (NUM_CLASSES,) over the split, before the transform.

        ``pixel[c]``: class c's share of the labelled (non-255) pixels; ``image[c]``: the share of
        images containing class c.
        """
        pixels = torch.zeros(self.NUM_CLASSES, dtype=torch.float64)
        images = torch.zeros(self.NUM_CLASSES, dtype=torch.float64)
        for i in range(len(self)):
            _, label = self.raw(i)
            counts = torch.bincount(label[label != IGNORE_INDEX], minlength=self.NUM_CLASSES).double()
            pixels += counts
            images += (counts > 0).double()
        return pixels / pixels.sum().clamp(min=1), images / max(1, len(self))

    def extra_repr(self) -> str:
        return f"split={self.split!r}, size={self.size}, seed={self.seed}, image_size={self.image_size}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


# --------------------------------------------------------------------------------------------------
# Real datasets: file loading that names the file


def _open_rgb(path: str) -> Any:
    """The image at ``path`` as a decoded RGB PIL image; missing -> FileNotFoundError, bad -> OSError."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert decodes everything, so truncation shows up here
    except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise OSError(f"cannot read image file {path}: {err}") from err


def _read_label_ids(path: str) -> np.ndarray:
    """The single-channel label map at ``path`` as int64 (H, W)."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                raise ValueError(f"label file {path}: expected a single-channel label map, got mode {im.mode}")
            ids = np.asarray(im, dtype=np.int64)
    except (OSError, SyntaxError) as err:
        raise OSError(f"cannot read label file {path}: {err}") from err
    return ids


def _map_labels(ids: np.ndarray, table: np.ndarray, valid: np.ndarray, path: str, allowed: str) -> Tensor:
    """Maps label ids through ``table`` (indexed by id + 1, so -1 fits); ids with ``valid`` False raise."""
    shifted = ids + 1
    in_table = (shifted >= 0) & (shifted < len(table))
    ok = in_table.copy()
    ok[in_table] = valid[shifted[in_table]]
    if not ok.all():
        bad = np.unique(ids[~ok])
        raise ValueError(f"label file {path}: label ids {bad[:10].tolist()} outside {allowed}")
    return torch.from_numpy(table[shifted])


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")


class _LabelMapDataset(Dataset):
    """A real dataset's image/label-file pairs: ``images``, ``labels`` (paths), ``transform``, and the
    id lookup ``_table`` / ``_valid`` (indexed by id + 1) with ``_valid_ids`` naming the valid ids."""

    images: list
    labels: list
    _valid_ids: str

    def __len__(self) -> int:
        return len(self.images)

    def load_label(self, index: int) -> Tensor:
        """The label map int64 (H, W) of item ``index``: class indices, or 255 (ignored)."""
        path = self.labels[index]
        return _map_labels(_read_label_ids(path), self._table, self._valid, path, self._valid_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = _open_rgb(self.images[index])
        label = self.load_label(index)
        if (image.height, image.width) != tuple(label.shape):
            raise ValueError(f"{self.labels[index]}: label size {tuple(label.shape)} differs from image "
                             f"{self.images[index]} ({image.height}, {image.width})")
        return self.transform(image, label)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, size={len(self)})"


class CityscapesSegmentation(_LabelMapDataset):
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

    def __init__(self, root: Union[str, os.PathLike], split: str = "train", transform: Optional[Transform] = None) -> None:
        from torchvision.datasets import Cityscapes

        root = os.fspath(root)
        _require_dir(root, "Cityscapes root")
        try:
            base = Cityscapes(root, split=split, mode="fine", target_type="semantic")
        except RuntimeError as err:  # torchvision's "Dataset not found or incomplete"
            missing = [p for p in (os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)) if not os.path.isdir(p)]
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
        self.transform = _default_transform(transform)

        # Lookup table indexed by id + 1: ids -1..255; valid: -1, 0..33 and 255.
        self._table = np.full(257, IGNORE_INDEX, dtype=np.int64)
        self._valid = np.zeros(257, dtype=bool)
        self._valid[[0, 256]] = True
        self._valid[1 : 35] = True
        for c in Cityscapes.classes:
            if 0 <= c.id <= 33 and 0 <= c.train_id < self.NUM_CLASSES:
                self._table[c.id + 1] = c.train_id
        self._valid_ids = "0..33 (or -1/255)"



class ADE20KSegmentation(_LabelMapDataset):
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

    def __init__(self, root: Union[str, os.PathLike], split: str = "training", transform: Optional[Transform] = None) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split: expected one of {self.SPLITS}, got {split!r}")
        root = os.fspath(root)
        _require_dir(root, "ADE20K root")
        nested = os.path.join(root, "ADEChallengeData2016")
        if not os.path.isdir(os.path.join(root, "images")) and os.path.isdir(nested):
            root = nested
        image_dir, label_dir = os.path.join(root, "images", split), os.path.join(root, "annotations", split)
        _require_dir(image_dir, "ADE20K image folder")
        _require_dir(label_dir, "ADE20K annotation folder")
        images = {os.path.splitext(n)[0]: n for n in os.listdir(image_dir) if n.lower().endswith((".jpg", ".jpeg"))}
        labels = {os.path.splitext(n)[0]: n for n in os.listdir(label_dir) if n.lower().endswith(".png")}
        for stem in sorted(images.keys() - labels.keys()):
            raise FileNotFoundError(f"ADE20K annotation not found for {os.path.join(image_dir, images[stem])}: {os.path.join(label_dir, stem + '.png')}")
        for stem in sorted(labels.keys() - images.keys()):
            raise FileNotFoundError(f"ADE20K image not found for {os.path.join(label_dir, labels[stem])}: {os.path.join(image_dir, stem + '.jpg')}")
        if not images:
            raise FileNotFoundError(f"no ADE20K images (*.jpg) in {image_dir}")
        stems = sorted(images)
        self.root, self.split = root, split
        self.images = [os.path.join(image_dir, images[s]) for s in stems]
        self.labels = [os.path.join(label_dir, labels[s]) for s in stems]
        self.transform = _default_transform(transform)

        self._table = np.full(257, IGNORE_INDEX, dtype=np.int64)  # indexed by id + 1
        self._table[2:152] = np.arange(150)
        self._valid = np.zeros(257, dtype=bool)
        self._valid[1:152] = True  # ids 0..150
        self._valid_ids = "0..150"



# --------------------------------------------------------------------------------------------------
# Factory

# Active-learning split -> the dataset's own split name.
_SPLIT_MAPS = {
    "synthetic": {"train": "train", "pool": "pool", "val": "val"},
    "cityscapes": {"train": "train", "pool": "train", "val": "val"},
    "ade20k": {"train": "training", "pool": "training", "val": "validation"},
}


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"name: unknown dataset {name!r}; expected one of {DATASETS}")


def dataset_info(name: str) -> tuple[int, int, tuple[str, ...]]:
    """``(num_classes, ignore_index, class_names)`` of dataset ``name`` (one of :data:`DATASETS`)."""
    _check_name(name)
    classes = {"synthetic": SYNTHETIC_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "ade20k": ADE20K_CLASSES}[name]
    return len(classes), IGNORE_INDEX, classes


def make_dataset(name: str, split: str, *, root: Optional[str] = None, **options: Any) -> Dataset:
    """Dataset ``name`` for the active-learning split ``split`` (``"train"``, ``"pool"`` or ``"val"``).

    ``"synthetic"`` ignores ``root`` and passes ``options`` (``size``, ``seed``, ``image_size``,
    ``transform``) to :class:`SyntheticScenes`. The real datasets need ``root`` and accept
    ``transform``; their ``"train"`` and ``"pool"`` are both the official training split, ``"val"``
    the validation split (see the module docstring).
    """
    _check_name(name)
    if split not in AL_SPLITS:
        raise ValueError(f"split: expected one of {AL_SPLITS}, got {split!r}")
    own_split = _SPLIT_MAPS[name][split]
    if name == "synthetic":
        return SyntheticScenes(own_split, **options)
    if root is None:
        raise ValueError(f"root: dataset {name!r} needs the folder it is stored in, got None")
    if name == "cityscapes":
        return CityscapesSegmentation(root, own_split, **options)
    return ADE20KSegmentation(root, own_split, **options)
