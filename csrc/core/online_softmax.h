// The softmax and entropy statistics of one pixel, shared by every family: the one-pass online
// softmax, the probabilities and entropy terms rebuilt from it, and the NaN guard that keeps a
// pixel's results NaN where its softmax is (docs/math.md#entropy).
//
// Notation: logits z_c of one pixel, p = softmax(z), lse = log sum_c exp(z_c), H = -sum_c p_c log p_c.
#pragma once

#include <limits>

#include "core/lanes.h"

namespace uaal {

// Online softmax statistics of one pixel, one logit at a time (docs/math.md#entropy):
//   max = running maximum m, sum = sum_c e^(z_c - m), dot = sum_c e^(z_c - m) (z_c - m),
// rescaled whenever m grows, so a single read of the logits gives lse = m + log(sum) and
// H = log(sum) - dot / sum. Each update costs one exp: e = e^(-|z - m|) is either the new term
// (m unchanged) or the factor that rescales the old terms (m grows to z, new term e^0 = 1).
// Results are kept relative to m (log_normalizer = lse - m): differences of logits stay exact when
// all logits share a large offset, where lse - z_y would cancel catastrophically.
template <typename V>
struct OnlineSoftmax {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  using Mask = typename L::Mask;
  V max, sum, dot;

  // What one update did, for accumulators that follow the same running max.
  struct Step {
    V shift;     // z - m before the update
    Mask grows;  // z became the new max
    V e;         // e^(-|z - m|): z's term if it did not grow the max, else the old terms' rescale
  };

  // The lowest finite value (not -inf) as the starting max keeps z - max finite for -inf logits, so
  // a -inf logit adds exactly zero to sum and dot instead of poisoning them with inf - inf.
  static UAAL_HOST_DEVICE V initial_max() { return V(std::numeric_limits<S>::lowest()); }

  UAAL_HOST_DEVICE OnlineSoftmax() : max(initial_max()), sum(V(S(0))), dot(V(S(0))) {}

  // The running max exactly as update() keeps it, for passes that recompute it (the backward): NaN
  // logits are skipped here and caught by nan_guard() instead.
  static UAAL_HOST_DEVICE V running_max(V max, V z) { return L::select(z > max, z, max); }

  UAAL_HOST_DEVICE Step update(V z) {
    const V one(S(1));
    const V d = z - max;
    const V e = L::exp(L::neg_abs(d));
    const Mask grows = d > V(S(0));
    // A -inf logit gives d = -inf and e = 0; clamping d keeps e * d at 0 rather than 0 * inf = NaN.
    // A NaN logit stays NaN through the clamp, so dot becomes NaN and stays so (see nan_guard).
    const V d_finite = L::clamp_min(d, V(std::numeric_limits<S>::lowest()));
    const V sum_grown = sum * e + one;
    const V dot_grown = e * (dot - sum * d_finite);
    const V sum_kept = sum + e;
    const V dot_kept = dot + e * d_finite;
    max = L::select(grows, z, max);
    sum = L::select(grows, sum_grown, sum_kept);
    dot = L::select(grows, dot_grown, dot_kept);
    return {d, grows, e};
  }

  // NaN for a pixel with a NaN logit (dot is NaN: a fast exp may turn NaN into a number, so sum is
  // not enough) or a +inf one (max is +inf: PyTorch's log_softmax gives inf - inf there), else 0.
  // dot is otherwise finite: |e (z - m)| <= 1/e per class.
  UAAL_HOST_DEVICE V nan_guard() const { return nan_if_not_finite(max) + nan_if_not_finite(dot); }
  UAAL_HOST_DEVICE V log_normalizer() const { return L::log(sum) + nan_guard(); }
  UAAL_HOST_DEVICE V entropy() const { return entropy(log_normalizer()); }
  // H = log(sum) - dot / sum, given log_normalizer() already computed (saves a log).
  UAAL_HOST_DEVICE V entropy(V log_normalizer) const { return log_normalizer - dot / sum; }
};

// Softmax sums of one pixel whose max logit m is already known (a first look over its logits found
// it, or the lanes sharing a pixel agreed on it): sum = sum_c e^(z_c - m) and dot = sum_c e^(z_c - m)
// (z_c - m), each term added as it is, with no rescaling. Partial sums over disjoint sets of classes
// with the same m add up. NaN logits are not carried (a fast exp may turn NaN into a number): pair
// with softmax_nan_guard.
template <typename V>
struct KnownMaxSums {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  V sum = V(S(0)), dot = V(S(0));

  // Adds logit z's term and returns e^(z - m). dot is only accumulated when kDot.
  template <bool kDot>
  UAAL_HOST_DEVICE V add(V z, V max) {
    const V shift = z - max;
    const V e = L::exp(shift);
    sum = sum + e;
    // A -inf logit gives e = 0; the clamp keeps 0 * (-inf) out of dot.
    if constexpr (kDot) dot = dot + e * L::clamp_min(shift, V(std::numeric_limits<S>::lowest()));
    return e;
  }

  // log sum_c e^(z_c - max) plus the pixel's NaN guard (softmax_nan_guard), and H from it.
  UAAL_HOST_DEVICE V log_normalizer(V nan_guard) const { return L::log(sum) + nan_guard; }
  UAAL_HOST_DEVICE V entropy(V log_normalizer) const { return log_normalizer - dot / sum; }
};

// NaN where softmax is NaN, from the pixel's max and the plain sum of its logits: a NaN logit makes the
// sum NaN, a +inf one the max (and -inf logits alone do neither: they are classes of probability 0).
// Added to a pixel's results, it makes them NaN exactly there; a fast exp may map NaN to a number, so
// the exps cannot be relied on to carry it. One add per logit.
template <typename V>
UAAL_HOST_DEVICE V softmax_nan_guard(V logit_sum, V max) {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  return nan_if_not_finite(max) + L::select(logit_sum != logit_sum, V(std::numeric_limits<S>::quiet_NaN()), V(S(0)));
}

// Log-probability of a logit, from the pixel's max and log_normalizer (exact for offset logits).
template <typename V>
UAAL_HOST_DEVICE V log_probability(V z, V max, V log_normalizer) {
  return (z - max) - log_normalizer;
}

// Contribution -p log p of one class to the entropy, from p = e^(z - lse) and log p = z - lse;
// p == 0 contributes 0 (docs/math.md#entropy: -inf logits give zero entropy contribution).
template <typename V>
UAAL_HOST_DEVICE V entropy_term(V p, V log_p) {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  return L::select(p > V(S(0)), V(S(0)) - p * log_p, V(S(0)));
}

// d H / d z_c = -p_c (log p_c + H), times the incoming gradient (already scaled by 1/log C when the
// entropy is normalised). p_c == 0 gives 0.
template <typename V>
UAAL_HOST_DEVICE V entropy_logit_grad(V p, V log_p, V entropy, V grad_scale) {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  return L::select(p > V(S(0)), V(S(0)) - grad_scale * p * (log_p + entropy), V(S(0)));
}

}  // namespace uaal
