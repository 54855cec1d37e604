"""Segmentation metrics from a confusion matrix accumulated on the inputs' device.

::

    cm = ConfusionMatrix(num_classes=19, ignore_index=255)
    for images, labels in loader:
        cm.update(model(images), labels)         # logits (N, C, H, W) or predictions (N, H, W)
    result = cm.compute()                        # SegmentationMetrics
    print(result.miou, result.pixel_accuracy)

Conventions (those of the Cityscapes/ADE20K evaluation scripts and torchmetrics' macro Jaccard):
- a pixel counts when its target is not ``ignore_index``; rows of the matrix are targets, columns
  predictions;
- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; a class with a zero union (absent from both targets and
  predictions) has IoU NaN and is left out of ``miou``; a class present in predictions only has
  IoU 0 and counts;
- ``class accuracy_c = TP_c / (TP_c + FN_c)``, NaN for a class without target pixels, which is left
  out of ``mean_class_accuracy``;
- with no valid pixel at all every metric is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ConfusionMatrix", "SegmentationMetrics"]


@dataclass(frozen=True)
class SegmentationMetrics:
    """What :meth:`ConfusionMatrix.compute` returns; tensors are on the CPU."""

    miou: float  # mean of per_class_iou over classes with a non-zero union
    per_class_iou: Tensor  # (C,) float64, NaN where the union is zero
    pixel_accuracy: float  # correct valid pixels / valid pixels
    mean_class_accuracy: float  # mean of per_class_accuracy over classes with target pixels
    per_class_accuracy: Tensor  # (C,) float64 recall, NaN where a class has no target pixel
    confusion_matrix: Tensor  # (C, C) int64, rows = target, columns = prediction
    num_pixels: int  # valid pixels counted

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (NaN for excluded classes) for JSON reports."""
        return {
            "miou": self.miou,
            "per_class_iou": self.per_class_iou.tolist(),
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "per_class_accuracy": self.per_class_accuracy.tolist(),
            "num_pixels": self.num_pixels,
        }


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` int64 confusion matrix over batches.

    Args:
        num_classes: C.
        ignore_index: target value of pixels that are not counted (may be any int; a value in
            [0, C) makes that class uncounted as a target).
        device: where the matrix lives; None: on the device of the first update's inputs. Inputs
            on another device than the matrix raise ValueError.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | torch.device | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.device = None if device is None else torch.device(device)
        self._matrix: Tensor | None = None
        self.reset()

    @property
    def matrix(self) -> Tensor:
        """The counts so far, ``(C, C)`` int64, rows = target, columns = prediction."""
        if self._matrix is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._matrix

    def reset(self) -> None:
        """Forgets every count (and, with ``device=None``, the device)."""
        self._matrix = None
        if self.device is not None:
            self._matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Counts one batch.

        Args:
            pred: class indices ``(N, *spatial)`` (any integer dtype) or logits/scores
                ``(N, C, *spatial)`` (floating point; the argmax over dim 1 is the prediction).
            target: class indices ``(N, *spatial)``, integer, values in [0, C) or ``ignore_index``.
        """
        pred = self._predictions(pred, target)
        matrix = self._matrix_for(target.device)
        C = self.num_classes
        target = target.long()  # before comparing: a uint8 target would wrap a negative ignore_index
        valid = target != self.ignore_index
        out_of_range = valid & ((target < 0) | (target >= C))
        wrong_class = valid & ((pred < 0) | (pred >= C))
        bad_target, bad_pred = torch.stack([out_of_range.any(), wrong_class.any()]).tolist()  # one sync
        if bad_target:
            raise ValueError(
                f"target values must be in [0, {C}) or ignore_index={self.ignore_index}, "
                f"got {target[out_of_range].unique()[:5].tolist()}"
            )
        if bad_pred:
            raise ValueError(f"pred class indices must be in [0, {C}), got {pred[wrong_class].unique()[:5].tolist()}")
        # Ignored pixels go to an extra bin past the C*C cells, which is dropped: no boolean gather.
        cells = torch.where(valid, target * C + pred, C * C)
        counts = torch.bincount(cells.reshape(-1), minlength=C * C + 1)[: C * C]
        matrix += counts.view(C, C)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Adds ``other``'s counts (e.g. from another worker) into this one; returns self."""
        if not isinstance(other, ConfusionMatrix):
            raise ValueError(f"other must be a ConfusionMatrix, got {type(other).__name__}")
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"other must have num_classes={self.num_classes} and ignore_index={self.ignore_index}, "
                f"got num_classes={other.num_classes} and ignore_index={other.ignore_index}"
            )
        if other._matrix is not None:
            if self._matrix is None:
                self._matrix = other._matrix.clone()
            else:
                self._matrix += other._matrix.to(self._matrix.device)
        return self

    def compute(self) -> SegmentationMetrics:
        """The metrics of everything counted since the last reset (see the module docstring)."""
        counts = self.matrix.detach().cpu()
        cm = counts.double()
        tp = cm.diagonal()
        support = cm.sum(dim=1)  # target pixels per class
        union = support + cm.sum(dim=0) - tp
        nan = torch.tensor(math.nan, dtype=torch.float64)
        per_class_iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        per_class_accuracy = torch.where(support > 0, tp / support.clamp(min=1), nan)
        total = cm.sum()
        return SegmentationMetrics(
            miou=_nanmean(per_class_iou),
            per_class_iou=per_class_iou,
            pixel_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
            mean_class_accuracy=_nanmean(per_class_accuracy),
            per_class_accuracy=per_class_accuracy,
            confusion_matrix=counts.clone(),
            num_pixels=int(counts.sum()),
        )

    def _predictions(self, pred: object, target: object) -> Tensor:
        """Checks both inputs; returns ``pred`` as int64 class indices of ``target``'s shape."""
        if not isinstance(target, Tensor):
            raise ValueError(f"target must be a Tensor, got {type(target).__name__}")
        if not isinstance(pred, Tensor):
            raise ValueError(f"pred must be a Tensor, got {type(pred).__name__}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must be an integer tensor of class indices, got dtype {target.dtype}")
        if target.dim() < 1:
            raise ValueError(f"target must be (N, *spatial), got shape {tuple(target.shape)}")
        if pred.device != target.device:
            raise ValueError(f"pred and target must be on one device, got {pred.device} and {target.device}")
        if pred.is_floating_point():
            expected = (target.shape[0], self.num_classes, *target.shape[1:])
            if pred.shape != expected:
                raise ValueError(
                    f"logits pred must be (N, C, *spatial) = {expected} for target of shape "
                    f"{tuple(target.shape)} and num_classes={self.num_classes}, got {tuple(pred.shape)}"
                )
            return pred.argmax(dim=1)
        if pred.is_complex() or pred.dtype == torch.bool:
            raise ValueError(f"pred must be integer class indices or floating-point logits, got dtype {pred.dtype}")
        if pred.shape != target.shape:
            raise ValueError(
                f"pred class indices must have target's shape {tuple(target.shape)}, got {tuple(pred.shape)}"
            )
        return pred.long()

    def _matrix_for(self, device: torch.device) -> Tensor:
        if self._matrix is None:
            self._matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        elif self._matrix.device != device:
            raise ValueError(f"inputs are on {device} but this ConfusionMatrix accumulates on {self._matrix.device}")
        return self._matrix

    def __repr__(self) -> str:
        where = None if self._matrix is None else self._matrix.device
        return f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, device={where})"


def _nanmean(values: Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan
