// Packed weights of a NiN block, kept between calls while the weights stay the same.
//
// Packing copies every weight (3 MB for the seed's block 2, 4.7 MB for block 3) into the
// micro-kernel's panel layout, single-threaded; at batch 1 that costs as much as the block itself.
// An entry is found by the weights' addresses and shapes, and used only if their bytes still have
// the fingerprints taken when it was packed: that is one read of the weights, several times cheaper
// than packing them, and it sees every change (optimizer steps, load_state_dict, writes through
// `.data` that the version counter misses, a new tensor at a freed address), missing one with a
// chance of about 2^-64 per changed chunk. Comparing with a copy of the bytes, as before, read twice
// as much and kept a second copy of every weight: the seed's NiN spent 3.2-4.5 ms of a batch-16
// forward checking, against 1.9-2.4 ms with the fingerprints before their prefetch
// (benchmarks/NOTES.md v37).
#pragma once

#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "cpu/nin_block_packed_cpu.h"
#include "cpu/weight_fingerprint_cpu.h"

namespace nin_ext {
namespace cpu {

// A chunk of a weight and the fingerprint it had when its entry was packed.
struct FingerprintCheck {
  const char* data;
  size_t length;
  uint64_t expected;
};

// Whether every chunk still has its fingerprint: all of a block's weights in one parallel loop (the
// seed's wider blocks hold several MB, read on every call; one loop per tensor cost a thread
// start-up each, 24 per forward).
inline bool same_fingerprints(const std::vector<FingerprintCheck>& checks) {
  std::atomic<bool> same{true};
  at::parallel_for(0, static_cast<int64_t>(checks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end && same.load(std::memory_order_relaxed); ++i) {
      const FingerprintCheck& c = checks[i];
      if (weight_fingerprint(c.data, c.length) != c.expected) {
        same.store(false, std::memory_order_relaxed);
      }
    }
  });
  return same.load();
}

// Where one weight or bias tensor lives and the fingerprints of its bytes, per chunk that the
// threads share, when its entry was packed; an undefined bias is a snapshot of nothing.
class TensorSnapshot {
 public:
  explicit TensorSnapshot(const c10::optional<at::Tensor>& t) {
    if (t.has_value() && t->defined()) {
      data_ = t->const_data_ptr();
      sizes_ = t->sizes().vec();
      strides_ = t->strides().vec();
      const at::Tensor dense = t->contiguous();
      nbytes_ = dense.nbytes();
      const char* bytes = static_cast<const char*>(dense.const_data_ptr());
      for (size_t offset = 0; offset < nbytes_; offset += kChunk) {
        fingerprints_.push_back(weight_fingerprint(bytes + offset, std::min(kChunk, nbytes_ - offset)));
      }
    }
  }

  // Whether t (or its absence) is at the snapshot's address with its shape: the tensor the snapshot
  // is of, or one in its place.
  bool same_place(const c10::optional<at::Tensor>& t) const {
    if (!(t.has_value() && t->defined())) {
      return data_ == nullptr;
    }
    return t->const_data_ptr() == data_ && t->sizes() == c10::IntArrayRef(sizes_) &&
           t->strides() == c10::IntArrayRef(strides_);
  }

  // The chunks to fingerprint to tell whether t still holds the snapshot's bytes (t is in the
  // snapshot's place); false when they differ in size already. `dense` keeps t's contiguous copy
  // alive for the check.
  bool add_checks(const c10::optional<at::Tensor>& t, at::Tensor& dense, std::vector<FingerprintCheck>& checks) const {
    if (!(t.has_value() && t->defined())) {
      return data_ == nullptr;
    }
    dense = t->contiguous();
    if (dense.nbytes() != nbytes_) {
      return false;
    }
    const char* data = static_cast<const char*>(dense.const_data_ptr());
    for (size_t offset = 0, i = 0; offset < nbytes_; offset += kChunk, ++i) {
      checks.push_back({data + offset, std::min(kChunk, nbytes_ - offset), fingerprints_[i]});
    }
    return true;
  }

 private:
  static constexpr size_t kChunk = size_t{256} << 10;

  const void* data_ = nullptr;
  std::vector<int64_t> sizes_, strides_;
  size_t nbytes_ = 0;
  std::vector<uint64_t> fingerprints_;
};

// A small LRU cache of packed blocks per scalar type; a few models' worth of blocks.
template <typename scalar_t>
class NinBlockPackedCache {
 public:
  static constexpr size_t kCapacity = 16;

  static NinBlockPackedCache& instance() {
    static NinBlockPackedCache cache;
    return cache;
  }

  std::shared_ptr<const NinBlockPacked<scalar_t>> get(const MicroKernel<scalar_t>& kernel, const at::Tensor& w,
                                                      const c10::optional<at::Tensor>& b, const at::Tensor& w1,
                                                      const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                                      const c10::optional<at::Tensor>& b2) {
    const std::array<c10::optional<at::Tensor>, 6> tensors{w, b, w1, b1, w2, b2};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->in_place_of(kernel, tensors)) {
          if (it->unchanged(tensors)) {
            entries_.splice(entries_.begin(), entries_, it);
            return entries_.front().packed;
          }
          entries_.erase(it);
          break;
        }
      }
    }
    // Packed outside the lock: two threads missing together both pack, and both results are right.
    Entry entry{kernel.fn,
                {TensorSnapshot(w), TensorSnapshot(b), TensorSnapshot(w1), TensorSnapshot(b1), TensorSnapshot(w2),
                 TensorSnapshot(b2)},
                std::make_shared<const NinBlockPacked<scalar_t>>(kernel, w, b, w1, b1, w2, b2)};
    auto packed = entry.packed;
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.push_front(std::move(entry));
    if (entries_.size() > kCapacity) {
      entries_.pop_back();
    }
    return packed;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

 private:
  struct Entry {
    MicroKernelFn<scalar_t> fn;
    std::array<TensorSnapshot, 6> snapshots;
    std::shared_ptr<const NinBlockPacked<scalar_t>> packed;

    bool in_place_of(const MicroKernel<scalar_t>& kernel,
                     const std::array<c10::optional<at::Tensor>, 6>& tensors) const {
      if (fn != kernel.fn) {
        return false;
      }
      for (size_t i = 0; i < tensors.size(); ++i) {
        if (!snapshots[i].same_place(tensors[i])) {
          return false;
        }
      }
      return true;
    }

    bool unchanged(const std::array<c10::optional<at::Tensor>, 6>& tensors) const {
      std::array<at::Tensor, 6> dense;
      std::vector<FingerprintCheck> checks;
      for (size_t i = 0; i < tensors.size(); ++i) {
        if (!snapshots[i].add_checks(tensors[i], dense[i], checks)) {
          return false;
        }
      }
      return same_fingerprints(checks);
    }
  };

  std::mutex mutex_;
  std::list<Entry> entries_;
};

// The packed block for these weights: from the cache when they have not changed since last time.
template <typename scalar_t>
std::shared_ptr<const NinBlockPacked<scalar_t>> packed_nin_block(const at::Tensor& w, const c10::optional<at::Tensor>& b,
                                                                const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                                                                const at::Tensor& w2,
                                                                const c10::optional<at::Tensor>& b2) {
  return NinBlockPackedCache<scalar_t>::instance().get(microkernel_for<scalar_t>(), w, b, w1, b1, w2, b2);
}

// Every packed block of every scalar type (the kernels run float and double; half and bfloat16
// run as float copies, which are never cached).
inline void clear_packed_nin_block_caches() {
  NinBlockPackedCache<float>::instance().clear();
  NinBlockPackedCache<double>::instance().clear();
}

inline size_t packed_nin_block_cache_entries() {
  return NinBlockPackedCache<float>::instance().size() + NinBlockPackedCache<double>::instance().size();
}

}  // namespace cpu
}  // namespace nin_ext
