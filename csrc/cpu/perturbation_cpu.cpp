// CPU implementations of kernel_noise and perturbation_statistics: the shared op bodies
// (perturbation_common.h) with the kernels compiled for the best instruction set this CPU supports.
#include <ATen/Parallel.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include "cpu/buffer_cache.h"
#include "cpu/capability.h"
#include "cpu/perturbation_kernels.h"
#include "perturbation_common.h"

namespace uaal::cpu {
namespace {

const PerturbationKernelTable& best_perturbation_kernels() {
  static const PerturbationKernelTable& table =
      best_kernel_table(&DEFAULT::perturbation_kernel_table, UAAL_CPU_AVX2_TABLE(perturbation_kernel_table),
                        UAAL_CPU_AVX512_TABLE(perturbation_kernel_table));
  return table;
}

struct CpuPerturbationLauncher {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  // Recycled: a fresh multi-megabyte buffer costs more in page faults than the kernel that fills it.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return empty_cached(sizes, c10::contiguous_strides(sizes), options.dtype().toScalarType());
  }
  // Long enough to amortise a slot's setup, short enough that one large tensor splits into many
  // tasks for the threads.
  static constexpr int64_t kNoiseSlotElements = 16384;
  static void kernel_noise(const KernelNoiseProblem& pr) { best_perturbation_kernels().kernel_noise(pr); }
  static void perturbation_statistics(const PerturbationStatisticsProblem& pr) {
    best_perturbation_kernels().perturbation_statistics(pr);
  }
};

}  // namespace
}  // namespace uaal::cpu

TORCH_LIBRARY_IMPL(uaal_ext, CPU, m) {
  using uaal::cpu::CpuPerturbationLauncher;
  m.impl("kernel_noise", &uaal::kernel_noise_op<CpuPerturbationLauncher>);
  m.impl("perturbation_statistics", &uaal::perturbation_statistics_op<CpuPerturbationLauncher>);
}
