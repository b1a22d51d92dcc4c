// The tensor cache (tensor_cache_cpu.h): a c10::Allocator whose freed blocks wait, by size, for
// the next tensor of that size.
#include "cpu/tensor_cache_cpu.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/accumulate.h>

#include <pthread.h>

#include <atomic>
#include <cstdlib>
#include <iterator>
#include <list>
#include <mutex>

namespace nin_ext {
namespace cpu {
namespace {

size_t cache_limit_from_env() {
  const char* value = std::getenv("NIN_EXT_CPU_TENSOR_CACHE_MB");
  if (value == nullptr || *value == '\0') {
    return size_t{256} << 20;
  }
  char* end = nullptr;
  const long long mb = std::strtoll(value, &end, 10);
  TORCH_CHECK(*end == '\0' && mb >= 0 && mb < (1LL << 40),
              "NIN_EXT_CPU_TENSOR_CACHE_MB must be a whole number of MiB, 0 or more; got '", value, "'");
  return static_cast<size_t>(mb) << 20;
}

// A block of memory, and the tensor's DataPtr context while a tensor holds it.
struct Block {
  void* data;
  size_t bytes;
  bool profiled;  // its allocation was reported to the profiler, so its free is too
};

class TensorCache final : public c10::Allocator {
 public:
  // Never destroyed: tensors may outlive static destruction, and their deleters come back here.
  static TensorCache& get() {
    static TensorCache* cache = new TensorCache(cache_limit_from_env());
    return *cache;
  }

  size_t limit() const { return limit_; }

  c10::DataPtr allocate(size_t bytes) override {
    Block* block = take(bytes);
    if (block == nullptr) {
      block = new Block{c10::alloc_cpu(bytes), bytes, false};
    }
    in_use_ += bytes;
    block->profiled = c10::memoryProfilingEnabled();
    if (block->profiled) {
      report(block, static_cast<int64_t>(bytes));
    }
    return {block->data, block, &TensorCache::return_block, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  size_t clear() {
    std::list<Block*> dropped;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      dropped.swap(free_);
      bytes = free_bytes_.exchange(0);
    }
    for (Block* block : dropped) {
      destroy(block);
    }
    return bytes;
  }

  size_t free_bytes() const { return free_bytes_.load(); }

 private:
  explicit TensorCache(size_t limit) : limit_(limit) {
    // A fork while another thread holds the mutex (a worker thread returning a block) would leave
    // it locked forever in the child, as in a DataLoader worker: hold it across the fork, as glibc's
    // malloc does its arenas.
    pthread_atfork([] { get().mutex_.lock(); }, [] { get().mutex_.unlock(); }, [] { get().mutex_.unlock(); });
  }

  static void return_block(void* context) { get().give_back(static_cast<Block*>(context)); }

  static void destroy(Block* block) {
    c10::free_cpu(block->data);
    delete block;
  }

  // The most recently freed block of exactly `bytes` (the ops' tensors repeat their sizes call after
  // call), or null.
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
      if ((*it)->bytes == bytes) {
        Block* block = *it;
        free_.erase(std::next(it).base());
        free_bytes_ -= bytes;
        return block;
      }
    }
    return nullptr;
  }

  void give_back(Block* block) {
    in_use_ -= block->bytes;
    // A free whose allocation the profiler did not see goes unreported, as with torch's CPU
    // allocator, so that a profile counts the cached tensors as it counts torch's.
    if (block->profiled) {
      report(block, -static_cast<int64_t>(block->bytes));
    }
    if (block->bytes > limit_) {
      destroy(block);
      return;
    }
    std::list<Block*> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.push_back(block);
      free_bytes_ += block->bytes;
      while (free_bytes_ > limit_) {
        free_bytes_ -= free_.front()->bytes;
        dropped.push_back(free_.front());
        free_.pop_front();
      }
    }
    for (Block* old : dropped) {
      destroy(old);
    }
  }

  void report(const Block* block, int64_t delta) {
    const size_t in_use = in_use_.load();
    c10::reportMemoryUsageToProfiler(block->data, delta, in_use, in_use + free_bytes_.load(), c10::Device(c10::kCPU));
  }

  const size_t limit_;
  std::mutex mutex_;
  std::list<Block*> free_;  // oldest first
  std::atomic<size_t> free_bytes_{0};  // changed under mutex_ only
  std::atomic<size_t> in_use_{0};
};

}  // namespace

at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu(), "empty_cached: CPU tensors only");
  TensorCache& cache = TensorCache::get();
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (bytes < kMinCachedBytes || cache.limit() == 0) {
    return at::empty(sizes, options);
  }
  return at::detail::empty_generic(sizes, &cache, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), options.memory_format_opt());
}

size_t clear_tensor_cache() { return TensorCache::get().clear(); }

size_t tensor_cache_free_bytes() { return TensorCache::get().free_bytes(); }

}  // namespace cpu
}  // namespace nin_ext
