// The CPU kernels, compiled once per instruction set (CMakeLists.txt: DEFAULT, AVX2, AVX512) into
// namespaces of that name; loss_cpu.cpp picks the best table the running CPU supports.
#pragma once

#include "loss_problem.h"

namespace uaal::cpu {

struct KernelTable {
  // Forward: writes log_normalizer (and the per-pixel loss, and with grad_input set the gradient)
  // when asked, and returns, summed over valid pixels in a fixed block order (identical for any
  // thread count), {sum w l, sum c_y, sum c_y w}.
  void (*cross_entropy_forward)(const CrossEntropyProblem&, double sums[3]);
  void (*cross_entropy_backward)(const CrossEntropyProblem&);
  // Overwrites grad_input, which holds the softmax the forward wrote (problem.probabilities), with
  // the gradient, from the forward's per-pixel weights and the scalar grad: reads no logits.
  void (*cross_entropy_gradient_from_probabilities)(const CrossEntropyProblem&);
  double (*target_weight_total)(const CrossEntropyProblem&);  // sum of c_y over valid pixels
  // sum of c_y w over valid pixels, w from the uncertainty map (source kMap): reads no logits
  double (*map_weight_total)(const CrossEntropyProblem&);
  void (*pixel_entropy_forward)(const EntropyProblem&);
  void (*pixel_entropy_backward)(const EntropyProblem&);
};

namespace DEFAULT { const KernelTable& kernel_table(); }
namespace AVX2 { const KernelTable& kernel_table(); }
namespace AVX512 { const KernelTable& kernel_table(); }

}  // namespace uaal::cpu
