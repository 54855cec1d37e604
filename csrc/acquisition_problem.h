// Plain-data descriptions of the acquisition ops' calls, shared by the CPU and CUDA launchers.
#pragma once

#include <cmath>
#include <cstdint>

#include "acquisition_math.h"
#include "core/dispatch.h"
#include "core/pixel_geometry.h"

namespace uaal {

// pixel_scores: geometry describes one prediction (N, C, *spatial) as `in`; Monte-Carlo methods
// read sample t at input + t * sample_stride.
struct PixelScoreProblem {
  PixelGeometry geometry;
  FloatType input_type = FloatType::kFloat32;
  ScoreMethod method = ScoreMethod::kEntropy;
  const void* input = nullptr;
  int64_t sample_stride = 0;
  int64_t num_samples = 1;
  void* scores = nullptr;   // per pixel, accumulation type, contiguous
  void* scratch = nullptr;  // CUDA, Monte-Carlo methods: 2 * num_samples * num_pixels accumulation-type values
};

enum class ScoreReduction : int { kMean = 0, kSum = 1, kMax = 2, kTopKMean = 3 };

// aggregate_scores: per image, over its valid pixels.
struct ScoreAggregationProblem {
  bool is_double = false;        // scores are float64 (else float32)
  const void* scores = nullptr;  // (num_images, pixels_per_image), contiguous
  const bool* valid = nullptr;   // same layout, or null: every pixel counts
  int64_t num_images = 0;
  int64_t pixels_per_image = 0;
  ScoreReduction reduction = ScoreReduction::kMean;
  double q = 1.0;       // kTopKMean: the fraction of valid pixels averaged
  void* out = nullptr;  // (num_images,), the scores' type
};

// The number of top pixels topk_mean averages: ceil(q n), at least 1 (0 when n == 0).
UAAL_HOST_DEVICE int64_t top_count(double q, int64_t valid_pixels) {
  if (valid_pixels == 0) return 0;
  const int64_t k = static_cast<int64_t>(::ceil(q * static_cast<double>(valid_pixels)));
  return k < 1 ? 1 : (k > valid_pixels ? valid_pixels : k);
}

// `fn(method)` with the method as a std::integral_constant, so each variant is its own kernel.
template <typename Fn>
void dispatch_score_method(ScoreMethod method, Fn&& fn) {
  using M = ScoreMethod;
  dispatch_constant<M::kEntropy, M::kMargin, M::kLeastConfidence, M::kMcEntropy, M::kBald>(method, fn);
}

}  // namespace uaal
