"""Bad input raises a clear exception that names the argument and the offending shape or value."""

import re

import pytest
import torch
from testing import cuda_only, random_logits, random_target

import uaal_ext

C = 19


def _shape(*sizes):
    """A shape as a message may print it: [2, 4, 7], (2, 4, 7) or torch.Size([2, 4, 7])."""
    return r"[\[(]" + r",\s*".join(map(str, sizes)) + r",?[\])]"


def _logits(*spatial, n=2):
    return random_logits((n, C) + spatial).float()


def _target(*spatial, n=2):
    return random_target((n,) + spatial, C)


def _with(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


ce = uaal_ext.uaal_cross_entropy

# (id, call, exception type, argument name, offending shape/value as a regex)
CASES = [
    ("target-shape", lambda: ce(_logits(4, 6), _target(4, 7)), ValueError, "target", _shape(2, 4, 7)),
    ("target-batch", lambda: ce(_logits(4, 6), _target(4, 6, n=3)), ValueError, "target", _shape(3, 4, 6)),
    ("target-ndim", lambda: ce(_logits(4, 6), _target(24)), ValueError, "target", _shape(2, 24)),
    # a float target is read as class probabilities, which must be shaped like the logits
    (
        "target-float-indices",
        lambda: ce(_logits(3), _target(3).float()),
        ValueError,
        "target",
        r"probabilities.*\[2, 19, 3\]",
    ),
    ("target-equals-C", lambda: ce(_logits(3, 5), _with(_target(3, 5), (1, 2, 3), C)), ValueError, "target", "19"),
    ("target-negative", lambda: ce(_logits(3, 5), _with(_target(3, 5), (0, 0, 0), -1)), ValueError, "target", "-1"),
    (
        "target-uint8-255-not-ignored",
        lambda: ce(_logits(3, 5), _with(_target(3, 5), (0, 1, 1), 255).to(torch.uint8)),
        ValueError,
        "target",
        "255",
    ),
    ("target-NC-out-of-range", lambda: ce(_logits(), _with(_target(), 1, 40)), ValueError, "target", "40"),
    ("exponent", lambda: ce(_logits(3), _target(3), exponent=-0.5, alpha=1.0), ValueError, "exponent", "-0.5"),
    (
        "uncertainty-shape",
        lambda: ce(_logits(4, 5), _target(4, 5), torch.rand(2, 5, 4), alpha=1.0),
        ValueError,
        "uncertainty",
        _shape(2, 5, 4),
    ),
    (
        "uncertainty-negative",
        lambda: ce(_logits(4, 5), _target(4, 5), _with(torch.rand(2, 4, 5), (1, 3, 2), -0.25), alpha=1.0),
        ValueError,
        "uncertainty",
        "",
    ),
    ("weight-length", lambda: ce(_logits(3), _target(3), weight=torch.rand(C - 1)), ValueError, "weight", "18"),
    ("reduction", lambda: ce(_logits(3), _target(3), reduction="avg"), ValueError, "reduction", "avg"),
    ("smoothing-high", lambda: ce(_logits(3), _target(3), label_smoothing=1.5), ValueError, "label_smoothing", "1.5"),
    ("smoothing-low", lambda: ce(_logits(3), _target(3), label_smoothing=-0.1), ValueError, "label_smoothing", "-0.1"),
    ("input-integer", lambda: ce(_logits(3).long(), _target(3)), TypeError, "input", "(?i)long|int64"),
    # Not 1-D: F.cross_entropy accepts an unbatched (C,) input.
    ("input-0d", lambda: ce(torch.tensor(1.5), torch.tensor(0)), ValueError, "input", ""),
    (
        "module-target",
        lambda: uaal_ext.UAALLoss()(_logits(3, 5), _with(_target(3, 5), (1, 1, 1), C)),
        ValueError,
        "target",
        "19",
    ),
    ("module-normalize", lambda: uaal_ext.UAALLoss(normalize="median"), ValueError, "normalize", "median"),
    ("module-exponent", lambda: uaal_ext.UAALLoss(exponent=-1.0)(_logits(3), _target(3)), ValueError, "exponent", "-1"),
    ("entropy-integer", lambda: uaal_ext.pixel_entropy(_logits(3).long()), TypeError, "logits|input", ""),
    ("entropy-0d", lambda: uaal_ext.pixel_entropy(torch.tensor(0.5)), ValueError, "logits|input", ""),
]


@pytest.mark.parametrize("call,exc,arg,offending", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, arg, offending):
    with pytest.raises(exc, match=arg) as excinfo:
        call()
    assert re.search(offending, str(excinfo.value)), f"message does not show {offending!r}: {excinfo.value}"


def test_low_level_op_checks_targets():
    """The raw op is reachable by anyone: an out-of-range target must raise, not read out of bounds."""
    x, target = _logits(3, 4), _with(_target(3, 4), (1, 2, 3), 10_000)
    with pytest.raises((ValueError, RuntimeError, IndexError), match="target"):
        torch.ops.uaal_ext.cross_entropy_forward(x, target, None, None, -100, 0.0, 1.0, 2.0, 1.0, float("inf"), True)


@cuda_only
def test_devices_differ():
    x = _logits(3, 4).cuda()
    with pytest.raises(ValueError, match="target"):
        ce(x, _target(3, 4))
    with pytest.raises(ValueError, match="weight"):
        ce(x, _target(3, 4).cuda(), weight=torch.rand(C))
    with pytest.raises(ValueError, match="uncertainty"):
        ce(x, _target(3, 4).cuda(), torch.rand(2, 3, 4), alpha=1.0)
