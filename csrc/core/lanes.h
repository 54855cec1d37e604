// The lane types the per-pixel math of every family is written over, and the UAAL_HOST_DEVICE
// macro that compiles it for both backends.
//
// Per-pixel functions are UAAL_HOST_DEVICE and generic over a "lane" type V: a scalar (one pixel per
// CUDA thread) or a SIMD vector (the CPU backend, whose lanes are neighbouring pixels of one
// channel). Lanes<V> supplies the few primitives the math needs (exp, log, select, ...); the CPU
// backend adds specialisations for at::vec::Vectorized in cpu/vec_lanes.h. Nothing written over
// lanes sees a tensor: callers pass per-pixel values and per-class scalars.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define UAAL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UAAL_HOST_DEVICE inline
#endif

namespace uaal {

template <typename V>
struct Lanes;

// Lanes<V>::exp may map NaN to a number (the CPU's fast exp does); code that must propagate NaN
// adds nan_if_not_finite(x) = x - x (0 for finite x, NaN for NaN or +-inf) of a per-pixel value.
template <typename V>
UAAL_HOST_DEVICE V nan_if_not_finite(V x) {
  return x - x;
}

template <>
struct Lanes<float> {
  using Scalar = float;
  using Mask = bool;
  static UAAL_HOST_DEVICE float exp(float x) { return ::expf(x); }
  static UAAL_HOST_DEVICE float log(float x) { return ::logf(x); }
  static UAAL_HOST_DEVICE float sqrt(float x) { return ::sqrtf(x); }
  static UAAL_HOST_DEVICE float expm1(float x) { return ::expm1f(x); }
  static UAAL_HOST_DEVICE float log1p(float x) { return ::log1pf(x); }
  static UAAL_HOST_DEVICE float sin(float x) { return ::sinf(x); }
  static UAAL_HOST_DEVICE float cos(float x) { return ::cosf(x); }
  static UAAL_HOST_DEVICE float pow(float x, float e) { return ::powf(x, e); }
  static UAAL_HOST_DEVICE float neg_abs(float x) { return -::fabsf(x); }
  static UAAL_HOST_DEVICE float clamp_min(float x, float lo) { return ::fmaxf(x, lo); }
  static UAAL_HOST_DEVICE float select(bool m, float a, float b) { return m ? a : b; }
};

template <>
struct Lanes<double> {
  using Scalar = double;
  using Mask = bool;
  static UAAL_HOST_DEVICE double exp(double x) { return ::exp(x); }
  static UAAL_HOST_DEVICE double log(double x) { return ::log(x); }
  static UAAL_HOST_DEVICE double sqrt(double x) { return ::sqrt(x); }
  static UAAL_HOST_DEVICE double expm1(double x) { return ::expm1(x); }
  static UAAL_HOST_DEVICE double log1p(double x) { return ::log1p(x); }
  static UAAL_HOST_DEVICE double pow(double x, double e) { return ::pow(x, e); }
  static UAAL_HOST_DEVICE double neg_abs(double x) { return -::fabs(x); }
  static UAAL_HOST_DEVICE double clamp_min(double x, double lo) { return ::fmax(x, lo); }
  static UAAL_HOST_DEVICE double select(bool m, double a, double b) { return m ? a : b; }
};

}  // namespace uaal
