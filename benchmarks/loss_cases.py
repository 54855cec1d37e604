"""What `bench_loss.py` times: the methods (uaal_ext's paths and the PyTorch baselines, the eager
reference loss written as efficiently as plain PyTorch allows) and their inputs. Kept apart from
the driver so each file reads as one thing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
IGNORED_FRACTION = 0.05
ALPHA = 1.0
EXPONENT = 2.0

BY_WEIGHT = "uaal_ext (by weight)"
COMPILED_BY_WEIGHT = "torch.compile(by-weight reference)"
METHODS = [
    "uaal_ext",
    "uaal_ext (two-pass)",
    BY_WEIGHT,
    "eager reference",
    "torch.compile(reference)",
    COMPILED_BY_WEIGHT,
    "F.cross_entropy",
]
OURS = "uaal_ext"


# --------------------------------------------------------------------------------------------
# The baseline: the reference UAAL loss written as efficiently as plain eager PyTorch allows.
# --------------------------------------------------------------------------------------------
def uaal_loss_eager(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    alpha: float = ALPHA,
    exponent: float = EXPONENT,
    normalize_by_weight: bool = False,
) -> torch.Tensor:
    """Mean UAAL loss, default uncertainty: w_i = 1 + alpha * (H_i / log C)^exponent (docs/math.md#uncertainty-weight).

    Divided by the number of valid pixels, or with ``normalize_by_weight`` by the sum of their w_i.
    Finite logits only (exp(-inf) * -inf is NaN here; the project's reference handles it).
    """
    num_classes = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)  # (N, C, *spatial), kept for nll and its backward
    with torch.no_grad():  # w is a constant for autograd
        entropy = -(logp.exp() * logp).sum(1)  # (N, *spatial)
        w = 1.0 + alpha * (entropy / math.log(num_classes)).pow(exponent)
    nll = F.nll_loss(logp, target, ignore_index=ignore_index, reduction="none")  # 0 when ignored
    valid = target != ignore_index
    denominator = torch.where(valid, w, 0.0).sum() if normalize_by_weight else valid.sum()
    return (w * nll).sum() / denominator


def uaal_loss_eager_by_weight(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return uaal_loss_eager(logits, target, normalize_by_weight=True)


def plain_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def uaal_ext_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import uaal_ext

    return uaal_ext.uaal_cross_entropy(logits, target, ignore_index=IGNORE_INDEX, alpha=ALPHA, exponent=EXPONENT)


def uaal_ext_by_weight_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import uaal_ext

    return uaal_ext.uaal_cross_entropy(
        logits, target, ignore_index=IGNORE_INDEX, alpha=ALPHA, exponent=EXPONENT, normalize_by_weight=True
    )


def uaal_ext_two_pass_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import uaal_ext  # noqa: F401  (registers the ops)

    loss_sum, _, sums = torch.ops.uaal_ext.cross_entropy_forward(
        logits, target, None, None, IGNORE_INDEX, 0.0, ALPHA, EXPONENT, 1.0 / math.log(logits.shape[1]), math.inf, True
    )
    return loss_sum / sums[0]


def get_method(name: str):
    if name == "uaal_ext":
        import uaal_ext  # noqa: F401  (fail here, loudly, if the extension is not importable)

        return uaal_ext_loss
    if name == "uaal_ext (two-pass)":
        return uaal_ext_two_pass_loss
    if name == BY_WEIGHT:
        import uaal_ext  # noqa: F401  (fail here, loudly, if the extension is not importable)

        return uaal_ext_by_weight_loss
    if name == "eager reference":
        return uaal_loss_eager
    if name == "torch.compile(reference)":
        return torch.compile(uaal_loss_eager, fullgraph=True, dynamic=False)
    if name == COMPILED_BY_WEIGHT:
        return torch.compile(uaal_loss_eager_by_weight, fullgraph=True, dynamic=False)
    if name == "F.cross_entropy":
        return plain_cross_entropy
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def make_inputs(shape, seed: int = 0, layout: str = "contiguous"):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(3.0)
    logits = logits.contiguous(memory_format=LAYOUTS[layout])  # the same values in either layout
    n, c, *spatial = shape
    target = torch.randint(0, c, (n, *spatial), generator=gen, dtype=torch.int64)
    target[torch.rand(target.shape, generator=gen) < IGNORED_FRACTION] = IGNORE_INDEX
    return logits.requires_grad_(), target
