// CUDA implementations of the UAAL cross-entropy and pixel entropy ops, in two thread mappings
// (cuda/pixel_index.cuh), picked at launch from the logits' layout:
// - NCHW (a pixel's classes a plane apart): one thread per pixel, consecutive threads on
//   consecutive pixels, so every class's load is coalesced; the softmax is the one-pass online one.
// - channels-last (a pixel's classes contiguous, and so is the gradient written): a group of lanes
//   per pixel, lane j on classes j, j + lanes, ..., so a warp reads and writes consecutive
//   addresses; the group agrees on the exact max, then on the sums relative to it, by shuffles.
// The per-pixel math is loss_math.h's and core/online_softmax.h's (the same code the CPU tests
// exercise); this file only maps threads to pixels, reduces (per group, per block) and launches.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include "cuda/group_softmax.cuh"
#include "cuda/pixel_index.cuh"
#include "loss_common.h"

namespace uaal::cuda {
namespace {

template <typename acc_t>
__device__ __forceinline__ acc_t class_weight_of(const CrossEntropyProblem& pr, int64_t c) {
  return pr.class_weight ? static_cast<const acc_t*>(pr.class_weight)[c] : acc_t(1);
}

template <typename acc_t, UncertaintySource kSource>
__device__ __forceinline__ acc_t pixel_weight(const CrossEntropyProblem& pr, int64_t pixel, acc_t entropy) {
  if constexpr (kSource == UncertaintySource::kNone) {
    return acc_t(1);
  } else {
    acc_t u = entropy;
    if constexpr (kSource == UncertaintySource::kMap) {
      u = static_cast<const acc_t*>(pr.uncertainty)[pixel];
      CUDA_KERNEL_ASSERT(!(u < acc_t(0)) && "uaal_cross_entropy: uncertainty must be >= 0");
    }
    return uncertainty_weight(u, acc_t(pr.inv_scale), acc_t(pr.alpha), acc_t(pr.exponent), acc_t(pr.s_max));
  }
}

// d(g w l)/dz for the classes first_class, first_class + class_step, ... of one pixel (all of them
// with one thread per pixel; lane j's of a group of class_step lanes), shared by the fused forward
// and the backward: the pixel's logits are re-read (from L1/L2) and its gradient written once.
// class_t is the group kernels' int class index (cuda/pixel_index.cuh, kMaxGroupClasses).
template <typename scalar_t, typename acc_t, bool kSmoothing, typename class_t = int64_t>
__device__ __forceinline__ void write_pixel_gradient(const CrossEntropyProblem& pr, const scalar_t* z,
                                                     scalar_t* grad_out, int64_t y, acc_t max, acc_t log_normalizer,
                                                     acc_t weight, acc_t incoming_grad, acc_t class_weight_total,
                                                     class_t first_class = 0, class_t class_step = 1) {
  const PixelGeometry& g = pr.geometry;
  acc_t target_coef = 0, smooth_coef = 0;
  if (y != pr.ignore_index) {
    // A pixel with NaN or +-inf logits has a NaN log_normalizer and gets a NaN gradient, as in PyTorch.
    const acc_t scaled_grad = incoming_grad * weight + nan_if_not_finite(log_normalizer);
    target_coef = scaled_grad * (acc_t(1) - acc_t(pr.label_smoothing)) * class_weight_of<acc_t>(pr, y);
    smooth_coef = scaled_grad * acc_t(pr.label_smoothing) / static_cast<acc_t>(g.num_classes);
  }
  for (class_t c = first_class; c < g.num_classes; c += class_step) {
    const acc_t p =
        Lanes<acc_t>::exp(log_probability(static_cast<acc_t>(z[c * g.in_channel_stride]), max, log_normalizer));
    const acc_t grad = cross_entropy_logit_grad<kSmoothing>(p, c == y, target_coef, smooth_coef, class_weight_total,
                                                            class_weight_of<acc_t>(pr, c));
    grad_out[c * g.out_channel_stride] = static_cast<scalar_t>(grad);
  }
}

// What the forward sums over valid pixels: w l, c_y and c_y w.
template <typename acc_t>
struct LossSums {
  acc_t loss, target_weight, weighted_target_weight;
  __device__ __forceinline__ LossSums operator+(const LossSums& o) const {
    return {loss + o.loss, target_weight + o.target_weight, weighted_target_weight + o.weighted_target_weight};
  }
};

template <typename scalar_t, typename acc_t, UncertaintySource kSource, bool kSmoothing>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_forward_kernel(const CrossEntropyProblem pr, acc_t* block_sums) {
  const PixelGeometry& g = pr.geometry;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  acc_t loss = 0, target_weight = 0, weighted_target_weight = 0;
  if (pixel < g.num_pixels) {
    int64_t in_offset, out_offset;
    pixel_offsets(g, pixel, in_offset, out_offset);
    const scalar_t* z = static_cast<const scalar_t*>(pr.input) + in_offset;
    OnlineSoftmax<acc_t> stats;
    OnlineShiftedSum<acc_t> shifted_sum;
    for (int64_t c = 0; c < g.num_classes; ++c) {
      const auto step = stats.update(static_cast<acc_t>(z[c * g.in_channel_stride]));
      if constexpr (kSmoothing) shifted_sum.update(step, class_weight_of<acc_t>(pr, c));
    }
    const acc_t log_normalizer = stats.log_normalizer();
    if (pr.log_normalizer) static_cast<acc_t*>(pr.log_normalizer)[pixel] = log_normalizer;
    const int64_t y = read_target(pr.target, pr.target_type, pixel);
    acc_t w = 1;
    if (y != pr.ignore_index) {
      CUDA_KERNEL_ASSERT(y >= 0 && y < g.num_classes && "uaal_cross_entropy: target outside [0, C)");
      w = pixel_weight<acc_t, kSource>(
          pr, pixel, kSource == UncertaintySource::kEntropy ? stats.entropy(log_normalizer) : acc_t(0));
      target_weight = class_weight_of<acc_t>(pr, y);
      loss =
          w * pixel_cross_entropy<kSmoothing>(stats.max, log_normalizer, static_cast<acc_t>(z[y * g.in_channel_stride]),
                                              target_weight, shifted_sum.weight_seen, shifted_sum.value,
                                              acc_t(pr.label_smoothing), acc_t(1) / static_cast<acc_t>(g.num_classes));
      weighted_target_weight = target_weight * w;
    }
    if (pr.pixel_loss) static_cast<acc_t*>(pr.pixel_loss)[pixel] = loss;
    if (pr.grad_input) {  // fused forward + backward: the incoming gradient is one scalar
      write_pixel_gradient<scalar_t, acc_t, kSmoothing>(pr, z, static_cast<scalar_t*>(pr.grad_input) + out_offset, y,
                                                        stats.max, log_normalizer, w,
                                                        static_cast<const acc_t*>(pr.grad)[0], shifted_sum.weight_seen);
    }
  }
  // Per-block partial sums, added up afterwards in a fixed order (an ATen sum on the device):
  // deterministic, no atomics.
  using BlockReduce = cub::BlockReduce<LossSums<acc_t>, kThreads>;
  __shared__ typename BlockReduce::TempStorage scratch;
  const LossSums<acc_t> total = BlockReduce(scratch).Sum(LossSums<acc_t>{loss, target_weight, weighted_target_weight});
  if (threadIdx.x == 0) {
    const int64_t b = 3 * static_cast<int64_t>(blockIdx.x);
    block_sums[b + 0] = total.loss;
    block_sums[b + 1] = total.target_weight;
    block_sums[b + 2] = total.weighted_target_weight;
  }
}

// sum of c_y w over valid pixels, with w = 1 (kNone: the mean's denominator) or from the uncertainty map
// (kMap: the by-weight mean's): reads the targets (and the map), not the logits. Targets are compared
// as int64 like in every kernel, not in their own dtype, where an ignore_index of -100 wraps for uint8.
// Per-block sums as in the forward.
template <typename acc_t, UncertaintySource kSource>
__global__ void __launch_bounds__(kThreads) weight_total_kernel(const CrossEntropyProblem pr, acc_t* block_sums) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  acc_t weighted_target_weight = 0;
  if (pixel < pr.geometry.num_pixels) {
    const int64_t y = read_target(pr.target, pr.target_type, pixel);
    // Out-of-range targets are reported by the main kernel; here they only must not be read.
    if (y != pr.ignore_index && y >= 0 && y < pr.geometry.num_classes) {
      weighted_target_weight = class_weight_of<acc_t>(pr, y) * pixel_weight<acc_t, kSource>(pr, pixel, acc_t(0));
    }
  }
  using BlockReduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename BlockReduce::TempStorage scratch;
  const acc_t total = BlockReduce(scratch).Sum(weighted_target_weight);
  if (threadIdx.x == 0) block_sums[blockIdx.x] = total;
}

template <typename scalar_t, typename acc_t, UncertaintySource kSource, bool kSmoothing>
__global__ void __launch_bounds__(kThreads) cross_entropy_backward_kernel(const CrossEntropyProblem pr) {
  const PixelGeometry& g = pr.geometry;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= g.num_pixels) return;
  int64_t in_offset, out_offset;
  pixel_offsets(g, pixel, in_offset, out_offset);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + in_offset;
  scalar_t* grad_out = static_cast<scalar_t*>(pr.grad_input) + out_offset;
  const acc_t log_normalizer = static_cast<const acc_t*>(pr.log_normalizer)[pixel];

  // Pass 0: the pixel's max logit again (cheaper to recompute than to store: memory bound).
  acc_t max = OnlineSoftmax<acc_t>::initial_max();
  for (int64_t c = 0; c < g.num_classes; ++c) {
    max = OnlineSoftmax<acc_t>::running_max(max, static_cast<acc_t>(z[c * g.in_channel_stride]));
  }
  // Pass 1 (only when needed): the entropy for the weight, the class-weight total for smoothing.
  acc_t entropy = 0, class_weight_total = 0;
  if constexpr (kSource == UncertaintySource::kEntropy || kSmoothing) {
    for (int64_t c = 0; c < g.num_classes; ++c) {
      if constexpr (kSource == UncertaintySource::kEntropy) {
        const acc_t log_p = log_probability(static_cast<acc_t>(z[c * g.in_channel_stride]), max, log_normalizer);
        entropy += entropy_term(Lanes<acc_t>::exp(log_p), log_p);
      }
      if constexpr (kSmoothing) class_weight_total += class_weight_of<acc_t>(pr, c);
    }
  }
  const int64_t y = read_target(pr.target, pr.target_type, pixel);
  acc_t w = 1;
  if (y != pr.ignore_index) {
    CUDA_KERNEL_ASSERT(y >= 0 && y < g.num_classes && "uaal_cross_entropy: target outside [0, C)");
    w = pixel_weight<acc_t, kSource>(pr, pixel, entropy);
  }
  write_pixel_gradient<scalar_t, acc_t, kSmoothing>(pr, z, grad_out, y, max, log_normalizer, w,
                                                    static_cast<const acc_t*>(pr.grad)[pixel * pr.grad_stride],
                                                    class_weight_total);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) pixel_entropy_kernel(const EntropyProblem pr) {
  const PixelGeometry& g = pr.geometry;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= g.num_pixels) return;
  int64_t in_offset, unused;
  pixel_offsets(g, pixel, in_offset, unused);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + in_offset;
  OnlineSoftmax<acc_t> stats;
  for (int64_t c = 0; c < g.num_classes; ++c) stats.update(static_cast<acc_t>(z[c * g.in_channel_stride]));
  static_cast<acc_t*>(pr.entropy)[pixel] = stats.entropy() * acc_t(pr.scale);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) pixel_entropy_backward_kernel(const EntropyProblem pr) {
  const PixelGeometry& g = pr.geometry;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= g.num_pixels) return;
  int64_t in_offset, out_offset;
  pixel_offsets(g, pixel, in_offset, out_offset);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + in_offset;
  scalar_t* grad_out = static_cast<scalar_t*>(pr.grad_input) + out_offset;
  OnlineSoftmax<acc_t> stats;
  for (int64_t c = 0; c < g.num_classes; ++c) stats.update(static_cast<acc_t>(z[c * g.in_channel_stride]));
  const acc_t log_normalizer = stats.log_normalizer();
  const acc_t entropy = stats.entropy(log_normalizer);
  const acc_t grad_scale =
      static_cast<const acc_t*>(pr.grad)[pixel] * acc_t(pr.scale) + nan_if_not_finite(log_normalizer);
  for (int64_t c = 0; c < g.num_classes; ++c) {
    const acc_t log_p = log_probability(static_cast<acc_t>(z[c * g.in_channel_stride]), stats.max, log_normalizer);
    grad_out[c * g.out_channel_stride] =
        static_cast<scalar_t>(entropy_logit_grad(Lanes<acc_t>::exp(log_p), log_p, entropy, grad_scale));
  }
}

// ---- channels-last: a group of lanes per pixel (PixelGroup, cuda/pixel_index.cuh) -------------
// The same per-pixel math as the kernels above, the softmax from group_softmax (cuda/group_softmax.cuh).
// The group's results are the same in all of its lanes; per-pixel outputs and the block's sums take
// them from lane 0 only, the gradient is written by every lane for its own classes.
//
// Every thread of a block reaches every shuffle (group_max, group_sum) and the block reduction:
// threads of a pixel past the end look at no class (num_classes 0 below) and write nothing.

template <typename scalar_t, typename acc_t, UncertaintySource kSource, bool kSmoothing>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_forward_group_kernel(const CrossEntropyProblem pr, acc_t* block_sums, int lanes) {
  const PixelGeometry& g = pr.geometry;
  const PixelGroup grp = pixel_group(lanes, g);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + grp.in_offset;
  const int64_t C = grp.num_classes;
  const GroupSoftmax<acc_t> s =
      group_softmax<kSource == UncertaintySource::kEntropy, acc_t>(grp, z, C, g.in_channel_stride);
  // Label smoothing: sum_c c_c (z_c - max) and sum_c c_c, a third look at the logits (in L1).
  acc_t shifted_sum = 0, class_weight_total = 0;
  if constexpr (kSmoothing) {
    for (int c = grp.lane; c < C; c += grp.lanes) {
      const acc_t class_weight = class_weight_of<acc_t>(pr, c);
      shifted_sum += class_weight * (static_cast<acc_t>(z[c * g.in_channel_stride]) - s.max);
      class_weight_total += class_weight;
    }
    shifted_sum = group_sum(shifted_sum, grp.lanes);
    class_weight_total = group_sum(class_weight_total, grp.lanes);
  }
  // This thread's share of the block's sums: its pixel's values in lane 0, zeros in the other lanes.
  acc_t loss = 0, target_weight = 0, weighted_target_weight = 0;
  if (grp.valid) {
    const int64_t y = read_target(pr.target, pr.target_type, grp.pixel);
    acc_t w = 1;
    if (y != pr.ignore_index) {
      CUDA_KERNEL_ASSERT(y >= 0 && y < g.num_classes && "uaal_cross_entropy: target outside [0, C)");
      w = pixel_weight<acc_t, kSource>(
          pr, grp.pixel, kSource == UncertaintySource::kEntropy ? s.sums.entropy(s.log_normalizer) : acc_t(0));
      if (grp.lane == 0) {  // z_y: one load per pixel
        target_weight = class_weight_of<acc_t>(pr, y);
        loss = w * pixel_cross_entropy<kSmoothing>(s.max, s.log_normalizer,
                                                   static_cast<acc_t>(z[y * g.in_channel_stride]), target_weight,
                                                   class_weight_total, shifted_sum, acc_t(pr.label_smoothing),
                                                   acc_t(1) / static_cast<acc_t>(g.num_classes));
        weighted_target_weight = target_weight * w;
      }
    }
    if (grp.lane == 0) {
      if (pr.log_normalizer) static_cast<acc_t*>(pr.log_normalizer)[grp.pixel] = s.log_normalizer;
      if (pr.pixel_loss) static_cast<acc_t*>(pr.pixel_loss)[grp.pixel] = loss;
    }
    if (pr.grad_input) {  // fused forward + backward: the incoming gradient is one scalar
      write_pixel_gradient<scalar_t, acc_t, kSmoothing>(
          pr, z, static_cast<scalar_t*>(pr.grad_input) + grp.out_offset, y, s.max, s.log_normalizer, w,
          static_cast<const acc_t*>(pr.grad)[0], class_weight_total, grp.lane, grp.lanes);
    }
  }
  // Per-block partial sums as in cross_entropy_forward_kernel: deterministic, no atomics.
  using BlockReduce = cub::BlockReduce<LossSums<acc_t>, kThreads>;
  __shared__ typename BlockReduce::TempStorage scratch;
  const LossSums<acc_t> total = BlockReduce(scratch).Sum(LossSums<acc_t>{loss, target_weight, weighted_target_weight});
  if (threadIdx.x == 0) {
    const int64_t b = 3 * static_cast<int64_t>(blockIdx.x);
    block_sums[b + 0] = total.loss;
    block_sums[b + 1] = total.target_weight;
    block_sums[b + 2] = total.weighted_target_weight;
  }
}

template <typename scalar_t, typename acc_t, UncertaintySource kSource, bool kSmoothing>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_backward_group_kernel(const CrossEntropyProblem pr, int lanes) {
  const PixelGeometry& g = pr.geometry;
  const PixelGroup grp = pixel_group(lanes, g);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + grp.in_offset;
  const int64_t C = grp.num_classes;
  const acc_t log_normalizer = grp.valid ? static_cast<const acc_t*>(pr.log_normalizer)[grp.pixel] : acc_t(0);

  // Pass 0: the pixel's max logit again (cheaper to recompute than to store: memory bound).
  acc_t max = OnlineSoftmax<acc_t>::initial_max();
  for (int c = grp.lane; c < C; c += grp.lanes) {
    max = OnlineSoftmax<acc_t>::running_max(max, static_cast<acc_t>(z[c * g.in_channel_stride]));
  }
  max = group_max(max, grp.lanes);
  // Pass 1 (only when needed): the entropy for the weight, the class-weight total for smoothing.
  acc_t entropy = 0, class_weight_total = 0;
  if constexpr (kSource == UncertaintySource::kEntropy || kSmoothing) {
    for (int c = grp.lane; c < C; c += grp.lanes) {
      if constexpr (kSource == UncertaintySource::kEntropy) {
        const acc_t log_p = log_probability(static_cast<acc_t>(z[c * g.in_channel_stride]), max, log_normalizer);
        entropy += entropy_term(Lanes<acc_t>::exp(log_p), log_p);
      }
      if constexpr (kSmoothing) class_weight_total += class_weight_of<acc_t>(pr, c);
    }
    if constexpr (kSource == UncertaintySource::kEntropy) entropy = group_sum(entropy, grp.lanes);
    if constexpr (kSmoothing) class_weight_total = group_sum(class_weight_total, grp.lanes);
  }
  if (!grp.valid) return;  // after the last shuffle
  const int64_t y = read_target(pr.target, pr.target_type, grp.pixel);
  acc_t w = 1;
  if (y != pr.ignore_index) {
    CUDA_KERNEL_ASSERT(y >= 0 && y < g.num_classes && "uaal_cross_entropy: target outside [0, C)");
    w = pixel_weight<acc_t, kSource>(pr, grp.pixel, entropy);
  }
  write_pixel_gradient<scalar_t, acc_t, kSmoothing>(
      pr, z, static_cast<scalar_t*>(pr.grad_input) + grp.out_offset, y, max, log_normalizer, w,
      static_cast<const acc_t*>(pr.grad)[grp.pixel * pr.grad_stride], class_weight_total, grp.lane, grp.lanes);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) pixel_entropy_group_kernel(const EntropyProblem pr, int lanes) {
  const PixelGeometry& g = pr.geometry;
  const PixelGroup grp = pixel_group(lanes, g);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + grp.in_offset;
  const GroupSoftmax<acc_t> s = group_softmax</*kDot=*/true, acc_t>(grp, z, grp.num_classes, g.in_channel_stride);
  if (grp.valid && grp.lane == 0) {
    static_cast<acc_t*>(pr.entropy)[grp.pixel] = s.sums.entropy(s.log_normalizer) * acc_t(pr.scale);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) pixel_entropy_backward_group_kernel(const EntropyProblem pr, int lanes) {
  const PixelGeometry& g = pr.geometry;
  const PixelGroup grp = pixel_group(lanes, g);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + grp.in_offset;
  const GroupSoftmax<acc_t> s = group_softmax</*kDot=*/true, acc_t>(grp, z, grp.num_classes, g.in_channel_stride);
  if (!grp.valid) return;  // after the last shuffle
  scalar_t* grad_out = static_cast<scalar_t*>(pr.grad_input) + grp.out_offset;
  const acc_t entropy = s.sums.entropy(s.log_normalizer);
  const acc_t grad_scale =
      static_cast<const acc_t*>(pr.grad)[grp.pixel] * acc_t(pr.scale) + nan_if_not_finite(s.log_normalizer);
  for (int c = grp.lane; c < g.num_classes; c += grp.lanes) {
    const acc_t log_p = log_probability(static_cast<acc_t>(z[c * g.in_channel_stride]), s.max, s.log_normalizer);
    grad_out[c * g.out_channel_stride] =
        static_cast<scalar_t>(entropy_logit_grad(Lanes<acc_t>::exp(log_p), log_p, entropy, grad_scale));
  }
}

// ---- class-probability targets (loss_math.h's ProbabilityTargetSums) -----------------------------
// One kernel for both mappings: lanes == 1 is one thread per pixel (NCHW: coalesced as above), more
// lanes the channels-last group (the shuffles of a one-lane group do nothing). The target's values
// sit at the logits' offsets (the host code gives them the logits' dtype and strides). Every pixel
// counts: the block sums are {sum w l, pixels, sum w}. It serves the forward, the fused forward +
// backward (one incoming gradient) and the backward (per-pixel gradient, sums discarded).
template <typename scalar_t, typename acc_t, UncertaintySource kSource>
__global__ void __launch_bounds__(kThreads)
    probability_target_kernel(const CrossEntropyProblem pr, acc_t* block_sums, int lanes) {
  const PixelGeometry& g = pr.geometry;
  const PixelGroup grp = pixel_group(lanes, g);
  const int64_t cs = g.in_channel_stride;
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + grp.in_offset;
  const scalar_t* t = static_cast<const scalar_t*>(pr.target) + grp.in_offset;
  const int64_t C = grp.num_classes;
  const GroupSoftmax<acc_t> s = group_softmax<kSource == UncertaintySource::kEntropy, acc_t>(grp, z, C, cs);
  const acc_t label_smoothing = acc_t(pr.label_smoothing);
  const acc_t smoothing_per_class = acc_t(pr.label_smoothing / static_cast<double>(g.num_classes));
  const auto weighted_target = [&](int c) {
    return class_weight_of<acc_t>(pr, c) *
           smoothed_target(static_cast<acc_t>(t[c * cs]), label_smoothing, smoothing_per_class);
  };
  ProbabilityTargetSums<acc_t> target_sums;
  for (int c = grp.lane; c < C; c += grp.lanes) {
    target_sums.add(weighted_target(c), static_cast<acc_t>(z[c * cs]) - s.max);
  }
  target_sums.mass = group_sum(target_sums.mass, grp.lanes);
  target_sums.shifted = group_sum(target_sums.shifted, grp.lanes);
  // This thread's share of the block's sums: its pixel's values in lane 0, zeros in the other lanes.
  acc_t loss = 0, pixels = 0, weight_total = 0;
  if (grp.valid) {
    const acc_t w = pixel_weight<acc_t, kSource>(
        pr, grp.pixel, kSource == UncertaintySource::kEntropy ? s.sums.entropy(s.log_normalizer) : acc_t(0));
    if (grp.lane == 0) {
      loss = w * target_sums.loss(s.log_normalizer);
      pixels = 1;
      weight_total = w;
      if (pr.log_normalizer) static_cast<acc_t*>(pr.log_normalizer)[grp.pixel] = s.log_normalizer;
      if (pr.pixel_loss) static_cast<acc_t*>(pr.pixel_loss)[grp.pixel] = loss;
    }
    if (pr.grad_input) {
      // A pixel with NaN or +-inf logits has a NaN log_normalizer and gets a NaN gradient, as in PyTorch.
      const acc_t coef =
          static_cast<const acc_t*>(pr.grad)[grp.pixel * pr.grad_stride] * w + nan_if_not_finite(s.log_normalizer);
      scalar_t* grad_out = static_cast<scalar_t*>(pr.grad_input) + grp.out_offset;
      for (int c = grp.lane; c < C; c += grp.lanes) {
        const acc_t p = Lanes<acc_t>::exp(log_probability(static_cast<acc_t>(z[c * cs]), s.max, s.log_normalizer));
        grad_out[c * g.out_channel_stride] =
            static_cast<scalar_t>(probability_target_logit_grad(p, coef, target_sums.mass, weighted_target(c)));
      }
    }
  }
  using BlockReduce = cub::BlockReduce<LossSums<acc_t>, kThreads>;
  __shared__ typename BlockReduce::TempStorage scratch;
  const LossSums<acc_t> total = BlockReduce(scratch).Sum(LossSums<acc_t>{loss, pixels, weight_total});
  if (threadIdx.x == 0) {
    const int64_t b = 3 * static_cast<int64_t>(blockIdx.x);
    block_sums[b + 0] = total.loss;
    block_sums[b + 1] = total.target_weight;
    block_sums[b + 2] = total.weighted_target_weight;
  }
}

struct CudaLauncher {
  struct Guard {
    c10::cuda::CUDAGuard device_guard;
    explicit Guard(const at::Tensor& input) : device_guard(input.device()) {}
  };

  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }
  static at::Tensor empty_like(const at::Tensor& like) { return at::empty_like(like); }
  // The by-weight mean of the entropy weight keeps its pre-pass here: a GPU's exps are cheap next to
  // its memory traffic, and both designs move the same bytes.
  static constexpr bool kGradientFromProbabilities = false;

  template <UncertaintySource kSource>
  static at::Tensor weight_total(const CrossEntropyProblem& pr, const at::TensorOptions& options) {
    const unsigned int blocks = blocks_for(pr.geometry.num_pixels);
    if (blocks == 0) return at::zeros({}, options);
    at::Tensor block_sums = at::empty({static_cast<int64_t>(blocks)}, options);
    dispatch_float_type(pr.input_type, [&](auto, auto acc) {
      using acc_t = decltype(acc);
      weight_total_kernel<acc_t, kSource>
          <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(pr, block_sums.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return block_sums.to(at::kDouble).sum().to(options.dtype());
  }

  static at::Tensor target_weight_total(const PreparedCrossEntropy& prep, const at::TensorOptions& options) {
    return weight_total<UncertaintySource::kNone>(prep.problem, options);
  }

  static at::Tensor map_weight_total(const PreparedCrossEntropy& prep, const at::TensorOptions& options) {
    return weight_total<UncertaintySource::kMap>(prep.problem, options);
  }

  // The kernels that read the logits come in both mappings of cuda/pixel_index.cuh. With a
  // pixel's classes contiguous (channels-last), one thread per pixel would have a warp's 32 loads
  // (and gradient stores) C values apart, and for C = 150 a warp's footprint would not stay in L1:
  // those calls take the group-of-lanes kernels (mapping.lanes > 1). NCHW keeps one thread per pixel,
  // coalesced in that layout.
  static at::Tensor cross_entropy_forward(const CrossEntropyProblem& pr, const at::TensorOptions& options) {
    if (pr.soft_target) return probability_target_cross_entropy(pr, options);
    const PixelMapping mapping = pixel_mapping(pr.geometry, /*writes_out=*/pr.grad_input != nullptr);
    if (mapping.blocks == 0) return at::zeros({3}, options);
    at::Tensor block_sums = at::empty({static_cast<int64_t>(mapping.blocks), 3}, options);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
      using scalar_t = decltype(scalar);
      using acc_t = decltype(acc);
      dispatch_variant(pr.source, pr.smoothing(), [&](auto source, auto smoothing) {
        constexpr UncertaintySource kSource = decltype(source)::value;
        constexpr bool kSmoothing = decltype(smoothing)::value;
        if (mapping.lanes > 1) {
          cross_entropy_forward_group_kernel<scalar_t, acc_t, kSource, kSmoothing>
              <<<mapping.blocks, kThreads, 0, stream>>>(pr, block_sums.data_ptr<acc_t>(), mapping.lanes);
        } else {
          cross_entropy_forward_kernel<scalar_t, acc_t, kSource, kSmoothing>
              <<<mapping.blocks, kThreads, 0, stream>>>(pr, block_sums.data_ptr<acc_t>());
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    return block_sums.to(at::kDouble).sum(0).to(options.dtype());
  }

  static void cross_entropy_backward(const CrossEntropyProblem& pr) {
    if (pr.soft_target) {
      CrossEntropyProblem gradient_only = pr;
      gradient_only.log_normalizer = nullptr;  // the forward's, an input here: never written
      gradient_only.pixel_loss = nullptr;
      const at::ScalarType acc = pr.input_type == FloatType::kFloat64 ? at::kDouble : at::kFloat;
      probability_target_cross_entropy(gradient_only, at::TensorOptions().dtype(acc).device(at::kCUDA));
      return;
    }
    const PixelMapping mapping = pixel_mapping(pr.geometry, /*writes_out=*/true);
    if (mapping.blocks == 0) return;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
      using scalar_t = decltype(scalar);
      using acc_t = decltype(acc);
      dispatch_variant(pr.source, pr.smoothing(), [&](auto source, auto smoothing) {
        constexpr UncertaintySource kSource = decltype(source)::value;
        constexpr bool kSmoothing = decltype(smoothing)::value;
        if (mapping.lanes > 1) {
          cross_entropy_backward_group_kernel<scalar_t, acc_t, kSource, kSmoothing>
              <<<mapping.blocks, kThreads, 0, stream>>>(pr, mapping.lanes);
        } else {
          cross_entropy_backward_kernel<scalar_t, acc_t, kSource, kSmoothing>
              <<<mapping.blocks, kThreads, 0, stream>>>(pr);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  // {sum w l, pixels, sum w} of a call with class-probability targets.
  static at::Tensor probability_target_cross_entropy(const CrossEntropyProblem& pr, const at::TensorOptions& options) {
    TORCH_CHECK_VALUE(pr.geometry.num_classes <= kMaxGroupClasses, "uaal_cross_entropy: ", pr.geometry.num_classes,
                      " classes are more than the CUDA kernels index (", kMaxGroupClasses, ")");
    const PixelMapping mapping = pixel_mapping(pr.geometry, /*writes_out=*/pr.grad_input != nullptr);
    if (mapping.blocks == 0) return at::zeros({3}, options);
    at::Tensor block_sums = at::empty({static_cast<int64_t>(mapping.blocks), 3}, options);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
      using acc_t = decltype(acc);
      dispatch_constant<UncertaintySource::kNone, UncertaintySource::kEntropy, UncertaintySource::kMap>(
          pr.source, [&](auto source) {
        probability_target_kernel<decltype(scalar), acc_t, decltype(source)::value>
            <<<mapping.blocks, kThreads, 0, stream>>>(pr, block_sums.data_ptr<acc_t>(), mapping.lanes);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    return block_sums.to(at::kDouble).sum(0).to(options.dtype());
  }

  static void pixel_entropy_forward(const EntropyProblem& pr) {
    const PixelMapping mapping = pixel_mapping(pr.geometry, /*writes_out=*/false);
    if (mapping.blocks == 0) return;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
      using scalar_t = decltype(scalar);
      using acc_t = decltype(acc);
      if (mapping.lanes > 1) {
        pixel_entropy_group_kernel<scalar_t, acc_t><<<mapping.blocks, kThreads, 0, stream>>>(pr, mapping.lanes);
      } else {
        pixel_entropy_kernel<scalar_t, acc_t><<<mapping.blocks, kThreads, 0, stream>>>(pr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void pixel_entropy_backward(const EntropyProblem& pr) {
    const PixelMapping mapping = pixel_mapping(pr.geometry, /*writes_out=*/true);
    if (mapping.blocks == 0) return;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
      using scalar_t = decltype(scalar);
      using acc_t = decltype(acc);
      if (mapping.lanes > 1) {
        pixel_entropy_backward_group_kernel<scalar_t, acc_t>
            <<<mapping.blocks, kThreads, 0, stream>>>(pr, mapping.lanes);
      } else {
        pixel_entropy_backward_kernel<scalar_t, acc_t><<<mapping.blocks, kThreads, 0, stream>>>(pr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace
}  // namespace uaal::cuda

TORCH_LIBRARY_IMPL(uaal_ext, CUDA, m) {
  using uaal::cuda::CudaLauncher;
  m.impl("cross_entropy_forward", &uaal::cross_entropy_forward_op<CudaLauncher>);
  m.impl("cross_entropy_backward", &uaal::cross_entropy_backward_op<CudaLauncher>);
  m.impl("cross_entropy_forward_backward", &uaal::cross_entropy_forward_backward_op<CudaLauncher>);
  m.impl("pixel_entropy", &uaal::pixel_entropy_op<CudaLauncher>);
  m.impl("pixel_entropy_backward", &uaal::pixel_entropy_backward_op<CudaLauncher>);
}
