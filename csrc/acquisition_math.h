// Per-pixel math of the acquisition scores (docs/math.md#acquisition-scores), written once for every
// backend over Lanes<V> (core/lanes.h). Higher always means more informative.
//
// From one prediction's logits z (p = softmax(z), p1 >= p2 the two largest probabilities):
//   entropy H = -sum_c p_c log p_c,  margin 1 - (p1 - p2),  least confidence 1 - p1.
// All three come from one pass that tracks the max m1, the second largest logit m2, the sum of the
// other classes' terms o = sum_{c != argmax} e^(z_c - m1) and dot = sum_c e^(z_c - m1)(z_c - m1):
//   p1 = 1 / (1 + o), p2 = e^(m2 - m1) / (1 + o), so
//   least confidence = o / (1 + o), margin = (o + e^(m2 - m1)) / (1 + o), H = log1p(o) - dot / (1 + o):
// confident pixels (o tiny) keep their small scores exactly, where 1 - 1/sum would round them to 0.
//
// From T Monte-Carlo predictions p_t (dropout samples), with the mean prediction pbar = mean_t p_t:
//   mc_entropy = H(pbar),  BALD = H(pbar) - mean_t H(p_t) (>= 0 by Jensen; rounding is clamped).
#pragma once

#include <cmath>
#include <limits>

#include "core/lanes.h"

namespace uaal {

enum class ScoreMethod : int { kEntropy = 0, kMargin = 1, kLeastConfidence = 2, kMcEntropy = 3, kBald = 4 };

// Methods that read T Monte-Carlo samples (T, N, C, *spatial) rather than one prediction.
UAAL_HOST_DEVICE constexpr bool is_monte_carlo(ScoreMethod m) {
  return m == ScoreMethod::kMcEntropy || m == ScoreMethod::kBald;
}

// The one-pass statistics of a single prediction (see the header comment), one logit at a time.
// Only what kMethod's score reads is tracked: the second logit for the margin, dot for the entropy.
template <typename V, ScoreMethod kMethod>
struct OnlineTopTwo {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  static constexpr bool kTrackSecond = kMethod == ScoreMethod::kMargin;
  static constexpr bool kTrackDot = kMethod == ScoreMethod::kEntropy;
  V max, second, others, dot;

  // As in OnlineSoftmax: a finite starting max keeps -inf logits at exactly zero weight.
  UAAL_HOST_DEVICE OnlineTopTwo()
      : max(V(std::numeric_limits<S>::lowest())),
        second(V(std::numeric_limits<S>::lowest())),
        others(V(S(0))),
        dot(V(S(0))) {}

  UAAL_HOST_DEVICE void update(V z) {
    const V one(S(1));
    const V d = z - max;
    const V e = L::exp(L::neg_abs(d));
    const auto grows = d > V(S(0));
    // -inf logits give e = 0; the clamp keeps 0 * (-inf) out of dot. A NaN logit stays NaN through the
    // clamp on the CPU's vectors (whose fast exp would turn it into a number), and CUDA's exp carries it.
    const V d_finite = L::clamp_min(d, V(std::numeric_limits<S>::lowest()));
    if constexpr (kTrackDot) {
      dot = L::select(grows, e * (dot - (one + others) * d_finite), dot + e * d_finite);
    }
    if constexpr (kTrackSecond) second = L::select(grows, max, L::select(z > second, z, second));
    // z becomes the max: the old max (term 1) and the old others, rescaled by e, are the others now.
    others = L::select(grows, (others + one) * e, others + e);
    if constexpr (!kTrackDot) others = others + d_finite * V(S(0));  // NaN carrier, else + 0
    max = L::select(grows, z, max);
  }

  // NaN for a pixel with a NaN or +inf logit, or with no finite logit (softmax is NaN there).
  UAAL_HOST_DEVICE V nan_guard() const {
    const V no_finite_logit =
        L::select(max == V(std::numeric_limits<S>::lowest()), V(std::numeric_limits<S>::quiet_NaN()), V(S(0)));
    return nan_if_not_finite(max) + nan_if_not_finite(others) + nan_if_not_finite(dot) + no_finite_logit;
  }

  UAAL_HOST_DEVICE V score() const {
    const V one(S(1));
    V value;
    if constexpr (kMethod == ScoreMethod::kEntropy) {
      value = L::log1p(others) - dot / (one + others);
    } else if constexpr (kMethod == ScoreMethod::kMargin) {
      value = (others + L::exp(second - max)) / (one + others);
    } else {
      value = others / (one + others);
    }
    return value + nan_guard();
  }
};

// H = log(sum) - dot / sum of one softmax from its terms' sum_c e_c and dot = sum_c e_c (z_c - max).
template <typename V>
UAAL_HOST_DEVICE V entropy_from_terms(V sum, V dot) {
  return Lanes<V>::log(sum) - dot / sum;
}

// Contribution -p log p of one class of the mean prediction pbar (0 for pbar == 0).
template <typename V>
UAAL_HOST_DEVICE V mean_prediction_entropy_term(V mean_probability) {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  return L::select(mean_probability > V(S(0)), V(S(0)) - mean_probability * L::log(mean_probability), V(S(0)));
}

// The Monte-Carlo score from H(pbar) and sum_t H(p_t).
template <ScoreMethod kMethod, typename V>
UAAL_HOST_DEVICE V monte_carlo_score(V mean_prediction_entropy, V sample_entropy_sum,
                                     typename Lanes<V>::Scalar inv_num_samples) {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  if constexpr (kMethod == ScoreMethod::kMcEntropy) {
    return mean_prediction_entropy;
  } else {
    const V bald = mean_prediction_entropy - sample_entropy_sum * V(inv_num_samples);
    return L::select(bald < V(S(0)), V(S(0)), bald);  // keeps NaN
  }
}

}  // namespace uaal
