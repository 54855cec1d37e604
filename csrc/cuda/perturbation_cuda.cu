// CUDA implementations of kernel_noise and perturbation_statistics. The math is perturbation_math.h's
// (the code the CPU tests exercise); this file maps threads to work and launches:
//   kernel_noise: one block per slot (a range of one norm group) for the sums and for the writes,
//                 each thread taking whole Philox blocks of 4 elements; one thread per group between;
//   perturbation_statistics: one thread per pixel, consecutive threads on consecutive pixels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include "core/dispatch.h"
#include "core/online_softmax.h"
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
// Softmax max and sum of one pixel's logits (C, stride), with the NaN term; optionally sum e^2.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void pixel_softmax(const scalar_t* z, int64_t C, int64_t stride, acc_t& max, acc_t& sum,
                                              acc_t& sum_squares, acc_t& nan) {
  max = OnlineSoftmax<acc_t>::initial_max();
  acc_t logit_sum = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t zc = static_cast<acc_t>(z[c * stride]);
    max = OnlineSoftmax<acc_t>::running_max(max, zc);
    logit_sum += zc;
  }
  nan += softmax_nan_guard(logit_sum, max);
  sum = sum_squares = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t e = Lanes<acc_t>::exp(static_cast<acc_t>(z[c * stride]) - max);
    sum += e;
    sum_squares += e * e;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) perturbation_statistics_kernel(const PerturbationStatisticsProblem pr) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const PixelGeometry& g = pr.geometry;
  if (pixel >= g.num_pixels) return;
  int64_t clean_offset, perturbed_offset;
  pixel_offsets(g, pixel, clean_offset, perturbed_offset);
  const int64_t C = g.num_classes;
  const scalar_t* z = static_cast<const scalar_t*>(pr.clean) + clean_offset;
  const int64_t zs = g.in_channel_stride;
  acc_t max, sum, sum_squares, nan = acc_t(0);
  pixel_softmax(z, C, zs, max, sum, sum_squares, nan);
  const acc_t inv_sum = acc_t(1) / sum;
  auto probability = [&](int64_t c) { return Lanes<acc_t>::exp(static_cast<acc_t>(z[c * zs]) - max) * inv_sum; };

  DeviationSums<acc_t> deviations;
  for (int64_t k = 0; k < pr.num_samples; ++k) {
    const scalar_t* zk = static_cast<const scalar_t*>(pr.perturbed) + k * pr.sample_stride + perturbed_offset;
    const int64_t zks = g.out_channel_stride;
    auto shift_of = [&](int64_t c) {
      return logit_shift(static_cast<acc_t>(zk[c * zks]), static_cast<acc_t>(z[c * zs]));
    };
    LogitShiftSums<acc_t> shift;
    for (int64_t c = 0; c < C; ++c) shift.add(probability(c), shift_of(c));
    acc_t squares = 0;
    if (shift.max_abs_shift <= acc_t(kMaxPreciseLogitShift)) {
      const acc_t b = shift.normalizer_term();
      for (int64_t c = 0; c < C; ++c) {
        const acc_t diff = deviation_from_shift(probability(c), shift_expm1(shift_of(c)), b);
        squares += diff * diff;
      }
    } else {
      acc_t max_k, sum_k, unused;
      pixel_softmax(zk, C, zks, max_k, sum_k, unused, nan);
      const acc_t inv_sum_k = acc_t(1) / sum_k;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t p_k = Lanes<acc_t>::exp(static_cast<acc_t>(zk[c * zks]) - max_k) * inv_sum_k;
        squares += squared_deviation(p_k, probability(c));
      }
    }
    deviations.add(squares);
  }
  const acc_t inv_num_samples = acc_t(1) / static_cast<acc_t>(pr.num_samples);
  static_cast<acc_t*>(pr.sigma)[pixel] = deviations.sigma(inv_num_samples) + nan;
  static_cast<acc_t*>(pr.noise_stability)[pixel] =
      deviations.noise_stability(inv_num_samples, probability_norm_squared(sum_squares, sum)) + nan;
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

  static void perturbation_statistics(const PerturbationStatisticsProblem& pr) {
    const unsigned int blocks = blocks_for(pr.geometry.num_pixels);
    if (blocks == 0) return;
    dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
      perturbation_statistics_kernel<decltype(scalar), decltype(acc)>
          <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(pr);
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
