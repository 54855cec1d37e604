// CPU kernels of the acquisition scores, compiled once per instruction set like loss_kernels.h.
#pragma once

#include "acquisition_problem.h"

namespace uaal::cpu {

struct AcquisitionKernelTable {
  void (*pixel_scores)(const PixelScoreProblem&);
};

namespace DEFAULT { const AcquisitionKernelTable& acquisition_kernel_table(); }
namespace AVX2 { const AcquisitionKernelTable& acquisition_kernel_table(); }
namespace AVX512 { const AcquisitionKernelTable& acquisition_kernel_table(); }

}  // namespace uaal::cpu
