// Host-side code of the acquisition ops that every backend shares: argument checks naming the
// argument, and the op bodies. A backend supplies `Launcher`:
//   Launcher::Guard(tensor), Launcher::empty(sizes, options) (a contiguous output),
//   Launcher::pixel_scores(problem), Launcher::aggregate_scores(problem, ...)
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "acquisition_problem.h"
#include "core/checks.h"
#include "core/tensor_geometry.h"

namespace uaal {

inline ScoreMethod parse_score_method(const std::string& method) {
  if (method == "entropy") return ScoreMethod::kEntropy;
  if (method == "margin") return ScoreMethod::kMargin;
  if (method == "least_confidence") return ScoreMethod::kLeastConfidence;
  if (method == "mc_entropy") return ScoreMethod::kMcEntropy;
  if (method == "bald") return ScoreMethod::kBald;
  TORCH_CHECK_VALUE(false,
                    "pixel_scores: method must be one of 'entropy', 'margin', 'least_confidence', "
                    "'mc_entropy', 'bald', got '",
                    method, "'");
  return ScoreMethod::kEntropy;  // unreachable
}

inline ScoreReduction parse_score_reduction(const std::string& reduction) {
  if (reduction == "mean") return ScoreReduction::kMean;
  if (reduction == "sum") return ScoreReduction::kSum;
  if (reduction == "max") return ScoreReduction::kMax;
  if (reduction == "topk_mean") return ScoreReduction::kTopKMean;
  TORCH_CHECK_VALUE(false, "aggregate_scores: reduction must be one of 'mean', 'sum', 'max', 'topk_mean', got '",
                    reduction, "'");
  return ScoreReduction::kMean;  // unreachable
}

// Per-pixel scores of logits (N, C, *spatial), or of Monte-Carlo logits (T, N, C, *spatial) for
// mc_entropy and bald. Returns (N, *spatial) in the accumulation type.
template <typename Launcher>
at::Tensor pixel_scores_op(const at::Tensor& input, const std::string& method_name) {
  const ScoreMethod method = parse_score_method(method_name);
  const bool monte_carlo = is_monte_carlo(method);
  TORCH_CHECK_TYPE(is_supported_float(input.scalar_type()),
                   "pixel_scores: input must be float64, float32, float16 or bfloat16 logits, got ",
                   input.scalar_type());
  TORCH_CHECK_VALUE(
      input.dim() >= (monte_carlo ? 3 : 2), "pixel_scores: input must be ",
      monte_carlo ? "Monte-Carlo logits (T, N, C, *spatial) or (T, N, C)" : "logits (N, C, *spatial) or (N, C)",
      " for method '", method_name, "', got shape ", input.sizes());
  TORCH_CHECK_VALUE(!monte_carlo || input.size(0) >= 1,
                    "pixel_scores: input needs at least one sample (dim 0), got shape ", input.sizes());
  const at::Tensor prediction = monte_carlo ? input.select(0, 0) : input;
  TORCH_CHECK_VALUE(prediction.size(1) >= 1, "pixel_scores: input needs at least one class, got shape ", input.sizes());
  typename Launcher::Guard guard(input);

  PixelScoreProblem pr;
  at::Tensor readable = input;
  if (!make_geometry(prediction, at::Tensor(), pr.geometry)) {
    readable = input.contiguous();
    TORCH_INTERNAL_ASSERT(make_geometry(monte_carlo ? readable.select(0, 0) : readable, at::Tensor(), pr.geometry));
  }
  at::Tensor scores =
      Launcher::empty(pixel_shape(prediction), input.options().dtype(accumulation_type(input.scalar_type())));
  pr.input_type = float_type_of(input.scalar_type());
  pr.method = method;
  pr.input = readable.data_ptr();
  pr.sample_stride = monte_carlo ? readable.stride(0) : 0;
  pr.num_samples = monte_carlo ? readable.size(0) : 1;
  pr.scores = scores.data_ptr();
  Launcher::pixel_scores(pr, scores.options());
  return scores;
}

// Per-image aggregate of per-pixel scores over the valid pixels: mean, sum, max or the mean of the top
// fraction q. An image without a valid pixel scores 0 (the least informative).
template <typename Launcher>
at::Tensor aggregate_scores_op(const at::Tensor& scores, const std::optional<at::Tensor>& valid,
                               const std::string& reduction_name, double q) {
  const ScoreReduction reduction = parse_score_reduction(reduction_name);
  TORCH_CHECK_TYPE(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble,
                   "aggregate_scores: scores must be float32 or float64, got ", scores.scalar_type());
  TORCH_CHECK_VALUE(scores.dim() >= 1, "aggregate_scores: scores must have shape (N, *spatial), got ", scores.sizes());
  if (valid) {
    TORCH_CHECK_TYPE(valid->scalar_type() == at::kBool, "aggregate_scores: valid must be a bool mask, got ",
                     valid->scalar_type());
    TORCH_CHECK_VALUE(valid->sizes() == scores.sizes(), "aggregate_scores: valid must have the shape of scores ",
                      scores.sizes(), ", got ", valid->sizes());
    TORCH_CHECK_VALUE(valid->device() == scores.device(), "aggregate_scores: valid is on ", valid->device(),
                      " but scores are on ", scores.device());
  }
  TORCH_CHECK_VALUE(std::isfinite(q) && q > 0.0 && q <= 1.0, "aggregate_scores: q (the fraction of pixels topk_mean ",
                    "averages) must be in (0, 1], got ", q);
  typename Launcher::Guard guard(scores);
  const at::Tensor scores_c = scores.contiguous();
  const at::Tensor valid_c = valid ? valid->contiguous() : at::Tensor();
  at::Tensor out = at::empty({scores.size(0)}, scores.options());
  ScoreAggregationProblem pr;
  pr.is_double = scores.scalar_type() == at::kDouble;
  pr.scores = scores_c.data_ptr();
  pr.valid = valid ? valid_c.data_ptr<bool>() : nullptr;
  pr.num_images = scores.size(0);
  pr.pixels_per_image = scores.size(0) == 0 ? 0 : scores.numel() / scores.size(0);
  pr.reduction = reduction;
  pr.q = q;
  pr.out = out.data_ptr();
  Launcher::aggregate_scores(pr, scores_c, valid_c, out);
  return out;
}

}  // namespace uaal
