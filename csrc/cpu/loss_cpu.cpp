// CPU implementations of the uaal_ext ops: the shared op bodies (op_common.h) with a launcher that
// runs the kernels compiled for the best instruction set this CPU supports.
#include <ATen/Version.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include <string>

#include "cpu/buffer_cache.h"
#include "cpu/loss_kernels.h"
#include "op_common.h"

namespace uaal::cpu {
namespace {

// ATen's own choice (it honours ATEN_CPU_CAPABILITY), limited to what this build compiled.
const KernelTable& best_kernel_table() {
  static const KernelTable& table = [&]() -> const KernelTable& {
    const std::string capability = at::get_cpu_capability();
#if defined(UAAL_HAVE_CPU_AVX512)
    if (capability.find("AVX512") != std::string::npos) return AVX512::kernel_table();
#endif
#if defined(UAAL_HAVE_CPU_AVX2)
    if (capability.find("AVX2") != std::string::npos || capability.find("AVX512") != std::string::npos)
      return AVX2::kernel_table();
#endif
    return DEFAULT::kernel_table();
  }();
  return table;
}

struct CpuLauncher {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return empty_cached(sizes, c10::contiguous_strides(sizes), options.dtype().toScalarType());
  }
  static at::Tensor empty_like(const at::Tensor& like) { return empty_cached_like(like); }
  static at::Tensor cross_entropy_forward(const CrossEntropyProblem& pr, const at::TensorOptions& options) {
    double sums[3];
    best_kernel_table().cross_entropy_forward(pr, sums);
    return at::tensor({sums[0], sums[1], sums[2]}, at::TensorOptions().dtype(at::kDouble)).to(options.dtype());
  }
  static void cross_entropy_backward(const CrossEntropyProblem& pr) { best_kernel_table().cross_entropy_backward(pr); }
  static at::Tensor target_weight_total(const PreparedCrossEntropy& prep, const at::TensorOptions& options) {
    return at::scalar_tensor(best_kernel_table().target_weight_total(prep.problem), options);
  }
  static void pixel_entropy_forward(const EntropyProblem& pr) { best_kernel_table().pixel_entropy_forward(pr); }
  static void pixel_entropy_backward(const EntropyProblem& pr) { best_kernel_table().pixel_entropy_backward(pr); }
};

}  // namespace
}  // namespace uaal::cpu

TORCH_LIBRARY_IMPL(uaal_ext, CPU, m) {
  using uaal::cpu::CpuLauncher;
  m.impl("cross_entropy_forward", &uaal::cross_entropy_forward_op<CpuLauncher>);
  m.impl("cross_entropy_backward", &uaal::cross_entropy_backward_op<CpuLauncher>);
  m.impl("cross_entropy_forward_backward", &uaal::cross_entropy_forward_backward_op<CpuLauncher>);
  m.impl("pixel_entropy", &uaal::pixel_entropy_op<CpuLauncher>);
  m.impl("pixel_entropy_backward", &uaal::pixel_entropy_backward_op<CpuLauncher>);
}
