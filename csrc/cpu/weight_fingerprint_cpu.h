// A 64-bit fingerprint of a weight chunk's bytes, for the packed-weight cache's check
// (nin_block_packed_cache_cpu.h).
#pragma once

#include <cstddef>
#include <cstdint>

namespace nin_ext {
namespace cpu {

// After XXH3's loop for long inputs: a keyed multiply per 64-bit word, accumulated in 8 lanes,
// scrambled every KiB, then the lanes and the length mixed into one word. Reads each byte once.
// Two different inputs collide with a chance of about 2^-64.
uint64_t weight_fingerprint(const char* data, size_t length);

}  // namespace cpu
}  // namespace nin_ext
