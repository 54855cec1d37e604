// Host-side code of the loss family's ops that every backend shares: argument checks with messages
// that name the argument, the call's description, and the op bodies (allocate outputs, describe the
// call, hand it to the backend's launcher). A backend supplies only `Launcher` (see loss_cpu.cpp,
// loss_cuda.cu).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "core/checks.h"
#include "core/tensor_geometry.h"
#include "loss_problem.h"

namespace uaal {

struct CrossEntropyScalars {
  int64_t ignore_index;
  double label_smoothing, alpha, exponent, inv_scale, s_max;
};

inline void check_cross_entropy_args(const at::Tensor& input, const at::Tensor& target,
                                     const std::optional<at::Tensor>& uncertainty,
                                     const std::optional<at::Tensor>& weight, const CrossEntropyScalars& s) {
  const char* op = "uaal_cross_entropy";
  check_logits(input, op);
  if (at::isFloatingType(target.scalar_type())) {
    TORCH_CHECK_TYPE(is_supported_float(target.scalar_type()), op,
                     ": a target of class probabilities must be float64, float32, float16 or bfloat16, got ",
                     target.scalar_type());
    TORCH_CHECK_VALUE(target.sizes() == input.sizes(), op, ": a target of class probabilities must have input's shape ",
                      input.sizes(), ", got ", target.sizes());
    TORCH_CHECK_VALUE(target.device() == input.device(), op, ": target is on ", target.device(), " but input is on ",
                      input.device());
  } else {
    TORCH_CHECK_TYPE(
        target.scalar_type() == at::kLong || target.scalar_type() == at::kInt || target.scalar_type() == at::kByte, op,
        ": target must hold class indices as int64, int32 or uint8, or class probabilities shaped like input, got ",
        target.scalar_type());
    check_per_pixel(target, input, op, "target", "of class indices");
  }
  if (uncertainty) {
    TORCH_CHECK_TYPE(is_supported_float(uncertainty->scalar_type()), op,
                     ": uncertainty must be a floating-point map, got ", uncertainty->scalar_type());
    check_per_pixel(*uncertainty, input, op, "uncertainty", "(one value per pixel)");
  }
  if (weight) {
    TORCH_CHECK_TYPE(is_supported_float(weight->scalar_type()), op,
                     ": weight must be a floating-point tensor of class weights, got ", weight->scalar_type());
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == input.size(1), op, ": weight must have shape [",
                      input.size(1), "] (one per class of input ", input.sizes(), "), got ", weight->sizes());
    TORCH_CHECK_VALUE(weight->device() == input.device(), op, ": weight is on ", weight->device(), " but input is on ",
                      input.device());
  }
  TORCH_CHECK_VALUE(s.label_smoothing >= 0.0 && s.label_smoothing <= 1.0, op,
                    ": label_smoothing must be in [0, 1], got ", s.label_smoothing);
  TORCH_CHECK_VALUE(std::isfinite(s.alpha) && s.alpha >= 0.0, op, ": alpha must be finite and >= 0, got ", s.alpha);
  TORCH_CHECK_VALUE(std::isfinite(s.exponent) && s.exponent >= 0.0, op, ": exponent must be finite and >= 0, got ",
                    s.exponent);
  TORCH_CHECK_VALUE(std::isfinite(s.inv_scale) && s.inv_scale >= 0.0, op,
                    ": the uncertainty scale must be positive and finite (inv_scale = ", s.inv_scale, ")");
  TORCH_CHECK_VALUE(s.s_max >= 0.0, op, ": s_max must be >= 0 (or None for no cap), got ", s.s_max);
}

// Tensors a call needs alive while the kernels run, and the call's description.
struct PreparedCrossEntropy {
  at::Tensor input, target, uncertainty, weight;
  CrossEntropyProblem problem;
};

inline PreparedCrossEntropy prepare_cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                                  const std::optional<at::Tensor>& uncertainty,
                                                  const std::optional<at::Tensor>& weight,
                                                  const CrossEntropyScalars& s) {
  check_cross_entropy_args(input, target, uncertainty, weight, s);
  PreparedCrossEntropy prep;
  CrossEntropyProblem& pr = prep.problem;
  const at::ScalarType acc = accumulation_type(input.scalar_type());
  prep.input = readable_logits(input, pr.geometry);
  pr.soft_target = at::isFloatingType(target.scalar_type());
  if (pr.soft_target) {
    // Class probabilities are read block by block beside the logits, at the logits' offsets: they
    // take the logits' dtype and strides (copied only when they differ), and logits whose strides
    // leave gaps become contiguous first, so that a tensor of the same strides can exist.
    if (!prep.input.is_non_overlapping_and_dense()) {
      prep.input = prep.input.contiguous();
      TORCH_INTERNAL_ASSERT(make_geometry(prep.input, at::Tensor(), pr.geometry));
    }
    prep.target = target.scalar_type() == prep.input.scalar_type() && target.strides() == prep.input.strides()
                      ? target
                      : at::empty_like(prep.input).copy_(target);
  } else {
    // Per-pixel and per-class tensors are C (or more) times smaller than the logits: a copy into the
    // layout the kernels index directly costs little and keeps the kernels simple.
    prep.target = target.contiguous();
  }
  if (uncertainty) prep.uncertainty = uncertainty->to(acc).contiguous();
  if (weight) prep.weight = weight->to(acc).contiguous();
  pr.input_type = float_type_of(input.scalar_type());
  pr.input = prep.input.data_ptr();
  pr.target_type = pr.soft_target || target.scalar_type() == at::kLong ? IndexType::kInt64
                   : target.scalar_type() == at::kInt                  ? IndexType::kInt32
                                                                       : IndexType::kUInt8;
  pr.target = prep.target.data_ptr();
  pr.uncertainty = prep.uncertainty.defined() ? prep.uncertainty.data_ptr() : nullptr;
  pr.class_weight = prep.weight.defined() ? prep.weight.data_ptr() : nullptr;
  pr.source = s.alpha == 0.0 ? UncertaintySource::kNone
              : uncertainty  ? UncertaintySource::kMap
                             : UncertaintySource::kEntropy;
  pr.ignore_index = s.ignore_index;
  pr.label_smoothing = s.label_smoothing;
  pr.alpha = s.alpha;
  pr.exponent = s.exponent;
  pr.inv_scale = s.inv_scale;
  pr.s_max = s.s_max;
  return prep;
}

// ---- op bodies, shared by the backends ---------------------------------------------------------
// Launcher::cross_entropy_forward(problem, options) -> Tensor (3,) {sum w l, sum c_y, sum c_y w}
// (writing the gradient too when problem.grad_input is set, and per-pixel outputs only where their
// pointers are set), Launcher::target_weight_total(prepared, options) -> 0-dim sum of c_y over valid
// pixels, Launcher::map_weight_total(prepared, options) -> 0-dim sum of c_y w over valid pixels with w
// from the uncertainty map (reads the targets and the map only),
// Launcher::cross_entropy_backward(problem), ::pixel_entropy_forward(problem),
// Launcher::kGradientFromProbabilities and, when true, ::cross_entropy_gradient_from_probabilities(problem)
// (see cross_entropy_forward_backward_op),
// ::pixel_entropy_backward(problem); Launcher::empty(sizes, options) and ::empty_like(tensor)
// allocate the outputs (at::empty_like's layout); Launcher::Guard(input) makes input's device current.

template <typename Launcher>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_op(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& uncertainty,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing, double alpha,
    double exponent, double inv_scale, double s_max, bool reduce) {
  // Checked first: a CPU input with a CUDA target would reach the CUDA kernel, whose device guard
  // cannot take the CPU device and would fail before the check names the argument.
  PreparedCrossEntropy prep = prepare_cross_entropy(input, target, uncertainty, weight,
                                                    {ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max});
  typename Launcher::Guard guard(input);
  const auto options = input.options().dtype(accumulation_type(input.scalar_type()));
  at::Tensor log_normalizer = Launcher::empty(pixel_shape(input), options);
  at::Tensor pixel_loss = reduce ? at::Tensor() : Launcher::empty(pixel_shape(input), options);
  prep.problem.log_normalizer = log_normalizer.data_ptr();
  prep.problem.pixel_loss = reduce ? nullptr : pixel_loss.data_ptr();
  at::Tensor totals = Launcher::cross_entropy_forward(prep.problem, options);
  at::Tensor loss = reduce ? totals.select(0, 0).clone() : pixel_loss;
  return {loss, log_normalizer, totals.slice(0, 1, 3).clone()};
}

template <typename Launcher>
at::Tensor cross_entropy_backward_op(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
                                     const at::Tensor& log_normalizer, const std::optional<at::Tensor>& uncertainty,
                                     const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                     double label_smoothing, double alpha, double exponent, double inv_scale,
                                     double s_max) {
  // Checked first: a CPU input with a CUDA target would reach the CUDA kernel, whose device guard
  // cannot take the CPU device and would fail before the check names the argument.
  PreparedCrossEntropy prep = prepare_cross_entropy(input, target, uncertainty, weight,
                                                    {ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max});
  typename Launcher::Guard guard(input);
  const at::ScalarType acc = accumulation_type(input.scalar_type());
  TORCH_CHECK_VALUE(grad.dim() == 0 || grad.sizes() == at::IntArrayRef(pixel_shape(input)),
                    "uaal_cross_entropy backward: grad must be a scalar or have shape ",
                    at::IntArrayRef(pixel_shape(input)), ", got ", grad.sizes());
  TORCH_CHECK_VALUE(
      log_normalizer.sizes() == at::IntArrayRef(pixel_shape(input)) && log_normalizer.scalar_type() == acc,
      "uaal_cross_entropy backward: log_normalizer must be the forward's (", acc, ", shape ",
      at::IntArrayRef(pixel_shape(input)), "), got ", log_normalizer.scalar_type(), " ", log_normalizer.sizes());
  const at::Tensor grad_acc = grad.to(acc).contiguous();
  const at::Tensor log_normalizer_acc = log_normalizer.contiguous();
  // Same strides as the logits whenever they are dense (contiguous, channels-last, permuted).
  at::Tensor grad_input = Launcher::empty_like(prep.input);
  TORCH_INTERNAL_ASSERT(make_geometry(prep.input, grad_input, prep.problem.geometry));
  CrossEntropyProblem& pr = prep.problem;
  pr.log_normalizer = const_cast<void*>(log_normalizer_acc.data_ptr());
  pr.grad = grad_acc.data_ptr();
  pr.grad_stride = grad.dim() == 0 ? 0 : 1;
  pr.grad_input = grad_input.data_ptr();
  Launcher::cross_entropy_backward(pr);
  return grad_input;
}

// The reduction of cross_entropy_forward_backward (its `mode` argument, csrc/ops.cpp). The values
// index the forward's sums {sum w l, sum c_y, sum c_y w}: a mean divides by sums[mode].
enum class FusedReduction : int64_t { kSum = 0, kMean = 1, kMeanByWeight = 2 };

inline FusedReduction fused_reduction(int64_t mode) {
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2,
                    "cross_entropy_forward_backward: mode must be 0 (sum), 1 (mean over sum c_y) or 2 (mean over "
                    "sum c_y w), got ",
                    mode);
  return static_cast<FusedReduction>(mode);
}

// The denominator of a mean, needed before the first gradient is written, so computed by a pre-pass:
// sum c_y needs only the targets, and so does sum c_y w when w = 1 (alpha = 0); with a given map,
// w needs the targets and the map (C times fewer bytes than the logits); with the entropy default,
// w needs the logits: the forward kernel again, writing nothing per pixel and keeping only its sums
// (one more read of the logits, no write).
// With class probabilities every pixel counts once (c_y is 1: PyTorch's mean over them divides by the
// number of pixels), and sum w comes from the forward's sums for either source.
template <typename Launcher>
at::Tensor mean_denominator(const PreparedCrossEntropy& prep, const at::TensorOptions& options, bool by_weight) {
  const CrossEntropyProblem& pr = prep.problem;
  if (pr.soft_target && (!by_weight || pr.source == UncertaintySource::kNone)) {
    return at::scalar_tensor(static_cast<double>(pr.geometry.num_pixels), options);
  }
  if (!pr.soft_target && (!by_weight || pr.source == UncertaintySource::kNone)) {
    return Launcher::target_weight_total(prep, options);
  }
  if (!pr.soft_target && pr.source == UncertaintySource::kMap) return Launcher::map_weight_total(prep, options);
  CrossEntropyProblem sums_only = pr;
  sums_only.log_normalizer = nullptr;
  sums_only.pixel_loss = nullptr;
  sums_only.grad = nullptr;
  sums_only.grad_input = nullptr;
  // sum c_y w does not depend on the label smoothing: the variant without it does less work per logit.
  sums_only.label_smoothing = 0.0;
  return Launcher::cross_entropy_forward(sums_only, options).select(0, 2);
}

// The loss and its gradient in one pass over the logits, for the common training call (scalar
// reduction, logits that need a gradient): the gradient is written while the block is still in
// cache and autograd returns it as it is when the incoming gradient is 1. Traffic: one read of the
// logits and one write of the gradient, against two reads and a write for forward + backward (the
// by-weight mean of the entropy weight reads the logits once more in its pre-pass).
template <typename Launcher>
std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_backward_op(const at::Tensor& input, const at::Tensor& target,
                                                                     const std::optional<at::Tensor>& uncertainty,
                                                                     const std::optional<at::Tensor>& weight,
                                                                     int64_t ignore_index, double label_smoothing,
                                                                     double alpha, double exponent, double inv_scale,
                                                                     double s_max, int64_t mode) {
  const FusedReduction reduction = fused_reduction(mode);
  // Checked first: a CPU input with a CUDA target would reach the CUDA kernel, whose device guard
  // cannot take the CPU device and would fail before the check names the argument.
  PreparedCrossEntropy prep = prepare_cross_entropy(input, target, uncertainty, weight,
                                                    {ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max});
  typename Launcher::Guard guard(input);
  const auto options = input.options().dtype(accumulation_type(input.scalar_type()));
  at::Tensor grad_input = Launcher::empty_like(prep.input);
  TORCH_INTERNAL_ASSERT(make_geometry(prep.input, grad_input, prep.problem.geometry));
  const bool mean = reduction != FusedReduction::kSum;
  CrossEntropyProblem& pr = prep.problem;
  if constexpr (Launcher::kGradientFromProbabilities) {
    // The by-weight mean of the entropy weight on the CPU: its pre-pass would recompute every
    // logit's exp, which costs more there than the memory traffic. Instead the forward keeps the
    // softmax in grad_input (and w per pixel), and once sum c_y w is known a second pass turns p into
    // the gradient in place: the same bytes (a read and a write of the logits' size each), half the
    // exps. Reduced-precision logits keep the pre-pass: their p rounded to the gradient's dtype would
    // lose the target class's 1 - p.
    const bool full_precision = pr.input_type == FloatType::kFloat32 || pr.input_type == FloatType::kFloat64;
    if (reduction == FusedReduction::kMeanByWeight && pr.source == UncertaintySource::kEntropy && full_precision &&
        !pr.soft_target) {
      at::Tensor pixel_weight = Launcher::empty(pixel_shape(input), options);
      pr.probabilities = grad_input.data_ptr();
      pr.pixel_weight = pixel_weight.data_ptr();
      at::Tensor totals = Launcher::cross_entropy_forward(pr, options);
      const at::Tensor denominator = totals.select(0, 2);
      const at::Tensor grad_scale = at::reciprocal(denominator);
      pr.probabilities = nullptr;
      pr.grad = grad_scale.data_ptr();
      pr.grad_stride = 0;
      pr.grad_input = grad_input.data_ptr();
      Launcher::cross_entropy_gradient_from_probabilities(pr);
      return {totals.select(0, 0) / denominator, grad_input};
    }
  }
  const at::Tensor grad_scale =
      mean ? at::reciprocal(mean_denominator<Launcher>(prep, options, reduction == FusedReduction::kMeanByWeight))
           : at::ones({}, options);
  pr.grad = grad_scale.data_ptr();
  pr.grad_stride = 0;
  pr.grad_input = grad_input.data_ptr();
  at::Tensor totals = Launcher::cross_entropy_forward(pr, options);
  at::Tensor loss =
      mean ? totals.select(0, 0) / totals.select(0, static_cast<int64_t>(reduction)) : totals.select(0, 0).clone();
  return {loss, grad_input};
}

inline double entropy_scale(const at::Tensor& input, bool normalized) {
  const int64_t C = input.size(1);
  // One class carries no uncertainty: H = 0, and its normalised value is defined as 0 too.
  return normalized ? (C > 1 ? 1.0 / std::log(static_cast<double>(C)) : 0.0) : 1.0;
}

template <typename Launcher>
at::Tensor pixel_entropy_op(const at::Tensor& input, bool normalized) {
  check_logits(input, "pixel_entropy");
  typename Launcher::Guard guard(input);
  EntropyProblem pr;
  const at::Tensor logits = readable_logits(input, pr.geometry);
  at::Tensor entropy =
      Launcher::empty(pixel_shape(input), input.options().dtype(accumulation_type(input.scalar_type())));
  pr.input_type = float_type_of(input.scalar_type());
  pr.input = logits.data_ptr();
  pr.scale = entropy_scale(input, normalized);
  pr.entropy = entropy.data_ptr();
  Launcher::pixel_entropy_forward(pr);
  return entropy.to(input.scalar_type());
}

template <typename Launcher>
at::Tensor pixel_entropy_backward_op(const at::Tensor& grad, const at::Tensor& input, bool normalized) {
  check_logits(input, "pixel_entropy");
  check_per_pixel(grad, input, "pixel_entropy backward", "grad", "(one value per pixel)");
  typename Launcher::Guard guard(input);
  EntropyProblem pr;
  const at::Tensor logits = readable_logits(input, pr.geometry);
  const at::Tensor grad_acc = grad.to(accumulation_type(input.scalar_type())).contiguous();
  at::Tensor grad_input = Launcher::empty_like(logits);
  TORCH_INTERNAL_ASSERT(make_geometry(logits, grad_input, pr.geometry));
  pr.input_type = float_type_of(input.scalar_type());
  pr.input = logits.data_ptr();
  pr.scale = entropy_scale(input, normalized);
  pr.grad = grad_acc.data_ptr();
  pr.grad_input = grad_input.data_ptr();
  Launcher::pixel_entropy_backward(pr);
  return grad_input;
}

}  // namespace uaal
