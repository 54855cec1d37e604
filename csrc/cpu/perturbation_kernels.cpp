// CPU kernels of kernel_noise and perturbation_statistics. Compiled once per instruction set; the
// math is perturbation_math.h's, run on at::vec::Vectorized lanes.
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/dispatch.h"
#include "core/online_softmax.h"
#include "cpu/perturbation_kernels.h"
#include "cpu/pixel_blocks.h"
#include "cpu/vec_lanes.h"

#ifndef CPU_CAPABILITY
#error "perturbation_kernels.cpp is compiled once per CPU_CAPABILITY (see CMakeLists.txt)"
#endif

namespace uaal::cpu::CPU_CAPABILITY {
namespace {  // internal linkage: nothing compiled with this file's -m flags may leak to another

using at::vec::Vectorized;

// ---- kernel_noise -------------------------------------------------------------------------------------
constexpr int kPhiloxBlocksPerBatch = 16;
constexpr int64_t kNormalsPerBatch = 4 * kPhiloxBlocksPerBatch;

// The normals of one stream in batches of kNormalsPerBatch elements (batch b holds elements
// [b * 64, b * 64 + 64)). Philox runs on 16 counters side by side (the compiler vectorises the
// rounds) and Box-Muller on SIMD vectors. The last batch is kept, so consecutive slots that share
// it (small per-filter groups) do not generate it again.
class NoiseBatches {
 public:
  const float* get(const NoiseStream& s, int64_t batch) {
    if (!(has_batch_ && batch == batch_ && s.key0 == stream_.key0 && s.key1 == stream_.key1 &&
          s.sample == stream_.sample && s.tensor_index == stream_.tensor_index && s.offset == stream_.offset)) {
      generate(s, batch);
    }
    return normals_;
  }

 private:
  void generate(const NoiseStream& s, int64_t batch) {
    using Vec = Vectorized<float>;
    constexpr int B = kPhiloxBlocksPerBatch;
    static_assert(B % Vec::size() == 0, "a batch must hold whole vectors");
    alignas(64) uint32_t c0[B], c1[B], c2[B], c3[B];
    const uint32_t first_block = static_cast<uint32_t>(batch * B);
    for (int j = 0; j < B; ++j) {
      c0[j] = first_block + static_cast<uint32_t>(j);
      c1[j] = s.sample;
      c2[j] = s.tensor_index;
      c3[j] = s.offset;
    }
    for (int round = 0; round < kPhiloxRounds; ++round) {
      const uint32_t k0 = philox_round_key0(s.key0, round), k1 = philox_round_key1(s.key1, round);
      // Without the pragma GCC unrolls this loop and then fails to vectorise the widening multiplies.
#pragma omp simd
      for (int j = 0; j < B; ++j) philox_round(c0[j], c1[j], c2[j], c3[j], k0, k1);
    }
    alignas(64) float u[4][B];
    for (int j = 0; j < B; ++j) {
      u[0][j] = uniform_from_bits(c0[j]);
      u[1][j] = uniform_from_bits(c1[j]);
      u[2][j] = uniform_from_bits(c2[j]);
      u[3][j] = uniform_from_bits(c3[j]);
    }
    alignas(64) float n[4][B];
    for (int j = 0; j < B; j += Vec::size()) {
      Vec cos0, sin0, cos1, sin1;
      box_muller(Vec::loadu(u[0] + j), Vec::loadu(u[1] + j), cos0, sin0);
      box_muller(Vec::loadu(u[2] + j), Vec::loadu(u[3] + j), cos1, sin1);
      cos0.store(n[0] + j);
      sin0.store(n[1] + j);
      cos1.store(n[2] + j);
      sin1.store(n[3] + j);
    }
    for (int j = 0; j < B; ++j) {  // element 4 j + i of the batch is normal i of Philox block j
      for (int i = 0; i < 4; ++i) normals_[4 * j + i] = n[i][j];
    }
    stream_ = s;
    batch_ = batch;
    has_batch_ = true;
  }

  alignas(64) float normals_[kNormalsPerBatch];
  NoiseStream stream_{};
  int64_t batch_ = 0;
  bool has_batch_ = false;
};

// Calls fn(normals, first_element, lo, hi) for the batches covering the slot: normals[lo, hi) are
// the noise of elements first_element + [lo, hi).
template <typename Fn>
void for_each_noise_batch(NoiseBatches& batches, const NoiseStream& stream, const NoiseSlot& slot, const Fn& fn) {
  for (int64_t b = slot.begin / kNormalsPerBatch; b * kNormalsPerBatch < slot.end; ++b) {
    const int64_t first = b * kNormalsPerBatch;
    const int64_t lo = std::max(slot.begin, first) - first;
    const int64_t hi = std::min(slot.end, first + kNormalsPerBatch) - first;
    fn(batches.get(stream, b), first, lo, hi);
  }
}

// Runs body(first_slot, last_slot) over consecutive slot ranges of about equal element counts, in
// parallel. at::parallel_for splits its range evenly by index; slots range from a handful of elements
// (small per-filter groups) to thousands, so the split is made by elements instead.
template <typename Body>
void parallel_slots(const KernelNoiseProblem& pr, const Body& body) {
  int64_t elements = 0;
  for (int64_t s = 0; s < pr.num_slots; ++s) elements += pr.slots[s].end - pr.slots[s].begin;
  const int64_t per_range = std::max<int64_t>(32768, elements / 256);
  std::vector<int64_t> range_start{0};
  int64_t in_range = 0;
  for (int64_t s = 0; s < pr.num_slots; ++s) {
    in_range += pr.slots[s].end - pr.slots[s].begin;
    if (in_range >= per_range && s + 1 < pr.num_slots) {
      range_start.push_back(s + 1);
      in_range = 0;
    }
  }
  range_start.push_back(pr.num_slots);
  const int64_t num_ranges = static_cast<int64_t>(range_start.size()) - 1;
  at::parallel_for(0, num_ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(range_start[r], range_start[r + 1]);
  });
}

// sum of x^2 over [lo, hi) in the accumulation type, in a fixed order (vectors, then the tail).
template <typename scalar_t, typename acc_t>
acc_t sum_squares(const scalar_t* x, int64_t lo, int64_t hi) {
  acc_t total = 0;
  int64_t i = lo;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = Vectorized<acc_t>;
    Vec partial(acc_t(0));
    for (; i + Vec::size() <= hi; i += Vec::size()) {
      const Vec v = Vec::loadu(x + i);
      partial = partial + v * v;
    }
    alignas(64) acc_t lanes[Vec::size()];
    partial.store(lanes);
    for (int l = 0; l < Vec::size(); ++l) total += lanes[l];
  }
  for (; i < hi; ++i) {
    const acc_t v = static_cast<acc_t>(x[i]);
    total += v * v;
  }
  return total;
}

template <typename scalar_t, typename acc_t>
void kernel_noise(const KernelNoiseProblem& pr) {
  // float32 and float64 outputs hold the noise exactly: pass 1 parks it there and pass 3 scales it in
  // place, which costs a read and a write of the output instead of generating the noise a second
  // time. float16 / bfloat16 outputs would round it, so for them pass 3 generates it again.
  constexpr bool kParkNoise = std::is_same_v<scalar_t, acc_t>;
  // Pass 1: per slot, sum of n^2 (and of theta^2 for sample 0), in a fixed order.
  parallel_slots(pr, [&](int64_t begin, int64_t end) {
    NoiseBatches batches;
    for (int64_t s = begin; s < end; ++s) {
      const NoiseSlot& slot = pr.slots[s];
      const NoiseTensor& t = pr.tensors[slot.tensor];
      auto* out = static_cast<scalar_t*>(t.perturbed) + slot.sample * t.numel;
      double noise_squares = 0.0;
      for_each_noise_batch(batches, pr.stream(slot), slot, [&](const float* n, int64_t first, int64_t lo, int64_t hi) {
        noise_squares += sum_squares<float, float>(n, lo, hi);
        if constexpr (kParkNoise) {
          for (int64_t i = lo; i < hi; ++i) out[first + i] = static_cast<acc_t>(n[i]);
        }
      });
      pr.slot_noise_squares[s] = noise_squares;
      pr.slot_weight_squares[s] =
          slot.sample == 0 ? sum_squares<scalar_t, acc_t>(static_cast<const scalar_t*>(t.weight), slot.begin, slot.end)
                           : 0.0;
    }
  });
  // Pass 2: per group, eta ||theta_g|| / ||n_g||.
  at::parallel_for(0, pr.num_groups, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) compute_group_scale(pr, group);
  });
  // Pass 3: theta + scale n.
  parallel_slots(pr, [&](int64_t begin, int64_t end) {
    NoiseBatches batches;
    for (int64_t s = begin; s < end; ++s) {
      const NoiseSlot& slot = pr.slots[s];
      const NoiseTensor& t = pr.tensors[slot.tensor];
      const acc_t scale = static_cast<acc_t>(pr.group_scale[pr.group_id(slot)]);
      const auto* w = static_cast<const scalar_t*>(t.weight);
      auto* out = static_cast<scalar_t*>(t.perturbed) + slot.sample * t.numel;
      if constexpr (kParkNoise) {
        for (int64_t e = slot.begin; e < slot.end; ++e) out[e] = w[e] + scale * out[e];
      } else {
        for_each_noise_batch(batches, pr.stream(slot), slot,
                             [&](const float* n, int64_t first, int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) {
            out[first + i] = static_cast<scalar_t>(static_cast<acc_t>(w[first + i]) + scale * static_cast<acc_t>(n[i]));
          }
        });
      }
    }
  });
}

// ---- perturbation_statistics -----------------------------------------------------------------------
// d_k^2 of one vector of pixels (lanes) for perturbed sample k, from the clean probabilities and
// logits and the perturbed logits (rows of the block), `terms` as scratch: per lane, the shifted form
// where it holds, else the plain difference of the softmaxes (perturbation_math.h), computed only
// when some lane needs it.
template <typename acc_t>
Vectorized<acc_t> squared_deviation_of_vector(const BlockRows<acc_t>& clean, const BlockRows<acc_t>& perturbed,
                                              const acc_t* probabilities, acc_t* terms, int64_t C, int u,
                                              Vectorized<acc_t>& nan) {
  using Vec = Vectorized<acc_t>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const int64_t lane = u * W;
  LogitShiftSums<Vec> shift;
  for (int64_t c = 0; c < C; ++c) {
    const Vec dz = logit_shift(Vec::loadu(perturbed.row(c) + lane), Vec::loadu(clean.row(c) + lane));
    shift.add(Vec::loadu(probabilities + c * P + lane), dz).store(terms + c * P + lane);
  }
  const Vec b = shift.normalizer_term();
  Vec shifted_squares(acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const Vec diff =
        deviation_from_shift(Vec::loadu(probabilities + c * P + lane), Vec::loadu(terms + c * P + lane), b);
    shifted_squares = shifted_squares + diff * diff;
  }
  const Vec shifted_form_holds = shift.max_abs_shift <= Vec(acc_t(kMaxPreciseLogitShift));
  if (shifted_form_holds.zero_mask() == 0) return shifted_squares;  // no lane is all-zero bits: all hold

  Vec max = OnlineSoftmax<Vec>::initial_max(), sum(acc_t(0)), plain_squares(acc_t(0)), logit_sum(acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const Vec z = Vec::loadu(perturbed.row(c) + lane);
    max = OnlineSoftmax<Vec>::running_max(max, z);
    logit_sum = logit_sum + z;
  }
  nan = nan + softmax_nan_guard(logit_sum, max);
  for (int64_t c = 0; c < C; ++c) {
    const Vec e = Lanes<Vec>::exp(Vec::loadu(perturbed.row(c) + lane) - max);
    e.store(terms + c * P + lane);
    sum = sum + e;
  }
  const Vec inv_sum = Vec(acc_t(1)) / sum;
  for (int64_t c = 0; c < C; ++c) {
    plain_squares = plain_squares + squared_deviation(Vec::loadu(terms + c * P + lane) * inv_sum,
                                                      Vec::loadu(probabilities + c * P + lane));
  }
  return Lanes<Vec>::select(shifted_form_holds, shifted_squares, plain_squares);
}

template <typename scalar_t, typename acc_t>
void perturbation_statistics(const PerturbationStatisticsProblem& pr) {
  using Vec = Vectorized<acc_t>;
  constexpr int W = Vec::size();
  constexpr int P = pixels_per_block<acc_t>();
  const PixelGeometry& clean_geometry = pr.geometry;
  PixelGeometry perturbed_geometry = pr.geometry;  // the perturbed logits read through the `in` fields
  std::swap(perturbed_geometry.in_stride, perturbed_geometry.out_stride);
  std::swap(perturbed_geometry.in_channel_stride, perturbed_geometry.out_channel_stride);
  const int64_t C = clean_geometry.num_classes;
  const auto* clean = static_cast<const scalar_t*>(pr.clean);
  const auto* perturbed = static_cast<const scalar_t*>(pr.perturbed);
  auto* sigma_out = static_cast<acc_t*>(pr.sigma);
  auto* noise_stability_out = static_cast<acc_t*>(pr.noise_stability);
  const acc_t inv_num_samples = acc_t(1) / static_cast<acc_t>(pr.num_samples);

  parallel_blocks(clean_geometry, P,
                  [&](int64_t, int64_t first, int64_t count, int64_t clean_offset, int64_t perturbed_offset) {
    thread_local std::vector<acc_t> clean_buffer, perturbed_buffer, probability_buffer, term_buffer;
    acc_t* probabilities = thread_buffer(probability_buffer, C * P);
    acc_t* terms = thread_buffer(term_buffer, C * P);
    const BlockRows<acc_t> clean_rows =
        load_rows(clean_geometry, clean, clean_offset, count, thread_buffer(clean_buffer, C * P));

    // Clean softmax: p (stored for every class), ||p||^2 and the NaN term.
    BlockSoftmaxTerms<acc_t> clean_softmax;
    clean_softmax.template compute</*kSquares=*/true, /*kDot=*/false>(clean_rows, C, probabilities);
    Vec nan[kVectorsPerBlock], clean_norm_squared[kVectorsPerBlock];
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      nan[u] = clean_softmax.nan[u];
      clean_norm_squared[u] = probability_norm_squared(clean_softmax.sum_squares[u], clean_softmax.sums[u].sum);
      const Vec inv_sum = Vec(acc_t(1)) / clean_softmax.sums[u].sum;
      for (int64_t c = 0; c < C; ++c) {
        (Vec::loadu(probabilities + c * P + u * W) * inv_sum).store(probabilities + c * P + u * W);
      }
    }

    DeviationSums<Vec> deviations[kVectorsPerBlock];
    for (int64_t k = 0; k < pr.num_samples; ++k) {
      const BlockRows<acc_t> perturbed_rows =
          load_rows(perturbed_geometry, perturbed + k * pr.sample_stride, perturbed_offset, count,
                    thread_buffer(perturbed_buffer, C * P));
      for (int u = 0; u < kVectorsPerBlock; ++u) {
        deviations[u].add(squared_deviation_of_vector(clean_rows, perturbed_rows, probabilities, terms, C, u, nan[u]));
      }
    }
    for (int u = 0; u < kVectorsPerBlock; ++u) {
      const int lanes = lanes_left<acc_t>(count, u);
      if (lanes == 0) break;
      (deviations[u].sigma(inv_num_samples) + nan[u]).store(sigma_out + first + u * W, lanes);
      (deviations[u].noise_stability(inv_num_samples, clean_norm_squared[u]) + nan[u])
          .store(noise_stability_out + first + u * W, lanes);
    }
  });
}

void run_kernel_noise(const KernelNoiseProblem& pr) {
  dispatch_float_type(pr.type, [&](auto scalar, auto acc) { kernel_noise<decltype(scalar), decltype(acc)>(pr); });
}

void run_perturbation_statistics(const PerturbationStatisticsProblem& pr) {
  dispatch_float_type(pr.input_type,
                      [&](auto scalar, auto acc) { perturbation_statistics<decltype(scalar), decltype(acc)>(pr); });
}

}  // namespace

const PerturbationKernelTable& perturbation_kernel_table() {
  static const PerturbationKernelTable table{run_kernel_noise, run_perturbation_statistics};
  return table;
}

}  // namespace uaal::cpu::CPU_CAPABILITY
