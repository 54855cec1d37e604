// Host-side: the PixelGeometry of a tensor of logits (N, C, *spatial), merging the pixel dims its
// strides allow, and the logits in a layout that geometry can describe.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "core/pixel_geometry.h"

namespace uaal {

// Pixel geometry of `input` (and of `out`, a tensor of the same shape with its own strides: the
// gradient written for the logits, or perturbed sample 0; undefined when there is none). Pixel dims
// of size 1 are dropped and neighbours that are contiguous in both tensors merged; returns false
// when more than kMaxPixelDims remain.
inline bool make_geometry(const at::Tensor& input, const at::Tensor& out, PixelGeometry& g) {
  const bool has_out = out.defined();
  g = PixelGeometry{};
  g.num_classes = input.size(1);
  g.in_channel_stride = input.stride(1);
  g.out_channel_stride = has_out ? out.stride(1) : 0;
  g.num_pixels = 1;
  for (int64_t d = 0; d < input.dim(); ++d) {
    if (d == 1) continue;
    const int64_t size = input.size(d);
    g.num_pixels *= size;
    if (size == 1) continue;
    const int64_t in_stride = input.stride(d);
    const int64_t out_stride = has_out ? out.stride(d) : 0;
    if (g.ndim > 0 && g.in_stride[g.ndim - 1] == in_stride * size && g.out_stride[g.ndim - 1] == out_stride * size) {
      g.size[g.ndim - 1] *= size;
      g.in_stride[g.ndim - 1] = in_stride;
      g.out_stride[g.ndim - 1] = out_stride;
      continue;
    }
    if (g.ndim == kMaxPixelDims) return false;
    g.size[g.ndim] = size;
    g.in_stride[g.ndim] = in_stride;
    g.out_stride[g.ndim] = out_stride;
    ++g.ndim;
  }
  if (g.ndim == 0) {  // a single pixel
    g.ndim = 1;
    g.size[0] = 1;
  }
  return true;
}

// The logits as the kernels will read them: as they are when the geometry fits, else contiguous.
inline at::Tensor readable_logits(const at::Tensor& input, PixelGeometry& g) {
  if (make_geometry(input, at::Tensor(), g)) return input;
  at::Tensor contiguous = input.contiguous();
  TORCH_INTERNAL_ASSERT(make_geometry(contiguous, at::Tensor(), g));
  return contiguous;
}

}  // namespace uaal
