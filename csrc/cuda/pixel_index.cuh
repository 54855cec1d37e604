// Thread-to-pixel mapping shared by the CUDA kernels: one thread per pixel, consecutive threads on
// consecutive pixels (coalesced loads in NCHW).
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

#include "core/pixel_geometry.h"

namespace uaal::cuda {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t num_items) {
  const int64_t blocks = (num_items + kThreads - 1) / kThreads;
  TORCH_CHECK_VALUE(blocks <= INT32_MAX, "uaal_ext: ", num_items, " items need more than 2^31 - 1 CUDA blocks");
  return static_cast<unsigned int>(blocks);
}

// Offsets of pixel `pixel` (row-major over the merged pixel dims) in the `in` and `out` tensors.
__device__ __forceinline__ void pixel_offsets(const PixelGeometry& g, int64_t pixel, int64_t& in_offset,
                                              int64_t& out_offset) {
  in_offset = 0;
  out_offset = 0;
  for (int d = g.ndim - 1; d >= 0; --d) {
    const int64_t i = pixel % g.size[d];
    pixel /= g.size[d];
    in_offset += i * g.in_stride[d];
    out_offset += i * g.out_stride[d];
  }
}

}  // namespace uaal::cuda
