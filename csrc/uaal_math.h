// Per-pixel math of uaal_ext, written once for every backend.
//
// Every function here is UAAL_HOST_DEVICE and generic over a "lane" type V: a scalar (one pixel per
// CUDA thread) or a SIMD vector (the CPU backend, whose lanes are neighbouring pixels of one
// channel). Lanes<V> supplies the few primitives the math needs (exp, log, select, ...); the CPU
// backend adds specialisations for at::vec::Vectorized in cpu/vec_lanes.h. Nothing here sees a
// tensor: callers pass per-pixel values and per-class scalars.
//
// Notation (SPEC section 2): logits z_c of one pixel, p = softmax(z), target y, class weights c_c,
// label smoothing eps, lse = log sum_c exp(z_c), H = -sum_c p_c log p_c.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define UAAL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UAAL_HOST_DEVICE inline
#endif

namespace uaal {

template <typename V>
struct Lanes;

// Lanes<V>::exp may map NaN to a number (the CPU's fast exp does); code that must propagate NaN
// adds nan_if_not_finite(x) = x - x (0 for finite x, NaN for NaN or +-inf) of a per-pixel value.
template <typename V>
UAAL_HOST_DEVICE V nan_if_not_finite(V x) {
  return x - x;
}

template <>
struct Lanes<float> {
  using Scalar = float;
  using Mask = bool;
  static UAAL_HOST_DEVICE float exp(float x) { return ::expf(x); }
  static UAAL_HOST_DEVICE float log(float x) { return ::logf(x); }
  static UAAL_HOST_DEVICE float sqrt(float x) { return ::sqrtf(x); }
  static UAAL_HOST_DEVICE float expm1(float x) { return ::expm1f(x); }
  static UAAL_HOST_DEVICE float log1p(float x) { return ::log1pf(x); }
  static UAAL_HOST_DEVICE float sin(float x) { return ::sinf(x); }
  static UAAL_HOST_DEVICE float cos(float x) { return ::cosf(x); }
  static UAAL_HOST_DEVICE float pow(float x, float e) { return ::powf(x, e); }
  static UAAL_HOST_DEVICE float neg_abs(float x) { return -::fabsf(x); }
  static UAAL_HOST_DEVICE float clamp_min(float x, float lo) { return ::fmaxf(x, lo); }
  static UAAL_HOST_DEVICE float select(bool m, float a, float b) { return m ? a : b; }
};

template <>
struct Lanes<double> {
  using Scalar = double;
  using Mask = bool;
  static UAAL_HOST_DEVICE double exp(double x) { return ::exp(x); }
  static UAAL_HOST_DEVICE double log(double x) { return ::log(x); }
  static UAAL_HOST_DEVICE double sqrt(double x) { return ::sqrt(x); }
  static UAAL_HOST_DEVICE double expm1(double x) { return ::expm1(x); }
  static UAAL_HOST_DEVICE double log1p(double x) { return ::log1p(x); }
  static UAAL_HOST_DEVICE double pow(double x, double e) { return ::pow(x, e); }
  static UAAL_HOST_DEVICE double neg_abs(double x) { return -::fabs(x); }
  static UAAL_HOST_DEVICE double clamp_min(double x, double lo) { return ::fmax(x, lo); }
  static UAAL_HOST_DEVICE double select(bool m, double a, double b) { return m ? a : b; }
};

// Online softmax statistics of one pixel, one logit at a time (SPEC section 2):
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

// NaN where softmax is NaN, from the pixel's max and the plain sum of its logits: a NaN logit makes the
// sum NaN, a +inf one the max (and -inf logits alone do neither: they are classes of probability 0).
// Added to a pixel's results, it makes them NaN exactly there; a fast exp may map NaN to a number, so
// the exps cannot be relied on to carry it. One add per logit.
template <typename V>
UAAL_HOST_DEVICE V softmax_nan_guard(V logit_sum, V max) {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  return nan_if_not_finite(max) +
         L::select(logit_sum != logit_sum, V(std::numeric_limits<S>::quiet_NaN()), V(S(0)));
}

// Rebuilds probabilities from what OnlineSoftmax's updates returned, without another exp per logit,
// visiting the classes in reverse. Class c's term relative to the running max m_c after its update
// is 1 if it grew the max, else its e; and e^(m_c - m) is the product of the rescale factors e of
// the later classes that grew the max. So p_c = term_c * factor, with factor starting at 1 / sum
// and picking up e each time the walk passes a class that grew the max.
template <typename V>
struct ReverseProbabilities {
  V factor;

  ReverseProbabilities() = default;
  UAAL_HOST_DEVICE explicit ReverseProbabilities(V sum) : factor(V(typename Lanes<V>::Scalar(1)) / sum) {}

  // p of the class whose update returned (e, grew); the next call is for the class before it.
  UAAL_HOST_DEVICE V previous(V e, typename Lanes<V>::Mask grew) {
    const V p = Lanes<V>::select(grew, factor, e * factor);
    factor = Lanes<V>::select(grew, factor * e, factor);
    return p;
  }
};

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

// Log-probability of a logit, from the pixel's max and log_normalizer (exact for offset logits).
template <typename V>
UAAL_HOST_DEVICE V log_probability(V z, V max, V log_normalizer) {
  return (z - max) - log_normalizer;
}

// Contribution -p log p of one class to the entropy, from p = e^(z - lse) and log p = z - lse;
// p == 0 contributes 0 (SPEC: -inf logits give zero entropy contribution).
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

// u^E with the common exponents exact and cheap; the branch is uniform across lanes and threads.
template <typename V>
UAAL_HOST_DEVICE V power(V u, typename Lanes<V>::Scalar exponent) {
  using S = typename Lanes<V>::Scalar;
  if (exponent == S(2)) return u * u;
  if (exponent == S(1)) return u;
  return Lanes<V>::pow(u, exponent);
}

// UAAL pixel weight (SPEC section 2, paper Eq. 6): w = 1 + alpha * min((U * inv_scale)^E, s_max).
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
// at ignored pixels.
template <bool kSmoothing, typename V>
UAAL_HOST_DEVICE V cross_entropy_logit_grad(V p, typename Lanes<V>::Mask is_target, V target_coef,
                                            V smooth_coef, V class_weight_total,
                                            typename Lanes<V>::Scalar class_weight) {
  V grad = target_coef * p;
  if constexpr (kSmoothing) {
    grad = grad + smooth_coef * (p * class_weight_total - V(class_weight));
  }
  return Lanes<V>::select(is_target, grad - target_coef, grad);
}

// Where the UAAL weight's uncertainty comes from: none (alpha == 0: plain cross-entropy), the
// entropy of the same logits (computed in the same pass), or a per-pixel map given by the caller.
enum class UncertaintySource : int { kNone = 0, kEntropy = 1, kMap = 2 };

}  // namespace uaal
