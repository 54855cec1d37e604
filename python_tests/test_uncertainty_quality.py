"""UncertaintyQuality: uncertainty as a detector of the model's own errors, against scikit-learn and
torchmetrics on random and adversarial inputs."""

import math

import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, MulticlassCalibrationError

from uaal_ext.metrics import UncertaintyQuality

TOLERANCE = 2e-3  # what the histograms may cost against the exact metrics on raw values


def _predictions(seed, shape=(3, 40, 56), classes=6, skill=1.5, ignored=0.1):
    """Logits that lean towards the label, so errors exist but are a minority; some pixels ignored."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, shape, generator=g)
    logits = 2 * torch.randn((shape[0], classes, *shape[1:]), generator=g)
    logits += skill * torch.nn.functional.one_hot(label, classes).movedim(-1, 1)
    label[torch.rand(shape, generator=g) < ignored] = 255
    p = logits.softmax(dim=1)
    return p, p.argmax(dim=1), label


def _entropy(p):
    return -(p * p.clamp_min(1e-30).log()).sum(dim=1)


def _exact(uncertainty, prediction, label):
    valid = label != 255
    errors = (prediction != label)[valid]
    return errors.numpy(), uncertainty[valid].double().numpy()


@pytest.mark.parametrize("scale", [1.0, 1e-4, 1e3])  # entropy in nats, tiny sigma, sigma / eta
def test_auroc_and_aupr_match_sklearn_and_torchmetrics(seed, scale):
    p, prediction, label = _predictions(seed)
    uncertainty = _entropy(p) * scale
    quality = UncertaintyQuality()
    quality.update(uncertainty, prediction, label)
    got = quality.compute()
    errors, values = _exact(uncertainty, prediction, label)
    assert got.auroc == pytest.approx(roc_auc_score(errors, values), abs=TOLERANCE)
    assert got.aupr == pytest.approx(average_precision_score(errors, values), abs=TOLERANCE)
    target = torch.from_numpy(errors).long()
    # torchmetrics reads scores outside [0, 1] as logits (a sigmoid would saturate them): rescale, keeping the order.
    scores = torch.from_numpy(values / values.max())
    assert got.auroc == pytest.approx(float(BinaryAUROC()(scores, target)), abs=TOLERANCE)
    assert got.aupr == pytest.approx(float(BinaryAveragePrecision()(scores, target)), abs=TOLERANCE)
    assert got.num_pixels == len(errors) and got.error_rate == pytest.approx(errors.mean())


def test_ece_matches_torchmetrics(seed):
    p, prediction, label = _predictions(seed, classes=5)
    quality = UncertaintyQuality()
    quality.update(_entropy(p), prediction, label, confidence=p.amax(dim=1))
    valid = label != 255
    probs = p.movedim(1, -1)[valid]  # (pixels, C)
    expected = MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")(probs, label[valid])
    assert quality.compute().ece == pytest.approx(float(expected), abs=1e-6)
    assert math.isnan(UncertaintyQuality().compute().ece)  # nothing counted, no confidence


def test_batches_merge_and_ignored_pixels(seed):
    p, prediction, label = _predictions(seed)
    uncertainty, confidence = _entropy(p), p.amax(dim=1)
    whole = UncertaintyQuality()
    whole.update(uncertainty, prediction, label, confidence)
    parts = [UncertaintyQuality() for _ in range(3)]
    for i, part in enumerate(parts):
        part.update(uncertainty[i : i + 1], prediction[i : i + 1], label[i : i + 1], confidence[i : i + 1])
    merged = parts[0].merge(parts[1]).merge(parts[2]).compute()
    assert merged == whole.compute()
    # What an ignored pixel holds never matters.
    scrambled = torch.where(label == 255, torch.rand_like(uncertainty) * 100, uncertainty)
    again = UncertaintyQuality()
    again.update(scrambled, torch.where(label == 255, 0, prediction), label, confidence)
    assert again.compute() == whole.compute()


def test_ties_all_correct_all_wrong_and_nan():
    label = torch.tensor([[0, 1, 2, 3, 255]])
    wrong_two = torch.tensor([[0, 1, 0, 0, 0]])  # pixels 2 and 3 are errors
    quality = UncertaintyQuality()
    quality.update(torch.full((1, 5), 0.7), wrong_two, label)  # every uncertainty tied
    tied = quality.compute()
    assert tied.auroc == 0.5 and tied.aupr == pytest.approx(0.5) and tied.error_rate == 0.5
    perfect = UncertaintyQuality()
    perfect.update(torch.tensor([[0.1, 0.2, 0.9, 0.8, 5.0]]), wrong_two, label)
    assert perfect.compute().auroc == 1.0 and perfect.compute().aupr == 1.0
    inverted = UncertaintyQuality()
    inverted.update(torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.0]]), wrong_two, label)
    assert inverted.compute().auroc == 0.0
    all_correct = UncertaintyQuality()
    all_correct.update(torch.rand(1, 5), label.clamp(max=3), label)
    metrics = all_correct.compute()
    assert math.isnan(metrics.auroc) and math.isnan(metrics.aupr) and metrics.error_rate == 0.0
    all_wrong = UncertaintyQuality()
    all_wrong.update(torch.rand(1, 5), (label + 1) % 4, label)
    metrics = all_wrong.compute()
    assert math.isnan(metrics.auroc) and metrics.aupr == 1.0 and metrics.error_rate == 1.0
    with_nan = UncertaintyQuality()
    with_nan.update(torch.tensor([[0.1, float("nan"), 0.9, 0.8, 0.0]]), wrong_two, label)
    assert with_nan.num_nan == 1 and with_nan.compute().num_pixels == 3 and with_nan.compute().auroc == 1.0


def test_negative_and_huge_scores_keep_their_order():
    label = torch.zeros(1, 6, dtype=torch.long)
    prediction = torch.tensor([[1, 0, 1, 0, 1, 0]])  # errors at 0, 2, 4
    quality = UncertaintyQuality()
    quality.update(torch.tensor([[-1.0, -3.0, 2e9, -2e9, 1e-9, 0.0]]), prediction, label)
    # Errors -1, 2e9, 1e-9 against correct -3, -2e9, 0: 8 of 9 pairs ordered right (-1 < 0).
    assert quality.compute().auroc == pytest.approx(8 / 9)


def test_memory_is_bounded():
    quality = UncertaintyQuality(num_bins=1024)
    for seed in range(3):
        p, prediction, label = _predictions(seed, shape=(2, 64, 64))
        quality.update(_entropy(p), prediction, label, p.amax(dim=1))
    assert quality._histogram.shape == (2, 1024) and quality._calibration.shape == (3, 15)


@pytest.mark.parametrize(
    "args, exc, pattern",
    [
        ((torch.rand(2, 3), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)), ValueError,
         "prediction must have the shape"),
        ((torch.rand(2, 3), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long)), TypeError, "prediction"),
        ((torch.zeros(2, 3, dtype=torch.long),) * 3, TypeError, "uncertainty"),
        ((torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.long), [[0]]), TypeError, "label"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_argument(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        UncertaintyQuality().update(*args)
    with pytest.raises(ValueError, match="num_bins"):
        UncertaintyQuality(num_bins=1)
