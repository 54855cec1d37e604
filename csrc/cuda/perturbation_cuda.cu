// CUDA implementations of kernel_noise and perturbation_statistics. The math is perturbation_math.h's
// (the code the CPU tests exercise); this file maps threads to work and launches:
//   kernel_noise: one block per slot (a range of one norm group) for the sums and for the writes,
//                 each thread taking whole Philox blocks of 4 elements; one thread per group between;
//   perturbation_statistics: one thread per pixel, consecutive threads on consecutive pixels, or a
//                            group of lanes per pixel for channels-last logits (cuda/pixel_index.cuh).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include "core/dispatch.h"
#include "core/online_softmax.h"
#include "cuda/group_softmax.cuh"
#include "cuda/pixel_index.cuh"
#include "perturbation_common.h"

namespace uaal::cuda {
namespace {

struct SquareSums {
  double noise, weight;
  __device__ __forceinline__ SquareSums operator+(const SquareSums& o) const {
    return {noise + o.noise, weight + o.weight};
  }
};

// The Philox blocks (4 elements each) that overlap [slot.begin, slot.end), spread over the threads.
template <typename Fn>
__device__ __forceinline__ void for_each_slot_block(const KernelNoiseProblem& pr, const NoiseSlot& slot, Fn&& fn) {
  const NoiseStream stream = pr.stream(slot);
  for (int64_t block = slot.begin / 4 + threadIdx.x; block * 4 < slot.end; block += blockDim.x) {
    float normals[4];
    noise_block(stream, static_cast<uint32_t>(block), normals);
    for (int i = 0; i < 4; ++i) {
      const int64_t e = block * 4 + i;
      if (e >= slot.begin && e < slot.end) fn(e, normals[i]);
    }
  }
}

// Pass 1: per slot, sum of n^2, and of theta^2 for sample 0 (block reduction: a fixed order).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) noise_sums_kernel(const KernelNoiseProblem pr) {
  using Reduce = cub::BlockReduce<SquareSums, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const NoiseSlot slot = pr.slots[blockIdx.x];
  const auto* w = static_cast<const scalar_t*>(pr.tensors[slot.tensor].weight);
  SquareSums sums{0.0, 0.0};
  for_each_slot_block(pr, slot, [&](int64_t e, float n) {
    sums.noise += static_cast<double>(n) * n;
    if (slot.sample == 0) {
      const double v = static_cast<double>(static_cast<acc_t>(w[e]));
      sums.weight += v * v;
    }
  });
  const SquareSums total = Reduce(storage).Sum(sums);
  if (threadIdx.x == 0) {
    pr.slot_noise_squares[blockIdx.x] = total.noise;
    pr.slot_weight_squares[blockIdx.x] = total.weight;
  }
}

// Pass 2: per group, eta ||theta_g|| / ||n_g||.
__global__ void __launch_bounds__(kThreads) group_scale_kernel(const KernelNoiseProblem pr) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group < pr.num_groups) compute_group_scale(pr, group);
}

// Pass 3: theta + scale n.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) noise_write_kernel(const KernelNoiseProblem pr) {
  const NoiseSlot slot = pr.slots[blockIdx.x];
  const NoiseTensor& t = pr.tensors[slot.tensor];
  const acc_t scale = static_cast<acc_t>(pr.group_scale[pr.group_id(slot)]);
  const auto* w = static_cast<const scalar_t*>(t.weight);
  auto* out = static_cast<scalar_t*>(t.perturbed) + slot.sample * t.numel;
  for_each_slot_block(pr, slot, [&](int64_t e, float n) {
    out[e] = static_cast<scalar_t>(static_cast<acc_t>(w[e]) + scale * static_cast<acc_t>(n));
  });
}

// ---- perturbation_statistics -----------------------------------------------------------------------
// Both mappings of pixel_index.cuh: `lanes` == 1 (a thread per pixel, NCHW) or a group of lanes per
// pixel (channels-last clean and perturbed logits), lane j on classes j, j + lanes, ... Sums and maxima
// over a pixel's classes combine the group's lanes with shuffles, so every lane holds the pixel's
// values. Every thread of a warp reaches every shuffle: the sample loop runs in every thread, one of a
// pixel past the end looks at no class, and the plain form's softmax (which some pixels need) runs in
// the whole warp when one of its pixels needs it.

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    perturbation_statistics_kernel(const PerturbationStatisticsProblem pr, int lanes) {
  const PixelGeometry& g = pr.geometry;
  const PixelGroup grp = pixel_group(lanes, g);
  const int64_t C = grp.num_classes;
  const scalar_t* z = static_cast<const scalar_t*>(pr.clean) + grp.in_offset;
  const int64_t zs = g.in_channel_stride;
  const GroupSoftmax<acc_t> clean = group_softmax</*kDot=*/false, acc_t, /*kSquares=*/true>(grp, z, C, zs);
  acc_t nan = clean.nan_guard;
  const acc_t inv_sum = acc_t(1) / clean.sums.sum;
  auto probability = [&](int c) { return Lanes<acc_t>::exp(static_cast<acc_t>(z[c * zs]) - clean.max) * inv_sum; };
  const acc_t clean_norm_squared = probability_norm_squared(clean.sum_squares, clean.sums.sum);

  DeviationSums<acc_t> deviations;
  for (int64_t k = 0; k < pr.num_samples; ++k) {
    const scalar_t* zk = static_cast<const scalar_t*>(pr.perturbed) + k * pr.sample_stride + grp.out_offset;
    const int64_t zks = g.out_channel_stride;
    auto shift_of = [&](int c) { return logit_shift(static_cast<acc_t>(zk[c * zks]), static_cast<acc_t>(z[c * zs])); };
    LogitShiftSums<acc_t> shift;
    for (int c = grp.lane; c < C; c += grp.lanes) shift.add(probability(c), shift_of(c));
    shift.shifted_sum = group_sum(shift.shifted_sum, grp.lanes);
    // A NaN shift fails the test in its lane, and so in the whole group.
    const bool precise = group_all(shift.max_abs_shift <= acc_t(kMaxPreciseLogitShift), grp.lanes);
    acc_t squares = 0;
    if (precise) {
      const acc_t b = shift.normalizer_term();
      for (int c = grp.lane; c < C; c += grp.lanes) {
        const acc_t diff = deviation_from_shift(probability(c), shift_expm1(shift_of(c)), b);
        squares += diff * diff;
      }
    }
    const bool plain_in_warp = grp.lanes == 1 ? !precise : __any_sync(kFullWarp, !precise);
    if (plain_in_warp) {
      const GroupSoftmax<acc_t> perturbed = group_softmax</*kDot=*/false, acc_t>(grp, zk, C, zks);
      if (!precise) {
        nan += perturbed.nan_guard;
        const acc_t inv_sum_k = acc_t(1) / perturbed.sums.sum;
        for (int c = grp.lane; c < C; c += grp.lanes) {
          const acc_t p_k = Lanes<acc_t>::exp(static_cast<acc_t>(zk[c * zks]) - perturbed.max) * inv_sum_k;
          squares += squared_deviation(p_k, probability(c));
        }
      }
    }
    deviations.add(group_sum(squares, grp.lanes));
  }
  if (!grp.valid || grp.lane != 0) return;
  const acc_t inv_num_samples = acc_t(1) / static_cast<acc_t>(pr.num_samples);
  static_cast<acc_t*>(pr.sigma)[grp.pixel] = deviations.sigma(inv_num_samples) + nan;
  static_cast<acc_t*>(pr.noise_stability)[grp.pixel] =
      deviations.noise_stability(inv_num_samples, clean_norm_squared) + nan;
}

struct CudaPerturbationLauncher {
  struct Guard {
    c10::cuda::CUDAGuard device_guard;
    explicit Guard(const at::Tensor& t) : device_guard(t.device()) {}
  };
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }
  // One block of kThreads per slot: 2048 elements are 2 Philox blocks per thread.
  static constexpr int64_t kNoiseSlotElements = 2048;

  static void kernel_noise(const KernelNoiseProblem& pr) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    TORCH_CHECK_VALUE(pr.num_slots <= INT32_MAX, "kernel_noise: too many slots (", pr.num_slots, ")");
    const unsigned int slots = static_cast<unsigned int>(pr.num_slots);
    dispatch_float_type(pr.type, [&](auto scalar, auto acc) {
      using scalar_t = decltype(scalar);
      using acc_t = decltype(acc);
      noise_sums_kernel<scalar_t, acc_t><<<slots, kThreads, 0, stream>>>(pr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      group_scale_kernel<<<blocks_for(pr.num_groups), kThreads, 0, stream>>>(pr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      noise_write_kernel<scalar_t, acc_t><<<slots, kThreads, 0, stream>>>(pr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  // A group of lanes per pixel where both the clean and the perturbed logits hold a pixel's classes
  // contiguously (the geometry's `out` side is the perturbed logits); one thread per pixel otherwise.
  static void perturbation_statistics(const PerturbationStatisticsProblem& pr) {
    TORCH_CHECK_VALUE(pr.geometry.num_classes <= kMaxGroupClasses, "perturbation_statistics: ", pr.geometry.num_classes,
                      " classes are more than the CUDA kernel indexes (", kMaxGroupClasses, ")");
    const PixelMapping mapping = pixel_mapping(pr.geometry, /*writes_out=*/true);
    if (mapping.blocks == 0) return;
    dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
      perturbation_statistics_kernel<decltype(scalar), decltype(acc)>
          <<<mapping.blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(pr, mapping.lanes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace
}  // namespace uaal::cuda

TORCH_LIBRARY_IMPL(uaal_ext, CUDA, m) {
  using uaal::cuda::CudaPerturbationLauncher;
  m.impl("kernel_noise", &uaal::kernel_noise_op<CudaPerturbationLauncher>);
  m.impl("perturbation_statistics", &uaal::perturbation_statistics_op<CudaPerturbationLauncher>);
}
