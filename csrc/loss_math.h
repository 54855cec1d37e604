// Per-pixel math of the UAAL cross-entropy, written once for every backend over Lanes<V>
// (core/lanes.h) on top of the online softmax of core/online_softmax.h: the uncertainty weight
// (docs/math.md#uncertainty-weight), the per-pixel loss and its logit gradient (docs/math.md#uaal-loss).
//
// Notation: logits z_c of one pixel, p = softmax(z), target y, class weights c_c, label smoothing
// eps, lse = log sum_c exp(z_c), H = -sum_c p_c log p_c.
#pragma once

#include "core/lanes.h"
#include "core/online_softmax.h"

namespace uaal {

// Where the UAAL weight's uncertainty comes from: none (alpha == 0: plain cross-entropy), the
// entropy of the same logits (computed in the same pass), or a per-pixel map given by the caller.
enum class UncertaintySource : int { kNone = 0, kEntropy = 1, kMap = 2 };

// sum_c c_c (z_c - m) over the classes seen so far, relative to OnlineSoftmax's running max m: the
// label-smoothing term, free of the cancellation lse * sum_c c_c - sum_c c_c z_c would suffer.
template <typename V>
struct OnlineShiftedSum {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  V value = V(S(0));
  S weight_seen = S(0);

  UAAL_HOST_DEVICE void update(const typename OnlineSoftmax<V>::Step& step, S class_weight) {
    // Growing the max by d moves every earlier term down by d; the new term is then z - m = 0.
    value = L::select(step.grows, value - V(weight_seen) * step.shift, value + V(class_weight) * step.shift);
    weight_seen += class_weight;
  }
};

// u^E with the common exponents exact and cheap; the branch is uniform across lanes and threads.
template <typename V>
UAAL_HOST_DEVICE V power(V u, typename Lanes<V>::Scalar exponent) {
  using S = typename Lanes<V>::Scalar;
  if (exponent == S(2)) return u * u;
  if (exponent == S(1)) return u;
  return Lanes<V>::pow(u, exponent);
}

// UAAL pixel weight (docs/math.md#uncertainty-weight, paper Eq. 6):
//   w = 1 + alpha * min((U * inv_scale)^E, s_max).
// s_max = +inf means no cap; a NaN uncertainty stays NaN (comparisons with NaN are false).
template <typename V>
UAAL_HOST_DEVICE V uncertainty_weight(V uncertainty, typename Lanes<V>::Scalar inv_scale,
                                      typename Lanes<V>::Scalar alpha, typename Lanes<V>::Scalar exponent,
                                      typename Lanes<V>::Scalar s_max) {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  const V scaled = power(uncertainty * V(inv_scale), exponent);
  const V capped = L::select(scaled > V(s_max), V(s_max), scaled);
  return V(S(1)) + V(alpha) * capped;
}

// Per-pixel cross-entropy exactly as torch.nn.functional.cross_entropy defines it:
//   l = (1 - eps) c_y (lse - z_y) + (eps / C) sum_c c_c (lse - z_c),
// with lse - z_y = (m - z_y) + log_normalizer and
// sum_c c_c (lse - z_c) = log_normalizer * sum_c c_c - sum_c c_c (z_c - m) (OnlineShiftedSum).
template <bool kSmoothing, typename V>
UAAL_HOST_DEVICE V pixel_cross_entropy(V max, V log_normalizer, V target_logit, V target_class_weight,
                                       V class_weight_total, V shifted_weighted_sum,
                                       typename Lanes<V>::Scalar label_smoothing,
                                       typename Lanes<V>::Scalar inv_num_classes) {
  using S = typename Lanes<V>::Scalar;
  const V nll = target_class_weight * ((max - target_logit) + log_normalizer);
  if constexpr (!kSmoothing) {
    return nll;
  } else {
    const V smooth = log_normalizer * class_weight_total - shifted_weighted_sum;
    return V(S(1) - label_smoothing) * nll + V(label_smoothing * inv_num_classes) * smooth;
  }
}

// Gradient of the weighted per-pixel loss with respect to one logit (derivation: d lse / d z_c = p_c):
//   d(w l)/d z_c = target_coef (p_c - [c == y]) + smooth_coef (p_c sum_j c_j - c_c),
// target_coef = g w (1 - eps) c_y and smooth_coef = g w eps / C, g the incoming gradient; both are 0
// at ignored pixels. class_weight is c_c: one value, or one per lane where the lanes hold different
// classes (a pixel-major run).
template <bool kSmoothing, typename V, typename ClassWeight>
UAAL_HOST_DEVICE V cross_entropy_logit_grad(V p, typename Lanes<V>::Mask is_target, V target_coef, V smooth_coef,
                                            V class_weight_total, ClassWeight class_weight) {
  V grad = target_coef * p;
  if constexpr (kSmoothing) {
    grad = grad + smooth_coef * (p * class_weight_total - V(class_weight));
  }
  return Lanes<V>::select(is_target, grad - target_coef, grad);
}

// Class-probability targets t (docs/math.md#probability-targets), label smoothing folded into them
// as PyTorch does, t'_c = (1 - eps) t_c + eps / C. With class weights c and S = sum_c c_c t'_c:
//   l = sum_c c_c t'_c (lse - z_c) = log_normalizer * S - sum_c c_c t'_c (z_c - m),
//   d l / d z_c = S p_c - c_c t'_c.
// A class with t'_c = 0 and a -inf logit gives 0 * (-inf) = NaN, as in PyTorch.
template <typename V>
UAAL_HOST_DEVICE V smoothed_target(V t, typename Lanes<V>::Scalar label_smoothing,
                                   typename Lanes<V>::Scalar smoothing_per_class) {
  using S = typename Lanes<V>::Scalar;
  return V(S(1) - label_smoothing) * t + V(smoothing_per_class);
}

template <typename V>
struct ProbabilityTargetSums {
  using S = typename Lanes<V>::Scalar;
  V mass = V(S(0));     // S = sum_c c_c t'_c
  V shifted = V(S(0));  // sum_c c_c t'_c (z_c - m)

  // weighted_target = c_c t'_c, shift = z_c - m (m the pixel's max logit).
  UAAL_HOST_DEVICE void add(V weighted_target, V shift) {
    mass = mass + weighted_target;
    shifted = shifted + weighted_target * shift;
  }
  UAAL_HOST_DEVICE V loss(V log_normalizer) const { return log_normalizer * mass - shifted; }
};

// d(g w l)/d z_c for a probability target: coef = g w (0 at pixels that do not count).
template <typename V>
UAAL_HOST_DEVICE V probability_target_logit_grad(V p, V coef, V mass, V weighted_target) {
  return coef * (mass * p - weighted_target);
}

}  // namespace uaal
