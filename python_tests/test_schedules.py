"""alpha(t) schedules (supplementary A1-A5) and UAALLoss.set_epoch."""

import math

import pytest
import torch
from testing import random_logits, random_target

import uaal_ext

# Written from the supplementary's equations, independently of uaal_ext/schedules.py.
FORMULAS = {
    "constant": lambda t: 1.0,
    "linear_increase": lambda t: t,
    "sine_increase": lambda t: 0.5 * (math.sin(math.pi * t - math.pi / 2) + 1),
    "linear_decrease": lambda t: 1 - t,
    "cosine_decrease": lambda t: 0.5 * (math.cos(math.pi * t) + 1),
    "sin_cos": lambda t: 0.5 * (math.sin(2 * math.pi * t - math.pi / 2) + 1),
}
# (alpha(0), alpha(1/2), alpha(1)): the shape each name promises.
ENDPOINTS = {
    "constant": (1, 1, 1),
    "linear_increase": (0, 0.5, 1),
    "sine_increase": (0, 0.5, 1),
    "linear_decrease": (1, 0.5, 0),
    "cosine_decrease": (1, 0.5, 0),
    "sin_cos": (0, 1, 0),
}


def test_schedule_names():
    assert isinstance(uaal_ext.SCHEDULES, tuple)
    assert sorted(uaal_ext.SCHEDULES) == sorted(FORMULAS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_formula(name, seed):
    schedule = uaal_ext.get_schedule(name)
    ts = [0.0, 0.25, 0.5, 0.75, 1.0] + torch.rand(5, dtype=torch.float64).tolist()
    for t in ts:
        assert schedule(t) == pytest.approx(FORMULAS[name](t), abs=1e-12), f"t={t}"
        assert -1e-12 <= schedule(t) <= 1 + 1e-12
    for t, value in zip((0.0, 0.5, 1.0), ENDPOINTS[name]):
        assert schedule(t) == pytest.approx(value, abs=1e-12), f"t={t}"


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        uaal_ext.get_schedule("exponential_increase")
    message = str(excinfo.value)
    assert "exponential_increase" in message
    for name in FORMULAS:
        assert name in message


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_set_epoch(name, seed):
    alpha, max_epochs = 1.0 + float(torch.rand(())) * 3, int(torch.randint(3, 50, ()))
    loss = uaal_ext.UAALLoss(alpha=alpha, schedule=name, max_epochs=max_epochs)
    # Before any set_epoch the loss is at epoch 0.
    assert loss.current_alpha == pytest.approx(alpha * FORMULAS[name](0.0), abs=1e-12)
    for epoch in [1, max_epochs / 3, max_epochs / 2 + 0.25, max_epochs - 1, max_epochs]:
        loss.set_epoch(epoch)
        assert loss.current_alpha == pytest.approx(alpha * FORMULAS[name](epoch / max_epochs), abs=1e-12)
    # Past the end, t is clamped to 1.
    for epoch in (max_epochs + 0.5, max_epochs * 2 + 1):
        loss.set_epoch(epoch)
        assert loss.current_alpha == pytest.approx(alpha * FORMULAS[name](1.0), abs=1e-12)


def test_set_epoch_changes_the_loss(seed):
    """The scheduled alpha is the one the forward uses."""
    x = random_logits((2, 4, 5, 6))
    target = random_target((2, 5, 6), 4)
    loss = uaal_ext.UAALLoss(alpha=2.5, schedule="sine_increase", max_epochs=8)
    for epoch in (0, 3.5, 8):
        loss.set_epoch(epoch)
        expected = uaal_ext.uaal_cross_entropy(x, target, alpha=loss.current_alpha, normalize_by_weight=True)
        torch.testing.assert_close(loss(x, target), expected)
    assert not torch.allclose(loss(x, target), uaal_ext.uaal_cross_entropy(x, target, alpha=0.0))


@pytest.mark.parametrize("name", [n for n in sorted(FORMULAS) if n != "constant"])
def test_schedule_needs_max_epochs(name):
    with pytest.raises(ValueError, match="max_epochs"):
        uaal_ext.UAALLoss(schedule=name)


def test_constant_schedule_without_max_epochs():
    loss = uaal_ext.UAALLoss(alpha=1.7)
    loss.set_epoch(12)
    assert loss.current_alpha == pytest.approx(1.7)
