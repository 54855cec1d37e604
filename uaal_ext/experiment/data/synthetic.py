"""Procedurally generated street scenes: the default dataset, needing no files."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..._validation import check_int, check_number
from .registry import DatasetSpec, register_dataset
from .transforms import IGNORE_INDEX, Transform, default_transform

__all__ = ["SYNTHETIC_CLASSES", "SyntheticScenes"]

SYNTHETIC_CLASSES = ("road", "sidewalk", "building", "vegetation", "terrain", "sky", "pole", "sign", "person", "car")

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
    [
        [0.08, 0.08, 0.09],
        [0.85, 0.85, 0.86],
        [0.45, 0.46, 0.48],
        [0.65, 0.66, 0.68],
        [0.60, 0.10, 0.10],
        [0.15, 0.22, 0.50],
        [0.30, 0.40, 0.25],
    ]
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

    def paint(self, mask: Tensor, cls: int, colour: Tensor, texture: Tensor | None = None) -> None:
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


def _render_scene(
    g: torch.Generator, height: int, width: int, rare_scale: float = 1.0
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """One street scene: image float32 (3, H, W) in [0, 1], label int64 (H, W), and its parameters.

    Layout: sky; a skyline of buildings and trees standing on the horizon; below it the ground
    (sidewalk, optional terrain verges) and a road narrowing towards a vanishing point; then cars on
    the road and poles (some carrying signs) and people on the sidewalks, painted far to near with
    sizes that grow towards the bottom. Colours come from overlapping per-class distributions with
    textures and colour-only distractors; a per-image difficulty in [0, 1] sets noise, blur, contrast
    loss and clutter. Label boundaries (a pixel differing from its right or lower neighbour) are 255.
    ``rare_scale`` multiplies how often people and signs appear (the rarest classes).
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
                crown |= s.ellipse(
                    cy + s.uniform(-0.5, 0.5) * r, cx + s.uniform(-0.7, 0.7) * r, r, r * s.uniform(0.8, 1.3)
                )
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
    s.paint(
        ground.expand(height, width),
        SIDEWALK,
        s.jitter(torch.tensor([0.52, 0.50, 0.46]), 0.12),
        0.04 * s.smooth_noise(2) - 0.05 * tiles,
    )
    offset = s.x - axis  # (H, W) signed distance from the road axis
    for side in (-1.0, 1.0):
        if s.chance(_P_TERRAIN_SIDE):
            verge = ground & (side * offset > half_road + walk)
            s.paint(verge, TERRAIN, s.jitter(torch.tensor([0.38, 0.42, 0.22]), 0.15), 0.07 * s.smooth_noise(2))
    road = ground & (offset.abs() <= half_road)
    s.paint(
        road,
        ROAD,
        s.jitter(torch.tensor([0.36, 0.36, 0.38]), 0.15),
        0.04 * torch.randn(height, width, generator=s.g) + 0.05 * s.smooth_noise(6),
    )
    dashes = torch.sin(12.0 * torch.log1p((s.y - horizon).clamp(min=0))) > 0.2
    s.recolour(
        road & (offset.abs() < 0.05 * half_road + 0.3) & dashes, s.jitter(torch.tensor([0.85, 0.85, 0.80]), 0.05)
    )

    # Objects stand on the ground at a row y0; drawn far (small y0) to near.
    def row_geometry(y0: float) -> tuple[float, float, float, float]:
        f = max(0.05, (y0 - horizon) / (H - horizon))
        return f, axis[int(y0), 0].item(), half_road[int(y0), 0].item(), walk[int(y0), 0].item()

    objects: list[tuple[float, int, float]] = []  # (y0, class, side or lane offset)
    if s.chance(_P_CARS):
        objects += [
            (s.uniform(horizon + 0.12 * (H - horizon), H), CAR, s.uniform(-0.6, 0.6)) for _ in range(s.integer(1, 3))
        ]
    if s.chance(_P_PEOPLE * rare_scale):
        objects += [
            (s.uniform(horizon + 0.15 * (H - horizon), H), PERSON, s.uniform(-1, 1)) for _ in range(s.integer(1, 3))
        ]
    if s.chance(_P_POLES):
        objects += [
            (s.uniform(horizon + 0.1 * (H - horizon), H), POLE, s.uniform(-1, 1)) for _ in range(s.integer(1, 2))
        ]
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
            s.paint(
                s.box(y0 - 0.45 * h, y0, cx - 0.4 * w, cx + 0.4 * w),
                PERSON,
                s.jitter(torch.tensor([0.15, 0.15, 0.25]), 0.3),
            )
            head = max(1.0, 0.1 * h)
            s.paint(
                s.ellipse(y0 - 0.82 * h - head, cx, head, head), PERSON, s.jitter(torch.tensor([0.78, 0.60, 0.50]), 0.2)
            )
        else:  # a pole, perhaps carrying a sign
            cx = centre + side * (half + side_w * s.uniform(0.6, 1.0))
            h = f * 0.8 * H + 0.25 * H
            w = max(2.0, 3.0 * f)
            top = y0 - h
            s.paint(s.box(top, y0, cx - w / 2, cx + w / 2), POLE, s.jitter(torch.tensor([0.35, 0.35, 0.36]), 0.2))
            if s.chance(_P_SIGN_PER_POLE * rare_scale):
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
    info = {
        "difficulty": difficulty,
        "noise_std": noise_std,
        "blur_sigma": blur if blur > 0.2 else 0.0,
        "contrast": contrast,
        "gain": gain,
        "clutter": float(clutter),
    }
    return image.float(), label, info


def _next_frame(image: Tensor, label: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Another frame of the same scene, as a camera a moment later sees it: shifted by a few pixels
    (the revealed border repeats the edge in the image and is ignored in the label), a slightly
    different exposure, fresh sensor noise."""
    _, h, w = image.shape
    dy = int(torch.randint(-max(1, h // 20), max(1, h // 20) + 1, (1,), generator=g))
    dx = int(torch.randint(-max(1, w // 20), max(1, w // 20) + 1, (1,), generator=g))
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    top, left = max(-dy, 0), max(-dx, 0)
    shifted = F.pad(image[None], pad, mode="replicate")[0, :, top : top + h, left : left + w]
    moved = F.pad(label, pad, value=IGNORE_INDEX)[top : top + h, left : left + w]
    gain = 1.0 + 0.05 * (2 * float(torch.rand((), generator=g)) - 1)
    noise = 0.01 * torch.randn(shifted.shape, generator=g)
    return (shifted * gain + noise).clamp(0.0, 1.0), moved


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
    # elementwise at the image's size (gather-based indexing is far slower on the CPU).
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

    Like driving data: ``frames_per_scene`` > 1 makes consecutive items frames of one scene (near
    duplicates: shifted by a few pixels, another exposure, fresh noise), and ``rare_scale`` < 1 makes
    people and signs rarer.

    Items: ``transform(image, label)``, image float32 (3, H, W) in [0, 1], label int64 (H, W); the
    default transform :class:`EvalTransform` normalises with the ImageNet mean and std. With
    ``cache=True`` each scene is rendered once and kept (the transform still runs on every access).
    """

    CLASS_NAMES = SYNTHETIC_CLASSES
    NUM_CLASSES = len(SYNTHETIC_CLASSES)
    IGNORE_INDEX = IGNORE_INDEX
    SPLITS = tuple(_SPLIT_CODES)
    DEFAULT_SIZES = dict(_DEFAULT_SIZES)  # items per split when ``size`` is None

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        *,
        seed: int = 0,
        image_size: tuple[int, int] = (64, 128),
        transform: Transform | None = None,
        cache: bool = False,
        frames_per_scene: int = 1,
        rare_scale: float = 1.0,
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
        self.frames_per_scene = check_int("frames_per_scene", frames_per_scene, low=1)
        self.rare_scale = check_number("rare_scale", rare_scale, low=0.0, high=1.0)
        self.transform = default_transform(transform)
        # Rendered scenes kept by index when asked: an active-learning run revisits the same pool
        # many times (a few MB per 100 small images). Views made by with_transform share the dict.
        self._renders: dict[int, tuple[Tensor, Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.size

    def _generator(self, index: int, *stream: int) -> torch.Generator:
        words = [self.seed, _SPLIT_CODES[self.split], index, *stream]
        return torch.Generator().manual_seed(int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]))

    def _scene(self, index: int) -> int:
        """The scene item ``index`` is a frame of (frames of one scene are consecutive items)."""
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a {self.split!r} split of {self.size} items")
        return (index % self.size) // self.frames_per_scene

    def raw(self, index: int) -> tuple[Tensor, Tensor]:
        """Item ``index`` before the transform: image float32 (3, H, W) in [0, 1], label int64 (H, W)."""
        if self._renders is not None and index in self._renders:
            return self._renders[index]
        scene = self._scene(index)
        image, label, _ = _render_scene(self._generator(scene), *self.image_size, rare_scale=self.rare_scale)
        frame = index % self.size % self.frames_per_scene
        if frame:  # a near-duplicate of the scene's first frame
            image, label = _next_frame(image, label, self._generator(scene, frame))
        if self._renders is not None:
            self._renders[index] = (image, label)
        return image, label

    def scene_info(self, index: int) -> dict[str, float]:
        """The drawn parameters of item ``index``'s scene: difficulty, noise_std, blur_sigma, contrast, gain, clutter."""
        return _render_scene(self._generator(self._scene(index)), *self.image_size, rare_scale=self.rare_scale)[2]

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
        return (
            f"split={self.split!r}, size={self.size}, seed={self.seed}, image_size={self.image_size}, "
            f"frames_per_scene={self.frames_per_scene}, rare_scale={self.rare_scale}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _build(
    split: str,
    *,
    root: str | None,
    size: int | None,
    seed: int,
    image_size: tuple[int, int],
    frames_per_scene: int = 1,
    rare_scale: float = 1.0,
):
    # The driver reads the same scenes in every round: render each once. Validation scenes are all
    # distinct: near-duplicates are what a pool has, not what a model is judged on.
    frames = 1 if split == "val" else frames_per_scene
    return SyntheticScenes(
        split, size, seed=seed, image_size=image_size, cache=True, frames_per_scene=frames, rare_scale=rare_scale
    )


register_dataset(
    DatasetSpec(
        name="synthetic",
        class_names=SYNTHETIC_CLASSES,
        build=_build,
        display_name="Synthetic",
        generated=True,
        eval_size_divisor=1,  # rendered at the configured size, a multiple of the output stride
        options=("frames_per_scene", "rare_scale"),
    )
)
