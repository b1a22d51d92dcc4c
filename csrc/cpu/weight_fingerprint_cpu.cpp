// The fingerprint in GCC vector extensions, compiled once per ISA below: the same arithmetic in SSE2,
// AVX2 or AVX-512 registers (the AVX-512 clone hashes about 1.5x as fast as the SSE2 one).
#include "cpu/weight_fingerprint_cpu.h"

#include <cstring>

#include "cpu/microkernel.h"

// The helpers pass 64-byte vectors by value; they are inlined into every clone, so the ABI note that
// GCC gives for such arguments without AVX-512 does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace nin_ext {
namespace cpu {
namespace {

typedef uint64_t Lanes __attribute__((vector_size(64)));

constexpr size_t kStripe = 64;
constexpr size_t kStripesPerBlock = 16;
// How far ahead of the stripe it hashes the loop prefetches: the weights come from L3 or memory (the
// kernels' streams evict them between calls), and the keyed multiplies leave the out-of-order window
// fewer loads in flight than a plain read would have. 4 KiB ahead took the check of the seed's NiN
// from 155 to 126 us a block at batch 1 (2-8 KiB alike; benchmarks/NOTES.md v37).
constexpr size_t kPrefetchAhead = 4096;

// XXH3's default secret (its first 192 bytes): a stripe s of a block is keyed by bytes 8s..8s+63,
// the scramble by bytes 128..191.
alignas(64) constexpr unsigned char kSecret[192] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

constexpr uint64_t kPrime32 = 0x9E3779B1ull;
constexpr uint64_t kPrime64a = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime64b = 0xC2B2AE3D27D4EB4Full;

__attribute__((always_inline)) inline Lanes load_lanes(const void* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));  // unaligned: a chunk starts wherever its tensor does
  return v;
}

// One stripe into the lanes: each word's two 32-bit halves, keyed, multiplied, plus the word itself
// (so that a word whose low half cancels its key, making the product 0, still counts).
__attribute__((always_inline)) inline Lanes accumulate_stripe(Lanes acc, Lanes data, Lanes key) {
  const Lanes keyed = data ^ key;
  return acc + data + (keyed & 0xffffffffull) * (keyed >> 32);
}

// Spreads the lanes' high bits over their low bits between blocks, so that a block's position counts.
__attribute__((always_inline)) inline Lanes scramble(Lanes acc) {
  acc ^= acc >> 47;
  acc ^= load_lanes(kSecret + 128);
  return acc * kPrime32;
}

}  // namespace

// One clone per ISA, chosen when the library loads (an ELF ifunc).
#if NIN_EXT_X86_64 && defined(__linux__)
#define NIN_EXT_FINGERPRINT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NIN_EXT_FINGERPRINT_CLONES
#endif

NIN_EXT_FINGERPRINT_CLONES uint64_t weight_fingerprint(const char* data, size_t length) {
  Lanes acc = {kPrime32, kPrime64a, kPrime64b, 0x165667B19E3779F9ull,
               0x85EBCA77C2B2AE63ull, 0x85EBCA77ull, 0x27D4EB2F165667C5ull, kPrime64a ^ kPrime64b};
  size_t offset = 0;
  for (; offset + kStripe * kStripesPerBlock <= length; offset += kStripe * kStripesPerBlock) {
    for (size_t s = 0; s < kStripesPerBlock; ++s) {
      if (offset + s * kStripe + kPrefetchAhead < length) {
        __builtin_prefetch(data + offset + s * kStripe + kPrefetchAhead);
      }
      acc = accumulate_stripe(acc, load_lanes(data + offset + s * kStripe), load_lanes(kSecret + 8 * s));
    }
    acc = scramble(acc);
  }
  // The last partial block: whole stripes, then the rest zero-padded (the length, mixed in below,
  // tells the padding from zeros).
  size_t s = 0;
  for (; offset + kStripe <= length; offset += kStripe, ++s) {
    acc = accumulate_stripe(acc, load_lanes(data + offset), load_lanes(kSecret + 8 * s));
  }
  if (offset < length) {
    unsigned char last[kStripe] = {};
    std::memcpy(last, data + offset, length - offset);
    acc = accumulate_stripe(acc, load_lanes(last), load_lanes(kSecret + 8 * s));
  }
  acc = scramble(acc);
  uint64_t h = length * kPrime64a;
  for (int lane = 0; lane < 8; ++lane) {
    h = (h ^ acc[lane]) * kPrime64b;
    h ^= h >> 29;
  }
  return h;
}

}  // namespace cpu
}  // namespace nin_ext
