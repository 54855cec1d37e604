"""Autograd registration shared by the ops that measure a model rather than train it."""

from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (importing the extension registers torch.ops.uaal_ext.*)

__all__ = ["register_not_differentiable"]


def _non_differentiable_setup_context(ctx, inputs, output):
    outputs = output if isinstance(output, (list, tuple)) else (output,)
    ctx.mark_non_differentiable(*outputs)


def _no_gradient(ctx, *grads):
    raise RuntimeError("uaal_ext: perturbation and acquisition ops are not differentiable")


def register_not_differentiable(qualified_name: str) -> None:
    """Registers an autograd formula that marks every output of the op non-differentiable.

    Perturbed weights, perturbation statistics and acquisition scores are measurements of a model,
    constants for autograd (``docs/math.md#uncertainty-weight``): their outputs never require grad,
    even when an input does, which is what ``opcheck`` verifies.
    """
    torch.library.register_autograd(qualified_name, _no_gradient, setup_context=_non_differentiable_setup_context)
