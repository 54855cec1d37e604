// The op schemas of uaal_ext, device-agnostic. Each backend registers its implementations at the
// bottom of its own file (cpu/*_cpu.cpp, cuda/*.cu); the Python side adds the fake (meta) kernels
// and autograd formulas (uaal_ext/_ops.py).
#include <Python.h>
#include <torch/library.h>

#ifndef UAAL_VERSION  // set by CMakeLists.txt
#define UAAL_VERSION "unknown"
#define UAAL_CUDA_ARCHS ""
#define UAAL_CUDA_COMPILER_VERSION ""
#define UAAL_CPU_CAPABILITIES ""
#define UAAL_TORCH_VERSION ""
#define UAAL_TORCH_CUDA_VERSION ""
#define UAAL_BUILD_TYPE ""
#endif

namespace {

// What this binary contains (uaal_ext.build_info() reads it), as strings; lists are comma-separated.
PyObject* build_config(PyObject*, PyObject*) {
#ifdef UAAL_WITH_CUDA
  PyObject* cuda = Py_True;
#else
  PyObject* cuda = Py_False;
#endif
  return Py_BuildValue("{s:s,s:O,s:s,s:s,s:s,s:s,s:s,s:s}", "version", UAAL_VERSION, "cuda", cuda, "cuda_archs",
                       UAAL_CUDA_ARCHS, "cuda_compiler_version", UAAL_CUDA_COMPILER_VERSION, "cpu_capabilities",
                       UAAL_CPU_CAPABILITIES, "torch_version", UAAL_TORCH_VERSION, "torch_cuda_version",
                       UAAL_TORCH_CUDA_VERSION, "build_type", UAAL_BUILD_TYPE);
}

PyMethodDef methods[] = {
    {"build_config", build_config, METH_NOARGS, "What this build of uaal_ext contains."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

// Importing uaal_ext._C runs the static registrations below and gives build_config().
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(uaal_ext, m) {
  // UAAL cross-entropy (docs/math.md#uaal-loss) in one pass over the logits. Returns
  //   loss: sum over valid pixels of w_i l_i (0-dim) when `reduce`, else the per-pixel w_i l_i
  //         (input's shape without dim 1, 0 at ignored pixels); accumulation dtype;
  //   log_normalizer: per pixel, lse - max_c z_c (log sum_c exp(z_c - max)), kept for the backward,
  //         which recomputes the max: relative to it, logits with a large offset stay exact;
  //   sums: (2,) = {sum c_y, sum c_y w_i} over valid pixels, the denominators of the "mean".
  // `target` holds class indices (N, *spatial), or class probabilities shaped like `input`
  // (docs/math.md#probability-targets: every pixel valid, c_y read as 1 in the sums, ignore_index
  // unused).
  // w_i = 1 + alpha * min((U_i * inv_scale)^exponent, s_max) (docs/math.md#uncertainty-weight),
  // U = `uncertainty`, or the entropy of the logits when it is None; alpha = 0 is plain
  // cross-entropy. s_max = inf means no cap.
  m.def(
      "cross_entropy_forward(Tensor input, Tensor target, Tensor? uncertainty, Tensor? weight, "
      "int ignore_index, float label_smoothing, float alpha, float exponent, float inv_scale, "
      "float s_max, bool reduce) -> (Tensor loss, Tensor log_normalizer, Tensor sums)");
  // Gradient of the loss above with respect to `input`: one read of the logits, one write.
  // `grad` is 0-dim (the same for every pixel, already divided by the mean's denominator) or
  // per pixel.
  m.def(
      "cross_entropy_backward(Tensor grad, Tensor input, Tensor target, Tensor log_normalizer, Tensor? uncertainty, "
      "Tensor? weight, int ignore_index, float label_smoothing, float alpha, float exponent, "
      "float inv_scale, float s_max) -> Tensor");
  // The reduced loss and its gradient with respect to `input`, in one pass over the logits: for
  // training steps whose incoming gradient is a scalar. `mode` is the reduction: 0 the sum over valid
  // pixels of w_i l_i; 1 that sum divided by sum c_y (reduction "mean"); 2 divided by sum c_y w_i
  // instead (reduction "mean" with normalize_by_weight). The gradient is divided by the same sum,
  // which a pre-pass computes before the gradient is written (the loss divides by the main pass's
  // own sum: equal up to rounding): from the targets (mode 1, and mode 2 with alpha = 0), the
  // targets and `uncertainty` (mode 2 with a map), or the logits' entropy (mode 2 without a map:
  // one more read of the logits; on the CPU, with float32/float64 class-index targets, the forward
  // writes the softmax into the gradient's buffer instead and a second pass turns it into the
  // gradient in place, csrc/loss_common.h).
  m.def(
      "cross_entropy_forward_backward(Tensor input, Tensor target, Tensor? uncertainty, Tensor? weight, "
      "int ignore_index, float label_smoothing, float alpha, float exponent, float inv_scale, float s_max, "
      "int mode) -> (Tensor loss, Tensor grad_input)");
  // Softmax entropy over dim 1 per pixel, optionally divided by log C (docs/math.md#entropy).
  m.def("pixel_entropy(Tensor input, bool normalized) -> Tensor");
  m.def("pixel_entropy_backward(Tensor grad, Tensor input, bool normalized) -> Tensor");

  // Kernel-noise perturbation (docs/math.md#kernel-noise-perturbation): for every weight theta of
  // the list, K perturbed copies theta + eta ||theta_g|| n / ||n_g|| as one (K, *theta.shape) tensor,
  // norms per tensor or (per_filter) per dim-0 slice g; n is Philox4x32-10 Gaussian noise keyed by
  // seed and counted by (element, k, tensor index, offset): identical on every device and thread count.
  m.def(
      "kernel_noise(Tensor[] weights, int num_samples, float eta, int seed, int offset, bool per_filter) -> Tensor[]");
  // From clean logits (N, C, *spatial) and perturbed logits (K, N, C, *spatial), per pixel:
  //   sigma = sqrt(mean_k ||p_k - p||^2) and noise_stability = mean_k ||p_k - p|| / ||p||,
  // p = softmax over C; accumulation dtype, shape (N, *spatial) (docs/math.md#perturbation-statistics).
  m.def("perturbation_statistics(Tensor clean, Tensor perturbed) -> (Tensor sigma, Tensor noise_stability)");

  // Acquisition scores per pixel (docs/math.md#acquisition-scores; higher = more informative):
  // method "entropy", "margin" (1 - (p1 - p2)) or "least_confidence" (1 - p1) of logits
  // (N, C, *spatial); "mc_entropy" (H of the mean prediction) or "bald" (H(mean p) - mean H(p)) of
  // Monte-Carlo logits (T, N, C, *spatial). Returns (N, *spatial), accumulation dtype.
  m.def("pixel_scores(Tensor input, str method) -> Tensor");
  // Per image (dim 0) over the pixels where `valid` (default: all): reduction "mean", "sum", "max" or
  // "topk_mean" (mean of the top ceil(q n) valid pixels). An image without valid pixels scores 0.
  m.def("aggregate_scores(Tensor scores, Tensor? valid, str reduction, float q) -> Tensor");
}
