"""Fake (meta) kernels and autograd formulas of the ``torch.ops.uaal_ext`` ops.

The C++ side (csrc/ops.cpp) defines the schemas and the CPU/CUDA kernels; registering the fake
kernels lets ``torch.compile`` trace the ops without running them, and the autograd registration
makes the forward ops differentiable with respect to their logits.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (importing the extension registers the ops)

_ops = torch.ops.uaal_ext


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pixel_shape(input: torch.Tensor) -> tuple[int, ...]:
    return (input.shape[0], *input.shape[2:])


@torch.library.register_fake("uaal_ext::cross_entropy_forward")
def _cross_entropy_forward_fake(input, target, uncertainty, weight, ignore_index, label_smoothing, alpha,
                                exponent, inv_scale, s_max, reduce):
    acc = _accumulation_dtype(input.dtype)
    loss = input.new_empty(() if reduce else _pixel_shape(input), dtype=acc)
    log_normalizer = input.new_empty(_pixel_shape(input), dtype=acc)
    return loss, log_normalizer, input.new_empty((2,), dtype=acc)


@torch.library.register_fake("uaal_ext::cross_entropy_backward")
def _cross_entropy_backward_fake(grad, input, target, log_normalizer, uncertainty, weight, ignore_index, label_smoothing,
                                 alpha, exponent, inv_scale, s_max):
    return torch.empty_like(input)


@torch.library.register_fake("uaal_ext::cross_entropy_forward_backward")
def _cross_entropy_forward_backward_fake(input, target, uncertainty, weight, ignore_index, label_smoothing, alpha,
                                         exponent, inv_scale, s_max, mean):
    return input.new_empty((), dtype=_accumulation_dtype(input.dtype)), torch.empty_like(input)


@torch.library.register_fake("uaal_ext::pixel_entropy")
def _pixel_entropy_fake(input, normalized):
    return input.new_empty(_pixel_shape(input))


@torch.library.register_fake("uaal_ext::pixel_entropy_backward")
def _pixel_entropy_backward_fake(grad, input, normalized):
    return torch.empty_like(input)


def _cross_entropy_setup_context(ctx, inputs, output):
    input, target, uncertainty, weight, *scalars, _reduce = inputs
    _, log_normalizer, sums = output
    ctx.save_for_backward(input, target, uncertainty, weight, log_normalizer)
    ctx.scalars = scalars  # ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max
    # The UAAL weight and the class weights are constants for autograd (SPEC section 2), so the
    # mean's denominators carry no gradient.
    ctx.mark_non_differentiable(log_normalizer, sums)
    # Without this autograd hands the backward a zero tensor for each unused output: a per-pixel
    # allocation the size of log_normalizer, for nothing.
    ctx.set_materialize_grads(False)


def _cross_entropy_backward(ctx, grad_loss, _grad_log_normalizer, _grad_sums):
    input, target, uncertainty, weight, log_normalizer = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        grad_input = _ops.cross_entropy_backward(
            grad_loss, input, target, log_normalizer, uncertainty, weight, *ctx.scalars
        )
    return (grad_input,) + (None,) * 10


torch.library.register_autograd(
    "uaal_ext::cross_entropy_forward", _cross_entropy_backward, setup_context=_cross_entropy_setup_context
)


def _forward_backward_setup_context(ctx, inputs, output):
    _, grad_input = output
    ctx.save_for_backward(grad_input)
    ctx.mark_non_differentiable(grad_input)
    ctx.set_materialize_grads(False)


def _is_one(grad: torch.Tensor) -> bool:
    """Whether ``grad`` is a CPU scalar equal to 1, checked only where reading it is free: on the
    CPU, in eager mode (a traced graph cannot branch on data; a GPU read would synchronise)."""
    return (
        type(grad) is torch.Tensor
        and grad.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and grad.item() == 1.0
    )


def _forward_backward_backward(ctx, grad_loss, _grad_of_grad_input):
    (grad_input,) = ctx.saved_tensors
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return (None,) * 11
    # loss.backward() passes 1: the gradient computed in the forward is the answer, as it is.
    # Autograd never writes into the gradients it passes along, so sharing the buffer is safe.
    if not _is_one(grad_loss):
        grad_input = grad_input * grad_loss.to(grad_input.dtype)
    return (grad_input,) + (None,) * 10


torch.library.register_autograd(
    "uaal_ext::cross_entropy_forward_backward",
    _forward_backward_backward,
    setup_context=_forward_backward_setup_context,
)


def _pixel_entropy_setup_context(ctx, inputs, output):
    input, normalized = inputs
    ctx.save_for_backward(input)
    ctx.normalized = normalized


def _pixel_entropy_backward(ctx, grad):
    (input,) = ctx.saved_tensors
    return _ops.pixel_entropy_backward(grad, input, ctx.normalized), None


torch.library.register_autograd(
    "uaal_ext::pixel_entropy", _pixel_entropy_backward, setup_context=_pixel_entropy_setup_context
)


# ---- kernel-noise perturbation ------------------------------------------------------------------------
# Not differentiable: the perturbed weights and the statistics are a measurement of the model, a
# constant for autograd (SPEC section 2), so their outputs never require grad.


@torch.library.register_fake("uaal_ext::kernel_noise")
def _kernel_noise_fake(weights, num_samples, eta, seed, offset, per_filter):
    return [w.new_empty((num_samples, *w.shape)) for w in weights]


@torch.library.register_fake("uaal_ext::perturbation_statistics")
def _perturbation_statistics_fake(clean, perturbed):
    acc = _accumulation_dtype(clean.dtype)
    return clean.new_empty(_pixel_shape(clean), dtype=acc), clean.new_empty(_pixel_shape(clean), dtype=acc)


# ---- acquisition scores ------------------------------------------------------------------------------
# Scores rank images for labelling; no gradient flows through them either.

_MONTE_CARLO_METHODS = ("mc_entropy", "bald")


@torch.library.register_fake("uaal_ext::pixel_scores")
def _pixel_scores_fake(input, method):
    prediction = input[0] if method in _MONTE_CARLO_METHODS else input
    return input.new_empty(_pixel_shape(prediction), dtype=_accumulation_dtype(input.dtype))


@torch.library.register_fake("uaal_ext::aggregate_scores")
def _aggregate_scores_fake(scores, valid, reduction, q):
    return scores.new_empty((scores.shape[0],))


def _non_differentiable_setup_context(ctx, inputs, output):
    outputs = output if isinstance(output, (list, tuple)) else (output,)
    ctx.mark_non_differentiable(*outputs)


def _no_gradient(ctx, *grads):
    raise RuntimeError("uaal_ext: perturbation and acquisition ops are not differentiable")


for _name in ("kernel_noise", "perturbation_statistics", "pixel_scores", "aggregate_scores"):
    torch.library.register_autograd(
        f"uaal_ext::{_name}", _no_gradient, setup_context=_non_differentiable_setup_context
    )
