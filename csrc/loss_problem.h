// Plain-data descriptions of one op call, shared by the CPU and CUDA launchers (no ATen types, so
// the per-capability CPU kernel files and the .cu files see the same thing).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "uaal_math.h"

namespace uaal {

// Up to this many pixel dimensions remain after merging (N, *spatial); more than that (an unusual,
// badly strided view) is made contiguous by the host code first.
constexpr int kMaxPixelDims = 8;

enum class FloatType : int { kFloat64 = 0, kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3 };
enum class IndexType : int { kInt64 = 0, kInt32 = 1, kUInt8 = 2 };

// Pixels are the (N, *spatial) index space in row-major order, so pixel p of a contiguous per-pixel
// tensor (target, uncertainty, log_normalizer, per-pixel loss) is element p. The logits (and the gradient we
// write for them) are strided: pixel dims that are contiguous in both are merged, which turns NCHW
// into 2 dims (N, H*W) and channels-last into 1 dim.
struct PixelGeometry {
  int ndim = 0;
  int64_t size[kMaxPixelDims] = {};
  int64_t in_stride[kMaxPixelDims] = {};   // logits, in elements
  int64_t out_stride[kMaxPixelDims] = {};  // gradient of the logits (backward only)
  int64_t in_channel_stride = 0;
  int64_t out_channel_stride = 0;
  int64_t num_pixels = 0;
  int64_t num_classes = 0;
};

// One call of the UAAL cross-entropy forward or backward. Per-pixel arrays are contiguous and in
// the accumulation type (float, or double for float64 logits) unless stated. log_normalizer is
// lse - max_c z_c per pixel: what the backward needs besides the logits, relative to the max so
// that logits with a large common offset keep their precision.
struct CrossEntropyProblem {
  PixelGeometry geometry;
  FloatType input_type = FloatType::kFloat32;
  const void* input = nullptr;               // logits, strided per `geometry`
  IndexType target_type = IndexType::kInt64;
  const void* target = nullptr;              // contiguous class indices
  const void* uncertainty = nullptr;         // accumulation type, or null
  const void* class_weight = nullptr;        // (C,) accumulation type, or null for all ones
  UncertaintySource source = UncertaintySource::kNone;
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double alpha = 0.0;
  double exponent = 2.0;
  double inv_scale = 1.0;
  double s_max = 0.0;                        // +inf: no cap

  // forward outputs
  void* log_normalizer = nullptr;            // forward output / backward input, per pixel
  void* pixel_loss = nullptr;                // per pixel (reduction "none"), accumulation type, or null
  double* block_sums = nullptr;              // CPU: per block {sum w l, sum c_y, sum c_y w}

  // backward inputs / output
  const void* grad = nullptr;                // accumulation type
  int64_t grad_stride = 0;                   // 0: one value for every pixel, 1: per pixel
  void* grad_input = nullptr;                // strided per `geometry`, input type

  bool smoothing() const { return label_smoothing != 0.0; }
};

// One call of pixel_entropy or its backward.
struct EntropyProblem {
  PixelGeometry geometry;
  FloatType input_type = FloatType::kFloat32;
  const void* input = nullptr;
  double scale = 1.0;                        // 1, or 1 / log C for the normalised entropy
  void* entropy = nullptr;                   // forward output, per pixel, accumulation type
  const void* grad = nullptr;                // backward input, per pixel, accumulation type
  void* grad_input = nullptr;                // backward output, strided, input type
};

// Turn the run-time description of a call into compile-time template parameters, so each kernel
// variant carries no branches on them: `fn(scalar_t{}, acc_t{})` for the logits' type and its
// accumulation type, and `fn(source, smoothing)` as std::integral_constant values.
template <typename Fn>
void dispatch_float_type(FloatType type, Fn&& fn) {
  switch (type) {
    case FloatType::kFloat64: return fn(double{}, double{});
    case FloatType::kFloat32: return fn(float{}, float{});
    case FloatType::kFloat16: return fn(c10::Half{}, float{});
    case FloatType::kBFloat16: return fn(c10::BFloat16{}, float{});
  }
}

template <typename Fn>
void dispatch_variant(UncertaintySource source, bool smoothing, Fn&& fn) {
  using S = UncertaintySource;
  auto with_source = [&](auto source_constant) {
    if (smoothing) {
      fn(source_constant, std::true_type{});
    } else {
      fn(source_constant, std::false_type{});
    }
  };
  switch (source) {
    case S::kNone: return with_source(std::integral_constant<S, S::kNone>{});
    case S::kEntropy: return with_source(std::integral_constant<S, S::kEntropy>{});
    case S::kMap: return with_source(std::integral_constant<S, S::kMap>{});
  }
}

// Class index of pixel `i`; the branch is the same for every pixel of a call.
// static: internal linkage, so the copies compiled with different -m flags per CPU capability can
// never be merged by the linker.
static UAAL_HOST_DEVICE int64_t read_target(const void* target, IndexType type, int64_t i) {
  switch (type) {
    case IndexType::kInt64: return static_cast<const int64_t*>(target)[i];
    case IndexType::kInt32: return static_cast<const int32_t*>(target)[i];
    default: return static_cast<const uint8_t*>(target)[i];
  }
}

}  // namespace uaal
