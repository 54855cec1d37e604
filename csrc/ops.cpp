// The op schemas of uaal_ext, device-agnostic. Each backend registers its implementations at the
// bottom of its own file (cpu/loss_cpu.cpp, cuda/loss_cuda.cu); the Python side adds the fake
// (meta) kernels and autograd formulas (uaal_ext/_ops.py).
#include <Python.h>
#include <torch/library.h>

// Importing uaal_ext._C runs the static registrations below; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(uaal_ext, m) {
  // UAAL cross-entropy (SPEC section 2) in one pass over the logits. Returns
  //   loss: sum over valid pixels of w_i l_i (0-dim) when `reduce`, else the per-pixel w_i l_i
  //         (input's shape without dim 1, 0 at ignored pixels); accumulation dtype;
  //   log_normalizer: per pixel, lse - max_c z_c (log sum_c exp(z_c - max)), kept for the backward,
  //         which recomputes the max: relative to it, logits with a large offset stay exact;
  //   sums: (2,) = {sum c_y, sum c_y w_i} over valid pixels, the denominators of the "mean".
  // w_i = 1 + alpha * min((U_i * inv_scale)^exponent, s_max), U = `uncertainty`, or the entropy of the
  // logits when it is None; alpha = 0 is plain cross-entropy. s_max = inf means no cap.
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
  // Softmax entropy over dim 1 per pixel, optionally divided by log C.
  m.def("pixel_entropy(Tensor input, bool normalized) -> Tensor");
  m.def("pixel_entropy_backward(Tensor grad, Tensor input, bool normalized) -> Tensor");
}
