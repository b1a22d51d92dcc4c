// The CPU ops' large tensors (outputs, and buffers that live for one call), from a cache of freed
// blocks whose pages stay mapped.
//
// A tensor of several MB from torch's CPU allocator comes from glibc, which maps fresh pages for it
// whenever earlier frees handed the pages back to the OS; the op then page-faults on every 4 KiB it
// writes. Block 1's output at batch 16 (17.9 MB, 4,365 pages) took 31.5 ms that way instead of 23,
// in a loop interleaved with the eager reference, whose allocations and frees cause it (NOTES v44).
// Tensors of kMinCachedBytes or more come from this cache instead: a freed tensor's block is kept,
// and the next tensor of the same size takes it back, mapped and warm. The cache holds at most
// NIN_EXT_CPU_TENSOR_CACHE_MB of free blocks (default 256; 0 turns it off), dropping the oldest
// first; nin_ext.clear_tensor_cache() frees them. Blocks in use are reported to torch's profiler as
// its own allocator's are, so memory profiles count them.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace nin_ext {
namespace cpu {

constexpr size_t kMinCachedBytes = size_t{1} << 20;

// at::empty(sizes, options) for a CPU tensor: from the cache if it takes kMinCachedBytes or more.
at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options);

// Frees the cached free blocks; returns their bytes.
size_t clear_tensor_cache();

// The bytes of the free blocks the cache holds.
size_t tensor_cache_free_bytes();

}  // namespace cpu
}  // namespace nin_ext
