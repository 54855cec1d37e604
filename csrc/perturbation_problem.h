// Plain-data descriptions of the perturbation ops' calls, shared by the CPU and CUDA launchers (no
// ATen types: the per-capability CPU files and the .cu file see the same thing).
#pragma once

#include <cstdint>

#include "core/pixel_geometry.h"
#include "perturbation_math.h"

namespace uaal {

// ---- kernel_noise ----------------------------------------------------------------------------------
// One weight tensor of the list. Norm groups (the whole tensor, or each dim-0 slice for per-filter
// norms) of every tensor and sample are numbered (tensor, sample, group):
//   group id = first_group + sample * num_groups + group.
struct NoiseTensor {
  const void* weight = nullptr;  // contiguous, numel elements
  void* perturbed = nullptr;     // contiguous (K, numel)
  int64_t numel = 0;
  int64_t group_size = 1;  // elements per norm group
  int64_t num_groups = 0;
  int64_t first_group = 0;
};

// The unit of work of the noise passes: a range of elements of one (tensor, sample) inside one norm
// group, at most a backend-chosen length. Slots are ordered (tensor, sample, element), so the slots
// of a group are consecutive; their partial sums are added in that order (thread-count independent).
struct NoiseSlot {
  int32_t tensor = 0;
  int32_t sample = 0;
  int64_t begin = 0;
  int64_t end = 0;
};

struct KernelNoiseProblem {
  FloatType type = FloatType::kFloat32;
  const NoiseTensor* tensors = nullptr;
  int64_t num_tensors = 0;
  const NoiseSlot* slots = nullptr;
  int64_t num_slots = 0;
  const int64_t* group_first_slot = nullptr;  // (num_groups + 1): the slots of group id g
  int64_t num_groups = 0;                     // over all tensors and samples
  double eta = 0.0;
  uint32_t key0 = 0, key1 = 0, offset = 0;
  double* slot_noise_squares = nullptr;   // per slot: sum of n^2
  double* slot_weight_squares = nullptr;  // per slot of sample 0: sum of theta^2
  double* group_scale = nullptr;          // per group id: eta ||theta_g|| / ||n_g||

  UAAL_HOST_DEVICE NoiseStream stream(const NoiseSlot& slot) const {
    return {key0, key1, static_cast<uint32_t>(slot.sample), static_cast<uint32_t>(slot.tensor), offset};
  }
  UAAL_HOST_DEVICE int64_t group_id(const NoiseSlot& slot) const {
    const NoiseTensor& t = tensors[slot.tensor];
    return t.first_group + slot.sample * t.num_groups + slot.begin / t.group_size;
  }
};

// Pass 2 of 3 (after the per-slot sums, before the writes): the scale of one group, summing its
// slots' partial sums in slot order. The weight norm comes from the same group of sample 0.
UAAL_HOST_DEVICE void compute_group_scale(const KernelNoiseProblem& pr, int64_t group) {
  const int64_t first = pr.group_first_slot[group];
  const int64_t last = pr.group_first_slot[group + 1];
  double noise_squares = 0.0;
  for (int64_t s = first; s < last; ++s) noise_squares += pr.slot_noise_squares[s];
  const NoiseSlot& slot = pr.slots[first];
  const int64_t weight_group = group - slot.sample * pr.tensors[slot.tensor].num_groups;
  double weight_squares = 0.0;
  for (int64_t s = pr.group_first_slot[weight_group]; s < pr.group_first_slot[weight_group + 1]; ++s) {
    weight_squares += pr.slot_weight_squares[s];
  }
  pr.group_scale[group] = perturbation_scale(pr.eta, weight_squares, noise_squares);
}

// ---- perturbation_statistics ------------------------------------------------------------------------
// geometry: the clean logits as `in`, perturbed sample 0 as `out` (pixel dims merged where both allow).
struct PerturbationStatisticsProblem {
  PixelGeometry geometry;
  FloatType input_type = FloatType::kFloat32;
  const void* clean = nullptr;
  const void* perturbed = nullptr;  // sample k at perturbed + k * sample_stride
  int64_t sample_stride = 0;
  int64_t num_samples = 0;
  void* sigma = nullptr;            // per pixel, accumulation type, contiguous
  void* noise_stability = nullptr;  // per pixel, accumulation type, contiguous
};

}  // namespace uaal
