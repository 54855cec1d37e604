// CPU kernels of the per-pixel acquisition scores. Compiled once per instruction set; the math is
// acquisition_math.h's on at::vec::Vectorized lanes, over the fixed pixel blocks of pixel_blocks.h:
// one read of the logits (of each Monte-Carlo sample), one write of the scores.
#include <ATen/Parallel.h>

#include <vector>

#include "core/online_softmax.h"
#include "cpu/acquisition_kernels.h"
#include "cpu/pixel_blocks.h"
#include "cpu/vec_lanes.h"

#ifndef CPU_CAPABILITY
#error "acquisition_kernels.cpp is compiled once per CPU_CAPABILITY (see CMakeLists.txt)"
#endif

namespace uaal::cpu::CPU_CAPABILITY {
namespace {  // internal linkage: nothing compiled with this file's -m flags may leak to another

using at::vec::Vectorized;

// entropy, margin, least confidence: one online pass over a block's classes.
template <typename scalar_t, typename acc_t, ScoreMethod kMethod>
void single_prediction_scores(const PixelScoreProblem& pr) {
  using Vec = Vectorized<acc_t>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const PixelGeometry& g = pr.geometry;
  const auto* input = static_cast<const scalar_t*>(pr.input);
  auto* scores = static_cast<acc_t*>(pr.scores);
  parallel_blocks(g, P, [&](int64_t, int64_t first, int64_t count, int64_t in_offset, int64_t) {
    thread_local std::vector<acc_t> staging_buffer;
    const BlockRows<acc_t> rows =
        load_rows(g, input, in_offset, count, thread_buffer(staging_buffer, g.num_classes * P));
    OnlineTopTwo<Vec, kMethod> stats[kVectorsPerBlock];
    for (int64_t c = 0; c < g.num_classes; ++c) {
      for (int u = 0; u < kVectorsPerBlock; ++u) stats[u].update(Vec::loadu(rows.row(c) + u * W));
    }
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      const int lanes = lanes_left<acc_t>(count, u);
      if (lanes == 0) break;
      stats[u].score().store(scores + first + u * W, lanes);
    }
  });
}

// mc_entropy, BALD: per block, the T samples' softmaxes are added into the mean prediction (C rows
// kept in cache) while their entropies are summed.
template <typename scalar_t, typename acc_t, ScoreMethod kMethod>
void monte_carlo_scores(const PixelScoreProblem& pr) {
  using Vec = Vectorized<acc_t>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const PixelGeometry& g = pr.geometry;
  const int64_t C = g.num_classes;
  const auto* input = static_cast<const scalar_t*>(pr.input);
  auto* scores = static_cast<acc_t*>(pr.scores);
  const acc_t inv_num_samples = acc_t(1) / static_cast<acc_t>(pr.num_samples);
  parallel_blocks(g, P, [&](int64_t, int64_t first, int64_t count, int64_t in_offset, int64_t) {
    thread_local std::vector<acc_t> staging_buffer, term_buffer, mean_buffer;
    acc_t* staging = thread_buffer(staging_buffer, C * P);
    acc_t* terms = thread_buffer(term_buffer, C * P);
    acc_t* probability_sum = thread_buffer(mean_buffer, C * P);  // sum_t p_t, per class and lane
    std::fill(probability_sum, probability_sum + C * P, acc_t(0));
    Vec entropy_sum[kVectorsPerBlock], nan[kVectorsPerBlock];
    for (int u = 0; u < kVectorsPerBlock; ++u) entropy_sum[u] = nan[u] = Vec(acc_t(0));

    for (int64_t t = 0; t < pr.num_samples; ++t) {
      BlockSoftmaxTerms<acc_t> softmax;
      constexpr bool kBald = kMethod == ScoreMethod::kBald;  // only BALD needs the samples' entropies
      softmax.template compute</*kSquares=*/false, /*kDot=*/kBald>(
          load_rows(g, input + t * pr.sample_stride, in_offset, count, staging), C, terms);
      for (int u = 0; u < kVectorsPerBlock; ++u) {
        const Vec inv_sum = Vec(acc_t(1)) / softmax.sums[u].sum;
        for (int64_t c = 0; c < C; ++c) {
          acc_t* mean = probability_sum + c * P + u * W;
          (Vec::loadu(mean) + Vec::loadu(terms + c * P + u * W) * inv_sum).store(mean);
        }
        if constexpr (kBald)
          entropy_sum[u] = entropy_sum[u] + entropy_from_terms(softmax.sums[u].sum, softmax.sums[u].dot);
        nan[u] = nan[u] + softmax.nan[u];
      }
    }
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      const int lanes = lanes_left<acc_t>(count, u);
      if (lanes == 0) break;
      Vec mean_entropy(acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        mean_entropy = mean_entropy +
                       mean_prediction_entropy_term(Vec::loadu(probability_sum + c * P + u * W) * Vec(inv_num_samples));
      }
      (monte_carlo_score<kMethod>(mean_entropy, entropy_sum[u], inv_num_samples) + nan[u])
          .store(scores + first + u * W, lanes);
    }
  });
}

void run_pixel_scores(const PixelScoreProblem& pr) {
  dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
    using scalar_t = decltype(scalar);
    using acc_t = decltype(acc);
    dispatch_score_method(pr.method, [&](auto method) {
      constexpr ScoreMethod kMethod = decltype(method)::value;
      if constexpr (is_monte_carlo(kMethod)) {
        monte_carlo_scores<scalar_t, acc_t, kMethod>(pr);
      } else {
        single_prediction_scores<scalar_t, acc_t, kMethod>(pr);
      }
    });
  });
}

}  // namespace

const AcquisitionKernelTable& acquisition_kernel_table() {
  static const AcquisitionKernelTable table{run_pixel_scores};
  return table;
}

}  // namespace uaal::cpu::CPU_CAPABILITY
