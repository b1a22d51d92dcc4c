// Scratch memory that each thread keeps between calls.
//
// The CPU workers' buffers (up to a few MB per thread) were std::vectors, allocated and zero-filled
// on every call in each worker thread. glibc gives what the worker threads free back to the OS, so
// every call faulted the pages in and zeroed them again: at batch 1, a quarter of the forward's time
// (benchmarks/NOTES.md, v13). A ScratchBuffer borrows a block from its thread's pool and returns it
// when destroyed; the blocks live as long as the thread (OpenMP's threads, as long as the process).
// Its contents are not initialized: what a worker reads before writing, it zeroes itself.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "cpu/aligned_vector_cpu.h"

namespace nin_ext {
namespace cpu {

// One thread's free blocks.
class ScratchPool {
 public:
  // Blocks start on a cache line: the kernels read them as 64-byte rows (aligned_vector_cpu.h).
  struct FreeAligned {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{kCacheLine}); }
  };
  struct Block {
    std::unique_ptr<std::byte[], FreeAligned> data;
    size_t bytes = 0;
  };

  static ScratchPool& of_this_thread() {
    thread_local ScratchPool pool;
    return pool;
  }

  // The smallest free block of at least `bytes`, else a new one.
  Block take(size_t bytes) {
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->bytes >= bytes && (best == free_.end() || it->bytes < best->bytes)) {
        best = it;
      }
    }
    if (best == free_.end()) {
      return {std::unique_ptr<std::byte[], FreeAligned>(new (std::align_val_t{kCacheLine}) std::byte[bytes]), bytes};
    }
    Block block = std::move(*best);
    free_.erase(best);
    return block;
  }

  // Keeps the block for later; past kMaxBlocks, the smallest goes (shapes that grew leave small
  // blocks behind).
  void give_back(Block block) {
    free_.push_back(std::move(block));
    if (free_.size() > kMaxBlocks) {
      auto smallest = free_.begin();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        smallest = it->bytes < smallest->bytes ? it : smallest;
      }
      free_.erase(smallest);
    }
  }

 private:
  static constexpr size_t kMaxBlocks = 16;  // a worker holds 6 buffers at most, 8 in a zero-skipping layer
  std::vector<Block> free_;
};

// n uninitialized values of T from this thread's pool, returned to it on destruction (which must
// happen on the same thread: the workers live inside one parallel task).
template <typename T>
class ScratchBuffer {
 public:
  explicit ScratchBuffer(size_t n) : n_(n) {
    if (n > 0) {
      block_ = ScratchPool::of_this_thread().take(n * sizeof(T));
    }
  }
  ~ScratchBuffer() {
    if (block_.data) {
      ScratchPool::of_this_thread().give_back(std::move(block_));
    }
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;

  T* data() { return reinterpret_cast<T*>(block_.data.get()); }
  const T* data() const { return reinterpret_cast<const T*>(block_.data.get()); }
  size_t size() const { return n_; }

 private:
  size_t n_;
  ScratchPool::Block block_;
};

}  // namespace cpu
}  // namespace nin_ext
