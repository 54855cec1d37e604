"""File loading shared by the real datasets: images and label maps read by path, errors naming the file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["LabelMapDataset", "open_rgb", "read_label_ids", "map_labels", "require_dir"]


def open_rgb(path: str) -> Any:
    """The image at ``path`` as a decoded RGB PIL image; missing -> FileNotFoundError, bad -> OSError."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert decodes everything, so truncation shows up here
    except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise OSError(f"cannot read image file {path}: {err}") from err


def read_label_ids(path: str) -> np.ndarray:
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


def map_labels(ids: np.ndarray, table: np.ndarray, valid: np.ndarray, path: str, allowed: str) -> Tensor:
    """Maps label ids through ``table`` (indexed by id + 1, so -1 fits); ids with ``valid`` False raise."""
    shifted = ids + 1
    in_table = (shifted >= 0) & (shifted < len(table))
    ok = in_table.copy()
    ok[in_table] = valid[shifted[in_table]]
    if not ok.all():
        bad = np.unique(ids[~ok])
        raise ValueError(f"label file {path}: label ids {bad[:10].tolist()} outside {allowed}")
    return torch.from_numpy(table[shifted])


def require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")


class LabelMapDataset(Dataset):
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
        return map_labels(read_label_ids(path), self._table, self._valid, path, self._valid_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = open_rgb(self.images[index])
        label = self.load_label(index)
        if (image.height, image.width) != tuple(label.shape):
            raise ValueError(
                f"{self.labels[index]}: label size {tuple(label.shape)} differs from image "
                f"{self.images[index]} ({image.height}, {image.width})"
            )
        return self.transform(image, label)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, size={len(self)})"
