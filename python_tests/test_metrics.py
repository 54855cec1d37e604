"""uaal_ext.metrics: the confusion matrix and mIoU / accuracies, against torchmetrics and direct counts."""

import math

import pytest
import torch
from testing import DEVICES, cuda_only
from torchmetrics.classification import MulticlassJaccardIndex

from uaal_ext.metrics import ConfusionMatrix, SegmentationMetrics

C = 7  # classes 0..4 appear in targets, 5 only in predictions, 6 nowhere
IGNORE = 255


def _data(shape, device="cpu", ignore=IGNORE, ignore_fraction=0.2):
    """Targets in [0, 5) with ignored pixels, predictions in [0, 6) agreeing with targets ~half the time."""
    target = torch.randint(0, 5, shape)
    pred = torch.where(torch.rand(shape) < 0.5, target, torch.randint(0, 6, shape))
    target[torch.rand(shape) < ignore_fraction] = ignore
    return pred.to(device), target.to(device)


def _direct(pred, target, ignore=IGNORE):
    """Per-class counts by boolean masks, one class at a time: the definitions, nothing shared."""
    valid = target != ignore
    p, t = pred[valid], target[valid]
    iou, acc = [], []
    for c in range(C):
        tp = ((p == c) & (t == c)).sum().item()
        union = ((p == c) | (t == c)).sum().item()
        support = (t == c).sum().item()
        iou.append(tp / union if union else math.nan)
        acc.append(tp / support if support else math.nan)
    pixel_accuracy = (p == t).double().mean().item() if t.numel() else math.nan
    return torch.tensor(iou, dtype=torch.float64), torch.tensor(acc, dtype=torch.float64), pixel_accuracy


def _nanmean(values):
    kept = values[~values.isnan()]
    return kept.mean().item() if kept.numel() else math.nan


def _assert_same(a: SegmentationMetrics, b: SegmentationMetrics):
    assert torch.equal(a.confusion_matrix, b.confusion_matrix)
    torch.testing.assert_close(a.per_class_iou, b.per_class_iou, equal_nan=True, rtol=0, atol=0)
    assert a.num_pixels == b.num_pixels


# ---------------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 17, 23), (2, 40), (2, 3, 9, 11), (5,)])
def test_matches_torchmetrics_and_direct_counts(device, shape, seed):
    pred, target = _data(shape, device)
    cm = ConfusionMatrix(C, ignore_index=IGNORE)
    cm.update(pred, target)
    assert cm.matrix.device == pred.device and cm.matrix.dtype == torch.int64 and cm.matrix.shape == (C, C)
    result = cm.compute()

    iou, acc, pixel_accuracy = _direct(pred.cpu(), target.cpu())
    torch.testing.assert_close(result.per_class_iou, iou, equal_nan=True)
    torch.testing.assert_close(result.per_class_accuracy, acc, equal_nan=True)
    assert result.pixel_accuracy == pytest.approx(pixel_accuracy, rel=1e-12)
    assert result.mean_class_accuracy == pytest.approx(_nanmean(acc), rel=1e-12)
    assert result.miou == pytest.approx(_nanmean(iou), rel=1e-12)
    assert result.num_pixels == int((target != IGNORE).sum())

    # torchmetrics: per class it reports 0 (zero_division) where we report NaN (union 0, class 6);
    # its macro average leaves zero-union classes out, as ours does. It counts in float32.
    present = ~result.per_class_iou.isnan()
    assert not present[6]
    per_class = MulticlassJaccardIndex(C, ignore_index=IGNORE, average="none").to(device)(pred, target)
    torch.testing.assert_close(result.per_class_iou[present], per_class.cpu().double()[present], rtol=1e-6, atol=1e-7)
    assert per_class[6].item() == 0.0
    macro = MulticlassJaccardIndex(C, ignore_index=IGNORE, average="macro").to(device)(pred, target)
    assert result.miou == pytest.approx(macro.item(), rel=1e-6)


def test_by_hand():
    # target: 0 0 1 1 2 ignore; pred: 0 1 1 1 0 2
    cm = ConfusionMatrix(4, ignore_index=-1)
    cm.update(torch.tensor([[0, 1, 1, 1, 0, 2]]), torch.tensor([[0, 0, 1, 1, 2, -1]]))
    result = cm.compute()
    assert result.confusion_matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 0 / 1; class 3: NaN
    torch.testing.assert_close(
        result.per_class_iou, torch.tensor([1 / 3, 2 / 3, 0.0, math.nan], dtype=torch.float64), equal_nan=True
    )
    assert result.miou == pytest.approx(1 / 3)
    assert result.pixel_accuracy == pytest.approx(3 / 5)
    assert result.mean_class_accuracy == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert result.num_pixels == 5
    assert result.as_dict()["miou"] == pytest.approx(1 / 3)


def test_class_predicted_but_absent_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 0, 2]]), torch.tensor([[0, 0, 0]]))
    result = cm.compute()
    torch.testing.assert_close(
        result.per_class_iou, torch.tensor([2 / 3, math.nan, 0.0], dtype=torch.float64), equal_nan=True
    )
    assert result.miou == pytest.approx(1 / 3)
    assert result.mean_class_accuracy == pytest.approx(2 / 3)  # only class 0 has target pixels


# ---------------------------------------------------------------------------------------------------
# Accumulation


@pytest.mark.parametrize("device", DEVICES)
def test_several_updates_equal_one_over_the_concatenation(device, seed):
    batches = [_data((n, 13, 19), device) for n in (1, 3, 2)]
    parts = ConfusionMatrix(C)
    for pred, target in batches:
        parts.update(pred, target)
    whole = ConfusionMatrix(C)
    whole.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    _assert_same(parts.compute(), whole.compute())


def test_merge_equals_one_matrix(seed):
    (p1, t1), (p2, t2) = _data((2, 9, 9)), _data((3, 9, 9))
    a, b, both = ConfusionMatrix(C), ConfusionMatrix(C), ConfusionMatrix(C)
    a.update(p1, t1)
    b.update(p2, t2)
    both.update(p1, t1)
    both.update(p2, t2)
    assert a.merge(b) is a
    _assert_same(a.compute(), both.compute())
    fresh = ConfusionMatrix(C).merge(both)
    _assert_same(fresh.compute(), both.compute())
    assert fresh.matrix is not both.matrix  # a copy, not shared storage
    assert ConfusionMatrix(C).merge(ConfusionMatrix(C)).compute().num_pixels == 0


def test_merge_refuses_other_settings():
    with pytest.raises(ValueError, match="num_classes=7"):
        ConfusionMatrix(C).merge(ConfusionMatrix(C + 1))
    with pytest.raises(ValueError, match="ignore_index=255"):
        ConfusionMatrix(C).merge(ConfusionMatrix(C, ignore_index=-100))
    with pytest.raises(ValueError, match="other must be a ConfusionMatrix"):
        ConfusionMatrix(C).merge(torch.zeros(C, C))


def test_reset(seed):
    cm = ConfusionMatrix(C)
    cm.update(*_data((2, 5, 5)))
    cm.reset()
    assert cm.compute().num_pixels == 0
    pred, target = _data((2, 5, 5))
    cm.update(pred, target)
    fresh = ConfusionMatrix(C)
    fresh.update(pred, target)
    _assert_same(cm.compute(), fresh.compute())


# ---------------------------------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize(
    "ignore, target_dtype",
    [
        (255, torch.int64),
        (255, torch.int32),
        (255, torch.uint8),
        (-100, torch.int64),
        (-100, torch.int32),
        (0, torch.int64),
        (0, torch.uint8),
    ],
)
def test_ignore_index_respected(ignore, target_dtype, seed):
    pred, target = _data((2, 11, 13), ignore=ignore, ignore_fraction=0.3)
    target = target.to(target_dtype)
    cm = ConfusionMatrix(C, ignore_index=ignore)
    cm.update(pred, target)
    # Whatever is predicted at ignored pixels changes nothing.
    other = torch.where(target == ignore, torch.randint(0, C, pred.shape), pred)
    again = ConfusionMatrix(C, ignore_index=ignore)
    again.update(other, target)
    _assert_same(cm.compute(), again.compute())
    valid = target != ignore
    assert cm.compute().num_pixels == int(valid.sum())
    assert torch.equal(cm.matrix.sum(dim=1), torch.bincount(target[valid].long(), minlength=C))
    if ignore == 0:  # an ignore_index inside [0, C) leaves that class without target pixels
        assert cm.matrix[0].sum() == 0


def test_uint8_target_with_negative_ignore_index_counts_255():
    # 255 is a target value, not -100 wrapped: out of [0, C), so refused.
    cm = ConfusionMatrix(C, ignore_index=-100)
    with pytest.raises(ValueError, match=r"target values .* got \[255\]"):
        cm.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[255, 1]], dtype=torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_logits_equal_their_argmax(device, dtype, seed):
    _, target = _data((2, 9, 14), device)
    logits = torch.randn(2, C, 9, 14, device=device).to(dtype)
    a, b = ConfusionMatrix(C), ConfusionMatrix(C)
    a.update(logits, target)
    b.update(logits.argmax(dim=1), target)
    _assert_same(a.compute(), b.compute())
    channels_last = ConfusionMatrix(C)
    channels_last.update(logits.contiguous(memory_format=torch.channels_last), target)
    _assert_same(channels_last.compute(), b.compute())


@pytest.mark.parametrize("pred_dtype", [torch.int64, torch.int32, torch.uint8])
def test_integer_pred_dtypes(pred_dtype, seed):
    pred, target = _data((2, 6, 7))
    a, b = ConfusionMatrix(C), ConfusionMatrix(C)
    a.update(pred.to(pred_dtype), target)
    b.update(pred, target)
    _assert_same(a.compute(), b.compute())


@pytest.mark.parametrize("shape", [(0, 8, 8), (2, 0, 8), (0,)])
def test_empty_update(shape, seed):
    cm = ConfusionMatrix(C)
    cm.update(torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long))
    cm.update(torch.randn(shape[0], C, *shape[1:]), torch.zeros(shape, dtype=torch.long))
    result = cm.compute()
    assert result.num_pixels == 0 and result.confusion_matrix.sum() == 0
    assert math.isnan(result.miou) and math.isnan(result.pixel_accuracy) and math.isnan(result.mean_class_accuracy)
    assert result.per_class_iou.isnan().all()
    # An empty batch leaves earlier counts alone.
    pred, target = _data((2, 5, 5))
    cm.update(pred, target)
    before = cm.matrix.clone()
    cm.update(torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long))
    assert torch.equal(cm.matrix, before)


def test_all_pixels_ignored():
    cm = ConfusionMatrix(C)
    cm.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), IGNORE))
    result = cm.compute()
    assert result.num_pixels == 0 and math.isnan(result.miou)


def test_device_follows_the_inputs_until_reset():
    cm = ConfusionMatrix(C)
    assert cm.matrix.device.type == "cpu" and cm.matrix.sum() == 0
    fixed = ConfusionMatrix(C, device="cpu")
    assert fixed.matrix.device.type == "cpu"
    fixed.reset()
    assert fixed.matrix.device.type == "cpu"


@cuda_only
def test_matrix_stays_on_the_inputs_device():
    pred, target = _data((2, 8, 8), "cuda")
    cm = ConfusionMatrix(C)
    cm.update(pred, target)
    assert cm.matrix.device.type == "cuda"
    with pytest.raises(ValueError, match="accumulates on cuda"):
        cm.update(pred.cpu(), target.cpu())
    with pytest.raises(ValueError, match="one device"):
        cm.update(pred, target.cpu())
    fixed = ConfusionMatrix(C, device="cpu")
    with pytest.raises(ValueError, match="accumulates on cpu"):
        fixed.update(pred, target)
    cpu = ConfusionMatrix(C)
    cpu.update(pred.cpu(), target.cpu())
    cpu.merge(cm)  # merging moves the other's counts
    assert cpu.compute().num_pixels == 2 * cm.compute().num_pixels


# ---------------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (
            torch.zeros(2, 4, 4, dtype=torch.long),
            torch.zeros(2, 4, 5, dtype=torch.long),
            r"pred class indices must have target's shape \(2, 4, 5\), got \(2, 4, 4\)",
        ),
        (
            torch.zeros(2, 4, 4),
            torch.zeros(2, 4, 4, dtype=torch.long),
            r"logits pred must be \(N, C, \*spatial\) = \(2, 7, 4, 4\)",
        ),
        (torch.zeros(2, C + 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), r"logits pred .* got \(2, 8, 4, 4\)"),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4), "target must be an integer tensor"),
        (
            torch.zeros(2, 4, 4, dtype=torch.long),
            torch.zeros(2, 4, 4, dtype=torch.bool),
            "target must be an integer tensor",
        ),
        (
            torch.zeros(2, 4, 4, dtype=torch.long),
            torch.full((2, 4, 4), C),
            r"target values must be in \[0, 7\) or ignore_index=255, got \[7\]",
        ),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), -1), r"target values .* got \[-1\]"),
        (
            torch.full((2, 4, 4), C),
            torch.zeros(2, 4, 4, dtype=torch.long),
            r"pred class indices must be in \[0, 7\), got \[7\]",
        ),
        (
            torch.zeros(2, 4, 4, dtype=torch.bool),
            torch.zeros(2, 4, 4, dtype=torch.long),
            "pred must be integer class indices or floating-point logits",
        ),
        ([0, 1], torch.zeros(2, dtype=torch.long), "pred must be a Tensor"),
        (torch.zeros(2, dtype=torch.long), [0, 1], "target must be a Tensor"),
        (torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long), r"target must be \(N, \*spatial\)"),
    ],
)
def test_bad_inputs(pred, target, match):
    cm = ConfusionMatrix(C)
    with pytest.raises(ValueError, match=match):
        cm.update(pred, target)
    assert cm.compute().num_pixels == 0  # nothing counted


def test_out_of_range_pred_at_ignored_pixels_is_fine():
    cm = ConfusionMatrix(C)
    cm.update(torch.tensor([[C + 3, 1]]), torch.tensor([[IGNORE, 1]]))
    assert cm.compute().num_pixels == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes must be an int >= 1"),
        ({"num_classes": 2.5}, "num_classes must be an int >= 1"),
        ({"num_classes": 3, "ignore_index": 1.5}, "ignore_index must be an int"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConfusionMatrix(**kwargs)
