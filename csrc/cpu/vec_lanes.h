// Lanes<> for ATen's SIMD vectors: the per-pixel math written over Lanes<V> (core/lanes.h) then runs
// on a vector of neighbouring pixels of one channel, the layout ATen's own channel-dim softmax uses.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "core/lanes.h"

namespace uaal {

template <typename T>
struct Lanes<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  using Scalar = T;
  using Mask = V;  // comparisons of Vectorized give all-ones / all-zeros lanes
  static V exp(const V& x) {
    if constexpr (std::is_same_v<T, float>) {
      // ATen's fast exp (its softmax kernels use it), cheaper than Sleef's. It turns NaN into
      // a number: callers carry NaN separately (OnlineSoftmax::max, nan_if_not_finite).
      return x.exp_u20();
    } else {
      return x.exp();
    }
  }
  static V log(const V& x) { return x.log(); }
  static V sqrt(const V& x) { return x.sqrt(); }
  static V expm1(const V& x) { return x.expm1(); }
  static V log1p(const V& x) { return x.log1p(); }
  static V sin(const V& x) { return x.sin(); }
  static V cos(const V& x) { return x.cos(); }
  static V pow(const V& x, T e) { return x.pow(V(e)); }
  static V neg_abs(const V& x) { return x | V(T(-0.0)); }  // set the sign bit: one instruction
  static V clamp_min(const V& x, const V& lo) { return at::vec::clamp_min(x, lo); }
  static V select(const V& mask, const V& a, const V& b) { return V::blendv(b, a, mask); }
};

namespace cpu {

// Stores that bypass the caches, for outputs much larger than them (the gradient of a segmentation
// batch): a normal store first reads every line it writes. `ptr` must be aligned to the vector.
template <typename T>
inline void store_streaming(const at::vec::Vectorized<T>& v, T* ptr) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    _mm512_stream_ps(ptr, v);
  } else {
    _mm512_stream_pd(ptr, v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_stream_ps(ptr, v);
  } else {
    _mm256_stream_pd(ptr, v);
  }
#else
  v.store(ptr);
#endif
}

// Orders streaming stores before whatever follows (another thread reading the output). static:
// each per-instruction-set translation unit keeps its own copy.
static inline void streaming_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

}  // namespace cpu
}  // namespace uaal
