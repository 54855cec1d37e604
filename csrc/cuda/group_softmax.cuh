// The softmax statistics of one pixel whose classes a group of lanes shares (cuda/pixel_index.cuh;
// with lanes == 1, one thread per pixel and all its classes). Two looks at the logits, as the CPU's
// BlockSoftmaxTerms takes: the exact max, then every term relative to it (KnownMaxSums). Sums relative
// to one max add up over disjoint sets of classes, so each lane sums its own classes and the group
// adds the lanes' sums; the online softmax's running max would differ from lane to lane. Every lane
// of the group ends with the same results. Every thread of the warp must call group_softmax together
// (it shuffles; see group_sum).
#pragma once

#include <cstdint>

#include "core/online_softmax.h"
#include "cuda/pixel_index.cuh"

namespace uaal::cuda {

// Softmax statistics of a group's pixel.
template <typename acc_t>
struct GroupSoftmax {
  acc_t max;
  KnownMaxSums<acc_t> sums;  // sum, and dot when kDot
  acc_t nan_guard;           // the pixel's softmax_nan_guard: NaN where its softmax is
  acc_t log_normalizer;      // log(sum) plus nan_guard
  acc_t sum_squares;         // sum_c e^(2 (z_c - max)) when kSquares (for ||p||^2), else 0
};

// A lane looks at classes lane, lane + lanes, ... below num_classes (0 for a pixel past the end), at
// most kMaxGroupClasses of them (an int index).
template <bool kDot, typename acc_t, bool kSquares = false, typename scalar_t>
__device__ __forceinline__ GroupSoftmax<acc_t> group_softmax(const PixelGroup& grp, const scalar_t* z,
                                                             int64_t num_classes, int64_t channel_stride) {
  acc_t max = OnlineSoftmax<acc_t>::initial_max(), logit_sum = 0;
  for (int c = grp.lane; c < num_classes; c += grp.lanes) {
    const acc_t logit = static_cast<acc_t>(z[c * channel_stride]);
    max = OnlineSoftmax<acc_t>::running_max(max, logit);
    logit_sum += logit;
  }
  max = group_max(max, grp.lanes);
  logit_sum = group_sum(logit_sum, grp.lanes);
  KnownMaxSums<acc_t> sums;
  acc_t sum_squares = 0;
  for (int c = grp.lane; c < num_classes; c += grp.lanes) {
    const acc_t e = sums.template add<kDot>(static_cast<acc_t>(z[c * channel_stride]), max);
    if constexpr (kSquares) sum_squares += e * e;
  }
  sums.sum = group_sum(sums.sum, grp.lanes);
  if constexpr (kDot) sums.dot = group_sum(sums.dot, grp.lanes);
  if constexpr (kSquares) sum_squares = group_sum(sum_squares, grp.lanes);
  const acc_t nan_guard = softmax_nan_guard(logit_sum, max);
  return {max, sums, nan_guard, sums.log_normalizer(nan_guard), sum_squares};
}

}  // namespace uaal::cuda
