// Reuse of large CPU output buffers across calls.
//
// A fresh multi-megabyte allocation is returned to the OS when freed, so the next one page-faults
// every 4 KiB page back in, which costs more than the whole backward pass. Training calls the loss
// with the same shapes every step, so the gradient and lse buffers are recycled instead, the way
// PyTorch's CUDA caching allocator recycles device memory.
// New blocks also ask for transparent huge pages. UAAL_EXT_CPU_CACHE_MB (default 1024; 0 turns the
// cache off) bounds the memory kept while unused.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace uaal::cpu {

// Like at::empty_strided on the CPU, drawing buffers of 1 MiB or more from the cache.
at::Tensor empty_cached(at::IntArrayRef sizes, at::IntArrayRef strides, at::ScalarType dtype);

// Same strides as `like` when it is dense (contiguous, channels-last, permuted), else contiguous:
// the layout at::empty_like gives.
at::Tensor empty_cached_like(const at::Tensor& like);

struct BufferCacheStats {
  size_t cached_bytes;  // held, unused
  size_t limit_bytes;
  size_t hits;
  size_t misses;
};
BufferCacheStats buffer_cache_stats();
void release_buffer_cache();

}  // namespace uaal::cpu
