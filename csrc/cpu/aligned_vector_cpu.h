// A std::vector whose data starts on a 64-byte cache line.
//
// The kernels read their packed weights and scratch panels as 64-byte rows (a zmm register, an AMX
// tile row). From a 16-byte aligned buffer, which is what operator new gives, every such row spans
// two cache lines: the AMX 1x1 layers ran their tile products at half speed (benchmarks/NOTES.md, v41).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace nin_ext {
namespace cpu {

constexpr std::size_t kCacheLine = 64;

template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}  // NOLINT: rebinding, as the standard allocators
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kCacheLine}));
  }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{kCacheLine}); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const {
    return false;
  }
};

template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace cpu
}  // namespace nin_ext
