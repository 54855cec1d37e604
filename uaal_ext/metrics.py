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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import distributed
from ._validation import check_int

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "UncertaintyQuality", "QualityMetrics"]


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
    # How well each uncertainty source finds the model's errors (evaluate(quality_sources=...)), by name.
    uncertainty_quality: dict[str, QualityMetrics] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (NaN for excluded classes) for JSON reports."""
        values = {
            "miou": self.miou,
            "per_class_iou": self.per_class_iou.tolist(),
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "per_class_accuracy": self.per_class_accuracy.tolist(),
            "num_pixels": self.num_pixels,
        }
        if self.uncertainty_quality:
            values["uncertainty_quality"] = {name: q.as_dict() for name, q in self.uncertainty_quality.items()}
        return values


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

    def sync_ranks(self) -> ConfusionMatrix:
        """Sums the counts of every rank of the ``torch.distributed`` group into each rank's matrix
        (a rank that counted nothing takes part too); without a group, nothing changes. Returns self."""
        if distributed.world_size() > 1:
            self._matrix = distributed.all_reduce_sum(self.matrix)
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


# ---------------------------------------------------------------------------------------------------
# How well a model's uncertainty finds its own errors


@dataclass(frozen=True)
class QualityMetrics:
    """What :meth:`UncertaintyQuality.compute` returns (NaN where a metric is undefined)."""

    auroc: float  # P(uncertainty of an error > that of a correct pixel), ties counted half
    aupr: float  # average precision with errors as the positive class
    ece: float  # expected calibration error of the confidence (15 equal-width bins); NaN without confidence
    error_rate: float  # errors / counted pixels
    num_pixels: int  # counted pixels (valid label, finite uncertainty)

    def as_dict(self) -> dict[str, Any]:
        return {"auroc": self.auroc, "aupr": self.aupr, "ece": self.ece, "error_rate": self.error_rate,
                "num_pixels": self.num_pixels}  # fmt: skip


class UncertaintyQuality:
    """Judges a per-pixel uncertainty map as a detector of the model's own errors, in bounded memory.

    A pixel is an *error* when its prediction differs from its label; the uncertainty should be
    higher there. ``auroc`` is the probability that a random error pixel is more uncertain than a
    random correct one (ties count half; what ``sklearn.metrics.roc_auc_score`` gives with errors as
    the positive class); ``aupr`` the average precision of the same ranking
    (``sklearn.metrics.average_precision_score``). When the top softmax probability ``confidence``
    is given, ``ece`` is the top-label expected calibration error over 15 equal-width bins,
    ``sum_b (n_b / n) |accuracy_b - mean confidence_b|``.

    Memory does not grow with the pixels seen: every update adds to two histograms of the
    uncertainty (errors, correct pixels) over a fixed binning, kept on the inputs' device. The
    binning is logarithmic in ``|u|`` from ``1e-6`` to ``1e6`` (and symmetric for negative scores),
    ``num_bins`` bins in all, so any scale of uncertainty (entropy in nats, sigma / eta, a
    probability) is resolved to a fixed relative precision; values beyond ``1e6`` share the end
    bins. The metrics are then exact for the binned values, which differ from the raw ones only
    where two pixels fall in one bin.

    Args:
        ignore_index: label value of pixels that are not counted.
        num_bins: histogram bins for the uncertainty (default 2**16: about 0.1% relative resolution).
        calibration_bins: equal-width confidence bins of the ECE.
    """

    _SPAN = 1e-6  # |u| below this is resolved linearly, above it logarithmically
    _LIMIT = math.log1p(1e6 / 1e-6)  # log1p(|u| / span) at |u| = 1e6

    def __init__(self, ignore_index: int = 255, num_bins: int = 2**16, calibration_bins: int = 15) -> None:
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.num_bins = check_int("num_bins", num_bins, low=2)
        self.calibration_bins = check_int("calibration_bins", calibration_bins, low=1)
        self.reset()

    def reset(self) -> None:
        """Forgets every count (and the device)."""
        self._histogram: Tensor | None = None  # (2, num_bins) int64: row 0 errors, row 1 correct pixels
        self._calibration: Tensor | None = None  # (3, calibration_bins) float64: count, sum confidence, sum correct
        self.num_nan = 0  # pixels left out for a NaN uncertainty

    def update(self, uncertainty: Tensor, prediction: Tensor, label: Tensor, confidence: Tensor | None = None) -> None:
        """Counts one batch: all of ``(N, *spatial)`` on one device; ``prediction`` and ``label`` integer."""
        self._check(uncertainty, prediction, label, confidence)
        valid = label != self.ignore_index
        finite = ~uncertainty.isnan()
        self.num_nan += int((valid & ~finite).sum())
        counted = valid & finite
        correct = (prediction == label) & counted
        histogram = self._accumulator("_histogram", (2, self.num_bins), torch.int64, uncertainty.device)
        bins = self._bins(uncertainty.detach())
        cells = torch.where(counted, bins + self.num_bins * correct.long(), 2 * self.num_bins)
        histogram += torch.bincount(cells.reshape(-1), minlength=2 * self.num_bins + 1)[:-1].view(2, self.num_bins)
        if confidence is not None:
            calibration = self._accumulator(
                "_calibration", (3, self.calibration_bins), torch.float64, uncertainty.device
            )
            conf = confidence.detach().double()[counted]
            index = (conf * self.calibration_bins).long().clamp(0, self.calibration_bins - 1)
            for row, values in enumerate((torch.ones_like(conf), conf, correct[counted].double())):
                calibration[row].index_add_(0, index, values)

    def merge(self, other: UncertaintyQuality) -> UncertaintyQuality:
        """Adds ``other``'s counts (another worker's, another split's) into this one; returns self."""
        if not isinstance(other, UncertaintyQuality) or (other.num_bins, other.calibration_bins) != (
            self.num_bins, self.calibration_bins,
        ):  # fmt: skip
            raise ValueError("other must be an UncertaintyQuality with the same num_bins and calibration_bins")
        for name in ("_histogram", "_calibration"):
            theirs = getattr(other, name)
            if theirs is not None:
                mine = getattr(self, name)
                setattr(self, name, theirs.clone() if mine is None else mine + theirs.to(mine.device))
        self.num_nan += other.num_nan
        return self

    def sync_ranks(self) -> UncertaintyQuality:
        """Sums the counts of every rank of the ``torch.distributed`` group into each rank's
        accumulators (a rank that counted nothing takes part too); without a group, nothing
        changes. Returns self."""
        if distributed.world_size() == 1:
            return self
        shapes = {
            "_histogram": (2, self.num_bins, torch.int64),
            "_calibration": (3, self.calibration_bins, torch.float64),
        }
        devices = distributed.gather_objects(
            {name: str(getattr(self, name).device) for name in shapes if getattr(self, name) is not None}
        )
        for name, (rows, columns, dtype) in shapes.items():
            present = [seen[name] for seen in devices if name in seen]
            if present:  # some rank counted into it: every rank adds its counts (zeros if none)
                current = getattr(self, name)
                if current is None:
                    current = torch.zeros(rows, columns, dtype=dtype, device=present[0])
                setattr(self, name, distributed.all_reduce_sum(current))
        self.num_nan = int(distributed.all_reduce_sum(torch.tensor([self.num_nan]))[0])
        return self

    def compute(self) -> QualityMetrics:
        """The metrics of everything counted since the last reset."""
        if self._histogram is None:
            errors = correct = torch.zeros(self.num_bins, dtype=torch.float64)
        else:
            errors, correct = self._histogram.double().cpu()
        num_errors, num_correct = float(errors.sum()), float(correct.sum())
        total = num_errors + num_correct
        return QualityMetrics(
            auroc=_binned_auroc(errors, correct, num_errors, num_correct),
            aupr=_binned_average_precision(errors, correct, num_errors),
            ece=self._ece(total),
            error_rate=num_errors / total if total else math.nan,
            num_pixels=int(total),
        )

    # ---- helpers -------------------------------------------------------------------------------

    def _bins(self, uncertainty: Tensor) -> Tensor:
        """Bin index of each value: uniform in sign(u) * log1p(|u| / span) over [-limit, limit]."""
        u = uncertainty.double()
        squashed = torch.sign(u) * torch.log1p(u.abs() / self._SPAN)
        position = (squashed / self._LIMIT + 1) * 0.5 * self.num_bins  # [-limit, limit] -> [0, num_bins]
        return position.floor().clamp(0, self.num_bins - 1).long()

    def _accumulator(self, name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
        current = getattr(self, name)
        if current is None:
            current = torch.zeros(shape, dtype=dtype, device=device)
            setattr(self, name, current)
        elif current.device != device:
            raise ValueError(f"inputs are on {device} but this UncertaintyQuality accumulates on {current.device}")
        return current

    def _ece(self, total: float) -> float:
        if self._calibration is None or total == 0:
            return math.nan
        count, confidence, correct = self._calibration.cpu()
        filled = count > 0
        gaps = (correct[filled] / count[filled] - confidence[filled] / count[filled]).abs()
        return float((count[filled] / count.sum() * gaps).sum())

    def _check(self, uncertainty: object, prediction: object, label: object, confidence: object) -> None:
        for name, value, floating in (("uncertainty", uncertainty, True), ("prediction", prediction, False),
                                      ("label", label, False), ("confidence", confidence, True)):  # fmt: skip
            if value is None and name == "confidence":
                continue
            if not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a Tensor (N, *spatial), got {type(value).__name__}")
            if value.is_floating_point() != floating or value.dtype == torch.bool or value.is_complex():
                kind = "floating-point" if floating else "integer"
                raise TypeError(f"{name} must be a {kind} tensor, got dtype {value.dtype}")
            if value.shape != uncertainty.shape:  # type: ignore[union-attr]
                raise ValueError(
                    f"{name} must have the shape of uncertainty {tuple(uncertainty.shape)}, got {tuple(value.shape)}"  # type: ignore[union-attr]
                )
            if value.device != uncertainty.device:  # type: ignore[union-attr]
                raise ValueError(f"{name} is on {value.device} but uncertainty on {uncertainty.device}")  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return (
            f"UncertaintyQuality(ignore_index={self.ignore_index}, num_bins={self.num_bins}, "
            f"calibration_bins={self.calibration_bins})"
        )


def _binned_auroc(errors: Tensor, correct: Tensor, num_errors: float, num_correct: float) -> float:
    """P(u_error > u_correct) + P(equal) / 2 over pairs, with u known up to its bin."""
    if num_errors == 0 or num_correct == 0:
        return math.nan
    correct_below = torch.cumsum(correct, 0) - correct  # correct pixels in lower bins
    wins = (errors * (correct_below + 0.5 * correct)).sum()
    return float(wins / (num_errors * num_correct))


def _binned_average_precision(errors: Tensor, correct: Tensor, num_errors: float) -> float:
    """sum_n (R_n - R_(n-1)) P_n over thresholds at each occupied bin, from the most uncertain down."""
    if num_errors == 0:
        return math.nan
    true_positives = torch.cumsum(errors.flip(0), 0)
    flagged = true_positives + torch.cumsum(correct.flip(0), 0)
    recall_gain = errors.flip(0) / num_errors
    precision = torch.where(flagged > 0, true_positives / flagged.clamp(min=1), torch.zeros_like(flagged))
    return float((recall_gain * precision).sum())
