// CPU kernels of the UAAL cross-entropy and pixel entropy. Compiled once per instruction set; the
// per-pixel math is loss_math.h's and core/online_softmax.h's, run on at::vec::Vectorized lanes of
// neighbouring pixels, over the fixed pixel blocks of cpu/pixel_blocks.h: every op streams the
// logits exactly once.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <vector>

#include "cpu/loss_kernels.h"
#include "cpu/pixel_blocks.h"
#include "cpu/vec_lanes.h"

#ifndef CPU_CAPABILITY
#error "loss_kernels.cpp is compiled once per CPU_CAPABILITY (see CMakeLists.txt)"
#endif

namespace uaal::cpu::CPU_CAPABILITY {
namespace {  // internal linkage: nothing compiled with this file's -m flags may leak to another

using at::vec::Vectorized;

// fn(target) with the targets as a pointer of their own type, so that loops over them stay typed.
template <typename Fn>
decltype(auto) with_typed_targets(const CrossEntropyProblem& pr, Fn&& fn) {
  switch (pr.target_type) {
    case IndexType::kInt64: return fn(static_cast<const int64_t*>(pr.target));
    case IndexType::kInt32: return fn(static_cast<const int32_t*>(pr.target));
    default: return fn(static_cast<const uint8_t*>(pr.target));
  }
}

// Per-pixel inputs of one block, gathered lane by lane (targets pick one logit each, which no
// vector load can do); lanes past `count` are invalid.
template <typename acc_t>
struct BlockTargets {
  static constexpr int P = pixels_per_block<acc_t>();
  alignas(64) acc_t valid[P];          // 1 or 0
  alignas(64) acc_t target_class[P];   // y as a float, to compare with a channel index
  alignas(64) acc_t target_logit[P];   // z_y
  alignas(64) acc_t target_weight[P];  // c_y, 0 when invalid
  alignas(64) acc_t uncertainty[P];    // user map (kMap)
  alignas(64) acc_t grad[P];           // incoming gradient (backward)

  template <bool kNeedLogit, UncertaintySource kSource>
  void gather(const CrossEntropyProblem& pr, const BlockRows<acc_t>& rows, int64_t first, int64_t count) {
    const int64_t C = pr.geometry.num_classes;
    const auto* class_weight = static_cast<const acc_t*>(pr.class_weight);
    int64_t y[P];
    bool out_of_range = false;
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (count == P && pr.target_type == IndexType::kInt64) {
        out_of_range = gather_int64_targets<kNeedLogit>(pr, rows, first);
        if (out_of_range) {
          read_targets(pr, first, count, y);
          report_bad_target(pr, first, y);
        }
        gather_uncertainty<kSource>(pr, first, count);
        return;
      }
    }
#endif
    read_targets(pr, first, count, y);
    // Branch-free over the lanes so the compiler can vectorise it; a bad target is reported after.
    for (int64_t l = 0; l < P; ++l) {
      const bool is_valid = y[l] != pr.ignore_index;
      const bool in_range = y[l] >= 0 && y[l] < C;
      out_of_range |= is_valid && !in_range;
      const int64_t safe_class = is_valid && in_range ? y[l] : 0;
      valid[l] = is_valid ? acc_t(1) : acc_t(0);
      target_class[l] = is_valid ? static_cast<acc_t>(y[l]) : acc_t(-1);
      target_weight[l] = is_valid ? (class_weight ? class_weight[safe_class] : acc_t(1)) : acc_t(0);
      if constexpr (kNeedLogit) target_logit[l] = is_valid ? rows.value(safe_class, l) : acc_t(0);
    }
    if (out_of_range) report_bad_target(pr, first, y);
    gather_uncertainty<kSource>(pr, first, count);
  }

  template <UncertaintySource kSource>
  void gather_uncertainty(const CrossEntropyProblem& pr, int64_t first, int64_t count) {
    if constexpr (kSource == UncertaintySource::kMap) {
      const auto* uncertainty_map = static_cast<const acc_t*>(pr.uncertainty);
      bool negative = false;
      for (int64_t l = 0; l < P; ++l) {
        uncertainty[l] = l < count ? uncertainty_map[first + l] : acc_t(0);
        negative |= valid[l] != acc_t(0) && uncertainty[l] < acc_t(0);
      }
      if (negative) report_negative_uncertainty(first);
    }
  }

#if defined(CPU_CAPABILITY_AVX512)
  // The common case of a full block of int64 targets and float logits, 16 lanes at a time with mask
  // registers (the lane loop above runs about 15 scalar operations per pixel). Returns whether a
  // valid target lies outside [0, C); the caller reports it.
  template <bool kNeedLogit>
  bool gather_int64_targets(const CrossEntropyProblem& pr, const BlockRows<acc_t>& rows, int64_t first) {
    static_assert(std::is_same_v<acc_t, float> && P % 16 == 0);
    const auto* targets = static_cast<const int64_t*>(pr.target) + first;
    const auto* class_weight = static_cast<const float*>(pr.class_weight);
    const __m512i ignore = _mm512_set1_epi64(pr.ignore_index);
    const __m512i classes = _mm512_set1_epi64(pr.geometry.num_classes);
    const __m512i zero = _mm512_setzero_si512();
    const __m512i row_stride = _mm512_set1_epi64(rows.row_stride);
    const __m512i pixel_stride = _mm512_set1_epi64(rows.pixel_stride);
    const __m512i eight_lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    __mmask16 out_of_range = 0;
    for (int l0 = 0; l0 < P; l0 += 16) {
      const __m512i y_low = _mm512_loadu_si512(targets + l0), y_high = _mm512_loadu_si512(targets + l0 + 8);
      const auto valid_of = [&](__m512i y) { return _mm512_cmpneq_epi64_mask(y, ignore); };
      const auto in_range_of = [&](__m512i y) {
        return static_cast<__mmask8>(_mm512_cmpge_epi64_mask(y, zero) & _mm512_cmplt_epi64_mask(y, classes));
      };
      const __mmask16 is_valid = static_cast<__mmask16>(valid_of(y_low) | (valid_of(y_high) << 8));
      const __mmask16 in_range = static_cast<__mmask16>(in_range_of(y_low) | (in_range_of(y_high) << 8));
      out_of_range |= static_cast<__mmask16>(is_valid & ~in_range);
      const __mmask16 safe = static_cast<__mmask16>(is_valid & in_range);
      const __m512 y_float =
          _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtepi64_ps(y_low)), _mm512_cvtepi64_ps(y_high), 1);
      _mm512_store_ps(valid + l0, _mm512_mask_blend_ps(is_valid, _mm512_setzero_ps(), _mm512_set1_ps(1.0f)));
      _mm512_store_ps(target_class + l0, _mm512_mask_blend_ps(is_valid, _mm512_set1_ps(-1.0f), y_float));
      __m512 weight = _mm512_mask_blend_ps(safe, _mm512_setzero_ps(), _mm512_set1_ps(1.0f));
      if (class_weight) {
        const __m512i y_int =
            _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(y_low)), _mm512_cvtepi64_epi32(y_high), 1);
        weight = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), safe, y_int, class_weight, 4);
      }
      _mm512_store_ps(target_weight + l0, weight);
      if constexpr (kNeedLogit) {
        // z_y of lane l sits at rows.data + y * row_stride + l * pixel_stride (64-bit offsets:
        // in-place rows are a channel plane apart).
        const auto logits_of = [&](__m512i y, int lane0, __mmask8 mask) {
          const __m512i lanes = _mm512_add_epi64(eight_lanes, _mm512_set1_epi64(lane0));
          const __m512i offset =
              _mm512_add_epi64(_mm512_mullo_epi64(y, row_stride), _mm512_mullo_epi64(lanes, pixel_stride));
          return _mm512_mask_i64gather_ps(_mm256_setzero_ps(), mask, offset, rows.data, 4);
        };
        const __m512 logits =
            _mm512_insertf32x8(_mm512_castps256_ps512(logits_of(y_low, l0, static_cast<__mmask8>(safe))),
                               logits_of(y_high, l0 + 8, static_cast<__mmask8>(safe >> 8)), 1);
        _mm512_store_ps(target_logit + l0, logits);
      }
    }
    return out_of_range != 0;
  }
#endif

  // Targets of the block's pixels; lanes past `count` read as ignore_index.
  static void read_targets(const CrossEntropyProblem& pr, int64_t first, int64_t count, int64_t* y) {
    with_typed_targets(pr, [&](const auto* target) {
      for (int64_t l = 0; l < P; ++l) y[l] = l < count ? static_cast<int64_t>(target[first + l]) : pr.ignore_index;
    });
  }

  [[noreturn]] static void report_bad_target(const CrossEntropyProblem& pr, int64_t first, const int64_t* y) {
    const int64_t C = pr.geometry.num_classes;
    for (int64_t l = 0; l < P; ++l) {
      if (y[l] != pr.ignore_index && (y[l] < 0 || y[l] >= C)) {
        TORCH_CHECK_VALUE(false, "uaal_cross_entropy: target holds class ", y[l], " at pixel ", first + l,
                          " (flat index over (N, *spatial)), outside [0, ", C, ") and not ignore_index (",
                          pr.ignore_index, ")");
      }
    }
    TORCH_INTERNAL_ASSERT(false, "unreachable");
  }

  [[noreturn]] void report_negative_uncertainty(int64_t first) const {
    for (int64_t l = 0; l < P; ++l) {
      if (valid[l] != acc_t(0) && uncertainty[l] < acc_t(0)) {
        TORCH_CHECK_VALUE(false, "uaal_cross_entropy: uncertainty must be >= 0, got ", uncertainty[l], " at pixel ",
                          first + l, " (flat index over (N, *spatial))");
      }
    }
    TORCH_INTERNAL_ASSERT(false, "unreachable");
  }

  void gather_grad(const CrossEntropyProblem& pr, int64_t first, int64_t count) {
    const auto* g = static_cast<const acc_t*>(pr.grad);
    for (int64_t l = 0; l < P; ++l) grad[l] = l < count ? g[(first + l) * pr.grad_stride] : acc_t(0);
  }
};

template <typename acc_t, UncertaintySource kSource>
Vectorized<acc_t> pixel_weight(const CrossEntropyProblem& pr, const Vectorized<acc_t>& entropy,
                               const acc_t* uncertainty_lanes) {
  using Vec = Vectorized<acc_t>;
  if constexpr (kSource == UncertaintySource::kNone) {
    return Vec(acc_t(1));
  } else {
    const Vec u = kSource == UncertaintySource::kEntropy ? entropy : Vec::loadu(uncertainty_lanes);
    return uncertainty_weight(u, acc_t(pr.inv_scale), acc_t(pr.alpha), acc_t(pr.exponent), acc_t(pr.s_max));
  }
}

// Per-pixel state the gradient of a block needs, one vector per kVectorsPerBlock lanes group.
template <typename acc_t>
struct BlockSoftmax {
  Vectorized<acc_t> max[kVectorsPerBlock];
  Vectorized<acc_t> log_normalizer[kVectorsPerBlock];
  Vectorized<acc_t> weight[kVectorsPerBlock];  // the UAAL weight w
};

// The per-pixel factors of a block's d(g w l)/dz (cross_entropy_logit_grad), one vector per
// kVectorsPerBlock lanes group.
template <typename acc_t>
struct GradientCoefficients {
  using Vec = Vectorized<acc_t>;
  Vec target_coef[kVectorsPerBlock], smooth_coef[kVectorsPerBlock], target_class[kVectorsPerBlock];

  GradientCoefficients(const CrossEntropyProblem& pr, const BlockTargets<acc_t>& t,
                       const BlockSoftmax<acc_t>& softmax) {
    using L = Lanes<Vec>;
    constexpr int W = Vec::size();
    const acc_t target_share = acc_t(1) - acc_t(pr.label_smoothing);
    const acc_t smooth_share = acc_t(pr.label_smoothing) / static_cast<acc_t>(pr.geometry.num_classes);
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      const Vec valid = Vec::loadu(t.valid + u * W) > Vec(0);
      // A pixel with NaN or +-inf logits has a NaN log_normalizer and gets a NaN gradient, as in PyTorch.
      const Vec scaled_grad =
          Vec::loadu(t.grad + u * W) * softmax.weight[u] + nan_if_not_finite(softmax.log_normalizer[u]);
      target_coef[u] = L::select(valid, scaled_grad * Vec(target_share) * Vec::loadu(t.target_weight + u * W), Vec(0));
      smooth_coef[u] = L::select(valid, scaled_grad * Vec(smooth_share), Vec(0));
      target_class[u] = Vec::loadu(t.target_class + u * W);
    }
  }
};

// Writes d(g w l)/dz for every class of a block, shared by the fused forward and the backward.
// probability(c, u) gives p of class c for the u-th vector of pixels (a pure function, see
// write_block_rows).
template <typename scalar_t, typename acc_t, bool kSmoothing, typename Probability>
void write_block_gradient(const CrossEntropyProblem& pr, const BlockTargets<acc_t>& t,
                          const BlockSoftmax<acc_t>& softmax, Probability&& probability, acc_t class_weight_total,
                          int64_t count, int64_t out_offset, acc_t* staging) {
  using Vec = Vectorized<acc_t>;
  const auto* class_weight = static_cast<const acc_t*>(pr.class_weight);
  const GradientCoefficients<acc_t> k(pr, t, softmax);
  write_block_rows(pr.geometry, static_cast<scalar_t*>(pr.grad_input), out_offset, count, staging,
                   [&](int64_t c, int u) {
    const acc_t w_c = class_weight ? class_weight[c] : acc_t(1);
    return cross_entropy_logit_grad<kSmoothing>(probability(c, u), k.target_class[u] == Vec(static_cast<acc_t>(c)),
                                                k.target_coef[u], k.smooth_coef[u], Vec(class_weight_total), w_c);
  });
}

#if defined(CPU_CAPABILITY_AVX512)
// The same gradient from a full channels-last block of float probabilities, computed in the run's
// own pixel-major order and written over it: each of a 16-pixel group's C vectors takes its lanes'
// per-pixel factors with one permute each (PixelMajorLanes), where the class-row route would cost
// a transpose of the block in and another out; it requests the next block a line per vector as it
// goes (RunPrefetch). class_weight_lanes: c_c per lane of the C vectors, null when c_c is 1 or
// unused (only the label-smoothing term reads it).
template <bool kSmoothing>
void write_pixel_major_gradient(const PixelGeometry& g, float* run, const GradientCoefficients<float>& k,
                                const PixelMajorLanes& lanes, const float* class_weight_lanes,
                                float class_weight_total) {
  using Vec = Vectorized<float>;
  const int64_t C = g.num_classes;
  const OutputPath path = run_output_path(g, run);
  const RunPrefetch next_block(run, pixels_per_block<float>() * C * int64_t(sizeof(float)), kVectorsPerBlock * C);
  for (int u = 0; u < kVectorsPerBlock; ++u) {  // W == kTile pixels each
    float* group = run + u * kTile * C;
    for (int64_t v = 0; v < C; ++v) {
      next_block.share(u * C + v);
      const Vec is_target = Vec(lanes.spread(k.target_class[u], v)) == Vec(lanes.classes(v));
      const Vec smooth_coef = kSmoothing ? Vec(lanes.spread(k.smooth_coef[u], v)) : Vec(0.0f);
      const Vec class_weight = class_weight_lanes ? Vec::loadu(class_weight_lanes + v * kTile) : Vec(1.0f);
      const Vec grad = cross_entropy_logit_grad<kSmoothing>(Vec::loadu(group + v * kTile), is_target,
                                                            Vec(lanes.spread(k.target_coef[u], v)), smooth_coef,
                                                            Vec(class_weight_total), class_weight);
      store_vector(grad, group + v * kTile, path);
    }
  }
}

// The class weights c_c of quad `quad` in every lane (1 without class weights).
inline __m512 quad_class_weights(const float* class_weight, int64_t quad, int64_t C) {
  return class_weight ? _mm512_broadcast_f32x4(_mm_loadu_ps(class_weight + quad_start(quad, C))) : _mm512_set1_ps(1.0f);
}

// sum_c c_c (z_c - max) of each pixel of a block of pixel quads (the label smoothing's term).
void pixel_quad_shifted_sum(const float* logits, int64_t C, const float* class_weight,
                            const Vectorized<float> (&max)[kVectorsPerBlock],
                            Vectorized<float> (&shifted_sum)[kVectorsPerBlock]) {
  for (int u = 0; u < kVectorsPerBlock; ++u) {
    __m512 sum[kQuad];
    for (int r = 0; r < kQuad; ++r) sum[r] = _mm512_setzero_ps();
    for (int64_t quad = 0; quad < quad_count(C); ++quad) {
      const __mmask16 fresh = fresh_elements(quad, C);
      const __m512 w = quad_class_weights(class_weight, quad, C);
      for (int r = 0; r < kQuad; ++r) {
        const __m512 shift = _mm512_sub_ps(_mm512_loadu_ps(logits + pixel_quad_vector(u, quad, r, C) * kTile),
                                           spread_over_quad(max[u], r));
        sum[r] = _mm512_mask_add_ps(sum[r], fresh, sum[r], _mm512_mul_ps(w, shift));
      }
    }
    shifted_sum[u] = quad_sums(sum);
  }
}

// write_block_gradient for a block of pixel quads: probability(u, quad, r) gives p in that layout.
template <bool kSmoothing, typename Probability>
void write_pixel_quad_gradient(const CrossEntropyProblem& pr, const BlockTargets<float>& t,
                               const BlockSoftmax<float>& softmax, Probability&& probability, float class_weight_total,
                               int64_t out_offset) {
  using Vec = Vectorized<float>;
  const int64_t C = pr.geometry.num_classes;
  const auto* class_weight = static_cast<const float*>(pr.class_weight);
  const GradientCoefficients<float> k(pr, t, softmax);
  const SpreadOverQuads target_class(k.target_class), target_coef(k.target_coef), smooth_coef(k.smooth_coef);
  write_pixel_quads(pr.geometry, static_cast<float*>(pr.grad_input), out_offset, [&](int u, int64_t quad, int r) {
    return cross_entropy_logit_grad<kSmoothing>(
        Vec(probability(u, quad, r)), Vec(quad_classes(quad, C)) == Vec(target_class(u, r)), Vec(target_coef(u, r)),
        Vec(smooth_coef(u, r)), Vec(class_weight_total), Vec(quad_class_weights(class_weight, quad, C)));
  });
}
#endif

// A block's three sums (vectors of per-lane partial sums) in double, in lane order; then the blocks'
// sums added up in block order: the same result for any thread count.
template <typename acc_t>
void store_block_sums(const std::array<Vectorized<acc_t>, 3>& lanes, double* out) {
  constexpr int W = Vectorized<acc_t>::size();
  alignas(64) acc_t values[W];
  for (int k = 0; k < 3; ++k) {
    lanes[k].store(values);
    double total = 0;
    for (int l = 0; l < W; ++l) total += values[l];
    out[k] = total;
  }
}

void add_up_block_sums(const std::vector<double>& block_sums, double sums[3]) {
  sums[0] = sums[1] = sums[2] = 0;
  for (size_t b = 0; b < block_sums.size(); b += 3) {
    for (int k = 0; k < 3; ++k) sums[k] += block_sums[b + k];
  }
}

// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t, UncertaintySource kSource, bool kSmoothing>
void cross_entropy_forward(const CrossEntropyProblem& pr, double sums[3]) {
  using Vec = Vectorized<acc_t>;
  using L = Lanes<Vec>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const PixelGeometry& g = pr.geometry;
  const int64_t C = g.num_classes;
  const auto* input = static_cast<const scalar_t*>(pr.input);
  const auto* class_weight = static_cast<const acc_t*>(pr.class_weight);
  auto* log_normalizer_out = static_cast<acc_t*>(pr.log_normalizer);
  auto* loss_out = static_cast<acc_t*>(pr.pixel_loss);
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  acc_t class_weight_total = 0;
  for (int64_t c = 0; c < C; ++c) class_weight_total += class_weight ? class_weight[c] : acc_t(1);

  const int64_t inner = g.num_pixels ? g.size[g.ndim - 1] : 1;
  std::vector<double> block_sums(3 * (g.num_pixels / inner) * ((inner + P - 1) / P));
  const bool with_gradient = pr.grad_input != nullptr;
  const bool with_probabilities = pr.probabilities != nullptr;
  auto* weight_out = static_cast<acc_t*>(pr.pixel_weight);
  parallel_blocks(g, P, [&](int64_t block, int64_t first, int64_t count, int64_t in_offset, int64_t out_offset) {
    thread_local std::vector<acc_t> staging_buffer, gradient_buffer, terms_buffer;
    // With the gradient (or the probabilities), each logit's e^(z - max) is kept: p = e / sum
    // without another exp.
    const bool keep_terms = with_gradient || with_probabilities;
    acc_t* terms = nullptr;
    BlockSoftmaxTerms<acc_t> stats;
    constexpr bool kDot = kSource == UncertaintySource::kEntropy;
    // sum_c c_c (z_c - max) for the label smoothing, a third look at the logits in cache.
    Vec shifted_sum[kVectorsPerBlock];
    BlockRows<acc_t> rows{nullptr, 0};
    const bool quads = is_pixel_quad_block<scalar_t, acc_t>(g, count);
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
      if (quads) {
        const float* run = input + in_offset;
        float* logits = thread_buffer(staging_buffer, pixel_quad_values(C));
        if (keep_terms) terms = thread_buffer(terms_buffer, pixel_quad_values(C));
        stats.template compute_pixel_quads<kDot>(run, C, logits, terms);
        if constexpr (kSmoothing) pixel_quad_shifted_sum(logits, C, class_weight, stats.max, shifted_sum);
        rows = {run, 1, C};  // for the target logits
      }
    }
#endif
    if (!quads) {
      rows = load_rows(g, input, in_offset, count, thread_buffer(staging_buffer, C * P));
      if (keep_terms) terms = thread_buffer(terms_buffer, C * P);
      stats.template compute</*kSquares=*/false, kDot>(rows, C, terms);
      if constexpr (kSmoothing) {
        for (int u = 0; u < kVectorsPerBlock; ++u) shifted_sum[u] = Vec(acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const Vec w_c(class_weight ? class_weight[c] : acc_t(1));
          for (int u = 0; u < kVectorsPerBlock; ++u) {
            shifted_sum[u] = shifted_sum[u] + w_c * (Vec::loadu(rows.row(c) + u * W) - stats.max[u]);
          }
        }
      }
    }

    BlockTargets<acc_t> t;
    t.template gather<true, kSource>(pr, rows, first, count);
    BlockSoftmax<acc_t> softmax;
    Vec loss_sum(0), weight_sum(0), weighted_weight_sum(0);
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      const int lanes = lanes_left<acc_t>(count, u);
      const Vec log_normalizer = stats.sums[u].log_normalizer(stats.nan[u]);
      if (log_normalizer_out && lanes > 0) log_normalizer.store(log_normalizer_out + first + u * W, lanes);
      const Vec entropy = kSource == UncertaintySource::kEntropy ? stats.sums[u].entropy(log_normalizer) : Vec(0);
      const Vec w = pixel_weight<acc_t, kSource>(pr, entropy, t.uncertainty + u * W);
      softmax.max[u] = stats.max[u];
      softmax.log_normalizer[u] = log_normalizer;
      softmax.weight[u] = w;
      if (weight_out && lanes > 0) (w + nan_if_not_finite(log_normalizer)).store(weight_out + first + u * W, lanes);
      const Vec loss = pixel_cross_entropy<kSmoothing>(stats.max[u], log_normalizer, Vec::loadu(t.target_logit + u * W),
                                                       Vec::loadu(t.target_weight + u * W), Vec(class_weight_total),
                                                       shifted_sum[u], acc_t(pr.label_smoothing), inv_c);
      const Vec valid = Vec::loadu(t.valid + u * W) > Vec(0);
      const Vec weighted = L::select(valid, w * loss, Vec(0));  // ignored pixels are 0 even for NaN logits
      if (loss_out && lanes > 0) weighted.store(loss_out + first + u * W, lanes);
      const Vec target_weight = Vec::loadu(t.target_weight + u * W);
      loss_sum = loss_sum + weighted;
      weight_sum = weight_sum + target_weight;
      weighted_weight_sum = weighted_weight_sum + L::select(valid, target_weight * w, Vec(0));
    }
    Vec inverse_sum[kVectorsPerBlock];
    for (int u = 0; u < kVectorsPerBlock; ++u) inverse_sum[u] = Vec(acc_t(1)) / stats.sums[u].sum;
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
      if (quads) {
        const SpreadOverQuads inverse_sums(inverse_sum);
        const auto probability = [&](int u, int64_t quad, int r) {
          return _mm512_mul_ps(_mm512_loadu_ps(terms + pixel_quad_vector(u, quad, r, C) * kTile), inverse_sums(u, r));
        };
        if (with_probabilities) write_pixel_quads(g, static_cast<float*>(pr.probabilities), out_offset, probability);
        if (with_gradient) {
          t.gather_grad(pr, first, count);
          write_pixel_quad_gradient<kSmoothing>(pr, t, softmax, probability, class_weight_total, out_offset);
        }
        store_block_sums<acc_t>({loss_sum, weight_sum, weighted_weight_sum}, block_sums.data() + 3 * block);
        return;
      }
    }
#endif
    const auto probability = [&](int64_t c, int u) { return Vec::loadu(terms + c * P + u * W) * inverse_sum[u]; };
    if (with_probabilities) {
      write_block_rows(g, static_cast<scalar_t*>(pr.probabilities), out_offset, count,
                       thread_buffer(gradient_buffer, C * P), probability);
    }
    if (with_gradient) {
      t.gather_grad(pr, first, count);
      write_block_gradient<scalar_t, acc_t, kSmoothing>(pr, t, softmax, probability, class_weight_total, count,
                                                        out_offset, thread_buffer(gradient_buffer, C * P));
    }
    store_block_sums<acc_t>({loss_sum, weight_sum, weighted_weight_sum}, block_sums.data() + 3 * block);
  });
  add_up_block_sums(block_sums, sums);
}

// Backward: one read of the logits, one write of the gradient. Pass 0 finds each pixel's max logit
// again (cheaper than keeping it from the forward: memory is the bottleneck); with the entropy
// weight, pass 1 recomputes the entropy from the forward's log_normalizer; then the gradient pass.
// Passes after the first work on the block held in cache.
template <typename scalar_t, typename acc_t, UncertaintySource kSource, bool kSmoothing>
void cross_entropy_backward(const CrossEntropyProblem& pr) {
  using Vec = Vectorized<acc_t>;
  using L = Lanes<Vec>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const PixelGeometry& g = pr.geometry;
  const int64_t C = g.num_classes;
  const auto* input = static_cast<const scalar_t*>(pr.input);
  const auto* class_weight = static_cast<const acc_t*>(pr.class_weight);
  const auto* log_normalizer_in = static_cast<const acc_t*>(pr.log_normalizer);
  acc_t class_weight_total = 0;
  for (int64_t c = 0; c < C; ++c) class_weight_total += class_weight ? class_weight[c] : acc_t(1);

  parallel_blocks(g, P, [&](int64_t, int64_t first, int64_t count, int64_t in_offset, int64_t out_offset) {
    thread_local std::vector<acc_t> staging_buffer, gradient_buffer;
    BlockSoftmax<acc_t> softmax;
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      softmax.max[u] = OnlineSoftmax<Vec>::initial_max();
      softmax.log_normalizer[u] = Vec::loadu(log_normalizer_in + first + u * W, lanes_left<acc_t>(count, u));
    }
    Vec entropy[kVectorsPerBlock];
    for (int u = 0; u < kVectorsPerBlock; ++u) entropy[u] = Vec(0);
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
      if (is_pixel_quad_block<scalar_t, acc_t>(g, count)) {  // as the forward reads these blocks
        const float* run = input + in_offset;
        float* logits = thread_buffer(staging_buffer, pixel_quad_values(C));
        const RunPrefetch next_block = quad_prefetch(run, C);
        for (int u = 0; u < kVectorsPerBlock; ++u) {
          softmax.max[u] = stage_pixel_quad_group(run, C, u, next_block, logits, nullptr);
        }
        const SpreadOverQuads max(softmax.max), log_normalizer(softmax.log_normalizer);
        const auto log_p = [&](int u, int64_t quad, int r) {
          return log_probability(Vec(_mm512_loadu_ps(logits + pixel_quad_vector(u, quad, r, C) * kTile)),
                                 Vec(max(u, r)), Vec(log_normalizer(u, r)));
        };
        if constexpr (kSource == UncertaintySource::kEntropy) {
          for (int u = 0; u < kVectorsPerBlock; ++u) {
            __m512 sum[kQuad];
            for (int r = 0; r < kQuad; ++r) sum[r] = _mm512_setzero_ps();
            for (int64_t quad = 0; quad < quad_count(C); ++quad) {
              const __mmask16 fresh = fresh_elements(quad, C);
              for (int r = 0; r < kQuad; ++r) {
                const Vec log_p_ur = log_p(u, quad, r);
                sum[r] = _mm512_mask_add_ps(sum[r], fresh, sum[r], entropy_term(L::exp(log_p_ur), log_p_ur));
              }
            }
            entropy[u] = quad_sums(sum);
          }
        }
        BlockTargets<acc_t> t;
        t.template gather<false, kSource>(pr, BlockRows<acc_t>{nullptr, 0}, first, count);  // targets only
        t.gather_grad(pr, first, count);
        for (int u = 0; u < kVectorsPerBlock; ++u) {
          softmax.weight[u] = pixel_weight<acc_t, kSource>(pr, entropy[u], t.uncertainty + u * W);
        }
        write_pixel_quad_gradient<kSmoothing>(pr, t, softmax, [&](int u, int64_t quad, int r) {
          return L::exp(log_p(u, quad, r));
        }, class_weight_total, out_offset);
        return;
      }
    }
#endif
    const BlockRows<acc_t> rows = load_rows(g, input, in_offset, count, thread_buffer(staging_buffer, C * P));
    BlockTargets<acc_t> t;
    t.template gather<false, kSource>(pr, rows, first, count);
    t.gather_grad(pr, first, count);
    for (int64_t c = 0; c < C; ++c) {
      for (int u = 0; u < kVectorsPerBlock; ++u) {
        softmax.max[u] = OnlineSoftmax<Vec>::running_max(softmax.max[u], Vec::loadu(rows.row(c) + u * W));
      }
    }
    if constexpr (kSource == UncertaintySource::kEntropy) {
      for (int64_t c = 0; c < C; ++c) {
        for (int u = 0; u < kVectorsPerBlock; ++u) {
          const Vec log_p = log_probability(Vec::loadu(rows.row(c) + u * W), softmax.max[u], softmax.log_normalizer[u]);
          entropy[u] = entropy[u] + entropy_term(L::exp(log_p), log_p);
        }
      }
    }
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      softmax.weight[u] = pixel_weight<acc_t, kSource>(pr, entropy[u], t.uncertainty + u * W);
    }
    const auto probability = [&](int64_t c, int u) {
      return L::exp(log_probability(Vec::loadu(rows.row(c) + u * W), softmax.max[u], softmax.log_normalizer[u]));
    };
    write_block_gradient<scalar_t, acc_t, kSmoothing>(pr, t, softmax, probability, class_weight_total, count,
                                                      out_offset, thread_buffer(gradient_buffer, C * P));
  });
}

// Class-probability targets (loss_math.h's ProbabilityTargetSums): the target's rows are read block by
// block at the logits' offsets (the host code gives them the logits' dtype and strides). Every pixel
// counts: the sums are {sum w l, number of pixels, sum w}. One kernel serves the forward, the fused
// forward + backward (grad_input set, one incoming gradient) and the backward (per-pixel gradient;
// the caller discards the sums): the softmax is recomputed rather than kept, as memory is the cost.
template <typename scalar_t, typename acc_t, UncertaintySource kSource>
void probability_target_cross_entropy(const CrossEntropyProblem& pr, double sums[3]) {
  using Vec = Vectorized<acc_t>;
  using L = Lanes<Vec>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const PixelGeometry& g = pr.geometry;
  const int64_t C = g.num_classes;
  const auto* input = static_cast<const scalar_t*>(pr.input);
  const auto* target = static_cast<const scalar_t*>(pr.target);
  const auto* class_weight = static_cast<const acc_t*>(pr.class_weight);
  const auto* grad = static_cast<const acc_t*>(pr.grad);
  auto* log_normalizer_out = static_cast<acc_t*>(pr.log_normalizer);
  auto* loss_out = static_cast<acc_t*>(pr.pixel_loss);
  auto* out = static_cast<scalar_t*>(pr.grad_input);
  const acc_t label_smoothing = acc_t(pr.label_smoothing);
  const acc_t smoothing_per_class = acc_t(pr.label_smoothing / static_cast<double>(C));

  const int64_t inner = g.num_pixels ? g.size[g.ndim - 1] : 1;
  std::vector<double> block_sums(3 * (g.num_pixels / inner) * ((inner + P - 1) / P));
  parallel_blocks(g, P, [&](int64_t block, int64_t first, int64_t count, int64_t in_offset, int64_t out_offset) {
    thread_local std::vector<acc_t> staging_buffer, target_buffer, terms_buffer, gradient_buffer;
    const BlockRows<acc_t> rows = load_rows(g, input, in_offset, count, thread_buffer(staging_buffer, C * P));
    const BlockRows<acc_t> targets = load_rows(g, target, in_offset, count, thread_buffer(target_buffer, C * P));
    acc_t* terms = out ? thread_buffer(terms_buffer, C * P) : nullptr;
    BlockSoftmaxTerms<acc_t> stats;
    stats.template compute</*kSquares=*/false, /*kDot=*/kSource == UncertaintySource::kEntropy>(rows, C, terms);
    const auto weighted_target = [&](int64_t c, int u) {
      const acc_t w_c = class_weight ? class_weight[c] : acc_t(1);
      return Vec(w_c) * smoothed_target(Vec::loadu(targets.row(c) + u * W), label_smoothing, smoothing_per_class);
    };
    ProbabilityTargetSums<Vec> target_sums[kVectorsPerBlock];
    for (int64_t c = 0; c < C; ++c) {
      for (int u = 0; u < kVectorsPerBlock; ++u) {
        target_sums[u].add(weighted_target(c, u), Vec::loadu(rows.row(c) + u * W) - stats.max[u]);
      }
    }

    // The map's values, checked like the class-index kernels check them (every pixel of the block counts).
    BlockTargets<acc_t> pixels;
    if constexpr (kSource == UncertaintySource::kMap) {
      for (int l = 0; l < P; ++l) pixels.valid[l] = l < count ? acc_t(1) : acc_t(0);
      pixels.template gather_uncertainty<kSource>(pr, first, count);
    }
    alignas(64) acc_t lane_index[W];
    for (int l = 0; l < W; ++l) lane_index[l] = static_cast<acc_t>(l);
    Vec loss_sum(0), pixel_sum(0), weight_sum(0), coef[kVectorsPerBlock];
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      const int lanes = lanes_left<acc_t>(count, u);
      const Vec valid = Vec::loadu(lane_index) < Vec(static_cast<acc_t>(lanes));  // lanes past the block's end
      const Vec log_normalizer = stats.sums[u].log_normalizer(stats.nan[u]);
      if (log_normalizer_out && lanes > 0) log_normalizer.store(log_normalizer_out + first + u * W, lanes);
      const Vec entropy = kSource == UncertaintySource::kEntropy ? stats.sums[u].entropy(log_normalizer) : Vec(0);
      const Vec w = pixel_weight<acc_t, kSource>(pr, entropy, pixels.uncertainty + u * W);
      const Vec weighted = L::select(valid, w * target_sums[u].loss(log_normalizer), Vec(0));
      if (loss_out && lanes > 0) weighted.store(loss_out + first + u * W, lanes);
      loss_sum = loss_sum + weighted;
      pixel_sum = pixel_sum + L::select(valid, Vec(1), Vec(0));
      weight_sum = weight_sum + L::select(valid, w, Vec(0));
      if (out) {
        alignas(64) acc_t g_lanes[W] = {};
        for (int l = 0; l < lanes; ++l) g_lanes[l] = grad[(first + u * W + l) * pr.grad_stride];
        // A pixel with NaN or +-inf logits has a NaN log_normalizer and gets a NaN gradient, as in PyTorch.
        coef[u] = L::select(valid, Vec::loadu(g_lanes) * w + nan_if_not_finite(log_normalizer), Vec(0));
      }
    }
    if (out) {
      Vec inverse_sum[kVectorsPerBlock];
      for (int u = 0; u < kVectorsPerBlock; ++u) inverse_sum[u] = Vec(acc_t(1)) / stats.sums[u].sum;
      write_block_rows(g, out, out_offset, count, thread_buffer(gradient_buffer, C * P), [&](int64_t c, int u) {
        const Vec p = Vec::loadu(terms + c * P + u * W) * inverse_sum[u];
        return probability_target_logit_grad(p, coef[u], target_sums[u].mass, weighted_target(c, u));
      });
    }
    store_block_sums<acc_t>({loss_sum, pixel_sum, weight_sum}, block_sums.data() + 3 * block);
  });
  add_up_block_sums(block_sums, sums);
}

// The second half of the by-weight fused call: grad_input holds the softmax p (the forward wrote it,
// problem.probabilities) and pixel_weight the weights; the gradient g w d l / dz replaces p in
// place, block by block (each value is read before it is overwritten). One read and one write of
// a tensor shaped like the logits, no exp: the logits are not read again.
template <typename scalar_t, typename acc_t, bool kSmoothing>
void cross_entropy_gradient_from_probabilities(const CrossEntropyProblem& pr) {
  using Vec = Vectorized<acc_t>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const int64_t C = pr.geometry.num_classes;
  const auto* probabilities = static_cast<const scalar_t*>(pr.grad_input);
  const auto* pixel_weight = static_cast<const acc_t*>(pr.pixel_weight);
  acc_t class_weight_total = 0;
  for (int64_t c = 0; c < C; ++c) {
    class_weight_total += pr.class_weight ? static_cast<const acc_t*>(pr.class_weight)[c] : acc_t(1);
  }
  // Blocks of the gradient read as if it were the input.
  PixelGeometry layout = pr.geometry;
  std::copy_n(layout.out_stride, kMaxPixelDims, layout.in_stride);
  layout.in_channel_stride = layout.out_channel_stride;

#if defined(CPU_CAPABILITY_AVX512)
  // Full channels-last blocks of float values are worked on in their pixel-major order.
  std::optional<PixelMajorLanes> lanes;
  std::vector<float> class_weight_lanes;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (layout.out_channel_stride == 1 && layout.out_stride[layout.ndim - 1] == C) {
      lanes.emplace(C);
      if (kSmoothing && pr.class_weight) {
        const auto* class_weight = static_cast<const float*>(pr.class_weight);
        class_weight_lanes.resize(kTile * C);
        for (int64_t m = 0; m < kTile * C; ++m) class_weight_lanes[m] = class_weight[m % C];
      }
    }
  }
#endif

  parallel_blocks(layout, P, [&](int64_t, int64_t first, int64_t count, int64_t in_offset, int64_t out_offset) {
    thread_local std::vector<acc_t> staging_buffer, gradient_buffer;
    BlockSoftmax<acc_t> softmax;
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      softmax.weight[u] = Vec::loadu(pixel_weight + first + u * W, lanes_left<acc_t>(count, u));
      softmax.log_normalizer[u] = Vec(acc_t(0));  // the weight already carries the pixel's NaN
    }
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (lanes && count == P) {
        BlockTargets<acc_t> t;
        // No rows: without kNeedLogit the gather reads targets only.
        t.template gather<false, UncertaintySource::kNone>(pr, BlockRows<acc_t>{nullptr, 0}, first, count);
        t.gather_grad(pr, first, count);
        write_pixel_major_gradient<kSmoothing>(
            pr.geometry, static_cast<float*>(pr.grad_input) + out_offset, GradientCoefficients<acc_t>(pr, t, softmax),
            *lanes, class_weight_lanes.empty() ? nullptr : class_weight_lanes.data(), class_weight_total);
        return;
      }
    }
#endif
    const BlockRows<acc_t> rows =
        load_rows(layout, probabilities, in_offset, count, thread_buffer(staging_buffer, C * P), /*single_look=*/true);
    BlockTargets<acc_t> t;
    t.template gather<false, UncertaintySource::kNone>(pr, rows, first, count);
    t.gather_grad(pr, first, count);
    const auto probability = [&](int64_t c, int u) { return Vec::loadu(rows.row(c) + u * W); };
    write_block_gradient<scalar_t, acc_t, kSmoothing>(pr, t, softmax, probability, class_weight_total, count,
                                                      out_offset, thread_buffer(gradient_buffer, C * P));
  });
}

// Sum of c_y over valid pixels (the "mean" denominator), in fixed blocks: independent of threads.
// Out-of-range targets are reported by the main pass; here they only must not be read. Typed,
// branch-free loops: this pass reads only the targets and should cost little next to the logits.
double target_weight_total(const CrossEntropyProblem& pr) {
  constexpr int64_t kBlock = 16384;
  const int64_t n = pr.geometry.num_pixels;
  const int64_t C = pr.geometry.num_classes;
  std::vector<double> partial((n + kBlock - 1) / kBlock, 0.0);
  dispatch_float_type(pr.input_type, [&](auto, auto acc) {
    using acc_t = decltype(acc);
    const auto* class_weight = static_cast<const acc_t*>(pr.class_weight);
    auto sum_block = [&](const auto* target, int64_t begin, int64_t end) -> double {
      if (!class_weight) {
        int64_t valid = 0;
        for (int64_t i = begin; i < end; ++i) {
          const int64_t y = target[i];
          valid += (y != pr.ignore_index) & (y >= 0) & (y < C);
        }
        return static_cast<double>(valid);
      }
      acc_t total = 0;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t y = target[i];
        const bool valid = (y != pr.ignore_index) & (y >= 0) & (y < C);
        total += valid ? class_weight[valid ? y : 0] : acc_t(0);
      }
      return static_cast<double>(total);
    };
    at::parallel_for(0, static_cast<int64_t>(partial.size()), 1, [&](int64_t first_block, int64_t last_block) {
      for (int64_t b = first_block; b < last_block; ++b) {
        const int64_t begin = b * kBlock, end = std::min(n, begin + kBlock);
        partial[b] = with_typed_targets(pr, [&](const auto* target) { return sum_block(target, begin, end); });
      }
    });
  });
  double total = 0;
  for (double v : partial) total += v;
  return total;
}

// Sum of c_y w over valid pixels with w from the uncertainty map: the by-weight mean's denominator,
// from the targets and the map alone. w is loss_math.h's uncertainty_weight on vectors of
// neighbouring pixels; fixed blocks, summed in block order, make the result independent of the
// thread count. As in the forward, a pixel adds c_y w only where it is valid, so an ignored pixel's
// NaN or infinite uncertainty stays out; out-of-range targets and negative uncertainties are
// reported by the main pass, and here they only must not be read.
double map_weight_total(const CrossEntropyProblem& pr) {
  // Short enough that per-lane sums in float stay accurate, long enough to amortise a block's setup.
  constexpr int64_t kBlock = 1024;
  const int64_t n = pr.geometry.num_pixels;
  std::vector<double> partial((n + kBlock - 1) / kBlock, 0.0);
  dispatch_float_type(pr.input_type, [&](auto, auto acc) {
    using acc_t = decltype(acc);
    using Vec = Vectorized<acc_t>;
    using L = Lanes<Vec>;
    constexpr int W = Vec::size();
    const int64_t C = pr.geometry.num_classes;
    const auto* class_weight = static_cast<const acc_t*>(pr.class_weight);
    const auto* uncertainty = static_cast<const acc_t*>(pr.uncertainty);
    auto sum_block = [&](const auto* target, int64_t begin, int64_t end) -> double {
      Vec total(acc_t(0));
      alignas(64) acc_t valid[W];
      alignas(64) acc_t target_weight[W];
      for (int64_t i = begin; i < end; i += W) {
        const int64_t count = std::min<int64_t>(W, end - i);
        for (int l = 0; l < W; ++l) {  // lanes past `count` read as ignored
          const int64_t y = l < count ? static_cast<int64_t>(target[i + l]) : pr.ignore_index;
          const bool is_valid = (y != pr.ignore_index) & (y >= 0) & (y < C);
          valid[l] = is_valid ? acc_t(1) : acc_t(0);
          target_weight[l] = is_valid && class_weight ? class_weight[y] : acc_t(1);
        }
        const Vec w = uncertainty_weight(Vec::loadu(uncertainty + i, count), acc_t(pr.inv_scale), acc_t(pr.alpha),
                                         acc_t(pr.exponent), acc_t(pr.s_max));
        total = total + L::select(Vec::loadu(valid) > Vec(acc_t(0)), Vec::loadu(target_weight) * w, Vec(acc_t(0)));
      }
      alignas(64) acc_t lanes[W];
      total.store(lanes);
      double sum = 0;
      for (int l = 0; l < W; ++l) sum += lanes[l];
      return sum;
    };
    // Tasks of about as many pixels as target_weight_total's blocks.
    at::parallel_for(0, static_cast<int64_t>(partial.size()), 16, [&](int64_t first_block, int64_t last_block) {
      for (int64_t b = first_block; b < last_block; ++b) {
        const int64_t begin = b * kBlock, end = std::min(n, begin + kBlock);
        partial[b] = with_typed_targets(pr, [&](const auto* target) { return sum_block(target, begin, end); });
      }
    });
  });
  double total = 0;
  for (double v : partial) total += v;
  return total;
}

// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void pixel_entropy_forward(const EntropyProblem& pr) {
  using Vec = Vectorized<acc_t>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const PixelGeometry& g = pr.geometry;
  const auto* input = static_cast<const scalar_t*>(pr.input);
  auto* entropy_out = static_cast<acc_t*>(pr.entropy);
  parallel_blocks(g, P, [&](int64_t, int64_t first, int64_t count, int64_t in_offset, int64_t) {
    thread_local std::vector<acc_t> staging_buffer;
    const BlockRows<acc_t> rows =
        load_rows(g, input, in_offset, count, thread_buffer(staging_buffer, g.num_classes * P));
    OnlineSoftmax<Vec> stats[kVectorsPerBlock];
    for (int64_t c = 0; c < g.num_classes; ++c) {
      for (int u = 0; u < kVectorsPerBlock; ++u) stats[u].update(Vec::loadu(rows.row(c) + u * W));
    }
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      const int lanes = lanes_left<acc_t>(count, u);
      if (lanes == 0) break;
      (stats[u].entropy() * Vec(acc_t(pr.scale))).store(entropy_out + first + u * W, lanes);
    }
  });
}

template <typename scalar_t, typename acc_t>
void pixel_entropy_backward(const EntropyProblem& pr) {
  using Vec = Vectorized<acc_t>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const PixelGeometry& g = pr.geometry;
  const int64_t C = g.num_classes;
  const auto* input = static_cast<const scalar_t*>(pr.input);
  auto* out = static_cast<scalar_t*>(pr.grad_input);
  const auto* grad = static_cast<const acc_t*>(pr.grad);
  parallel_blocks(g, P, [&](int64_t, int64_t first, int64_t count, int64_t in_offset, int64_t out_offset) {
    thread_local std::vector<acc_t> staging_buffer, grad_buffer;
    const BlockRows<acc_t> rows = load_rows(g, input, in_offset, count, thread_buffer(staging_buffer, C * P));
    acc_t* grads = thread_buffer(grad_buffer, C * P);
    OnlineSoftmax<Vec> stats[kVectorsPerBlock];
    for (int64_t c = 0; c < C; ++c) {
      for (int u = 0; u < kVectorsPerBlock; ++u) stats[u].update(Vec::loadu(rows.row(c) + u * W));
    }
    Vec log_normalizer[kVectorsPerBlock], entropy[kVectorsPerBlock], grad_scale[kVectorsPerBlock];
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      log_normalizer[u] = stats[u].log_normalizer();
      entropy[u] = stats[u].entropy(log_normalizer[u]);
      grad_scale[u] = Vec::loadu(grad + first + u * W, lanes_left<acc_t>(count, u)) * Vec(acc_t(pr.scale)) +
                      nan_if_not_finite(log_normalizer[u]);
    }
    write_block_rows(g, out, out_offset, count, grads, [&](int64_t c, int u) {
      const Vec log_p = log_probability(Vec::loadu(rows.row(c) + u * W), stats[u].max, log_normalizer[u]);
      return entropy_logit_grad(Lanes<Vec>::exp(log_p), log_p, entropy[u], grad_scale[u]);
    });
  });
}

// ---------------------------------------------------------------------------------------------
void run_probability_target_cross_entropy(const CrossEntropyProblem& pr, double sums[3]) {
  dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
    dispatch_constant<UncertaintySource::kNone, UncertaintySource::kEntropy, UncertaintySource::kMap>(pr.source,
                                                                                                      [&](auto source) {
      probability_target_cross_entropy<decltype(scalar), decltype(acc), decltype(source)::value>(pr, sums);
    });
  });
}

void run_cross_entropy_forward(const CrossEntropyProblem& pr, double sums[3]) {
  if (pr.soft_target) return run_probability_target_cross_entropy(pr, sums);
  dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
    dispatch_variant(pr.source, pr.smoothing(), [&](auto source, auto smoothing) {
      using scalar_t = decltype(scalar);
      using acc_t = decltype(acc);
      cross_entropy_forward<scalar_t, acc_t, decltype(source)::value, decltype(smoothing)::value>(pr, sums);
    });
  });
}

void run_cross_entropy_backward(const CrossEntropyProblem& pr) {
  if (pr.soft_target) {
    CrossEntropyProblem gradient_only = pr;
    gradient_only.log_normalizer = nullptr;  // the forward's, an input here: never written
    gradient_only.pixel_loss = nullptr;
    double unused[3];
    return run_probability_target_cross_entropy(gradient_only, unused);
  }
  dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
    dispatch_variant(pr.source, pr.smoothing(), [&](auto source, auto smoothing) {
      cross_entropy_backward<decltype(scalar), decltype(acc), decltype(source)::value, decltype(smoothing)::value>(pr);
    });
  });
}

void run_cross_entropy_gradient_from_probabilities(const CrossEntropyProblem& pr) {
  dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
    dispatch_constant<false, true>(pr.smoothing(), [&](auto smoothing) {
      cross_entropy_gradient_from_probabilities<decltype(scalar), decltype(acc), decltype(smoothing)::value>(pr);
    });
  });
}

void run_pixel_entropy_forward(const EntropyProblem& pr) {
  dispatch_float_type(pr.input_type,
                      [&](auto scalar, auto acc) { pixel_entropy_forward<decltype(scalar), decltype(acc)>(pr); });
}

void run_pixel_entropy_backward(const EntropyProblem& pr) {
  dispatch_float_type(pr.input_type,
                      [&](auto scalar, auto acc) { pixel_entropy_backward<decltype(scalar), decltype(acc)>(pr); });
}

}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable table{
      run_cross_entropy_forward,  run_cross_entropy_backward, run_cross_entropy_gradient_from_probabilities,
      target_weight_total,        map_weight_total,           run_pixel_entropy_forward,
      run_pixel_entropy_backward,
  };
  return table;
}

}  // namespace uaal::cpu::CPU_CAPABILITY
