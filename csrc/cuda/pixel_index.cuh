// Thread-to-pixel mappings shared by the CUDA kernels. Two of them, chosen at launch from the layout:
//
// - One thread per pixel, consecutive threads on consecutive pixels: each thread loops over its
//   pixel's classes. Coalesced when a pixel's classes lie a plane apart (NCHW): at each class the
//   warp reads 32 neighbouring values.
// - A group of `lanes` consecutive threads per pixel (PixelGroup) when a pixel's classes are
//   contiguous (channels-last, in_channel_stride == 1): lane j of the group takes classes j,
//   j + lanes, j + 2 lanes, ..., so consecutive lanes touch consecutive addresses, and the group
//   combines its lanes' partial results with shuffles (group_max, group_sum). One thread per pixel
//   would there have a warp read 32 addresses C values apart.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

#include "core/pixel_geometry.h"

namespace uaal::cuda {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr unsigned int kFullWarp = 0xffffffffu;

// Blocks of kThreads threads for num_items items, items_per_block per block (a thread per pixel:
// kThreads; a group of lanes per pixel: kThreads / lanes).
inline unsigned int blocks_for(int64_t num_items, int64_t items_per_block = kThreads) {
  const int64_t blocks = (num_items + items_per_block - 1) / items_per_block;
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

// ---- a group of lanes per pixel ----------------------------------------------------------------

// The group kernels index a lane's classes with an int (64-bit loop counters made ptxas spill in the
// float64 kernels); calls with more classes keep one thread per pixel.
constexpr int64_t kMaxGroupClasses = INT32_MAX - kWarpSize;

// Whether a call takes the group-of-lanes kernels: its logits (and the gradient it writes, if any)
// hold each pixel's classes contiguously. A single class is excluded: one thread per pixel then
// already reads consecutive values.
inline bool classes_contiguous(const PixelGeometry& g, bool writes_out) {
  return g.num_classes > 1 && g.num_classes <= kMaxGroupClasses && g.in_channel_stride == 1 &&
         (!writes_out || g.out_channel_stride == 1);
}

// Lanes per pixel: a power of two from 4 to the warp, the fewest that leave each lane at most 4
// classes (so C = 19 takes 8 lanes, C = 150 a whole warp with 5 classes per lane). Fewer lanes per
// pixel mean fewer shuffle steps per pixel; a lane's classes are independent loads. Untuned: a
// starting point for measurements on a GPU.
inline int lanes_per_pixel(int64_t num_classes) {
  constexpr int64_t kClassesPerLane = 4;
  int lanes = 4;
  while (lanes < kWarpSize && lanes * kClassesPerLane < num_classes) lanes *= 2;
  return lanes;
}

// The mapping of one launch: `lanes` threads per pixel (1: one thread per pixel) and the blocks of
// kThreads that covers the call's pixels.
struct PixelMapping {
  int lanes;
  unsigned int blocks;
};

inline PixelMapping pixel_mapping(const PixelGeometry& g, bool writes_out) {
  const int lanes = classes_contiguous(g, writes_out) ? lanes_per_pixel(g.num_classes) : 1;
  return {lanes, blocks_for(g.num_pixels, kThreads / lanes)};
}

// Where a thread sits in the group mapping: block b holds pixels b * (kThreads / lanes) onwards,
// threads [k lanes, (k + 1) lanes) of it take its k-th pixel. `lanes` divides the warp, so a group
// never straddles two warps. A group whose pixel is past the end still runs (valid == false): its
// lanes look at no class (num_classes 0) and write nothing, but take part in every shuffle of their
// warp. With lanes == 1 this is the one-thread-per-pixel mapping (the group reductions below are then
// no-ops), so a kernel written over PixelGroup serves both mappings.
struct PixelGroup {
  int64_t pixel;
  int lane;   // 0 .. lanes - 1
  int lanes;  // a power of two dividing kWarpSize
  bool valid;
  int64_t in_offset, out_offset;  // the pixel's offsets (pixel_offsets), 0 past the end
  int64_t num_classes;            // the classes its lanes look at: g.num_classes, 0 past the end
};

__device__ __forceinline__ PixelGroup pixel_group(int lanes, const PixelGeometry& g) {
  PixelGroup grp;
  grp.pixel = static_cast<int64_t>(blockIdx.x) * (kThreads / lanes) + threadIdx.x / lanes;
  grp.lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  grp.lanes = lanes;
  grp.valid = grp.pixel < g.num_pixels;
  grp.in_offset = grp.out_offset = 0;
  if (grp.valid) pixel_offsets(g, grp.pixel, grp.in_offset, grp.out_offset);
  grp.num_classes = grp.valid ? g.num_classes : 0;
  return grp;
}

// Sum and max over the lanes of each group, the result in every lane. Butterfly shuffles: at each
// step lane i adds lane i ^ offset's value, and offset < lanes keeps partners inside the group
// (groups are aligned blocks of `lanes` lanes). Each pair adds the same two values, so every lane
// of a group ends with the same bits. Every thread of the warp must call these together (full mask):
// never inside a branch that depends on the pixel.
template <typename T>
__device__ __forceinline__ T group_sum(T value, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullWarp, value, offset, lanes);
  return value;
}

// `value` must not be NaN in any lane (OnlineSoftmax::running_max keeps NaN out of a lane's max).
// Every lane ends with the same maximum (a +0 / -0 tie may keep each lane's own sign: equal values).
template <typename T>
__device__ __forceinline__ T group_max(T value, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(kFullWarp, value, offset, lanes);
    value = other > value ? other : value;
  }
  return value;
}

// Whether `predicate` holds in every lane of the group, in every lane. Same calling rule as group_sum.
__device__ __forceinline__ bool group_all(bool predicate, int lanes) {
  int all = predicate ? 1 : 0;
  for (int offset = lanes / 2; offset > 0; offset /= 2) all &= __shfl_xor_sync(kFullWarp, all, offset, lanes);
  return all != 0;
}

}  // namespace uaal::cuda
