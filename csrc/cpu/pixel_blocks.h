// Block-wise access to the logits for the CPU kernels, shared by every op (loss_kernels.cpp,
// perturbation_kernels.cpp, acquisition_kernels.cpp). Included only by files compiled once per
// CPU_CAPABILITY: everything here has internal linkage in that capability's namespace, so the copies
// compiled with different -m flags never meet.
//
// Work is cut into blocks of pixels_per_block() consecutive pixels along the innermost pixel
// dimension. A block's logits (C rows of that many values) are read from memory once and then stay
// in L1/L2 for the block's further looks. Blocks are a fixed partition of the pixels, which makes
// reductions independent of the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/online_softmax.h"
#include "core/pixel_geometry.h"
#include "cpu/vec_lanes.h"

#ifndef CPU_CAPABILITY
#error "pixel_blocks.h is for files compiled once per CPU_CAPABILITY (see CMakeLists.txt)"
#endif

namespace uaal::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int kVectorsPerBlock = 4;

// The most channel rows a block reads in place; more are copied into contiguous staging first
// (see load_rows). 8 is below the ways of an L1 set on the CPUs AVX2/AVX512 builds target.
constexpr int64_t kInPlaceRows = 8;

constexpr int64_t kCacheLine = 64;

// Requests the run of bytes that follows `run` (the same run of the next block: a thread works
// through its blocks in memory order) into L2, one share at a time: share(i) of `shares` as the i-th
// step of this block's work starts. With the hardware prefetchers alone a block's loads still waited
// on memory, most of all for a channels-last block, one short pixel-major run; and a channels-last
// run's requests issued all at once as a block starts queued behind each other, where spread over the
// block's work they arrive in the order it reads them (see "Prefetching the next block" in
// docs/performance.md). Addresses are kept as integers: they may lie past the tensor's end, which is
// harmless, as a prefetch never faults.
class RunPrefetch {
 public:
  RunPrefetch(const void* run, int64_t run_bytes, int64_t shares)
      : next_(reinterpret_cast<uintptr_t>(run) + static_cast<uintptr_t>(run_bytes)),
        run_bytes_(run_bytes),
        shares_(shares) {}

  // The lines starting in [i, i + 1) * run_bytes / shares, and the one that share begins in.
  void share(int64_t i) const {
    const int64_t end = run_bytes_ * (i + 1) / shares_;
    for (int64_t b = (run_bytes_ * i / shares_) & ~(kCacheLine - 1); b < end; b += kCacheLine) {
      __builtin_prefetch(reinterpret_cast<const void*>(next_ + static_cast<uintptr_t>(b)), /*rw=*/0,
                         /*locality: L2=*/2);
    }
  }

 private:
  uintptr_t next_;
  int64_t run_bytes_, shares_;
};

// The next block's `rows` runs of `run_values` values (`row_stride` apart) all at once, as this block
// starts: what the class rows of a contiguous block need (spreading these changed nothing).
template <typename T>
void prefetch_next_block(const T* block, int64_t rows, int64_t row_stride, int64_t run_values) {
  for (int64_t r = 0; r < rows; ++r) RunPrefetch(block + r * row_stride, run_values * int64_t(sizeof(T)), 1).share(0);
}

template <typename acc_t>
constexpr int pixels_per_block() {
  return kVectorsPerBlock * Vectorized<acc_t>::size();
}

// A block's logits as C rows of pixels_per_block() accumulation-type values; value(c, l) also reads a
// pixel-major run (row_stride 1, pixel_stride C) where rows are not needed.
template <typename acc_t>
struct BlockRows {
  const acc_t* data;
  int64_t row_stride;
  int64_t pixel_stride = 1;
  const acc_t* row(int64_t c) const { return data + c * row_stride; }
  acc_t value(int64_t c, int64_t l) const { return data[c * row_stride + l * pixel_stride]; }
};

// Runs body(block_index, first_pixel, count, in_offset, out_offset) over all blocks in parallel.
template <typename Body>
void parallel_blocks(const PixelGeometry& g, int64_t block_pixels, const Body& body) {
  if (g.num_pixels == 0) return;
  const int last = g.ndim - 1;
  const int64_t inner = g.size[last];
  const int64_t blocks_per_row = (inner + block_pixels - 1) / block_pixels;
  const int64_t num_blocks = (g.num_pixels / inner) * blocks_per_row;
  // Enough blocks per task to amortise scheduling; more tasks than threads for balance.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.num_classes * block_pixels / 64));
  at::parallel_for(0, num_blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t row = b / blocks_per_row;
      const int64_t start = (b % blocks_per_row) * block_pixels;
      int64_t in_offset = start * g.in_stride[last];
      int64_t out_offset = start * g.out_stride[last];
      int64_t rest = row;
      for (int d = last - 1; d >= 0; --d) {
        const int64_t i = rest % g.size[d];
        rest /= g.size[d];
        in_offset += i * g.in_stride[d];
        out_offset += i * g.out_stride[d];
      }
      body(b, row * inner + start, std::min(block_pixels, inner - start), in_offset, out_offset);
    }
    streaming_fence();
  });
}

template <typename acc_t>
acc_t* thread_buffer(std::vector<acc_t>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// Channels-last blocks. A full block of pixels is one contiguous pixel-major run (pixel l's C values
// at l * C); most kernels work on class rows (class c's P pixels at c * P). With AVX-512 and float
// values of at least 4 classes the two orders are converted by in-register transposes (below), and
// the loss kernels skip the conversion ("pixel quads", below); otherwise by vector gathers from an
// L1-resident copy.
template <typename acc_t>
using IndexVec = Vectorized<at::vec::int_same_size_t<acc_t>>;

// Class rows of a pixel-major run: row c, vector u = the run's elements (u W + j) C + c, j < W.
template <typename acc_t>
void gather_class_rows(const acc_t* run, int64_t C, acc_t* rows) {
  constexpr int W = Vectorized<acc_t>::size();
  constexpr int P = pixels_per_block<acc_t>();
  using Index = at::vec::int_same_size_t<acc_t>;
  const IndexVec<acc_t> pixel_stride = IndexVec<acc_t>::arange(Index(0), static_cast<Index>(C));
  for (int64_t c = 0; c < C; ++c) {
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      at::vec::gather<sizeof(acc_t)>(run + u * W * C + c, pixel_stride).store(rows + c * P + u * W);
    }
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// Channels-last float blocks are converted 16 pixels (one vector) at a time. 512-bit shuffles have
// one port, which the kernels' arithmetic also needs, so each direction moves what it can through the
// load and store ports instead:
// - into class rows, four classes at a time: each 128-bit lane is loaded from its own pixel's row
//   (a masked broadcast, no shuffle), then one 4 x 4 transpose inside every lane (8 shuffles);
// - back to pixel-major order, 16 classes at a time by a 16 x 16 transpose into an L1 copy of the
//   16 pixels' run, which is then streamed out in whole vectors; the C mod 16 classes left over go
//   four at a time, each lane stored to its own pixel's row.
// Quads start at 0, 4, ... and the last one at C - 4, overlapping its neighbour (the overlap holds the
// same values twice), so no load or store is masked by class.
constexpr int kTile = 16;
constexpr int kQuad = 4;

// v[i] (row i, 16 values) becomes column i. Four rounds of two-source shuffles: 32-bit pairs, 64-bit
// pairs, then 128-bit lanes twice.
inline void transpose_16x16(__m512 (&v)[kTile]) {
  __m512 pairs[kTile];
  for (int i = 0; i < kTile; i += 2) {
    pairs[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);  // per 128-bit lane L: r_i[4L], r_i+1[4L], r_i[4L+1], ...
    pairs[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
  }
  // quads[4g + k], lane L: rows 4g..4g+3 of column 4L + k.
  __m512 quads[kTile];
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(pairs[4 * g]), b = _mm512_castps_pd(pairs[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(pairs[4 * g + 2]), d = _mm512_castps_pd(pairs[4 * g + 3]);
    quads[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    quads[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    quads[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    quads[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // Column 4L + k gathers lane L of quads[k], quads[4 + k], quads[8 + k], quads[12 + k].
  constexpr int kEvenLanes = 0x88, kOddLanes = 0xDD;  // lanes (0, 2 | 0, 2) and (1, 3 | 1, 3) of (a | b)
  for (int k = 0; k < 4; ++k) {
    const __m512 low_even = _mm512_shuffle_f32x4(quads[k], quads[4 + k], kEvenLanes);
    const __m512 low_odd = _mm512_shuffle_f32x4(quads[k], quads[4 + k], kOddLanes);
    const __m512 high_even = _mm512_shuffle_f32x4(quads[8 + k], quads[12 + k], kEvenLanes);
    const __m512 high_odd = _mm512_shuffle_f32x4(quads[8 + k], quads[12 + k], kOddLanes);
    v[k] = _mm512_shuffle_f32x4(low_even, high_even, kEvenLanes);
    v[8 + k] = _mm512_shuffle_f32x4(low_even, high_even, kOddLanes);
    v[4 + k] = _mm512_shuffle_f32x4(low_odd, high_odd, kEvenLanes);
    v[12 + k] = _mm512_shuffle_f32x4(low_odd, high_odd, kOddLanes);
  }
}

// Transposes the 4 x 4 matrix held in each 128-bit lane of z (its row r in z[r]); its own inverse.
inline void transpose_lane_quads(__m512 (&z)[kQuad]) {
  const __m512d t0 = _mm512_castps_pd(_mm512_unpacklo_ps(z[0], z[1]));
  const __m512d t1 = _mm512_castps_pd(_mm512_unpackhi_ps(z[0], z[1]));
  const __m512d t2 = _mm512_castps_pd(_mm512_unpacklo_ps(z[2], z[3]));
  const __m512d t3 = _mm512_castps_pd(_mm512_unpackhi_ps(z[2], z[3]));
  z[0] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
  z[1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
  z[2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
  z[3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
}

// Classes c0..c0+3 of 16 pixels whose values are at src + l C: z[r]'s lane q = pixel 4q + r's four.
inline void load_pixel_quads(const float* src, int64_t C, int64_t c0, __m512 (&z)[kQuad]) {
  for (int r = 0; r < kQuad; ++r) {
    __m512 v = _mm512_castps128_ps512(_mm_loadu_ps(src + r * C + c0));
    v = _mm512_mask_broadcast_f32x4(v, 0x00F0, _mm_loadu_ps(src + (4 + r) * C + c0));
    v = _mm512_mask_broadcast_f32x4(v, 0x0F00, _mm_loadu_ps(src + (8 + r) * C + c0));
    z[r] = _mm512_mask_broadcast_f32x4(v, 0xF000, _mm_loadu_ps(src + (12 + r) * C + c0));
  }
}

// The inverse: z[r]'s lane q to dst + (4q + r) C + c0. Lanes 1-3 are extracted (one shuffle each)
// rather than stored with a one-lane mask, which was slower.
inline void store_pixel_quads(const __m512 (&z)[kQuad], int64_t C, int64_t c0, float* dst) {
  for (int r = 0; r < kQuad; ++r) {
    _mm_storeu_ps(dst + r * C + c0, _mm512_castps512_ps128(z[r]));
    _mm_storeu_ps(dst + (4 + r) * C + c0, _mm512_extractf32x4_ps(z[r], 1));
    _mm_storeu_ps(dst + (8 + r) * C + c0, _mm512_extractf32x4_ps(z[r], 2));
    _mm_storeu_ps(dst + (12 + r) * C + c0, _mm512_extractf32x4_ps(z[r], 3));
  }
}

// Which pixel and class each lane of a 16-pixel group's pixel-major run holds, for work done on the
// run where it lies, without transposes: the run's vector k (k < C), lane i holds value 16 k + i,
// of the group's pixel (16 k + i) / C and class (16 k + i) mod C.
struct PixelMajorLanes {
  std::vector<int32_t> pixel;
  std::vector<float> class_index;  // float: compared with BlockTargets::target_class

  explicit PixelMajorLanes(int64_t C) : pixel(kTile * C), class_index(kTile * C) {
    for (int64_t m = 0; m < kTile * C; ++m) {
      pixel[m] = static_cast<int32_t>(m / C);
      class_index[m] = static_cast<float>(m % C);
    }
  }

  // Vector k of the run's lanes filled from per-pixel values (lane l: the group's pixel l).
  __m512 spread(__m512 per_pixel, int64_t k) const {
    return _mm512_permutexvar_ps(_mm512_loadu_si512(pixel.data() + kTile * k), per_pixel);
  }
  __m512 classes(int64_t k) const { return _mm512_loadu_ps(class_index.data() + kTile * k); }
};

inline int64_t quad_start(int64_t quad, int64_t C) { return std::min<int64_t>(quad * kQuad, C - kQuad); }
inline int64_t quad_count(int64_t C) { return (C + kQuad - 1) / kQuad; }

// The RunPrefetch of a full channels-last float block read four classes at a time: one share per
// quad of each 16-pixel group.
inline RunPrefetch quad_prefetch(const float* run, int64_t C) {
  return RunPrefetch(run, pixels_per_block<float>() * C * int64_t(sizeof(float)), kVectorsPerBlock * quad_count(C));
}

// Class rows (row c, pixel l at c * P + l) of a full block whose pixel l's C >= 4 values are at
// run + l C, read in place (copying the run into L1 first was slower: its 128-bit loads then
// straddle the copy's stores).
inline void transpose_to_class_rows(const float* run, int64_t C, float* rows) {
  constexpr int P = pixels_per_block<float>();
  const RunPrefetch next_block = quad_prefetch(run, C);
  __m512 z[kQuad];
  for (int group = 0; group < P / kTile; ++group) {
    for (int64_t quad = 0; quad < quad_count(C); ++quad) {
      next_block.share(group * quad_count(C) + quad);
      const int64_t c0 = quad_start(quad, C);
      load_pixel_quads(run + group * kTile * C, C, c0, z);
      transpose_lane_quads(z);
      for (int k = 0; k < kQuad; ++k) _mm512_storeu_ps(rows + (c0 + k) * P + group * kTile, z[k]);
    }
  }
}

// Channels-last float blocks worked on in the order load_pixel_quads gives them, with no transpose
// either way ("pixel quads", docs/performance.md#channels-last-logits): vector (quad k, r) of a
// 16-pixel group holds in its 128-bit lane q pixel 4q + r's classes quad_start(k) .. + 3. A sum over
// classes adds the vectors of all quads element by element, then quad_totals finishes each lane and
// gathers the four vectors' totals into one vector of 16 pixels (lane l = pixel l), the layout the
// per-pixel math runs on; a per-pixel value enters the quad layout by one in-lane broadcast per r.
// The last quad of a C not divisible by 4 overlaps its neighbour: fresh_elements masks its repeated
// classes out of sums, and storing it writes the same values twice.
using PixelQuads = __m512[kQuad];

// The lane elements of quad `quad` that no earlier quad holds, in every lane.
inline __mmask16 fresh_elements(int64_t quad, int64_t C) {
  const int64_t repeated = quad * kQuad - quad_start(quad, C);  // 0 but for an overlapping last quad
  return static_cast<__mmask16>(((0xF << repeated) & 0xF) * 0x1111);
}

// Class indices of quad `quad` in every lane.
inline __m512 quad_classes(int64_t quad, int64_t C) {
  return _mm512_add_ps(_mm512_set1_ps(static_cast<float>(quad_start(quad, C))), _mm512_set4_ps(3.0f, 2.0f, 1.0f, 0.0f));
}

// Per-pixel values (lane l: pixel l) in the layout of vector r: lane q's four elements all pixel 4q + r's.
inline __m512 spread_over_quad(__m512 per_pixel, int r) {
  switch (r) {
    case 0: return _mm512_permute_ps(per_pixel, 0x00);
    case 1: return _mm512_permute_ps(per_pixel, 0x55);
    case 2: return _mm512_permute_ps(per_pixel, 0xAA);
    default: return _mm512_permute_ps(per_pixel, 0xFF);
  }
}

// Per-pixel totals of the four vectors r of a group: lane l = pixel l's total over the four
// elements of vector (l mod 4)'s lane l / 4, combined by `op` (add or max). Two rounds of unpacks,
// 6 shuffles in all.
template <typename Op>
__m512 quad_totals(const PixelQuads& v, Op op) {
  // Round 1, lane q: (v0[0] + v0[2], v1[0] + v1[2], v0[1] + v0[3], v1[1] + v1[3]) and the same of v2, v3.
  const __m512 low = op(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
  const __m512 high = op(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
  // Round 2, lane q: the totals of v0, v1, v2, v3, pixels 4q .. 4q + 3.
  const __m512d low_pd = _mm512_castps_pd(low), high_pd = _mm512_castps_pd(high);
  return op(_mm512_castpd_ps(_mm512_unpacklo_pd(low_pd, high_pd)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(low_pd, high_pd)));
}
inline __m512 quad_sums(const PixelQuads& v) {
  return quad_totals(v, [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); });
}
// Max as OnlineSoftmax::running_max keeps it (_mm512_max_ps(z, m) is z > m ? z : m: NaN never wins).
inline __m512 quad_maxima(const PixelQuads& v) {
  return quad_totals(v, [](__m512 a, __m512 b) { return _mm512_max_ps(b, a); });
}

// Values of a full channels-last float block in pixel-quad layout, group after group: vector
// (u, quad, r) at (u quad_count(C) + quad) kQuad + r.
inline int64_t pixel_quad_vector(int u, int64_t quad, int r, int64_t C) {
  return (u * quad_count(C) + quad) * kQuad + r;
}

// How many values a block of pixel quads holds (the overlapping last quad's included).
inline int64_t pixel_quad_values(int64_t C) { return quad_count(C) * kQuad * pixels_per_block<float>(); }

// A block's per-pixel vectors (one per 16-pixel group) spread over the quad layout, each r once.
struct SpreadOverQuads {
  __m512 v[kVectorsPerBlock][kQuad];
  explicit SpreadOverQuads(const Vectorized<float> (&per_pixel)[kVectorsPerBlock]) {
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      for (int r = 0; r < kQuad; ++r) v[u][r] = spread_over_quad(per_pixel[u], r);
    }
  }
  __m512 operator()(int u, int r) const { return v[u][r]; }
};

// Loads 16-pixel group u of a full channels-last float block (pixel l's C >= 4 logits at run + l C)
// into `logits` as pixel quads (pixel_quad_vector order), requesting the next block's share as each
// quad is read. Returns each pixel's max logit (lane l: pixel l) and, when logit_sum is not null,
// stores the sum of each pixel's logits there (for softmax_nan_guard).
inline __m512 stage_pixel_quad_group(const float* run, int64_t C, int u, const RunPrefetch& next_block, float* logits,
                                     __m512* logit_sum) {
  __m512 max[kQuad], sum[kQuad];
  for (int r = 0; r < kQuad; ++r) {
    max[r] = _mm512_set1_ps(std::numeric_limits<float>::lowest());  // OnlineSoftmax::initial_max
    sum[r] = _mm512_setzero_ps();
  }
  for (int64_t quad = 0; quad < quad_count(C); ++quad) {
    next_block.share(u * quad_count(C) + quad);
    __m512 z[kQuad];
    load_pixel_quads(run + u * kTile * C, C, quad_start(quad, C), z);
    const __mmask16 fresh = fresh_elements(quad, C);
    for (int r = 0; r < kQuad; ++r) {
      _mm512_storeu_ps(logits + pixel_quad_vector(u, quad, r, C) * kTile, z[r]);
      max[r] = _mm512_max_ps(z[r], max[r]);
      if (logit_sum) sum[r] = _mm512_mask_add_ps(sum[r], fresh, sum[r], z[r]);
    }
  }
  if (logit_sum) *logit_sum = quad_sums(sum);
  return quad_maxima(max);
}

#endif

// Where each value of a pixel-major run of P * C comes from in the class rows: position m = l C + c
// reads row c, pixel l (built once per thread and C).
template <typename acc_t>
const at::vec::int_same_size_t<acc_t>* pixel_major_sources(int64_t C) {
  constexpr int64_t P = pixels_per_block<acc_t>();
  thread_local std::vector<at::vec::int_same_size_t<acc_t>> sources;
  thread_local int64_t built_for = -1;
  if (built_for != C) {
    sources.resize(P * C);
    for (int64_t m = 0; m < P * C; ++m) sources[m] = static_cast<at::vec::int_same_size_t<acc_t>>((m % C) * P + m / C);
    built_for = C;
  }
  return sources.data();
}

// Reads a block of logits: in place when they already are contiguous accumulation-type rows,
// otherwise converted / gathered into `staging` (reduced precision, channels-last, strided views,
// and the last partial block, whose missing lanes are padded with 0). `single_look`: the caller
// reads each value once, so rows a plane apart cannot evict each other between looks.
template <typename scalar_t, typename acc_t>
BlockRows<acc_t> load_rows(const PixelGeometry& g, const scalar_t* input, int64_t offset, int64_t count, acc_t* staging,
                           bool single_look = false) {
  constexpr int64_t P = pixels_per_block<acc_t>();
  const int64_t C = g.num_classes;
  const int64_t cs = g.in_channel_stride;
  const int64_t ps = g.in_stride[g.ndim - 1];
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (ps == 1 && count == P) {
      prefetch_next_block(input + offset, C, cs, P);
      // A block's C rows lie a whole channel plane apart. With more rows than a cache set has
      // ways they evict each other between the block's looks (a plane of 2^k bytes puts every row
      // in one L1 set, and in one L2 set too when the pages are huge). A contiguous copy is read
      // from memory once, like the rows would be, and then stays in cache.
      if (C <= kInPlaceRows || single_look) return {input + offset, cs};
      for (int64_t c = 0; c < C; ++c) std::copy_n(input + offset + c * cs, P, staging + c * P);
      return {staging, P};
    }
    if (cs == 1 && ps == C && count == P) {  // channels-last: the block is one pixel-major run of P * C
#if defined(CPU_CAPABILITY_AVX512)
      if constexpr (std::is_same_v<acc_t, float>) {
        if (C >= kQuad) {
          transpose_to_class_rows(input + offset, C, staging);  // prefetches the next block as it goes
          return {staging, P};
        }
      }
#endif
      prefetch_next_block(input + offset, 1, 0, P * C);
      // Copied first: a sequential read streams the run in at memory speed, where gathers straight
      // from memory would wait on up to W lines each.
      thread_local std::vector<acc_t> run_buffer;
      acc_t* run = thread_buffer(run_buffer, P * C);
      std::copy_n(input + offset, P * C, run);
      gather_class_rows(run, C, staging);
      return {staging, P};
    }
    if (cs == 1) {  // channels-last, partial or strided: transpose the block
      at::vec::transpose_mxn<acc_t>(input + offset, ps, staging, P, static_cast<int>(count), static_cast<int>(C));
      for (int64_t c = 0; c < C; ++c) std::fill(staging + c * P + count, staging + (c + 1) * P, acc_t(0));
      return {staging, P};
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* src = input + offset + c * cs;
    acc_t* dst = staging + c * P;
    for (int64_t l = 0; l < count; ++l) dst[l] = static_cast<acc_t>(src[l * ps]);
    for (int64_t l = count; l < P; ++l) dst[l] = acc_t(0);
  }
  return {staging, P};
}

// How a block's gradient rows reach the output: through the staging buffer (other dtypes, strided
// layouts, partial blocks), stored straight into it, or with streaming stores when the output is far
// larger than the caches and the rows are aligned.
enum class OutputPath { kStaged, kDirect, kStreaming };

constexpr int64_t kStreamingBytes = int64_t(8) << 20;

template <typename acc_t>
bool far_larger_than_caches(const PixelGeometry& g) {
  return g.num_pixels * g.num_classes * int64_t(sizeof(acc_t)) >= kStreamingBytes;
}

template <typename scalar_t, typename acc_t>
OutputPath output_path(const PixelGeometry& g, const scalar_t* out, int64_t offset, int64_t count) {
  if (!std::is_same_v<scalar_t, acc_t> || g.out_stride[g.ndim - 1] != 1 || count != pixels_per_block<acc_t>()) {
    return OutputPath::kStaged;
  }
  constexpr int64_t kVectorBytes = sizeof(Vectorized<acc_t>);
  const bool aligned = reinterpret_cast<uintptr_t>(out + offset) % kVectorBytes == 0 &&
                       (g.out_channel_stride * int64_t(sizeof(acc_t))) % kVectorBytes == 0;
  return aligned && far_larger_than_caches<acc_t>(g) ? OutputPath::kStreaming : OutputPath::kDirect;
}

// How a full channels-last block's output, one pixel-major run starting at `run`, is written:
// streamed when the output is far larger than the caches and the run starts on a vector boundary.
template <typename acc_t>
OutputPath run_output_path(const PixelGeometry& g, const acc_t* run) {
  const bool aligned = reinterpret_cast<uintptr_t>(run) % sizeof(Vectorized<acc_t>) == 0;
  return aligned && far_larger_than_caches<acc_t>(g) ? OutputPath::kStreaming : OutputPath::kDirect;
}

template <typename acc_t>
void store_vector(const Vectorized<acc_t>& v, acc_t* dst, OutputPath path) {
  if (path == OutputPath::kStreaming) {
    store_streaming(v, dst);
  } else {
    v.store(dst);
  }
}

template <typename scalar_t, typename acc_t>
void store_rows(const PixelGeometry& g, scalar_t* out, int64_t offset, int64_t count, const acc_t* rows) {
  constexpr int64_t P = pixels_per_block<acc_t>();
  const int64_t ps = g.out_stride[g.ndim - 1];
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (g.out_channel_stride == 1) {  // channels-last
      const int64_t C = g.num_classes;
      if (count == P && ps == C) {
        // The block's gradient is one contiguous run of P * C values, written vector by vector in
        // order (streamed when large: whole lines, no read of what they overwrite).
        constexpr int W = Vectorized<acc_t>::size();
        acc_t* run = out + offset;
        const OutputPath path = run_output_path(g, run);
        const auto* sources = pixel_major_sources<acc_t>(C);
        for (int64_t m = 0; m < P * C; m += W) {
          const Vectorized<acc_t> v = at::vec::gather<sizeof(acc_t)>(rows, IndexVec<acc_t>::loadu(sources + m));
          store_vector(v, run + m, path);
        }
        return;
      }
      at::vec::transpose_mxn<acc_t>(rows, P, out + offset, ps, static_cast<int>(C), static_cast<int>(count));
      return;
    }
  }
  for (int64_t c = 0; c < g.num_classes; ++c) {
    scalar_t* dst = out + offset + c * g.out_channel_stride;
    for (int64_t l = 0; l < count; ++l) dst[l * ps] = static_cast<scalar_t>(rows[c * P + l]);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// Writes 16 pixels' pixel-major copy (kTile * C values, in L1) to `dst` in whole vectors, streamed
// when `path` says so: every output line is written once, whole.
inline void write_group_run(const float* group_run, int64_t C, float* dst, OutputPath path) {
  for (int64_t m = 0; m < kTile * C; m += kTile) store_vector(Vectorized<float>::loadu(group_run + m), dst + m, path);
}

// A full channels-last block of float output with at least 4 classes, without staging its class
// rows: each group of 16 pixels is transposed into a pixel-major copy in L1 (see kTile above) and
// written out in order (streamed when large).
template <typename Value>
void write_channels_last_block(const PixelGeometry& g, float* out, int64_t out_offset, Value&& value) {
  const int64_t C = g.num_classes;
  const int64_t full_tiles = C / kTile;
  float* run = out + out_offset;
  const OutputPath path = run_output_path(g, run);
  thread_local std::vector<float> group_buffer;
  float* group_run = thread_buffer(group_buffer, kTile * C);
  for (int u = 0; u < kVectorsPerBlock; ++u) {  // kTile pixels each (one vector)
    __m512 v[kTile];
    for (int64_t tile = 0; tile < full_tiles; ++tile) {
      for (int k = 0; k < kTile; ++k) v[k] = value(tile * kTile + k, u);
      transpose_16x16(v);
      for (int l = 0; l < kTile; ++l) _mm512_storeu_ps(group_run + l * C + tile * kTile, v[l]);
    }
    __m512 z[kQuad];
    for (int64_t quad = full_tiles * (kTile / kQuad); quad < quad_count(C); ++quad) {  // the classes left over
      const int64_t c0 = quad_start(quad, C);
      for (int k = 0; k < kQuad; ++k) z[k] = value(c0 + k, u);
      transpose_lane_quads(z);
      store_pixel_quads(z, C, c0, group_run);
    }
    write_group_run(group_run, C, run + u * kTile * C, path);
  }
}

// Writes a full channels-last float block from pixel quads: value(u, quad, r) is vector (quad, r) of
// 16-pixel group u (a pure function). Each group's quads are stored to a pixel-major copy in L1 and
// then written out in whole vectors (streamed when large), as write_channels_last_block does.
template <typename Value>
void write_pixel_quads(const PixelGeometry& g, float* out, int64_t out_offset, Value&& value) {
  const int64_t C = g.num_classes;
  float* run = out + out_offset;
  const OutputPath path = run_output_path(g, run);
  thread_local std::vector<float> group_buffer;
  float* group_run = thread_buffer(group_buffer, kTile * C);
  const int64_t full_tiles = C / kTile;
  for (int u = 0; u < kVectorsPerBlock; ++u) {
    // 16 classes at a time: the four quads' vectors r hold pixels 4q + r in lane q; exchanging
    // 128-bit lanes (8 shuffles) gives each of the four pixels its 16 values in one vector.
    for (int64_t tile = 0; tile < full_tiles; ++tile) {
      for (int r = 0; r < kQuad; ++r) {
        const int64_t quad = tile * (kTile / kQuad);
        const __m512 a0 = value(u, quad, r), a1 = value(u, quad + 1, r);
        const __m512 a2 = value(u, quad + 2, r), a3 = value(u, quad + 3, r);
        const __m512 low01 = _mm512_shuffle_f32x4(a0, a1, 0x44), high01 = _mm512_shuffle_f32x4(a0, a1, 0xEE);
        const __m512 low23 = _mm512_shuffle_f32x4(a2, a3, 0x44), high23 = _mm512_shuffle_f32x4(a2, a3, 0xEE);
        float* pixel_r = group_run + r * C + tile * kTile;
        _mm512_storeu_ps(pixel_r, _mm512_shuffle_f32x4(low01, low23, 0x88));
        _mm512_storeu_ps(pixel_r + 4 * C, _mm512_shuffle_f32x4(low01, low23, 0xDD));
        _mm512_storeu_ps(pixel_r + 8 * C, _mm512_shuffle_f32x4(high01, high23, 0x88));
        _mm512_storeu_ps(pixel_r + 12 * C, _mm512_shuffle_f32x4(high01, high23, 0xDD));
      }
    }
    for (int64_t quad = full_tiles * (kTile / kQuad); quad < quad_count(C); ++quad) {  // the classes left over
      __m512 z[kQuad];
      for (int r = 0; r < kQuad; ++r) z[r] = value(u, quad, r);
      store_pixel_quads(z, C, quad_start(quad, C), group_run);
    }
    write_group_run(group_run, C, run + u * kTile * C, path);
  }
}
#endif

// Whether a block is worked on as pixel quads (above): with AVX-512, a full block of float logits
// with at least 4 classes, read and written channels-last.
template <typename scalar_t, typename acc_t>
bool is_pixel_quad_block(const PixelGeometry& g, int64_t count) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    const int64_t C = g.num_classes;
    return count == pixels_per_block<float>() && C >= kQuad && g.in_channel_stride == 1 &&
           g.in_stride[g.ndim - 1] == C && g.out_channel_stride == 1 && g.out_stride[g.ndim - 1] == C;
  }
#endif
  return false;
}

// Writes a block of rows shaped like the logits: value(c, u) is the u-th vector of class c's row
// (a pure function: it may be asked for in any order, and twice). Stored straight into `out`,
// streamed, or through `staging` (C rows of pixels_per_block()) as output_path decides.
template <typename scalar_t, typename acc_t, typename Value>
void write_block_rows(const PixelGeometry& g, scalar_t* out, int64_t out_offset, int64_t count, acc_t* staging,
                      Value&& value) {
  constexpr int W = Vectorized<acc_t>::size();
  constexpr int P = pixels_per_block<acc_t>();
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (g.out_channel_stride == 1 && g.out_stride[g.ndim - 1] == g.num_classes && count == P &&
        g.num_classes >= kQuad) {
      write_channels_last_block(g, out, out_offset, value);
      return;
    }
  }
#endif
  const OutputPath path = output_path<scalar_t, acc_t>(g, out, out_offset, count);
  for (int64_t c = g.num_classes - 1; c >= 0; --c) {
    acc_t* dst = path == OutputPath::kStaged ? staging + c * P
                                             : reinterpret_cast<acc_t*>(out + out_offset + c * g.out_channel_stride);
    for (int u = 0; u < kVectorsPerBlock; ++u) store_vector(value(c, u), dst + u * W, path);
  }
  if (path == OutputPath::kStaged) store_rows(g, out, out_offset, count, staging);
}

template <typename acc_t>
int lanes_left(int64_t count, int u) {
  return static_cast<int>(std::clamp<int64_t>(count - u * Vectorized<acc_t>::size(), 0, Vectorized<acc_t>::size()));
}

// One block's softmax terms e_c = exp(z_c - max) into `terms` (C rows of pixels_per_block(); not
// kept when null), with per lane the max, sum_c e_c, softmax_nan_guard and, when asked for,
// sum_c e_c^2 (kSquares) and dot = sum_c e_c (z_c - max) (kDot; H = log(sum) - dot / sum). Two
// passes over the rows held in cache (the max, then one exp per logit): fewer operations per logit
// than the online softmax's rescaling, which only pays where the logits are read once from memory.
template <typename acc_t>
struct BlockSoftmaxTerms {
  using Vec = Vectorized<acc_t>;
  Vec max[kVectorsPerBlock], sum_squares[kVectorsPerBlock], nan[kVectorsPerBlock];
  KnownMaxSums<Vec> sums[kVectorsPerBlock];  // sum and dot

  template <bool kSquares, bool kDot>
  void compute(const BlockRows<acc_t>& rows, int64_t C, acc_t* terms) {
    constexpr int W = Vec::size();
    constexpr int P = pixels_per_block<acc_t>();
    Vec logit_sum[kVectorsPerBlock];
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      max[u] = OnlineSoftmax<Vec>::initial_max();
      sums[u] = KnownMaxSums<Vec>();
      sum_squares[u] = logit_sum[u] = Vec(acc_t(0));
    }
    for (int64_t c = 0; c < C; ++c) {
      for (int u = 0; u < kVectorsPerBlock; ++u) {
        const Vec z = Vec::loadu(rows.row(c) + u * W);
        max[u] = OnlineSoftmax<Vec>::running_max(max[u], z);
        logit_sum[u] = logit_sum[u] + z;
      }
    }
    for (int u = 0; u < kVectorsPerBlock; ++u) nan[u] = softmax_nan_guard(logit_sum[u], max[u]);
    for (int64_t c = 0; c < C; ++c) {
      for (int u = 0; u < kVectorsPerBlock; ++u) {
        const Vec e = sums[u].template add<kDot>(Vec::loadu(rows.row(c) + u * W), max[u]);
        if (terms) e.store(terms + c * P + u * W);
        if constexpr (kSquares) sum_squares[u] = sum_squares[u] + e * e;
      }
    }
  }

#if defined(CPU_CAPABILITY_AVX512)
  // compute<false, kDot>() for a full channels-last float block whose pixel l's C >= 4 logits are at
  // run + l C, worked on as pixel quads (above): the logits are kept in `quads` and the terms, when
  // asked for, in `terms`, both in pixel_quad_vector order. The same results as compute() on its
  // class rows up to the order of the additions.
  template <bool kDot>
  void compute_pixel_quads(const float* run, int64_t C, float* quads, float* terms) {
    static_assert(std::is_same_v<acc_t, float>);
    const __m512 lowest = _mm512_set1_ps(std::numeric_limits<float>::lowest());
    const RunPrefetch next_block = quad_prefetch(run, C);
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      __m512 logit_sum;
      max[u] = stage_pixel_quad_group(run, C, u, next_block, quads, &logit_sum);
      nan[u] = softmax_nan_guard(Vec(logit_sum), max[u]);
      sum_squares[u] = Vec(0.0f);
      __m512 max_spread[kQuad], sum[kQuad], dot[kQuad];
      for (int r = 0; r < kQuad; ++r) {
        max_spread[r] = spread_over_quad(max[u], r);
        sum[r] = dot[r] = _mm512_setzero_ps();
      }
      for (int64_t quad = 0; quad < quad_count(C); ++quad) {
        const __mmask16 fresh = fresh_elements(quad, C);
        for (int r = 0; r < kQuad; ++r) {
          const int64_t at = pixel_quad_vector(u, quad, r, C) * kTile;
          // KnownMaxSums::add, term by term, with the repeated classes masked out of the sums.
          const __m512 shift = _mm512_sub_ps(_mm512_loadu_ps(quads + at), max_spread[r]);
          const __m512 e = Lanes<Vec>::exp(Vec(shift));
          if (terms) _mm512_storeu_ps(terms + at, e);
          sum[r] = _mm512_mask_add_ps(sum[r], fresh, sum[r], e);
          if constexpr (kDot) {
            dot[r] = _mm512_mask_add_ps(dot[r], fresh, dot[r], _mm512_mul_ps(e, _mm512_max_ps(lowest, shift)));
          }
        }
      }
      sums[u].sum = quad_sums(sum);
      sums[u].dot = kDot ? Vec(quad_sums(dot)) : Vec(0.0f);
    }
  }
#endif
};

}  // namespace
}  // namespace uaal::cpu::CPU_CAPABILITY
