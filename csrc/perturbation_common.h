// Host-side code of the perturbation ops that every backend shares: argument checks naming the
// argument, the work plan of kernel_noise, and the op bodies. A backend supplies only `Launcher`
// (cpu/perturbation_cpu.cpp, cuda/perturbation_cuda.cu):
//   Launcher::Guard(tensor)                       make the tensor's device current
//   Launcher::empty(sizes, options)               a contiguous output
//   Launcher::kNoiseSlotElements                  longest slot (unit of work) of kernel_noise
//   Launcher::kernel_noise(problem)               sums, scales and writes (the tables are on its device)
//   Launcher::perturbation_statistics(problem)
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "core/checks.h"
#include "core/tensor_geometry.h"
#include "perturbation_problem.h"

namespace uaal {

// Philox counts 4-element blocks with one 32-bit word: 2^34 elements per tensor.
constexpr int64_t kMaxNoiseElements = int64_t(1) << 34;

inline void check_kernel_noise_args(at::TensorList weights, int64_t num_samples, double eta, int64_t seed,
                                    int64_t offset) {
  const char* op = "kernel_noise";
  TORCH_CHECK_VALUE(num_samples >= 1 && num_samples <= INT32_MAX, op,
                    ": num_samples (K, the number of perturbed copies) must be in [1, 2^31), got ", num_samples);
  TORCH_CHECK_VALUE(std::isfinite(eta) && eta >= 0.0, op,
                    ": eta (the relative noise magnitude) must be finite and >= 0, got ", eta);
  TORCH_CHECK_VALUE(seed >= 0, op, ": seed must be in [0, 2^63), got ", seed);
  TORCH_CHECK_VALUE(offset >= 0 && offset <= int64_t(UINT32_MAX), op, ": offset must be in [0, 2^32), got ", offset);
  TORCH_CHECK_VALUE(static_cast<int64_t>(weights.size()) <= INT32_MAX, op, ": too many weights (", weights.size(), ")");
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK_TYPE(is_supported_float(w.scalar_type()), op, ": weights[", i,
                     "] must be float64, float32, float16 or bfloat16, got ", w.scalar_type());
    TORCH_CHECK_TYPE(w.scalar_type() == weights[0].scalar_type(), op, ": weights[", i, "] is ", w.scalar_type(),
                     " but weights[0] is ", weights[0].scalar_type(), "; all weights must have one dtype");
    TORCH_CHECK_VALUE(w.device() == weights[0].device(), op, ": weights[", i, "] is on ", w.device(),
                      " but weights[0] is on ", weights[0].device());
    TORCH_CHECK_VALUE(w.numel() < kMaxNoiseElements, op, ": weights[", i, "] has ", w.numel(),
                      " elements; at most 2^34 are supported");
  }
}

// Plain-data tables as a byte tensor on `device`. For a GPU they are staged in pinned memory and
// copied without blocking: a copy from pageable memory would make the host wait for all the work
// queued before the op (the caching host allocator keeps the staging block until the copy has run).
template <typename T>
at::Tensor table_bytes(const std::vector<T>& rows, const at::Device& device) {
  const auto staging = at::TensorOptions().dtype(at::kByte).pinned_memory(device.is_cuda());
  at::Tensor bytes = at::empty({static_cast<int64_t>(rows.size() * sizeof(T))}, staging);
  if (!rows.empty()) std::memcpy(bytes.data_ptr(), rows.data(), rows.size() * sizeof(T));
  return bytes.to(at::TensorOptions().device(device), /*non_blocking=*/true);
}

// K perturbed copies of every weight: theta + eta ||theta_g|| n / ||n_g|| per norm group g (the whole
// tensor, or each dim-0 slice when per_filter), n the Philox noise of (seed, offset, k, tensor, element).
template <typename Launcher>
std::vector<at::Tensor> kernel_noise_op(at::TensorList weights, int64_t num_samples, double eta, int64_t seed,
                                        int64_t offset, bool per_filter) {
  check_kernel_noise_args(weights, num_samples, eta, seed, offset);
  if (weights.empty()) return {};
  typename Launcher::Guard guard(weights[0]);
  const at::Device device = weights[0].device();

  std::vector<at::Tensor> contiguous_weights, outputs;
  std::vector<NoiseTensor> tensors;
  std::vector<NoiseSlot> slots;
  std::vector<int64_t> group_first_slot;
  int64_t num_groups = 0;
  for (size_t t = 0; t < weights.size(); ++t) {
    at::Tensor w = weights[t].contiguous();
    std::vector<int64_t> shape{num_samples};
    shape.insert(shape.end(), w.sizes().begin(), w.sizes().end());
    at::Tensor out = Launcher::empty(shape, w.options());
    NoiseTensor info;
    info.weight = w.data_ptr();
    info.perturbed = out.data_ptr();
    info.numel = w.numel();
    info.num_groups = w.numel() == 0 ? 0 : (per_filter && w.dim() > 0 ? w.size(0) : 1);
    info.group_size = info.num_groups > 0 ? w.numel() / info.num_groups : 1;
    info.first_group = num_groups;
    num_groups += num_samples * info.num_groups;
    for (int64_t k = 0; k < num_samples; ++k) {
      for (int64_t g = 0; g < info.num_groups; ++g) {
        group_first_slot.push_back(static_cast<int64_t>(slots.size()));
        const int64_t end = (g + 1) * info.group_size;
        for (int64_t begin = g * info.group_size; begin < end; begin += Launcher::kNoiseSlotElements) {
          slots.push_back({static_cast<int32_t>(t), static_cast<int32_t>(k), begin,
                           std::min(end, begin + Launcher::kNoiseSlotElements)});
        }
      }
    }
    tensors.push_back(info);
    contiguous_weights.push_back(std::move(w));
    outputs.push_back(std::move(out));
  }
  group_first_slot.push_back(static_cast<int64_t>(slots.size()));
  if (slots.empty()) return outputs;

  const at::Tensor tensor_table = table_bytes(tensors, device);
  const at::Tensor slot_table = table_bytes(slots, device);
  const at::Tensor group_table = table_bytes(group_first_slot, device);
  const auto doubles = at::TensorOptions().dtype(at::kDouble).device(device);
  at::Tensor slot_sums = at::empty({2, static_cast<int64_t>(slots.size())}, doubles);
  at::Tensor group_scale = at::empty({num_groups}, doubles);

  KernelNoiseProblem pr;
  pr.type = float_type_of(weights[0].scalar_type());
  pr.tensors = reinterpret_cast<const NoiseTensor*>(tensor_table.data_ptr());
  pr.num_tensors = static_cast<int64_t>(tensors.size());
  pr.slots = reinterpret_cast<const NoiseSlot*>(slot_table.data_ptr());
  pr.num_slots = static_cast<int64_t>(slots.size());
  pr.group_first_slot = reinterpret_cast<const int64_t*>(group_table.data_ptr());
  pr.num_groups = num_groups;
  pr.eta = eta;
  pr.key0 = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  pr.key1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  pr.offset = static_cast<uint32_t>(offset);
  pr.slot_noise_squares = slot_sums[0].data_ptr<double>();
  pr.slot_weight_squares = slot_sums[1].data_ptr<double>();
  pr.group_scale = group_scale.data_ptr<double>();
  Launcher::kernel_noise(pr);
  return outputs;
}

inline void check_perturbation_statistics_args(const at::Tensor& clean, const at::Tensor& perturbed) {
  const char* op = "perturbation_statistics";
  TORCH_CHECK_TYPE(is_supported_float(clean.scalar_type()), op,
                   ": clean must be float64, float32, float16 or bfloat16 logits, got ", clean.scalar_type());
  TORCH_CHECK_VALUE(clean.dim() >= 2 && clean.size(1) >= 1, op,
                    ": clean must have shape (N, C) or (N, C, *spatial) with C >= 1, got ", clean.sizes());
  TORCH_CHECK_TYPE(perturbed.scalar_type() == clean.scalar_type(), op, ": perturbed is ", perturbed.scalar_type(),
                   " but clean is ", clean.scalar_type());
  TORCH_CHECK_VALUE(
      perturbed.dim() == clean.dim() + 1 && perturbed.sizes().slice(1) == clean.sizes() && perturbed.size(0) >= 1, op,
      ": perturbed must have shape (K, *clean.shape) with K >= 1, clean.shape being ", clean.sizes(), ", got ",
      perturbed.sizes());
  TORCH_CHECK_VALUE(perturbed.device() == clean.device(), op, ": perturbed is on ", perturbed.device(),
                    " but clean is on ", clean.device());
}

// Per pixel: sigma = sqrt(mean_k ||p_k - p||^2) and ns = mean_k ||p_k - p|| / ||p||, one pass.
template <typename Launcher>
std::tuple<at::Tensor, at::Tensor> perturbation_statistics_op(const at::Tensor& clean, const at::Tensor& perturbed) {
  check_perturbation_statistics_args(clean, perturbed);
  typename Launcher::Guard guard(clean);
  PerturbationStatisticsProblem pr;
  at::Tensor clean_in = clean, perturbed_in = perturbed;
  if (!make_geometry(clean_in, perturbed_in.select(0, 0), pr.geometry)) {
    clean_in = clean.contiguous();
    perturbed_in = perturbed.contiguous();
    TORCH_INTERNAL_ASSERT(make_geometry(clean_in, perturbed_in.select(0, 0), pr.geometry));
  }
  const auto options = clean.options().dtype(accumulation_type(clean.scalar_type()));
  at::Tensor sigma = Launcher::empty(pixel_shape(clean), options);
  at::Tensor noise_stability = Launcher::empty(pixel_shape(clean), options);
  pr.input_type = float_type_of(clean.scalar_type());
  pr.clean = clean_in.data_ptr();
  pr.perturbed = perturbed_in.data_ptr();
  pr.sample_stride = perturbed_in.stride(0);
  pr.num_samples = perturbed_in.size(0);
  pr.sigma = sigma.data_ptr();
  pr.noise_stability = noise_stability.data_ptr();
  Launcher::perturbation_statistics(pr);
  return {sigma, noise_stability};
}

}  // namespace uaal
