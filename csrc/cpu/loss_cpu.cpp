// CPU implementations of the UAAL cross-entropy and pixel entropy ops: the shared op bodies
// (loss_common.h) with a launcher that runs the kernels compiled for the best instruction set this
// CPU supports.
#include <c10/util/strides.h>
#include <torch/library.h>

#include "cpu/buffer_cache.h"
#include "cpu/capability.h"
#include "cpu/loss_kernels.h"
#include "loss_common.h"

namespace uaal::cpu {
namespace {

const KernelTable& best_loss_kernels() {
  static const KernelTable& table =
      best_kernel_table(&DEFAULT::kernel_table, UAAL_CPU_AVX2_TABLE(kernel_table), UAAL_CPU_AVX512_TABLE(kernel_table));
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
    best_loss_kernels().cross_entropy_forward(pr, sums);
    return at::tensor({sums[0], sums[1], sums[2]}, at::TensorOptions().dtype(at::kDouble)).to(options.dtype());
  }
  static void cross_entropy_backward(const CrossEntropyProblem& pr) { best_loss_kernels().cross_entropy_backward(pr); }
  static constexpr bool kGradientFromProbabilities = true;
  static void cross_entropy_gradient_from_probabilities(const CrossEntropyProblem& pr) {
    best_loss_kernels().cross_entropy_gradient_from_probabilities(pr);
  }
  static at::Tensor target_weight_total(const PreparedCrossEntropy& prep, const at::TensorOptions& options) {
    return at::scalar_tensor(best_loss_kernels().target_weight_total(prep.problem), options);
  }
  static at::Tensor map_weight_total(const PreparedCrossEntropy& prep, const at::TensorOptions& options) {
    return at::scalar_tensor(best_loss_kernels().map_weight_total(prep.problem), options);
  }
  static void pixel_entropy_forward(const EntropyProblem& pr) { best_loss_kernels().pixel_entropy_forward(pr); }
  static void pixel_entropy_backward(const EntropyProblem& pr) { best_loss_kernels().pixel_entropy_backward(pr); }
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
