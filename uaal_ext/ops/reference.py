"""Pure-PyTorch reference of every op: docs/math.md written as ordinary torch ops.

These functions are the specification in code. They are slow and memory-hungry on purpose
(every intermediate is materialized) and are used by the tests and the benchmarks as the
ground truth the fused kernels are compared with. Everything is computed in the input's
dtype, so pass float64 for a tight reference; all of them are differentiable w.r.t. the
logits through autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "pixel_entropy_reference",
    "uncertainty_weight_reference",
    "uaal_cross_entropy_reference",
    "philox4x32_10",
    "kernel_noise_normals_reference",
    "kernel_noise_reference",
    "perturbation_statistics_reference",
    "pixel_scores_reference",
    "aggregate_scores_reference",
]


def pixel_entropy_reference(logits: Tensor, normalized: bool = False) -> Tensor:
    """Softmax entropy over dim 1: ``H = -sum_c p_c log p_c``.

    Args:
        logits: ``(N, C, *spatial)`` or ``(N, C)``, floating point.
        normalized: divide by ``log C`` so the result lies in [0, 1] (0 when ``C == 1``).

    Returns:
        ``(N, *spatial)`` (``(N,)`` for ``(N, C)`` input), in the logits' dtype.

    ``p log p`` is taken as 0 where ``p == 0``, so ``-inf`` logits contribute nothing; a pixel
    whose logits are all ``-inf`` (or contain NaN / ``+inf``) gives NaN, as ``softmax`` does.
    """
    logp = torch.log_softmax(logits, dim=1)
    p = logp.exp()
    # Masking log p (not p log p) keeps the backward free of 0 * (-inf) at p == 0.
    safe_logp = torch.where(p > 0, logp, torch.zeros_like(logp))
    entropy = -(p * safe_logp).sum(dim=1)
    if normalized:
        num_classes = logits.shape[1]
        entropy = entropy / math.log(num_classes) if num_classes > 1 else entropy * 0
    return entropy


def uncertainty_weight_reference(u: Tensor, *, alpha: float, exponent: float, s_max: float | None = None) -> Tensor:
    """Per-pixel loss weight ``w = 1 + alpha * min(u ** exponent, s_max)`` (paper Eq. 6)."""
    scaled = u.pow(exponent)
    if s_max is not None:
        scaled = scaled.clamp(max=s_max)
    return 1 + alpha * scaled


# fmt: off
# The arguments of uaal_ext.ops.uaal_cross_entropy, packed as a specification reads them: the UAAL
# weighting's own, then those of torch.nn.functional.cross_entropy.
def uaal_cross_entropy_reference(
    input: Tensor, target: Tensor, uncertainty: Tensor | None = None, *,
    alpha: float = 0.0, exponent: float = 2.0, uncertainty_scale: float | None = None, s_max: float | None = None,
    normalize_by_weight: bool = False, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    # fmt: on
    """Uncertainty-weighted cross-entropy ``sum_i w_i * l_i`` (docs/math.md#uaal-loss).

    Args:
        input: logits ``(N, C, *spatial)`` or ``(N, C)``.
        target: class indices ``(N, *spatial)`` (any integer dtype), or class probabilities shaped
            like ``input`` (floating point; every pixel counts, ``ignore_index`` is not used, and the
            ``mean`` divides by the number of pixels, or by ``sum(w)``: PyTorch's convention).
        uncertainty: per-pixel ``U >= 0`` of the target's shape; ``None`` uses the entropy of
            ``input`` with a default scale of ``log C`` (i.e. the normalized entropy).
        weight: class weights ``c`` of shape ``(C,)``.
        uncertainty_scale: ``u = U / scale``; default ``log C`` for the entropy, 1 for a map.
        The other arguments are those of ``torch.nn.functional.cross_entropy`` and docs/math.md#uncertainty-weight.

    Returns:
        Per-pixel losses ``(N, *spatial)`` (0 at ignored pixels) for ``reduction="none"``,
        otherwise a 0-dim tensor. With ``alpha=0`` this equals ``F.cross_entropy``.
    """
    num_classes = input.shape[1]
    eps = label_smoothing
    if target.is_floating_point():
        return _probability_target_reference(
            input, target, uncertainty, alpha=alpha, exponent=exponent, uncertainty_scale=uncertainty_scale,
            s_max=s_max, normalize_by_weight=normalize_by_weight, weight=weight, reduction=reduction,
            label_smoothing=label_smoothing,
        )
    target = target.long()
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)

    w = _uaal_weight_reference(
        input, uncertainty, alpha=alpha, exponent=exponent, uncertainty_scale=uncertainty_scale, s_max=s_max
    )
    c = torch.ones(num_classes, dtype=input.dtype, device=input.device) if weight is None else weight.to(input.dtype)
    c_b = c.view(1, num_classes, *([1] * (input.dim() - 2)))
    nll = -torch.log_softmax(input, dim=1)  # lse_i - z_ic
    c_y = c[safe_target.squeeze(1)]
    loss = (1 - eps) * c_y * nll.gather(1, safe_target).squeeze(1)
    if eps > 0:  # skipped at eps == 0, where 0 * inf (a -inf logit) would give NaN
        loss = loss + (eps / num_classes) * (c_b * nll).sum(dim=1)
    loss = torch.where(valid, w * loss, torch.zeros_like(loss))

    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        denom = c_y * w if normalize_by_weight else c_y
        return loss.sum() / torch.where(valid, denom, torch.zeros_like(denom)).sum()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def _uaal_weight_reference(input, uncertainty, *, alpha, exponent, uncertainty_scale, s_max):
    # The weight is a constant for autograd: no gradient flows through the uncertainty.
    with torch.no_grad():
        if uncertainty is None:
            u = pixel_entropy_reference(input, normalized=uncertainty_scale is None)
        else:
            u = uncertainty.to(input.dtype)
        if uncertainty_scale is not None:
            u = u / uncertainty_scale
        return uncertainty_weight_reference(u, alpha=alpha, exponent=exponent, s_max=s_max)


def _probability_target_reference(
    input, target, uncertainty, *, alpha, exponent, uncertainty_scale, s_max, normalize_by_weight, weight, reduction,
    label_smoothing,
):
    """``l = -sum_c c_c t'_c log p_c`` with ``t' = (1 - eps) t + eps / C`` (docs/math.md#probability-targets)."""
    num_classes = input.shape[1]
    w = _uaal_weight_reference(
        input, uncertainty, alpha=alpha, exponent=exponent, uncertainty_scale=uncertainty_scale, s_max=s_max
    )
    smoothed = target.to(input.dtype) * (1 - label_smoothing) + label_smoothing / num_classes
    c = torch.ones(num_classes, dtype=input.dtype, device=input.device) if weight is None else weight.to(input.dtype)
    c_b = c.view(1, num_classes, *([1] * (input.dim() - 2)))
    loss = w * -(c_b * smoothed * torch.log_softmax(input, dim=1)).sum(dim=1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (w.sum() if normalize_by_weight else loss.numel())
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


# --- Kernel-noise perturbation (docs/math.md#kernel-noise-perturbation) --------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # key bumps (golden ratio, sqrt(3) - 1)


def _mulhilo32(multiplier: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of the exact 64-bit product ``multiplier * x`` (x < 2^32, int64).

    The product does not fit in int64, so ``x`` is split into 16-bit halves: both partial products
    are below 2^48, and the words are assembled from them without ever exceeding 2^49.
    """
    low_part = multiplier * (x & 0xFFFF)  # < 2^48
    high_part = multiplier * (x >> 16)  # < 2^48; the product is high_part * 2^16 + low_part
    lo = (((high_part & 0xFFFF) << 16) + (low_part & _MASK32)) & _MASK32
    hi = (high_part + (low_part >> 16)) >> 16
    return hi, lo


def philox4x32_10(counter: Tensor, key: Tensor) -> Tensor:
    """Philox4x32-10 (Salmon et al., SC'11), bit-exact with Random123's ``philox4x32``.

    Args:
        counter: ``(..., 4)`` int64 holding uint32 values.
        key: ``(..., 2)`` int64 holding uint32 values, broadcastable with ``counter[..., :2]``.

    Returns:
        ``(..., 4)`` int64 holding the four uint32 output words.
    """
    c0, c1, c2, c3 = counter.long().unbind(-1)
    k0, k1 = key.long().unbind(-1)
    for round_index in range(10):
        if round_index > 0:  # Random123 bumps the key before every round but the first
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack(torch.broadcast_tensors(c0, c1, c2, c3), dim=-1)


def kernel_noise_normals_reference(numel: int, *, seed: int, offset: int, sample: int, tensor_index: int) -> Tensor:
    """The standard normals ``n_k`` the kernel-noise op draws for one tensor and one sample.

    Element ``e`` belongs to Philox block ``b = e // 4`` with counter
    ``(b, sample, tensor_index, offset)`` and key ``(seed & 0xffffffff, seed >> 32)``. The four
    words become uniforms ``u_j = (r_j >> 9) * 2^-23 + 2^-24`` in (0, 1), exact in float32, and two
    Box-Muller pairs in float32: ``n[4b], n[4b+1] = sqrt(-2 log u0) * (cos, sin)(2 pi u1)`` and
    ``n[4b+2], n[4b+3]`` likewise from ``u2, u3``.

    Args:
        numel: number of normals (the weight tensor's element count).
        seed: in [0, 2^63). offset: in [0, 2^32). sample: k. tensor_index: position in the list.

    Returns:
        ``(numel,)`` float32.
    """
    num_blocks = (numel + 3) // 4
    block = torch.arange(num_blocks, dtype=torch.int64)
    counter = torch.stack(
        [block, torch.full_like(block, sample), torch.full_like(block, tensor_index), torch.full_like(block, offset)],
        dim=-1,
    )
    key = torch.tensor([seed & _MASK32, seed >> 32], dtype=torch.int64)
    words = philox4x32_10(counter, key)  # (num_blocks, 4)
    uniform = (words >> 9).float() * 2.0**-23 + 2.0**-24  # 24 significant bits: exact in float32
    two_pi = torch.tensor(2 * math.pi, dtype=torch.float32)
    radius = torch.sqrt(-2.0 * torch.log(uniform[:, 0::2]))  # (num_blocks, 2): from u0 and u2
    angle = two_pi * uniform[:, 1::2]  # from u1 and u3
    pairs = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)  # (num_blocks, 2, 2)
    return pairs.reshape(-1)[:numel]


def kernel_noise_reference(
    weights: Sequence[Tensor], num_samples: int, eta: float, *, seed: int = 0, offset: int = 0, per_filter: bool = False
) -> list[Tensor]:
    """``theta_k = theta + eta * ||theta|| * n_k / ||n_k||`` for every weight and sample (docs/math.md#kernel-noise-perturbation).

    Args:
        weights: floating tensors of any shape; tensor ``t`` uses ``tensor_index = t``, and the
            normals are laid out by ``theta``'s row-major element index (whatever its strides).
        num_samples: K. eta: the relative noise size.
        per_filter: norms per slice along dim 0 (an output filter) instead of per tensor; a 0-dim
            tensor is a single group.

    Returns:
        One ``(K, *theta.shape)`` tensor per weight, in its dtype (norms and sum in float64).
    """
    perturbed = []
    for tensor_index, w in enumerate(weights):
        w64 = w.detach().double()
        grouped = per_filter and w.dim() > 0
        samples = []
        for k in range(num_samples):
            n = (
                kernel_noise_normals_reference(w.numel(), seed=seed, offset=offset, sample=k, tensor_index=tensor_index)
                .to(device=w.device, dtype=torch.float64)
                .reshape(w.shape)
            )
            if grouped:
                dims = tuple(range(1, w.dim()))
                w_norm = torch.linalg.vector_norm(w64, dim=dims, keepdim=True) if dims else w64.abs()
                n_norm = torch.linalg.vector_norm(n, dim=dims, keepdim=True) if dims else n.abs()
            else:
                w_norm, n_norm = torch.linalg.vector_norm(w64), torch.linalg.vector_norm(n)
            samples.append((w64 + eta * w_norm / n_norm * n).to(w.dtype))
        perturbed.append(torch.stack(samples) if samples else w.new_empty((0, *w.shape)))
    return perturbed


def perturbation_statistics_reference(clean: Tensor, perturbed: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel spread of K perturbed predictions around the clean one (docs/math.md#perturbation-statistics).

    With ``p = softmax(clean)`` and ``p_k = softmax(perturbed[k])`` over classes and
    ``d_k = ||p_k - p||_2``: ``sigma = sqrt(mean_k d_k^2)`` and ``ns = mean_k d_k / ||p||_2``.

    Args:
        clean: logits ``(N, C, *spatial)`` or ``(N, C)``.
        perturbed: ``(K, *clean.shape)``.

    Returns:
        ``(sigma, ns)``, each ``(N, *spatial)`` in the inputs' dtype.
    """
    p = torch.softmax(clean, dim=1)
    p_k = torch.softmax(perturbed, dim=2)
    deviation = torch.linalg.vector_norm(p_k - p, dim=2)  # (K, N, *spatial)
    sigma = deviation.square().mean(dim=0).sqrt()
    ns = deviation.mean(dim=0) / torch.linalg.vector_norm(p, dim=1)
    return sigma, ns


# --- Acquisition scores (docs/math.md#acquisition-scores) ------------------------------------------------------------------


def _entropy_of_probabilities(p: Tensor, dim: int) -> Tensor:
    """``-sum p log p`` over ``dim`` with ``0 log 0 = 0``; NaN stays NaN (xlogy, not a mask on p)."""
    return -torch.special.xlogy(p, p).sum(dim=dim)


def pixel_scores_reference(method: str, input: Tensor) -> Tensor:
    """Per-pixel acquisition scores; higher means more informative (docs/math.md#acquisition-scores).

    Methods on logits ``(N, C, *spatial)`` or ``(N, C)``, with ``p = softmax`` over dim 1:

    - ``"entropy"``: ``H = -sum_c p_c log p_c`` (natural log, not normalised);
    - ``"margin"``: ``1 - (p_top1 - p_top2)`` (``p_top2 = 0`` when ``C == 1``);
    - ``"least_confidence"``: ``1 - p_top1``.

    Methods on MC-Dropout logits ``(T, N, C, *spatial)``, ``p_t = softmax`` over dim 2:

    - ``"mc_entropy"``: ``H(mean_t p_t)``;
    - ``"bald"``: ``H(mean_t p_t) - mean_t H(p_t)``, clamped at 0 (it is >= 0 exactly, by the
      concavity of H; rounding can dip below).

    Returns:
        ``(N, *spatial)`` in the input's dtype. ``-inf`` logits are classes of probability 0; a NaN
        logit gives NaN at its pixel.
    """
    if method in ("entropy", "margin", "least_confidence"):
        if input.dim() < 2:
            raise ValueError(f"input must be (N, C, *spatial) logits for {method!r}, got shape {tuple(input.shape)}")
        if method == "entropy":
            return pixel_entropy_reference(input)
        p = torch.softmax(input, dim=1)
        top = p.topk(min(2, p.shape[1]), dim=1).values  # NaN sorts as the largest: NaN stays NaN
        if method == "least_confidence":
            return 1 - top[:, 0]
        second = top[:, 1] if p.shape[1] > 1 else torch.zeros_like(top[:, 0])
        return 1 - (top[:, 0] - second)
    if method in ("mc_entropy", "bald"):
        if input.dim() < 3:
            raise ValueError(
                f"input must be (T, N, C, *spatial) MC logits for {method!r}, got shape {tuple(input.shape)}"
            )
        p = torch.softmax(input, dim=2)
        predictive = _entropy_of_probabilities(p.mean(dim=0), dim=1)
        if method == "mc_entropy":
            return predictive
        expected = _entropy_of_probabilities(p, dim=2).mean(dim=0)
        return (predictive - expected).clamp(min=0)  # clamp keeps NaN
    raise ValueError(
        f"method must be one of 'entropy', 'margin', 'least_confidence', 'mc_entropy', 'bald', got {method!r}"
    )


def aggregate_scores_reference(scores: Tensor, valid: Tensor | None, reduction: str, q: float) -> Tensor:
    """Per-image aggregate of a pixel score map over the valid pixels (docs/math.md#acquisition-scores).

    Args:
        scores: ``(N, *spatial)``, >= 0.
        valid: bool of the same shape (True = the pixel counts), or None (all count).
        reduction: ``"mean"``, ``"sum"``, ``"max"``, or ``"topk_mean"``: the mean of the ``k_i =
            max(1, ceil(q * n_i))`` largest of the ``n_i`` valid scores of image i (taken by sorting).
        q: the top fraction for ``"topk_mean"``, in (0, 1]; ``ceil(q * n_i)`` in float64.

    Returns:
        ``(N,)`` in the scores' dtype. An image without a valid pixel gets 0; a NaN among an
        image's valid scores makes its result NaN; invalid pixels never matter, whatever they hold.
    """
    n, pixels = scores.shape[0], math.prod(scores.shape[1:])
    flat = scores.reshape(n, pixels)  # not (n, -1): that is ambiguous for n == 0
    mask = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.reshape(n, pixels)
    count = mask.sum(dim=1)
    has_nan = (flat.isnan() & mask).any(dim=1)
    zeroed = torch.where(mask, flat, torch.zeros_like(flat))
    if reduction == "sum":
        result = zeroed.sum(dim=1)
    elif reduction == "mean":
        result = zeroed.sum(dim=1) / count.clamp(min=1).to(flat.dtype)
    elif reduction == "max":
        lowest = torch.where(mask, flat, torch.full_like(flat, float("-inf")))
        result = lowest.amax(dim=1) if flat.shape[1] > 0 else flat.new_zeros(n)
    elif reduction == "topk_mean":
        if not 0 < q <= 1:
            raise ValueError(f"q must be in (0, 1], got {q!r}")
        # Invalid pixels and NaN go to the end of the descending sort; NaN is put back below.
        lowest = torch.where(mask & ~flat.isnan(), flat, torch.full_like(flat, float("-inf")))
        ordered = lowest.sort(dim=1, descending=True).values
        k = torch.ceil(q * count.double()).clamp(min=1).long()  # (N,)
        ranks = torch.arange(flat.shape[1], device=flat.device)
        top = torch.where(ranks < k[:, None], ordered, torch.zeros_like(ordered))
        result = top.sum(dim=1) / k.to(flat.dtype)
    else:
        raise ValueError(f"reduction must be 'mean', 'sum', 'max' or 'topk_mean', got {reduction!r}")
    result = torch.where(count > 0, result, torch.zeros_like(result))
    return torch.where(has_nan, torch.full_like(result, float("nan")), result)
