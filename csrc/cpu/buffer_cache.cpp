#include "cpu/buffer_cache.h"

#include <sys/mman.h>

#include <c10/util/Exception.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace uaal::cpu {
namespace {

constexpr size_t kMinCachedBytes = size_t(1) << 20;
constexpr size_t kHugePage = size_t(2) << 20;

class BufferCache {
 public:
  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache();  // leaked: tensors may outlive static destruction
    return *cache;
  }

  void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = free_.size(); i-- > 0;) {
        if (free_[i].bytes == bytes) {
          void* block = free_[i].data;
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          cached_bytes_ -= bytes;
          ++hits_;
          return block;
        }
      }
      ++misses_;
    }
    void* block = std::aligned_alloc(kHugePage, bytes);
    TORCH_CHECK(block != nullptr, "uaal_ext: out of memory allocating ", bytes, " bytes");
    madvise(block, bytes, MADV_HUGEPAGE);  // advisory: fewer, larger page faults where THP is on
    return block;
  }

  void release(void* block, size_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes > limit_) {
        evicted.push_back(block);
      } else {
        // Oldest first: a training loop keeps reusing the most recent shapes.
        while (cached_bytes_ + bytes > limit_) {
          evicted.push_back(free_.front().data);
          cached_bytes_ -= free_.front().bytes;
          free_.erase(free_.begin());
        }
        free_.push_back({block, bytes});
        cached_bytes_ += bytes;
      }
    }
    for (void* b : evicted) std::free(b);
  }

  BufferCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_bytes_, limit_, hits_, misses_};
  }

  void clear() {
    std::vector<Block> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      cached_bytes_ = 0;
    }
    for (const Block& b : blocks) std::free(b.data);
  }

  size_t limit() const { return limit_; }

 private:
  struct Block {
    void* data;
    size_t bytes;
  };

  BufferCache() {
    limit_ = size_t(1024) << 20;
    if (const char* env = std::getenv("UAAL_EXT_CPU_CACHE_MB")) {
      try {
        limit_ = static_cast<size_t>(std::stoull(env)) << 20;
      } catch (const std::exception&) {
        TORCH_WARN("uaal_ext: ignoring UAAL_EXT_CPU_CACHE_MB='", env, "' (expected a number of MiB)");
      }
    }
  }

  std::mutex mutex_;
  std::vector<Block> free_;
  size_t cached_bytes_ = 0;
  size_t limit_ = 0;
  size_t hits_ = 0;
  size_t misses_ = 0;
};

}  // namespace

at::Tensor empty_cached(at::IntArrayRef sizes, at::IntArrayRef strides, at::ScalarType dtype) {
  int64_t extent = 1;  // elements spanned by the strides
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) {
      extent = 0;
      break;
    }
    extent += (sizes[d] - 1) * strides[d];
  }
  const size_t bytes = static_cast<size_t>(extent) * c10::elementSize(dtype);
  BufferCache& cache = BufferCache::instance();
  if (bytes < kMinCachedBytes || cache.limit() == 0) {
    return at::empty_strided(sizes, strides, at::TensorOptions().dtype(dtype));
  }
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* block = cache.acquire(rounded);
  return at::from_blob(block, sizes, strides, [rounded](void* data) { BufferCache::instance().release(data, rounded); },
                       at::TensorOptions().dtype(dtype).device(at::kCPU));
}

at::Tensor empty_cached_like(const at::Tensor& like) {
  if (like.is_non_overlapping_and_dense()) return empty_cached(like.sizes(), like.strides(), like.scalar_type());
  return empty_cached(like.sizes(), c10::contiguous_strides(like.sizes()), like.scalar_type());
}

BufferCacheStats buffer_cache_stats() { return BufferCache::instance().stats(); }

void release_buffer_cache() { BufferCache::instance().clear(); }

}  // namespace uaal::cpu
