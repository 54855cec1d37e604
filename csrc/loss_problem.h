// Plain-data descriptions of the loss family's op calls (UAAL cross-entropy, pixel entropy), shared
// by the CPU and CUDA launchers (no ATen types, so the per-capability CPU kernel files and the .cu
// files see the same thing), and the dispatch of their kernel variants.
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/pixel_geometry.h"
#include "loss_math.h"

namespace uaal {

// One call of the UAAL cross-entropy forward or backward. Per-pixel arrays are contiguous and in
// the accumulation type (float, or double for float64 logits) unless stated. log_normalizer is
// lse - max_c z_c per pixel: what the backward needs besides the logits, relative to the max so
// that logits with a large common offset keep their precision.
struct CrossEntropyProblem {
  PixelGeometry geometry;
  FloatType input_type = FloatType::kFloat32;
  const void* input = nullptr;  // logits, strided per `geometry`
  IndexType target_type = IndexType::kInt64;
  const void* target = nullptr;        // contiguous class indices, or (soft_target) class probabilities
  bool soft_target = false;            // probabilities in the input's type, strided like the input
  const void* uncertainty = nullptr;   // accumulation type, or null
  const void* class_weight = nullptr;  // (C,) accumulation type, or null for all ones
  UncertaintySource source = UncertaintySource::kNone;
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double alpha = 0.0;
  double exponent = 2.0;
  double inv_scale = 1.0;
  double s_max = 0.0;  // +inf: no cap

  // forward outputs
  void* log_normalizer = nullptr;  // forward output / backward input, per pixel
  void* pixel_loss = nullptr;      // per pixel (reduction "none"), accumulation type, or null
  double* block_sums = nullptr;    // CPU: per block {sum w l, sum c_y, sum c_y w}
  // The first half of the CPU's by-weight fused call (see cross_entropy_forward_backward_op): the
  // softmax p of every logit, strided like grad_input (it is grad_input, overwritten by the second
  // half), and per pixel the weight w, NaN where the pixel's softmax is; both or neither.
  void* probabilities = nullptr;
  void* pixel_weight = nullptr;

  // backward inputs / output
  const void* grad = nullptr;  // accumulation type
  int64_t grad_stride = 0;     // 0: one value for every pixel, 1: per pixel
  void* grad_input = nullptr;  // strided per `geometry`, input type

  bool smoothing() const { return label_smoothing != 0.0; }
};

// One call of pixel_entropy or its backward.
struct EntropyProblem {
  PixelGeometry geometry;
  FloatType input_type = FloatType::kFloat32;
  const void* input = nullptr;
  double scale = 1.0;          // 1, or 1 / log C for the normalised entropy
  void* entropy = nullptr;     // forward output, per pixel, accumulation type
  const void* grad = nullptr;  // backward input, per pixel, accumulation type
  void* grad_input = nullptr;  // backward output, strided, input type
};

// `fn(source, smoothing)` with both as std::integral_constant values, so each variant is its own
// kernel.
template <typename Fn>
void dispatch_variant(UncertaintySource source, bool smoothing, Fn&& fn) {
  using S = UncertaintySource;
  dispatch_constant<S::kNone, S::kEntropy, S::kMap>(source, [&](auto source_value) {
    dispatch_constant<false, true>(smoothing, [&](auto smoothing_value) { fn(source_value, smoothing_value); });
  });
}

}  // namespace uaal
