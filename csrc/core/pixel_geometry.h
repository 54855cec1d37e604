// The pixel layout of one op call as plain data (no ATen types, so the per-capability CPU kernel
// files and the .cu files see the same thing): how pixels map to strided logits, the logits' dtype
// and the target's index type.
#pragma once

#include <cstdint>

#include "core/lanes.h"  // UAAL_HOST_DEVICE

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
  int64_t out_stride[kMaxPixelDims] = {};  // a second tensor shaped like the logits: their gradient (backward),
                                           // perturbed sample 0 (perturbation_statistics)
  int64_t in_channel_stride = 0;
  int64_t out_channel_stride = 0;
  int64_t num_pixels = 0;
  int64_t num_classes = 0;
};

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
