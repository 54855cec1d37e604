"""The UAAL cross-entropy and the pixel entropy ops: Python wrappers, fake kernels, autograd.

The C++ side (``csrc/ops.cpp``) defines the schemas and the CPU/CUDA kernels. The fake (meta)
kernels below let ``torch.compile`` trace the ops without running them; the autograd registrations
make the forward ops differentiable with respect to their logits. The math is in
``docs/math.md#uaal-loss`` and ``docs/math.md#entropy``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _C  # noqa: F401  (importing the extension registers torch.ops.uaal_ext.*)
from .._validation import check_choice

__all__ = [
    "REDUCTIONS",
    "uaal_cross_entropy",
    "uaal_cross_entropy_sums",
    "loss_dtype",
    "pixel_entropy",
    "inverse_scale",
    "accumulation_dtype",
    "pixel_shape",
]

REDUCTIONS = ("none", "mean", "sum")

# The `mode` of cross_entropy_forward_backward (csrc/ops.cpp): what the fused op divides the summed
# loss and its gradient by.
_FUSED_SUM, _FUSED_MEAN, _FUSED_MEAN_BY_WEIGHT = 0, 1, 2

_ops = torch.ops.uaal_ext


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for gradcheck); every other floating type accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pixel_shape(input: Tensor) -> tuple[int, ...]:
    """``(N, C, *spatial)`` -> ``(N, *spatial)``: the shape of everything defined per pixel."""
    return (input.shape[0], *input.shape[2:])


# ---- fake kernels -----------------------------------------------------------------------------------


@torch.library.register_fake("uaal_ext::cross_entropy_forward")
def _cross_entropy_forward_fake(
    input, target, uncertainty, weight, ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max, reduce
):
    acc = accumulation_dtype(input.dtype)
    loss = input.new_empty(() if reduce else pixel_shape(input), dtype=acc)
    log_normalizer = input.new_empty(pixel_shape(input), dtype=acc)
    return loss, log_normalizer, input.new_empty((2,), dtype=acc)


@torch.library.register_fake("uaal_ext::cross_entropy_backward")
def _cross_entropy_backward_fake(
    grad,
    input,
    target,
    log_normalizer,
    uncertainty,
    weight,
    ignore_index,
    label_smoothing,
    alpha,
    exponent,
    inv_scale,
    s_max,
):
    return torch.empty_like(input)


@torch.library.register_fake("uaal_ext::cross_entropy_forward_backward")
def _cross_entropy_forward_backward_fake(
    input, target, uncertainty, weight, ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max, mode
):
    return input.new_empty((), dtype=accumulation_dtype(input.dtype)), torch.empty_like(input)


@torch.library.register_fake("uaal_ext::pixel_entropy")
def _pixel_entropy_fake(input, normalized):
    return input.new_empty(pixel_shape(input))


@torch.library.register_fake("uaal_ext::pixel_entropy_backward")
def _pixel_entropy_backward_fake(grad, input, normalized):
    return torch.empty_like(input)


# ---- autograd ---------------------------------------------------------------------------------------


def _cross_entropy_setup_context(ctx, inputs, output):
    input, target, uncertainty, weight, *scalars, _reduce = inputs
    _, log_normalizer, sums = output
    ctx.save_for_backward(input, target, uncertainty, weight, log_normalizer)
    ctx.scalars = scalars  # ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max
    # The UAAL weight and the class weights are constants for autograd (docs/math.md#uaal-loss), so
    # the mean's denominators carry no gradient.
    ctx.mark_non_differentiable(log_normalizer, sums)
    # Without this autograd hands the backward a zero tensor for each unused output: a per-pixel
    # allocation the size of log_normalizer, for nothing.
    ctx.set_materialize_grads(False)


def _cross_entropy_backward(ctx, grad_loss, _grad_log_normalizer, _grad_sums):
    input, target, uncertainty, weight, log_normalizer = ctx.saved_tensors
    grad_input = grad_target = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        grad_input = _ops.cross_entropy_backward(
            grad_loss, input, target, log_normalizer, uncertainty, weight, *ctx.scalars
        )
    if ctx.needs_input_grad[1] and grad_loss is not None:
        grad_target = _probability_target_gradient(grad_loss, input, target, uncertainty, weight, *ctx.scalars)
    return (grad_input, grad_target) + (None,) * 9


def _probability_target_gradient(
    grad_loss, input, target, uncertainty, weight, ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max
):
    """d loss / d target for class-probability targets that require a gradient (distillation from a
    teacher being trained): ``-g w c_c (1 - eps) log p_c`` per logit, no kernel of its own. It is
    the reference's gradient (``ops/reference.py``), so the two cannot drift apart."""
    from .reference import uaal_cross_entropy_reference

    with torch.enable_grad():
        probabilities = target.detach().requires_grad_()
        loss = uaal_cross_entropy_reference(
            input.detach().to(accumulation_dtype(input.dtype)),
            probabilities,
            uncertainty,
            weight=weight,
            label_smoothing=label_smoothing,
            alpha=alpha,
            exponent=exponent,
            # inv_scale is 0 only for the entropy of one class, which the default scale handles.
            uncertainty_scale=1.0 / inv_scale if inv_scale > 0 else None,
            s_max=None if math.isinf(s_max) else s_max,
            reduction="sum" if grad_loss.dim() == 0 else "none",
        )
        (grad,) = torch.autograd.grad(loss, probabilities, grad_loss.to(loss.dtype))
    return grad


torch.library.register_autograd(
    "uaal_ext::cross_entropy_forward", _cross_entropy_backward, setup_context=_cross_entropy_setup_context
)


def _forward_backward_setup_context(ctx, inputs, output):
    _, grad_input = output
    ctx.save_for_backward(grad_input)
    ctx.mark_non_differentiable(grad_input)
    ctx.set_materialize_grads(False)


def _is_one(grad: Tensor) -> bool:
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


# ---- the functional API -----------------------------------------------------------------------------


def inverse_scale(uncertainty_scale: float | None, uses_entropy: bool, num_classes: int) -> float:
    """1 / scale, where the default scale is log C for the entropy (so u is the normalised entropy)
    and 1 for a map the caller supplies."""
    if uncertainty_scale is None:
        if not uses_entropy:
            return 1.0
        # One class has zero entropy whatever the scale; 0 keeps u = 0 instead of 0 / log 1.
        return 1.0 / math.log(num_classes) if num_classes > 1 else 0.0
    scale = float(uncertainty_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"uncertainty_scale must be a positive finite number (or None), got {uncertainty_scale!r}")
    return 1.0 / scale


def uaal_cross_entropy(
    input: Tensor,
    target: Tensor,
    uncertainty: Tensor | None = None,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    alpha: float = 0.0,
    exponent: float = 2.0,
    uncertainty_scale: float | None = None,
    s_max: float | None = None,
    normalize_by_weight: bool = False,
) -> Tensor:
    """Uncertainty-weighted cross-entropy of logits ``input`` against class indices ``target``.

    Each valid pixel's cross-entropy ``l_i`` is multiplied by ``w_i = 1 + alpha * min(u_i ** exponent,
    s_max)`` with ``u_i = U_i / uncertainty_scale`` (``docs/math.md#uncertainty-weight``). With
    ``alpha = 0`` the loss is exactly ``torch.nn.functional.cross_entropy``. The weight is a
    constant for autograd: no gradient flows through the uncertainty.

    Args:
        input: logits ``(N, C, *spatial)``, ``(N, C)`` or unbatched ``(C,)``; float64, float32,
            float16 or bfloat16 (float32 accumulation), any strides.
        target: class indices of shape ``(N, *spatial)`` (``()`` for unbatched input); int64, int32
            or uint8. Values are in ``[0, C)`` or equal ``ignore_index``. Or, as in
            ``torch.nn.functional.cross_entropy``, class probabilities shaped like ``input``
            (floating point; label smoothing by hand, distillation, MixUp/CutMix): every pixel
            counts, ``ignore_index`` must stay -100, the ``mean`` divides by the number of pixels
            (``sum(w)`` with ``normalize_by_weight``), and they are read in ``input``'s dtype
            (docs/math.md#probability-targets).
        uncertainty: optional per-pixel uncertainty ``U >= 0`` shaped like ``target``. When None, the
            softmax entropy of ``input`` itself is used (computed in the same pass).
        weight, ignore_index, reduction, label_smoothing: as in ``torch.nn.functional.cross_entropy``.
        alpha: strength of the uncertainty weighting; 0 gives plain cross-entropy.
        exponent: power ``E`` applied to the scaled uncertainty (the paper's best: 2).
        uncertainty_scale: ``u = U / uncertainty_scale``. Default: ``log C`` for the entropy
            (normalised entropy in [0, 1]) and 1 for a given map (pass ``eta`` for kernel-noise sigma).
        s_max: optional cap on ``u ** E``.
        normalize_by_weight: divide the ``mean`` by ``sum(c_y * w)`` instead of ``sum(c_y)``
            (class probabilities: ``sum(w)`` instead of the number of pixels).

    Returns:
        The loss in ``input``'s dtype (float32 for half logits under autocast, as torch's
        ``cross_entropy``): a scalar for ``mean`` / ``sum``, per pixel for ``none``.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    input, target, uncertainty, unbatched, args = _op_arguments(
        input, target, uncertainty, weight, ignore_index, label_smoothing, alpha, exponent, uncertainty_scale, s_max
    )
    # float16 logits take the two ops: the fused op writes the gradient in the forward, already
    # divided by the mean's denominator (~1 / (N H W)) and before a GradScaler's scale reaches it, so
    # most of it would fall below float16's normal range and flush to 0; the backward op applies the
    # incoming (scaled) gradient first.
    # A probability target that needs a gradient takes the two ops too: only their autograd gives it one.
    fused = input.dtype != torch.float16 and not (target.is_floating_point() and target.requires_grad)
    if fused and torch.is_grad_enabled() and input.requires_grad and reduction != "none":
        # A training step: the gradient is computed while the logits are in cache (see
        # cross_entropy_forward_backward in csrc/ops.cpp); backward() then costs nothing.
        if reduction == "sum":
            mode = _FUSED_SUM
        else:
            mode = _FUSED_MEAN_BY_WEIGHT if normalize_by_weight else _FUSED_MEAN
        loss, _ = _ops.cross_entropy_forward_backward(*args, mode)
        return loss.to(loss_dtype(input))
    loss, _, sums = _ops.cross_entropy_forward(*args, reduction != "none")
    if reduction == "mean":
        loss = loss / sums[1 if normalize_by_weight else 0]
    elif reduction == "none" and unbatched:
        loss = loss.squeeze(0)
    return loss.to(loss_dtype(input))


def loss_dtype(input: Tensor) -> torch.dtype:
    """The dtype of a loss of ``input``: the logits' own, but float32 for half logits under autocast,
    as torch's autocast ``cross_entropy`` returns (a float16 loss overflows at 65504, and a
    GradScaler's initial scale of 2^16 times its gradient is inf in float16)."""
    if input.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(input.device.type):
        return torch.float32
    return input.dtype


def uaal_cross_entropy_sums(
    input: Tensor,
    target: Tensor,
    uncertainty: Tensor | None = None,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    alpha: float = 0.0,
    exponent: float = 2.0,
    uncertainty_scale: float | None = None,
    s_max: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The summed loss of :func:`uaal_cross_entropy` (``reduction="sum"``, differentiable) and the
    two denominators its ``mean`` chooses from, ``(sum(c_y), sum(c_y * w))`` over the valid pixels
    (float32, float64 for float64 input; no gradient).

    For a mean over more than one call (the ranks of a data-parallel step, accumulated
    micro-batches): add up the sums and the denominators, then divide.
    """
    input, target, uncertainty, _, args = _op_arguments(
        input, target, uncertainty, weight, ignore_index, label_smoothing, alpha, exponent, uncertainty_scale, s_max
    )
    loss, _, sums = _ops.cross_entropy_forward(*args, True)
    return loss.to(loss_dtype(input)), sums


def _op_arguments(input, target, uncertainty, weight, ignore_index, label_smoothing, alpha, exponent, scale, s_max):
    """The ops' positional arguments from the functional ones; unbatched ``(C,)`` input made a batch of one."""
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"input and target must be tensors, got {type(input).__name__} and {type(target).__name__}")
    if target.is_floating_point() and ignore_index != -100:
        # As torch.nn.functional.cross_entropy: a probability target has no pixel to ignore.
        raise ValueError(
            f"ignore_index is not supported for a target of class probabilities (got ignore_index={ignore_index}); "
            "leave it at -100"
        )
    unbatched = input.dim() == 1
    if unbatched:
        # torch's convention: (C,) logits with a 0-dim target (or (C,) probabilities) are one sample.
        input, target = input.unsqueeze(0), target.unsqueeze(0)
        uncertainty = uncertainty.unsqueeze(0) if uncertainty is not None else None
    num_classes = input.shape[1] if input.dim() >= 2 else 0
    args = (
        input,
        target,
        uncertainty,
        weight,
        int(ignore_index),
        float(label_smoothing),
        float(alpha),
        float(exponent),
        inverse_scale(scale, uncertainty is None, num_classes),
        math.inf if s_max is None else float(s_max),
    )
    return input, target, uncertainty, unbatched, args


def pixel_entropy(logits: Tensor, normalized: bool = False) -> Tensor:
    """Softmax entropy ``-sum_c p_c log p_c`` over dim 1 of ``logits`` ``(N, C, *spatial)``.

    Returns ``(N, *spatial)`` in the logits' dtype; ``normalized=True`` divides by ``log C`` so values
    lie in [0, 1]. Differentiable. Classes with ``-inf`` logits contribute 0.
    """
    return _ops.pixel_entropy(logits, bool(normalized))
