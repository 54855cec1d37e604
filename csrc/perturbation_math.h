// Per-element math of the kernel-noise perturbation, written once for every backend over Lanes<V>
// (core/lanes.h): the Gaussian noise of the weight perturbation (docs/math.md#kernel-noise-perturbation)
// and the per-pixel statistics of the perturbed passes (docs/math.md#perturbation-statistics).
//
// Noise. theta_k = theta + eta ||theta|| n_k / ||n_k|| with n_k ~ N(0, I). n comes from the
// counter-based generator Philox4x32-10 (Salmon et al., SC'11), keyed by the seed and counted by
// (element / 4, sample k, tensor index, stream offset): any element's noise is a pure function of
// those numbers, so the CPU, the GPU and any thread count or work split produce the same values
// (bit for bit up to the last-ulp differences of log/sin/cos between math libraries). Box-Muller
// turns each Philox output (4 x 32 bits) into 4 normals.
//
// Statistics. p = softmax(clean logits), p_k = softmax(k-th perturbed logits), per pixel:
// d_k = ||p_k - p||_2, sigma = sqrt(mean_k d_k^2), ns = mean_k d_k / ||p||_2. Kernel noise moves
// the logits little (d ~ 1e-4 and less), so p_k - p is not taken as a difference of two rounded
// probabilities (float32 would keep 2 or 3 digits of it) but from the logit shifts dz_c = z_kc - z_c:
//   p_kc = p_c e^(dz_c) / S, S = sum_c p_c e^(dz_c), so p_kc - p_c = p_c (expm1(dz_c) + b (1 + expm1(dz_c)))
// with b = 1/S - 1 = -s / (1 + s), s = S - 1 = sum_c p_c expm1(dz_c): every term is accurate
// relative to dz, and identical logits give exactly 0. Where some |dz_c| is large (or not finite)
// the shifted form could overflow; there d is large too and the plain difference of the two
// softmaxes is accurate enough.
#pragma once

#include <cstdint>

#include "core/lanes.h"

namespace uaal {

// ---- Philox4x32-10 ---------------------------------------------------------------------------------
constexpr uint32_t kPhiloxMultiplier0 = 0xD2511F53u;
constexpr uint32_t kPhiloxMultiplier1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyBump0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxKeyBump1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

// One round on a counter (c0, c1, c2, c3) with key (k0, k1). Operating on references lets the CPU
// kernel run it over arrays of counters, which the compiler vectorises (widening 32x32 multiplies).
UAAL_HOST_DEVICE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t product0 = static_cast<uint64_t>(kPhiloxMultiplier0) * c0;
  const uint64_t product1 = static_cast<uint64_t>(kPhiloxMultiplier1) * c2;
  const uint32_t next0 = static_cast<uint32_t>(product1 >> 32) ^ c1 ^ k0;
  const uint32_t next2 = static_cast<uint32_t>(product0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(product1);
  c3 = static_cast<uint32_t>(product0);
  c0 = next0;
  c2 = next2;
}

// The key of round `round`: the seed's words bumped by Weyl constants (mod 2^32).
UAAL_HOST_DEVICE uint32_t philox_round_key0(uint32_t key0, int round) {
  return key0 + static_cast<uint32_t>(round) * kPhiloxKeyBump0;
}
UAAL_HOST_DEVICE uint32_t philox_round_key1(uint32_t key1, int round) {
  return key1 + static_cast<uint32_t>(round) * kPhiloxKeyBump1;
}

// Philox4x32-10: the counter is replaced by the 4 random words.
UAAL_HOST_DEVICE void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    philox_round(c0, c1, c2, c3, philox_round_key0(k0, round), philox_round_key1(k1, round));
  }
}

// Where the noise of one element comes from: key = the seed, counter = (element / 4, sample, tensor
// index, stream offset). The offset separates successive draws with one seed (training steps).
struct NoiseStream {
  uint32_t key0, key1;    // seed, low and high words
  uint32_t sample;        // k
  uint32_t tensor_index;  // position of the weight in the op's list
  uint32_t offset;
};

// A uniform in (0, 1) from 32 random bits: the top 23 bits as (2 m + 1) 2^-24, exact in float and
// never 0 (Box-Muller takes its log).
UAAL_HOST_DEVICE float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 9) * 1.1920928955078125e-07f + 5.9604644775390625e-08f;  // 2^-23, 2^-24
}

// Box-Muller on lanes of uniforms: (u_radius, u_angle) -> two independent standard normals.
template <typename V>
UAAL_HOST_DEVICE void box_muller(V u_radius, V u_angle, V& normal_cos, V& normal_sin) {
  using L = Lanes<V>;
  const V radius = L::sqrt(V(-2.0f) * L::log(u_radius));
  const V angle = V(6.28318530717958647692f) * u_angle;
  normal_cos = radius * L::cos(angle);
  normal_sin = radius * L::sin(angle);
}

// The 4 normals of Philox block `block` (elements 4 block .. 4 block + 3), one at a time: the scalar
// path (CUDA threads, short tails).
UAAL_HOST_DEVICE void noise_block(const NoiseStream& s, uint32_t block, float normals[4]) {
  uint32_t c0 = block, c1 = s.sample, c2 = s.tensor_index, c3 = s.offset;
  philox4x32_10(c0, c1, c2, c3, s.key0, s.key1);
  box_muller(uniform_from_bits(c0), uniform_from_bits(c1), normals[0], normals[1]);
  box_muller(uniform_from_bits(c2), uniform_from_bits(c3), normals[2], normals[3]);
}

// eta ||theta_g|| / ||n_g|| for one group (a whole tensor, or one output filter), from the sums of
// squares. A zero weight gets no perturbation (its norm is 0), never 0/0.
UAAL_HOST_DEVICE double perturbation_scale(double eta, double weight_sum_squares, double noise_sum_squares) {
  return noise_sum_squares > 0.0 ? eta * ::sqrt(weight_sum_squares) / ::sqrt(noise_sum_squares) : 0.0;
}

// ---- perturbation statistics -----------------------------------------------------------------------
// The shifted form is used while every |dz_c| of the pixel is at most this: s <= e^8, no overflow.
constexpr float kMaxPreciseLogitShift = 8.0f;

// expm1(x) for the logit shifts: Taylor to x^10 / 10! where |x| < 1 (remainder below 3e-8 relative,
// under float's rounding), e^x - 1 elsewhere (no cancellation there), so it costs about one exp.
// float64 keeps the library's expm1, exact to the last bits.
template <typename V>
UAAL_HOST_DEVICE V shift_expm1(V x) {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  if constexpr (sizeof(S) == sizeof(double)) {
    return L::expm1(x);
  } else {
    V series(S(1) / S(3628800));  // 1/10!, then Horner: 1/k! + x (...)
    series = V(S(1) / S(362880)) + x * series;
    series = V(S(1) / S(40320)) + x * series;
    series = V(S(1) / S(5040)) + x * series;
    series = V(S(1) / S(720)) + x * series;
    series = V(S(1) / S(120)) + x * series;
    series = V(S(1) / S(24)) + x * series;
    series = V(S(1) / S(6)) + x * series;
    series = V(S(1) / S(2)) + x * series;
    series = x + x * (x * series);
    return L::select(L::neg_abs(x) > V(S(-1)), series, L::exp(x) - V(S(1)));
  }
}

// dz_c = z_kc - z_c, 0 for equal logits (also when both are -inf: a class that is impossible in both
// predictions does not move).
template <typename V>
UAAL_HOST_DEVICE V logit_shift(V perturbed_logit, V clean_logit) {
  using S = typename Lanes<V>::Scalar;
  return Lanes<V>::select(perturbed_logit == clean_logit, V(S(0)), perturbed_logit - clean_logit);
}

// Per pixel and perturbed sample, the sums the shifted form needs.
template <typename V>
struct LogitShiftSums {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  V max_abs_shift = V(S(0));  // NaN stays NaN: then the pixel takes the plain form
  V shifted_sum = V(S(0));    // s = sum_c p_c expm1(dz_c)

  // Adds class c; returns expm1(dz_c) for deviation_from_shift().
  UAAL_HOST_DEVICE V add(V clean_probability, V shift) {
    const V abs_shift = V(S(0)) - L::neg_abs(shift);
    max_abs_shift = L::select(abs_shift > max_abs_shift, abs_shift, max_abs_shift) + nan_if_not_finite(shift);
    const V shift_expm1 = uaal::shift_expm1(shift);
    shifted_sum = shifted_sum + clean_probability * shift_expm1;
    return shift_expm1;
  }
  // b = 1/S - 1 = -s / (1 + s)
  UAAL_HOST_DEVICE V normalizer_term() const { return (V(S(0)) - shifted_sum) / (V(S(1)) + shifted_sum); }
};

// p_kc - p_c from the clean probability, expm1(dz_c) and the pixel's normalizer_term().
template <typename V>
UAAL_HOST_DEVICE V deviation_from_shift(V clean_probability, V shift_expm1, V normalizer_term) {
  return clean_probability * (shift_expm1 + normalizer_term * (V(typename Lanes<V>::Scalar(1)) + shift_expm1));
}

// Per pixel and perturbed sample: (p_kc - p_c)^2, summed over classes to d_k^2.
template <typename V>
UAAL_HOST_DEVICE V squared_deviation(V perturbed_probability, V clean_probability) {
  const V diff = perturbed_probability - clean_probability;
  return diff * diff;
}

// ||p||^2 of a softmax from its unnormalised terms e_c = exp(z_c - max): sum_c e_c^2 / (sum_c e_c)^2.
template <typename V>
UAAL_HOST_DEVICE V probability_norm_squared(V sum_exp_squares, V sum_exp) {
  return sum_exp_squares / (sum_exp * sum_exp);
}

// Running sums over the K perturbed samples of one pixel: sum_k d_k^2 and sum_k d_k.
template <typename V>
struct DeviationSums {
  using L = Lanes<V>;
  using S = typename L::Scalar;
  V squares = V(S(0));
  V norms = V(S(0));

  UAAL_HOST_DEVICE void add(V deviation_squared) {
    squares = squares + deviation_squared;
    norms = norms + L::sqrt(deviation_squared);
  }
  // sigma = sqrt(mean_k d_k^2)
  UAAL_HOST_DEVICE V sigma(S inv_num_samples) const { return L::sqrt(squares * V(inv_num_samples)); }
  // ns = mean_k d_k / ||p||
  UAAL_HOST_DEVICE V noise_stability(S inv_num_samples, V clean_norm_squared) const {
    return norms * V(inv_num_samples) / L::sqrt(clean_norm_squared);
  }
};

}  // namespace uaal
