// Host-side argument checks every family's ops share, with messages that name the argument, and the
// mapping of tensor dtypes and shapes to what the kernels are told (FloatType, accumulation type,
// per-pixel shape).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <vector>

#include "core/pixel_geometry.h"

namespace uaal {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline FloatType float_type_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return FloatType::kFloat64;
    case at::kHalf: return FloatType::kFloat16;
    case at::kBFloat16: return FloatType::kBFloat16;
    default: return FloatType::kFloat32;
  }
}

// float32 accumulation for every reduced-precision type; float64 stays float64 (for gradcheck).
inline at::ScalarType accumulation_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// (N, C, d1, ...) -> (N, d1, ...): the shape of everything defined per pixel.
inline std::vector<int64_t> pixel_shape(const at::Tensor& input) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.erase(shape.begin() + 1);
  return shape;
}

inline void check_logits(const at::Tensor& input, const char* op) {
  TORCH_CHECK_TYPE(is_supported_float(input.scalar_type()), op,
                   ": input must be float64, float32, float16 or bfloat16 logits, got ", input.scalar_type());
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must have shape (N, C) or (N, C, *spatial), got ", input.sizes());
  TORCH_CHECK_VALUE(input.size(1) >= 1, op, ": input needs at least one class (dim 1), got shape ", input.sizes());
}

inline void check_per_pixel(const at::Tensor& t, const at::Tensor& input, const char* op, const char* name,
                            const char* what) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(pixel_shape(input)), op, ": ", name, " must have shape ",
                    at::IntArrayRef(pixel_shape(input)), " (input ", input.sizes(), " without its class dim 1) ", what,
                    ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == input.device(), op, ": ", name, " is on ", t.device(), " but input is on ",
                    input.device());
}

}  // namespace uaal
