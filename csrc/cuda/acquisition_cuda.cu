// CUDA implementations of pixel_scores and aggregate_scores. The per-pixel math is
// acquisition_math.h's (the code the CPU tests exercise); this file maps threads to pixels and blocks
// to images (aggregation), and launches. Pixels map to threads as in cuda/pixel_index.cuh: one thread
// per pixel, except for channels-last logits (a pixel's classes contiguous), which take a group of
// lanes per pixel so that a warp's loads are consecutive.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <limits>

#include "acquisition_common.h"
#include "core/online_softmax.h"
#include "cuda/group_softmax.cuh"
#include "cuda/pixel_index.cuh"

namespace uaal::cuda {
namespace {

template <typename scalar_t, typename acc_t, ScoreMethod kMethod>
__global__ void __launch_bounds__(kThreads) single_prediction_scores_kernel(const PixelScoreProblem pr) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const PixelGeometry& g = pr.geometry;
  if (pixel >= g.num_pixels) return;
  int64_t in_offset, unused;
  pixel_offsets(g, pixel, in_offset, unused);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + in_offset;
  OnlineTopTwo<acc_t, kMethod> stats;
  for (int64_t c = 0; c < g.num_classes; ++c) stats.update(static_cast<acc_t>(z[c * g.in_channel_stride]));
  static_cast<acc_t*>(pr.scores)[pixel] = stats.score();
}

// Channels-last: a group of lanes per pixel, lane j on classes j, j + lanes, ... OnlineTopTwo's
// statistics are rebuilt from two looks at the logits instead of its online updates, whose running
// max would differ from lane to lane: the max and the first class holding it (the one OnlineTopTwo
// keeps as the max: later ties only add their term 1 to the others), then, relative to that max, the
// terms of every other class (others), the largest other logit (second) and dot. Those are the values
// OnlineTopTwo ends with after every update, and its score() turns them into the score, NaN guard
// included (CUDA's exp carries a NaN logit into others). Every thread reaches every shuffle; threads
// of a pixel past the end look at no class and write nothing.
template <typename scalar_t, typename acc_t, ScoreMethod kMethod>
__global__ void __launch_bounds__(kThreads)
    single_prediction_scores_group_kernel(const PixelScoreProblem pr, int lanes) {
  using Stats = OnlineTopTwo<acc_t, kMethod>;
  const PixelGeometry& g = pr.geometry;
  const PixelGroup grp = pixel_group(lanes, g);
  const scalar_t* z = static_cast<const scalar_t*>(pr.input) + grp.in_offset;
  const int64_t C = grp.num_classes;

  // Look 1: the max and its class; -1 while every logit seen is -inf or NaN (skipped, as by the
  // online updates, whose max only grows on z > max from the same finite start).
  acc_t max = std::numeric_limits<acc_t>::lowest();
  int argmax = -1;
  for (int c = grp.lane; c < C; c += grp.lanes) {
    const acc_t logit = static_cast<acc_t>(z[c * g.in_channel_stride]);
    if (logit > max) {
      max = logit;
      argmax = c;
    }
  }
  for (int offset = grp.lanes / 2; offset > 0; offset /= 2) {  // the larger max; the first class on ties
    const acc_t other_max = __shfl_xor_sync(kFullWarp, max, offset, grp.lanes);
    const int other_argmax = __shfl_xor_sync(kFullWarp, argmax, offset, grp.lanes);
    if (other_max > max || (other_max == max && other_argmax < argmax)) {
      max = other_max;
      argmax = other_argmax;
    }
  }
  // Look 2: the other classes' terms relative to the max.
  KnownMaxSums<acc_t> sums;  // dot (its sum, which counts the max's term too, is not used)
  acc_t others = 0, second = std::numeric_limits<acc_t>::lowest();
  for (int c = grp.lane; c < C; c += grp.lanes) {
    const acc_t logit = static_cast<acc_t>(z[c * g.in_channel_stride]);
    const acc_t e = sums.template add<Stats::kTrackDot>(logit, max);
    if (c != argmax) {
      others += e;
      second = OnlineSoftmax<acc_t>::running_max(second, logit);
    }
  }
  Stats stats;
  stats.max = max;
  stats.others = group_sum(others, grp.lanes);
  if constexpr (Stats::kTrackSecond) stats.second = group_max(second, grp.lanes);
  if constexpr (Stats::kTrackDot) stats.dot = group_sum(sums.dot, grp.lanes);
  if (grp.valid && grp.lane == 0) static_cast<acc_t*>(pr.scores)[grp.pixel] = stats.score();
}

// Pass 1 over the samples gives each softmax's max and 1/sum (parked in scratch, [t][2][pixel]) and
// the sum of their entropies; pass 2 rebuilds the mean prediction class by class. Both mappings of
// pixel_index.cuh: `lanes` == 1 (a thread per pixel, NCHW) or a group of lanes per pixel (channels-last),
// lane j on classes j, j + lanes, ... Each sample's max, logit sum and softmax sums then combine over
// the group with shuffles, so every lane holds the pixel's values; lane 0 parks them in scratch and
// the group reads them back after __syncwarp (which orders the warp's memory accesses); pass 2's
// per-lane entropy terms add up over the group. Every thread reaches every shuffle and the
// __syncwarp: the sample loops run in every thread, and one of a pixel past the end looks at no class.
template <typename scalar_t, typename acc_t, ScoreMethod kMethod>
__global__ void __launch_bounds__(kThreads) monte_carlo_scores_kernel(const PixelScoreProblem pr, int lanes) {
  const PixelGeometry& g = pr.geometry;
  const PixelGroup grp = pixel_group(lanes, g);
  const int64_t C = grp.num_classes, cs = g.in_channel_stride, P = g.num_pixels;
  const auto* z = static_cast<const scalar_t*>(pr.input) + grp.in_offset;
  auto logit = [&](int64_t t, int c) { return static_cast<acc_t>(z[t * pr.sample_stride + c * cs]); };
  auto* scratch = static_cast<acc_t*>(pr.scratch);
  const bool writes = grp.valid && grp.lane == 0;
  acc_t entropy_sum = 0, nan = 0;
  for (int64_t t = 0; t < pr.num_samples; ++t) {
    const GroupSoftmax<acc_t> s = group_softmax</*kDot=*/true, acc_t>(grp, z + t * pr.sample_stride, C, cs);
    nan += s.nan_guard;
    entropy_sum += entropy_from_terms(s.sums.sum, s.sums.dot);
    if (writes) {
      scratch[(2 * t) * P + grp.pixel] = s.max;
      scratch[(2 * t + 1) * P + grp.pixel] = acc_t(1) / s.sums.sum;
    }
  }
  __syncwarp();
  const acc_t inv_num_samples = acc_t(1) / static_cast<acc_t>(pr.num_samples);
  acc_t mean_entropy = 0;
  for (int c = grp.lane; c < C; c += grp.lanes) {
    acc_t probability_sum = 0;
    for (int64_t t = 0; t < pr.num_samples; ++t) {
      probability_sum +=
          Lanes<acc_t>::exp(logit(t, c) - scratch[(2 * t) * P + grp.pixel]) * scratch[(2 * t + 1) * P + grp.pixel];
    }
    mean_entropy += mean_prediction_entropy_term(probability_sum * inv_num_samples);
  }
  mean_entropy = group_sum(mean_entropy, grp.lanes);
  if (writes) {
    static_cast<acc_t*>(pr.scores)[grp.pixel] =
        monte_carlo_score<kMethod>(mean_entropy, entropy_sum, inv_num_samples) + nan;
  }
}

// What one image's mean / sum / max need.
template <typename T>
struct ImageTotals {
  double sum;
  T max;
  int64_t count;
};

template <typename T>
struct CombineTotals {
  __device__ __forceinline__ ImageTotals<T> operator()(const ImageTotals<T>& a, const ImageTotals<T>& b) const {
    const T max = (a.max != a.max || a.max > b.max) ? a.max : b.max;  // NaN wins
    return {a.sum + b.sum, max, a.count + b.count};
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) aggregate_scores_kernel(const ScoreAggregationProblem pr) {
  using Reduce = cub::BlockReduce<ImageTotals<T>, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * pr.pixels_per_image;
  const T* scores = static_cast<const T*>(pr.scores) + offset;
  ImageTotals<T> totals{0.0, -std::numeric_limits<T>::infinity(), 0};
  for (int64_t i = threadIdx.x; i < pr.pixels_per_image; i += kThreads) {
    if (pr.valid && !pr.valid[offset + i]) continue;
    totals = CombineTotals<T>()(totals, ImageTotals<T>{static_cast<double>(scores[i]), scores[i], 1});
  }
  const ImageTotals<T> image = Reduce(storage).Reduce(totals, CombineTotals<T>());
  if (threadIdx.x != 0) return;
  T result = T(0);
  if (image.count > 0) {
    result = pr.reduction == ScoreReduction::kMax   ? image.max
             : pr.reduction == ScoreReduction::kSum ? static_cast<T>(image.sum)
                                                    : static_cast<T>(image.sum / static_cast<double>(image.count));
  }
  static_cast<T*>(pr.out)[blockIdx.x] = result;
}

struct CudaAcquisitionLauncher {
  struct Guard {
    c10::cuda::CUDAGuard device_guard;
    explicit Guard(const at::Tensor& t) : device_guard(t.device()) {}
  };
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }

  static void pixel_scores(PixelScoreProblem pr, const at::TensorOptions& options) {
    // Channels-last logits (a pixel's classes contiguous, in every sample for the Monte-Carlo
    // scores) take a group of lanes per pixel: one thread per pixel would have a warp's loads C values
    // apart there. NCHW keeps one thread per pixel, coalesced in that layout.
    TORCH_CHECK_VALUE(!is_monte_carlo(pr.method) || pr.geometry.num_classes <= kMaxGroupClasses,
                      "pixel_scores: ", pr.geometry.num_classes,
                      " classes are more than the Monte-Carlo CUDA kernel indexes (", kMaxGroupClasses, ")");
    const PixelMapping mapping = pixel_mapping(pr.geometry, /*writes_out=*/false);
    if (mapping.blocks == 0) return;
    at::Tensor scratch;
    if (is_monte_carlo(pr.method)) {
      scratch = at::empty({2 * pr.num_samples * pr.geometry.num_pixels}, options);
      pr.scratch = scratch.data_ptr();
    }
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_float_type(pr.input_type, [&](auto scalar, auto acc) {
      using scalar_t = decltype(scalar);
      using acc_t = decltype(acc);
      dispatch_score_method(pr.method, [&](auto method) {
        constexpr ScoreMethod kMethod = decltype(method)::value;
        if constexpr (is_monte_carlo(kMethod)) {
          monte_carlo_scores_kernel<scalar_t, acc_t, kMethod>
              <<<mapping.blocks, kThreads, 0, stream>>>(pr, mapping.lanes);
        } else if (mapping.lanes > 1) {
          single_prediction_scores_group_kernel<scalar_t, acc_t, kMethod>
              <<<mapping.blocks, kThreads, 0, stream>>>(pr, mapping.lanes);
        } else {
          single_prediction_scores_kernel<scalar_t, acc_t, kMethod><<<mapping.blocks, kThreads, 0, stream>>>(pr);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  // mean / sum / max: one block per image. topk_mean: a sort per image (ATen), then the mean of each
  // image's first ceil(q n) values.
  static void aggregate_scores(const ScoreAggregationProblem& pr, const at::Tensor& scores, const at::Tensor& valid,
                               at::Tensor& out) {
    if (pr.num_images == 0) return;
    if (pr.pixels_per_image == 0) {  // every image scores 0 (topk's gather below would index an empty dim)
      out.zero_();
      return;
    }
    if (pr.reduction != ScoreReduction::kTopKMean) {
      TORCH_CHECK_VALUE(pr.num_images <= INT32_MAX,
                        "aggregate_scores: one CUDA block per image allows at most "
                        "2^31 - 1 images per call, got ",
                        pr.num_images);
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
      if (pr.is_double) {
        aggregate_scores_kernel<double><<<static_cast<unsigned int>(pr.num_images), kThreads, 0, stream>>>(pr);
      } else {
        aggregate_scores_kernel<float><<<static_cast<unsigned int>(pr.num_images), kThreads, 0, stream>>>(pr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const at::Tensor flat = scores.reshape({pr.num_images, pr.pixels_per_image});
    const at::Tensor mask = valid.defined() ? valid.reshape(flat.sizes()) : at::ones_like(flat, at::kBool);
    const at::Tensor ranked =
        std::get<0>(at::where(mask, flat, -std::numeric_limits<double>::infinity()).sort(1, true));
    const at::Tensor counts = mask.sum(1);
    const at::Tensor k = at::minimum(at::ceil(counts.to(at::kDouble) * pr.q).clamp_min(1), counts).to(at::kLong);
    const at::Tensor prefix = ranked.to(at::kDouble).cumsum(1);
    const at::Tensor top = prefix.gather(1, (k - 1).clamp_min(0).unsqueeze(1)).squeeze(1) / k.clamp_min(1);
    out.copy_(at::where(counts > 0, top, at::zeros_like(top)).to(out.scalar_type()));
  }
};

}  // namespace
}  // namespace uaal::cuda

TORCH_LIBRARY_IMPL(uaal_ext, CUDA, m) {
  using uaal::cuda::CudaAcquisitionLauncher;
  m.impl("pixel_scores", &uaal::pixel_scores_op<CudaAcquisitionLauncher>);
  m.impl("aggregate_scores", &uaal::aggregate_scores_op<CudaAcquisitionLauncher>);
}
