// The memory side of a CPU kernel block, alone: why a channels-last block reads slower than an NCHW
// one, and what prefetching the next block does (docs/performance.md, "Prefetching the next block").
//
// Every pattern moves the same bytes with the same instructions per block of 64 pixels x 19 classes:
// read the block into an L1 buffer, spend a fixed number of dependent FMAs (--work, standing in for
// the softmax), stream the buffer out. Only where the block lies differs:
//   nchw             19 rows of 256 B, a channel plane apart (the kernels' contiguous input)
//   channels_last    one pixel-major run of 4864 B (the kernels' channels-last input)
//   *_prefetched     the same, with the next block requested into L2 first, all at once as a block
//                    starts (prefetch_next_block in csrc/cpu/pixel_blocks.h)
//   channels_last_spread
//                    the next block requested into L2 a line at a time, one line ahead of each of
//                    the block's own loads (RunPrefetch in csrc/cpu/pixel_blocks.h)
// Two threads (--threads), each on its share of the blocks in order, as the kernels run; the patterns alternate
// within each round and the report gives the median over rounds of each one's time over nchw's.
//
//   g++ -O2 -mavx512f -pthread benchmarks/block_read_pattern.cpp -o /tmp/block_read_pattern
//   /tmp/block_read_pattern [--work FMAS] [--rounds N] [--threads N]   > benchmarks/results/block_read_pattern.txt
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kClasses = 19;
constexpr int64_t kPixelsPerBlock = 64;
constexpr int64_t kBlockValues = kClasses * kPixelsPerBlock;
constexpr int64_t kPixels = int64_t(2) * 512 * 1024;  // the loss benchmark's 2 x 512 x 1024
constexpr int64_t kCacheLine = 64;
constexpr int kFloatsPerVector = 16;

enum class Pattern { kNchw, kChannelsLast, kNchwPrefetched, kChannelsLastPrefetched, kChannelsLastSpread };

struct Buffers {
  float* nchw_in;
  float* nchw_out;
  float* channels_last_in;
  float* channels_last_out;
};

void prefetch_lines(const float* start, int64_t values) {
  for (int64_t b = 0; b < values * int64_t(sizeof(float)); b += kCacheLine) {
    __builtin_prefetch(reinterpret_cast<const char*>(start) + b, 0, 2);
  }
}

// Dependent FMAs on the block's sum: a fixed amount of arithmetic between the read and the write.
__m512 spend(__m512 value, int work) {
  for (int i = 0; i < work; ++i) value = _mm512_fmadd_ps(value, _mm512_set1_ps(0.5f), value);
  return value;
}

void run_blocks(const Buffers& b, Pattern pattern, int work, int64_t first, int64_t last, float* sink) {
  alignas(64) float block[kBlockValues];
  __m512 sum = _mm512_setzero_ps();
  const bool nchw = pattern == Pattern::kNchw || pattern == Pattern::kNchwPrefetched;
  const bool prefetch = pattern == Pattern::kNchwPrefetched || pattern == Pattern::kChannelsLastPrefetched;
  for (int64_t index = first; index < last; ++index) {
    if (nchw) {
      const float* in = b.nchw_in + index * kPixelsPerBlock;
      if (prefetch && index + 1 < last) {
        for (int64_t c = 0; c < kClasses; ++c) prefetch_lines(in + c * kPixels + kPixelsPerBlock, kPixelsPerBlock);
      }
      for (int64_t c = 0; c < kClasses; ++c) {
        for (int64_t l = 0; l < kPixelsPerBlock; l += kFloatsPerVector) {
          const __m512 v = _mm512_load_ps(in + c * kPixels + l);
          sum = _mm512_add_ps(sum, v);
          _mm512_store_ps(block + c * kPixelsPerBlock + l, v);
        }
      }
      sum = spend(sum, work);
      float* out = b.nchw_out + index * kPixelsPerBlock;
      for (int64_t c = 0; c < kClasses; ++c) {
        for (int64_t l = 0; l < kPixelsPerBlock; l += kFloatsPerVector) {
          _mm512_stream_ps(out + c * kPixels + l, _mm512_load_ps(block + c * kPixelsPerBlock + l));
        }
      }
    } else {
      const float* in = b.channels_last_in + index * kBlockValues;
      if (prefetch && index + 1 < last) prefetch_lines(in + kBlockValues, kBlockValues);
      const bool spread = pattern == Pattern::kChannelsLastSpread && index + 1 < last;
      for (int64_t m = 0; m < kBlockValues; m += kFloatsPerVector) {
        if (spread) prefetch_lines(in + kBlockValues + m, kFloatsPerVector);  // one line per vector
        const __m512 v = _mm512_loadu_ps(in + m);
        sum = _mm512_add_ps(sum, v);
        _mm512_store_ps(block + m, v);
      }
      sum = spend(sum, work);
      float* out = b.channels_last_out + index * kBlockValues;
      for (int64_t m = 0; m < kBlockValues; m += kFloatsPerVector) _mm512_stream_ps(out + m, _mm512_load_ps(block + m));
    }
  }
  _mm_sfence();
  alignas(64) float lanes[kFloatsPerVector];
  _mm512_store_ps(lanes, sum);
  *sink = lanes[0];
}

double milliseconds(const Buffers& b, Pattern pattern, int work, int thread_count) {
  const int64_t blocks = kPixels / kPixelsPerBlock;
  std::vector<float> sinks(thread_count);
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back(run_blocks, std::cref(b), pattern, work, blocks * t / thread_count,
                         blocks * (t + 1) / thread_count, sinks.data() + t);
  }
  for (auto& thread : threads) thread.join();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

float* page_aligned_zeros(int64_t values) {
  const size_t bytes = static_cast<size_t>(values) * sizeof(float);
  auto* p = static_cast<float*>(std::aligned_alloc(4096, bytes));
  if (p == nullptr) {
    std::fprintf(stderr, "block_read_pattern: cannot allocate %zu bytes\n", bytes);
    std::exit(1);
  }
  std::memset(p, 0, bytes);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  int work = 150, rounds = 9, thread_count = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--work") {
      work = std::atoi(argv[i + 1]);
    } else if (flag == "--rounds") {
      rounds = std::atoi(argv[i + 1]);
    } else if (flag == "--threads") {
      thread_count = std::max(1, std::atoi(argv[i + 1]));
    } else {
      std::fprintf(stderr, "usage: %s [--work FMAS] [--rounds N] [--threads N]\n", argv[0]);
      return 2;
    }
  }
  const int64_t values = kPixels * kClasses;
  const Buffers b{page_aligned_zeros(values), page_aligned_zeros(values), page_aligned_zeros(values),
                  page_aligned_zeros(values)};
  const Pattern patterns[] = {Pattern::kNchw, Pattern::kChannelsLast, Pattern::kNchwPrefetched,
                              Pattern::kChannelsLastPrefetched, Pattern::kChannelsLastSpread};
  const char* names[] = {"nchw", "channels_last", "nchw_prefetched", "channels_last_prefetched",
                         "channels_last_spread"};
  constexpr int kPatterns = 5;
  std::vector<std::vector<double>> ratios(kPatterns), times(kPatterns);
  for (int round = 0; round < rounds; ++round) {
    double nchw = 0;
    for (int p = 0; p < kPatterns; ++p) {
      const double ms = milliseconds(b, patterns[p], work, thread_count);
      if (p == 0) nchw = ms;
      times[p].push_back(ms);
      ratios[p].push_back(ms / nchw);
    }
  }
  std::printf(
      "block read pattern: %d threads, %lld blocks of %lld pixels x %lld classes, %d FMAs per block, %d rounds\n",
      thread_count, static_cast<long long>(kPixels / kPixelsPerBlock), static_cast<long long>(kPixelsPerBlock),
      static_cast<long long>(kClasses), work, rounds);
  std::printf("%-26s %10s %16s\n", "pattern", "median ms", "median / nchw");
  for (int p = 0; p < kPatterns; ++p) {
    std::sort(times[p].begin(), times[p].end());
    std::sort(ratios[p].begin(), ratios[p].end());
    std::printf("%-26s %10.2f %16.3f\n", names[p], times[p][rounds / 2], ratios[p][rounds / 2]);
  }
  return 0;
}
