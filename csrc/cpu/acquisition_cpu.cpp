// CPU implementations of pixel_scores and aggregate_scores: the shared op bodies
// (acquisition_common.h) with the kernels compiled for the best instruction set this CPU supports.
#include <ATen/Parallel.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "acquisition_common.h"
#include "cpu/acquisition_kernels.h"
#include "cpu/buffer_cache.h"
#include "cpu/capability.h"

namespace uaal::cpu {
namespace {

const AcquisitionKernelTable& best_acquisition_kernels() {
  static const AcquisitionKernelTable& table =
      best_kernel_table(&DEFAULT::acquisition_kernel_table, UAAL_CPU_AVX2_TABLE(acquisition_kernel_table),
                        UAAL_CPU_AVX512_TABLE(acquisition_kernel_table));
  return table;
}

// One image's aggregate over its valid pixels, in double, in pixel order (topk_mean: the top values
// as std::nth_element leaves them, a fixed order for given input).
template <typename T>
T aggregate_image(const T* scores, const bool* valid, int64_t n, ScoreReduction reduction, double q,
                  std::vector<T>& kept) {
  kept.clear();
  bool has_nan = false;
  for (int64_t i = 0; i < n; ++i) {
    if (valid && !valid[i]) continue;
    has_nan |= std::isnan(scores[i]);
    kept.push_back(scores[i]);
  }
  if (kept.empty()) return T(0);
  if (has_nan) return std::numeric_limits<T>::quiet_NaN();
  switch (reduction) {
    case ScoreReduction::kMax: return *std::max_element(kept.begin(), kept.end());
    case ScoreReduction::kTopKMean: {
      const int64_t k = top_count(q, static_cast<int64_t>(kept.size()));
      std::nth_element(kept.begin(), kept.begin() + (k - 1), kept.end(), std::greater<T>());
      double total = 0.0;
      for (int64_t i = 0; i < k; ++i) total += kept[i];
      return static_cast<T>(total / static_cast<double>(k));
    }
    default: {
      double total = 0.0;
      for (T v : kept) total += v;
      return static_cast<T>(reduction == ScoreReduction::kSum ? total : total / static_cast<double>(kept.size()));
    }
  }
}

struct CpuAcquisitionLauncher {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  // Recycled: a fresh multi-megabyte buffer costs more in page faults than the kernel that fills it.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return empty_cached(sizes, c10::contiguous_strides(sizes), options.dtype().toScalarType());
  }
  static void pixel_scores(const PixelScoreProblem& pr, const at::TensorOptions&) {
    best_acquisition_kernels().pixel_scores(pr);
  }
  static void aggregate_scores(const ScoreAggregationProblem& pr, const at::Tensor&, const at::Tensor&, at::Tensor&) {
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const auto* scores = static_cast<const T*>(pr.scores);
      auto* out = static_cast<T*>(pr.out);
      at::parallel_for(0, pr.num_images, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> kept;
        for (int64_t image = begin; image < end; ++image) {
          const int64_t offset = image * pr.pixels_per_image;
          out[image] = aggregate_image(scores + offset, pr.valid ? pr.valid + offset : nullptr, pr.pixels_per_image,
                                       pr.reduction, pr.q, kept);
        }
      });
    };
    if (pr.is_double) {
      run(double{});
    } else {
      run(float{});
    }
  }
};

}  // namespace
}  // namespace uaal::cpu

TORCH_LIBRARY_IMPL(uaal_ext, CPU, m) {
  using uaal::cpu::CpuAcquisitionLauncher;
  m.impl("pixel_scores", &uaal::pixel_scores_op<CpuAcquisitionLauncher>);
  m.impl("aggregate_scores", &uaal::aggregate_scores_op<CpuAcquisitionLauncher>);
}
