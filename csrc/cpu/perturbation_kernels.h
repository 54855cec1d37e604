// CPU kernels of the perturbation ops, compiled once per instruction set like loss_kernels.h.
#pragma once

#include "perturbation_problem.h"

namespace uaal::cpu {

struct PerturbationKernelTable {
  // The three passes of kernel_noise: per-slot sums of squares, per-group scales, the writes.
  void (*kernel_noise)(const KernelNoiseProblem&);
  void (*perturbation_statistics)(const PerturbationStatisticsProblem&);
};

namespace DEFAULT { const PerturbationKernelTable& perturbation_kernel_table(); }
namespace AVX2 { const PerturbationKernelTable& perturbation_kernel_table(); }
namespace AVX512 { const PerturbationKernelTable& perturbation_kernel_table(); }

}  // namespace uaal::cpu
