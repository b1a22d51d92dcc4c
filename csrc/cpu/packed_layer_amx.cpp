// A packed layer on AMX tiles in float32 accuracy from int8 products (an Ozaki-style split). A 1x1
// layer's inputs (a ReLU's outputs, so >= 0) are scaled per pixel by a power of two that puts their
// largest in [2^21, 2^22), rounded to integers q and cut into three unsigned slices, q = 2^14 u1 +
// 2^7 u2 + u3 (8, 7 and 7 bits); each weight row is scaled by 127 over its largest and cut into three
// signed slices v1 + v2 2^-7 + v3 2^-14 (round to nearest each). w x is summed as the eight slice
// products down to 2^-21 of the leading one, grouped by their weight, C0 = v1 u1, C7 = v1 u2 + v2 u1,
// C14 = v1 u3 + v2 u2 + v3 u1, C21 = v2 u3 + v3 u2, which the tiles accumulate exactly in int32; the
// epilogue adds the groups in float and scales them back. The slices hold each input to 2^-22 of its
// pixel's largest and each weight to 2^-22 of its row's (block floating point: the error is relative
// to those, not to each product; without C21 the seed's 256 -> 384 blocks left float32's elementwise
// bound, tests/test_parity.py). A conv's inputs have both signs: their largest magnitude goes to
// [2^27, 2^28) and four slices (u1 a signed byte), the weights four too, and C21 takes v1 u4 and v4
// u1 as well, ten products in all (three slices left the seed's block 1 at the edge of float32's
// elementwise bound). TDPBSUD does 2x the multiply-adds of TDPBF16PS per cycle, and eight products
// stand for a float32 product where three-part bfloat16 took six at half the rate. The tiles are read
// from cache-line aligned buffers (a row across two lines halves the products' rate). Compiled for
// AMX by the pragma and called only where amx_int8_usable() (microkernel_select.cpp);
// benchmarks/NOTES.md v33, v40 and v41 have the measurements, benchmarks/amx_int8_rate.cpp the rates
// alone.
#include "cpu/packed_layer_amx.h"

#if NIN_EXT_AMX
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,amx-tile,amx-int8")
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_* as unused merge sources, which
// -Wmaybe-uninitialized reports as a false positive (as in microkernel_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "cpu/thread_scratch_cpu.h"

namespace nin_ext {
namespace cpu {
namespace {

// A tile holds 16 rows of 64 bytes: 16 weight rows x 64 k (int8), or 16 k-quads x 16 pixels x 4 k
// (uint8, each pixel's four consecutive k adjacent, the layout TDPBSUD reads).
constexpr int kTileRows = 16, kTileK = 64, kTileBytes = kTileRows * kTileK;
// The slices per value: four for a conv's inputs of both signs and its weights, three for a 1x1
// layer's (NOTES v41: three left a conv at the edge of float32's elementwise bound, and four cost the
// 1x1 layers 5% of blocks 2 and 3).
constexpr int slices_for(bool signed_inputs) { return signed_inputs ? 4 : 3; }
// Per 64-wide chunk of k and per panel (32 weight rows or 32 pixels): its two tiles of each slice.
constexpr int64_t chunk_bytes(int slices) { return int64_t{slices} * 2 * kTileBytes; }
static_assert(kAmxPanel == 2 * kTileRows, "a panel is two tiles");
// Slice j's weight in the sums: 2^-7j. The int32 sums stay exact below 2^31: a k adds at most
// 255 * 127 (C0) and 127 * 127 + 2 * 127 * 64 + 255 * 64 (C21 of four slices, the largest), so up to
// 44000 inputs.
constexpr float kSliceStep = 128.f;
constexpr int64_t kMaxReduction = 44000;

struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 16 rows of 64 bytes. Loaded on every call: the configuration is per thread.
void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = kTileRows;
  }
  _tile_loadconfig(&config);
}

int64_t chunks_of(int64_t K) { return (K + kTileK - 1) / kTileK; }

// A layer of unsigned inputs whose last chunk holds at most 32 of k (the seed's block 1: 96 inputs)
// takes that chunk's eight products as five: its pixel slices side by side in two tiles, A = [u1 | u2]
// and B = [u2 | u3] (32 k each), against weight tiles W0 = [v1 | 0], W1 = [v2 | v1], W2 = [v3 | v2]
// and W3 = [0 | v1]: C0 += W0 A, C7 += W1 A, C14 += W2 A + W3 B, C21 += W2 B. 13 products for 96
// inputs where two full chunks took 16.
bool half_last_chunk(int64_t K, bool signed_inputs) {
  return !signed_inputs && K % kTileK != 0 && K % kTileK <= kTileK / 2;
}
constexpr int64_t kHalfChunkWeightBytes = 4 * 2 * kTileBytes;  // W0-W3, per half of the rows
constexpr int64_t kHalfChunkPixelBytes = 2 * 2 * kTileBytes;   // A and B, per half of the pixels
// A weight panel's (32 rows; half_chunk_bytes = kHalfChunkWeightBytes) or a pixel panel's (32
// pixels; kHalfChunkPixelBytes) tiles.
int64_t panel_bytes(int64_t K, bool signed_inputs, int64_t half_chunk_bytes) {
  const bool half = half_last_chunk(K, signed_inputs);
  return (chunks_of(K) - half) * chunk_bytes(slices_for(signed_inputs)) + (half ? half_chunk_bytes : 0);
}

__m512 load_or_zero(const float* p, bool present) { return present ? _mm512_loadu_ps(p) : _mm512_setzero_ps(); }

// Bits [from, from + 8) of each lane of v moved to bits [to, to + 8).
template <int from, int to>
__m512i move_bits(__m512i v) {
  if constexpr (from > to) {
    return _mm512_srli_epi32(v, from - to);
  } else {
    return _mm512_slli_epi32(v, to - from);
  }
}

// Byte j of each lane of u[0 .. kSlices) set to the slices of the integers q (7 kSlices + 1 bits): u1 =
// q >> 7 (kSlices - 1), then 7 bits each down to q & 127.
template <int kSlices, int j>
void add_slices(__m512i q, __m512i u[kSlices]) {
  constexpr int kOrAnd = 0xF8;  // a | (b & c)
  const __m512i byte = _mm512_set1_epi32(static_cast<int>(0xFFu << (8 * j))),
                low7 = _mm512_set1_epi32(0x7F << (8 * j));
  u[0] = _mm512_ternarylogic_epi32(u[0], move_bits<7 * (kSlices - 1), 8 * j>(q), byte, kOrAnd);
  u[1] = _mm512_ternarylogic_epi32(u[1], move_bits<7 * (kSlices - 2), 8 * j>(q), low7, kOrAnd);
  u[2] = _mm512_ternarylogic_epi32(u[2], move_bits<7 * (kSlices - 3), 8 * j>(q), low7, kOrAnd);
  if constexpr (kSlices == 4) {
    u[3] = _mm512_ternarylogic_epi32(u[3], move_bits<0, 8 * j>(q), low7, kOrAnd);
  }
}

// One pixel panel, in[k][32] for k < K, into its slices' tiles,
// out[((chunk * slices + slice) * 2 + half) * 1024 + quad * 64 + 4 * pixel + k % 4], k = chunk * 64 +
// 4 * quad, and the exponents that scale each pixel back (exponent[p]: x = 2^exponent (u1 + ...)).
// Unsigned inputs (a 1x1 layer's) take three slices, their largest in [2^21, 2^22); inputs of both
// signs (kSigned, a conv's) four, their largest magnitude in [2^27, 2^28), so u1 is a signed byte
// and the others unsigned (q's two's complement bits). Returns whether every input is finite (and,
// unless kSigned, neither negative nor -0.0).
template <bool kSigned>
bool pack_pixel_panel(const float* in, int64_t K, float* exponent, uint8_t* out) {
  constexpr int kSlices = slices_for(kSigned);
  // The largest input's bits: as unsigned integers, the bits of floats >= 0 order as their values,
  // below those of infinity and NaN, and a negative float's (its sign bit set) lie above them all.
  // One integer max per 16 inputs (comparing floats took five operations, a third of the slicing).
  __m512i largest_bits[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  for (int64_t k = 0; k < K; ++k) {
    for (int half = 0; half < 2; ++half) {
      __m512i x = _mm512_loadu_si512(in + k * kAmxPanel + half * kTileRows);
      if constexpr (kSigned) {
        x = _mm512_and_si512(x, magnitude);
      }
      largest_bits[half] = _mm512_max_epu32(largest_bits[half], x);
    }
  }
  // An infinity or NaN, or (unless kSigned) a negative value; -0.0 too, which the other means take.
  const __m512i infinity = _mm512_set1_epi32(0x7F800000);
  if (_mm512_cmpge_epu32_mask(_mm512_max_epu32(largest_bits[0], largest_bits[1]), infinity) != 0) {
    return false;
  }
  const __m512 largest[2] = {_mm512_castsi512_ps(largest_bits[0]), _mm512_castsi512_ps(largest_bits[1])};
  const __m512 zero = _mm512_setzero_ps();
  constexpr int kTopBit = kSigned ? 28 : 22, kLeadShift = 7 * (kSlices - 1);
  __m512 shift[2];
  for (int half = 0; half < 2; ++half) {
    // 2^shift puts the largest in [2^(top - 1), 2^top); a pixel of zeros keeps shift 0.
    const __mmask16 positive = _mm512_cmp_ps_mask(largest[half], zero, _CMP_GT_OQ);
    shift[half] = _mm512_maskz_sub_ps(positive, _mm512_set1_ps(kTopBit - 1.f), _mm512_getexp_ps(largest[half]));
    // u1 counts units of 2^kLeadShift
    _mm512_storeu_ps(exponent + half * kTileRows, _mm512_sub_ps(_mm512_set1_ps(kLeadShift), shift[half]));
  }
  // The largest may round up to 2^top, one past the bits: held below it.
  const __m512i top = _mm512_set1_epi32((1 << kTopBit) - 1), bottom = _mm512_set1_epi32(-(1 << kTopBit));
  const bool half_chunk = half_last_chunk(K, kSigned);
  const int64_t chunks = chunks_of(K);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const bool in_halves = half_chunk && chunk == chunks - 1;
    for (int quad = 0; quad < (in_halves ? kTileRows / 2 : kTileRows); ++quad) {
      const int64_t k = chunk * kTileK + 4 * quad;
      for (int half = 0; half < 2; ++half) {
        uint8_t* dst = out + chunk * chunk_bytes(kSlices) + half * kTileBytes + quad * kTileK;
        __m512i u[kSlices];
        for (int slice = 0; slice < kSlices; ++slice) {
          u[slice] = _mm512_setzero_si512();
        }
        if (k < K) {  // past K, the chunk's zero padding
          __m512i q[4];
          for (int j = 0; j < 4; ++j) {
            const __m512 x = load_or_zero(in + (k + j) * kAmxPanel + half * kTileRows, k + j < K);
            q[j] = _mm512_min_epi32(top, _mm512_cvtps_epi32(_mm512_scalef_ps(x, shift[half])));
            if constexpr (kSigned) {
              q[j] = _mm512_max_epi32(bottom, q[j]);
            }
          }
          add_slices<kSlices, 0>(q[0], u);
          add_slices<kSlices, 1>(q[1], u);
          add_slices<kSlices, 2>(q[2], u);
          add_slices<kSlices, 3>(q[3], u);
        }
        if (in_halves) {  // A = [u1 | u2] and B = [u2 | u3], the second halves 8 rows down
          constexpr int64_t kB = 2 * kTileBytes, kSecond = kTileRows / 2 * kTileK;
          _mm512_store_si512(dst, u[0]);
          _mm512_store_si512(dst + kSecond, u[1]);
          _mm512_store_si512(dst + kB, u[1]);
          _mm512_store_si512(dst + kB + kSecond, u[2]);
          continue;
        }
        for (int slice = 0; slice < kSlices; ++slice) {
          _mm512_store_si512(dst + slice * 2 * kTileBytes, u[slice]);
        }
      }
    }
  }
  return true;
}

// Accumulator c += weight slice tile w times pixel slice u1 in tile u: signed by signed where u1 is
// signed (kSigned), else signed by unsigned. A macro: the tile intrinsics take their register numbers
// as literal text.
#define NIN_EXT_MULTIPLY_U1(c, w, u) \
  do {                               \
    if constexpr (kSigned) {         \
      _tile_dpbssd(c, w, u);         \
    } else {                         \
      _tile_dpbsud(c, w, u);         \
    }                                \
  } while (0)

// Accumulators 0-3 (C0, C7, C14, C21 of a 16 x 16 block) += one 64-wide chunk's slice products, the
// operands in tiles 4-7, each load into a slot whose last product is behind it. Unsigned inputs,
// three slices: eight products from six loads. Signed inputs (kSigned), four slices: the same eight
// with u1 (a signed byte) by TDPBSSD, then v1 u4 and v4 u1, nine loads in all. `between()` runs after
// each product: vector work there runs while the tile unit multiplies.
template <bool kSigned, typename Between>
void multiply_chunk(const uint8_t* a, const uint8_t* b, Between& between) {
  constexpr int kSliceStride = 2 * kTileBytes;  // the next slice of the same half
  _tile_loadd(4, a, 64);                        // v1
  _tile_loadd(5, b, 64);                        // u1
  NIN_EXT_MULTIPLY_U1(0, 4, 5);                 // C0 += v1 u1
  between();
  _tile_loadd(6, b + kSliceStride, 64);  // u2
  _tile_dpbsud(1, 4, 6);                 // C7 += v1 u2
  between();
  _tile_loadd(7, b + 2 * kSliceStride, 64);  // u3
  _tile_dpbsud(2, 4, 7);                     // C14 += v1 u3
  between();
  _tile_loadd(4, a + kSliceStride, 64);  // v2
  NIN_EXT_MULTIPLY_U1(1, 4, 5);          // C7 += v2 u1
  between();
  _tile_dpbsud(2, 4, 6);  // C14 += v2 u2
  between();
  _tile_dpbsud(3, 4, 7);  // C21 += v2 u3
  between();
  if constexpr (kSigned) {
    _tile_loadd(7, b + 3 * kSliceStride, 64);  // u4
  }
  _tile_loadd(4, a + 2 * kSliceStride, 64);  // v3
  NIN_EXT_MULTIPLY_U1(2, 4, 5);              // C14 += v3 u1
  between();
  _tile_dpbsud(3, 4, 6);  // C21 += v3 u2
  between();
  if constexpr (kSigned) {
    _tile_loadd(6, a, 64);  // v1
    _tile_dpbsud(3, 6, 7);  // C21 += v1 u4
    between();
    _tile_loadd(4, a + 3 * kSliceStride, 64);  // v4
    NIN_EXT_MULTIPLY_U1(3, 4, 5);              // C21 += v4 u1
    between();
  }
}

// The same for a last chunk in halves (half_last_chunk: unsigned inputs): a = W0-W3, b = A and B.
template <typename Between>
void multiply_half_chunk(const uint8_t* a, const uint8_t* b, Between& between) {
  constexpr int kNext = 2 * kTileBytes;  // the next tile of the same half
  _tile_loadd(5, b, 64);                 // A
  _tile_loadd(4, a, 64);                 // W0
  _tile_dpbsud(0, 4, 5);                 // C0 += W0 A
  between();
  _tile_loadd(6, a + kNext, 64);  // W1
  _tile_dpbsud(1, 6, 5);          // C7 += W1 A
  between();
  _tile_loadd(4, a + 2 * kNext, 64);  // W2
  _tile_dpbsud(2, 4, 5);              // C14 += W2 A
  between();
  _tile_loadd(7, b + kNext, 64);  // B
  _tile_dpbsud(3, 4, 7);          // C21 += W2 B
  between();
  _tile_loadd(6, a + 3 * kNext, 64);  // W3
  _tile_dpbsud(2, 6, 7);              // C14 += W3 B
  between();
}

#undef NIN_EXT_MULTIPLY_U1

}  // namespace

bool amx_int8_usable() {
  static const bool usable = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
      return false;
    }
    const bool avx512f = (ebx >> 16) & 1, avx512dq = (ebx >> 17) & 1, avx512bw = (ebx >> 30) & 1,
               avx512vl = (ebx >> 31) & 1, amx_tile = (edx >> 24) & 1, amx_int8 = (edx >> 25) & 1;
    if (!(avx512f && avx512dq && avx512bw && avx512vl && amx_int8 && amx_tile &&
          __builtin_cpu_supports("avx512f"))) {  // the OS saves the AVX-512 state
      return false;
    }
    constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

int64_t amx_packed_layer_bytes(int64_t M, int64_t K, bool signed_inputs) {
  const int64_t panels = (M + kAmxPanel - 1) / kAmxPanel;
  return panels * panel_bytes(K, signed_inputs, kHalfChunkWeightBytes) +
         panels * kAmxPanel * int64_t{sizeof(float)};  // tiles, row scales
}

void pack_layer_amx(const float* w, int64_t M, int64_t K, bool signed_inputs, int64_t panel_begin,
                    int64_t panel_end, uint8_t* tiles) {
  const int slices = slices_for(signed_inputs);
  const bool half_chunk = half_last_chunk(K, signed_inputs);
  const int64_t chunks = chunks_of(K), panels = (M + kAmxPanel - 1) / kAmxPanel;
  const int64_t weight_bytes = panel_bytes(K, signed_inputs, kHalfChunkWeightBytes);
  float* scales = reinterpret_cast<float*>(tiles + panels * weight_bytes);
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    uint8_t* panel_tiles = tiles + panel * weight_bytes;
    for (int r = 0; r < kAmxPanel; ++r) {
      const int64_t m = panel * kAmxPanel + r;
      float largest = 0.f;
      for (int64_t k = 0; m < M && k < K; ++k) {
        largest = std::max(largest, std::fabs(w[m * K + k]));
      }
      const float scale = largest > 0.f ? 127.f / largest : 0.f;
      scales[m] = largest / 127.f;
      // Row r's byte of tile `tile` (two per tile: its halves of the rows) at column kk.
      const auto at = [&](int64_t tile, int64_t kk) -> uint8_t& {
        return panel_tiles[(tile * 2 + r / kTileRows) * kTileBytes + (r % kTileRows) * kTileK + kk];
      };
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const bool in_halves = half_chunk && chunk == chunks - 1;
        for (int kk = 0; kk < (in_halves ? kTileK / 2 : kTileK); ++kk) {
          const int64_t k = chunk * kTileK + kk;
          float v = m < M && k < K ? w[m * K + k] * scale : 0.f;
          int8_t slice_values[4] = {};
          for (int slice = 0; slice < slices; ++slice) {
            const float s = std::nearbyint(v);  // within [-127, 127], then [-64, 64]
            slice_values[slice] = static_cast<int8_t>(s);
            v = (v - s) * kSliceStep;
          }
          if (!in_halves) {
            for (int slice = 0; slice < slices; ++slice) {
              at(chunk * slices + slice, kk) = static_cast<uint8_t>(slice_values[slice]);
            }
            continue;
          }
          // W0 = [v1 | 0], W1 = [v2 | v1], W2 = [v3 | v2], W3 = [0 | v1]
          const int64_t w0 = chunk * slices;
          const auto byte = [](int8_t x) { return static_cast<uint8_t>(x); };
          at(w0, kk) = byte(slice_values[0]);
          at(w0, kk + kTileK / 2) = 0;
          at(w0 + 1, kk) = byte(slice_values[1]);
          at(w0 + 1, kk + kTileK / 2) = byte(slice_values[0]);
          at(w0 + 2, kk) = byte(slice_values[2]);
          at(w0 + 2, kk + kTileK / 2) = byte(slice_values[1]);
          at(w0 + 3, kk) = 0;
          at(w0 + 3, kk + kTileK / 2) = byte(slice_values[0]);
        }
      }
    }
  }
}

namespace {

// A 16 x 16 block's sums (C0, C7, C14, C21) into out, row r: out[r * 32 + lane] = relu(bias[r] +
// scales[r] 2^exponent (C0 + (C7 + (C14 + C21 / 128) / 128) / 128)), for r < rows.
struct BlockEpilogue {
  const int32_t (*sums)[kTileRows * kTileRows] = nullptr;
  const float* scales = nullptr;
  const float* bias = nullptr;
  float* out = nullptr;
  __m512 exponent;
  int64_t rows = 0;

  void run_row(int64_t r) const {
    const __m512 step = _mm512_set1_ps(1.f / kSliceStep);
    __m512 v = _mm512_cvtepi32_ps(_mm512_load_si512(sums[3] + r * kTileRows));
    v = _mm512_fmadd_ps(v, step, _mm512_cvtepi32_ps(_mm512_load_si512(sums[2] + r * kTileRows)));
    v = _mm512_fmadd_ps(v, step, _mm512_cvtepi32_ps(_mm512_load_si512(sums[1] + r * kTileRows)));
    v = _mm512_fmadd_ps(v, step, _mm512_cvtepi32_ps(_mm512_load_si512(sums[0] + r * kTileRows)));
    v = _mm512_scalef_ps(_mm512_mul_ps(v, _mm512_set1_ps(scales[r])), exponent);
    v = _mm512_add_ps(v, _mm512_set1_ps(bias[r]));
    _mm512_storeu_ps(out + r * kAmxPanel, _mm512_max_ps(_mm512_setzero_ps(), v));
  }
};

// The block before's epilogue, a row between two products where `spread` (else all in finish()).
// Spread, it ran while the tile unit multiplied where a block has at most two chunks of products
// (reductions of 96-128: 2-15% faster), but made blocks of 3-4 chunks 3-13% slower, whose products
// hide the epilogue after them as they are (benchmarks/NOTES.md v42).
constexpr int64_t kMostChunksToSpreadEpilogue = 2;
struct EpilogueBetweenProducts {
  const BlockEpilogue& pending;
  const bool spread;
  int64_t row = 0;

  void operator()() {
    if (spread && row < pending.rows) {
      pending.run_row(row++);
    }
  }
  void finish() {
    for (; row < pending.rows; ++row) {
      pending.run_row(row);
    }
  }
};

template <bool kSigned>
void apply_layer_amx_slices(const uint8_t* weights, const float* bias, int64_t M, int64_t K, const float* in,
                            float* out, int64_t panels, LayerPanelsFn other_panels, const void* context) {
  if (K > kMaxReduction) {
    other_panels(context, 0, panels);
    return;
  }
  configure_tiles();
  constexpr int64_t kChunkBytes = chunk_bytes(slices_for(kSigned));
  const bool half_chunk = half_last_chunk(K, kSigned);
  const int64_t chunks = chunks_of(K), full_chunks = chunks - half_chunk, row_panels = (M + kAmxPanel - 1) / kAmxPanel;
  const int64_t weight_bytes = panel_bytes(K, kSigned, kHalfChunkWeightBytes),
                pixel_bytes = panel_bytes(K, kSigned, kHalfChunkPixelBytes);
  const float* scales = reinterpret_cast<const float*>(weights + row_panels * weight_bytes);
  // Pixel panels sliced two at a time: their tiles stay in cache while every weight panel passes.
  constexpr int64_t kGroup = 2;
  ScratchBuffer<uint8_t> pixels(kGroup * pixel_bytes);
  alignas(64) float exponents[kGroup * kAmxPanel];
  alignas(64) int32_t sums[2][4][kTileRows * kTileRows];
  BlockEpilogue pending;  // the block whose sums wait in sums[(stored - 1) % 2]
  const bool spread = chunks <= kMostChunksToSpreadEpilogue;
  int64_t stored = 0;
  for (int64_t p0 = 0; p0 < panels; p0 += kGroup) {
    const int64_t group = std::min(kGroup, panels - p0);
    bool representable = true;
    for (int64_t g = 0; g < group; ++g) {
      representable &= pack_pixel_panel<kSigned>(in + (p0 + g) * K * kAmxPanel, K, exponents + g * kAmxPanel,
                                                 pixels.data() + g * pixel_bytes);
    }
    if (!representable) {
      other_panels(context, p0, group);
      continue;
    }
    for (int64_t rp = 0; rp < row_panels; ++rp) {
      const int64_t m0 = rp * kAmxPanel;
      for (int64_t g = 0; g < group; ++g) {
        for (int row_half = 0; row_half < 2; ++row_half) {
          const int64_t rows = std::min<int64_t>(kTileRows, M - m0 - row_half * kTileRows);
          if (rows <= 0) {
            break;
          }
          for (int half = 0; half < 2; ++half) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            const uint8_t* wa = weights + rp * weight_bytes + row_half * kTileBytes;
            const uint8_t* pb = pixels.data() + g * pixel_bytes + half * kTileBytes;
            EpilogueBetweenProducts between{pending, spread};
            for (int64_t chunk = 0; chunk < full_chunks; ++chunk) {
              multiply_chunk<kSigned>(wa + chunk * kChunkBytes, pb + chunk * kChunkBytes, between);
            }
            if (half_chunk) {
              multiply_half_chunk(wa + full_chunks * kChunkBytes, pb + full_chunks * kChunkBytes, between);
            }
            between.finish();
            auto* block_sums = sums[stored++ % 2];
            _tile_stored(0, block_sums[0], kTileRows * sizeof(int32_t));
            _tile_stored(1, block_sums[1], kTileRows * sizeof(int32_t));
            _tile_stored(2, block_sums[2], kTileRows * sizeof(int32_t));
            _tile_stored(3, block_sums[3], kTileRows * sizeof(int32_t));
            const int64_t m = m0 + row_half * kTileRows;
            pending.sums = block_sums;
            pending.scales = scales + m;
            pending.bias = bias + m;
            pending.out = out + ((p0 + g) * M + m) * kAmxPanel + half * kTileRows;
            pending.exponent = _mm512_load_ps(exponents + g * kAmxPanel + half * kTileRows);
            pending.rows = rows;
            if (!spread) {  // right after its products
              EpilogueBetweenProducts{pending, false}.finish();
              pending.rows = 0;
            }
          }
        }
      }
    }
  }
  EpilogueBetweenProducts{pending, false}.finish();
}

}  // namespace

void apply_layer_amx(const uint8_t* weights, const float* bias, int64_t M, int64_t K, const float* in, float* out,
                     int64_t panels, bool signed_inputs, LayerPanelsFn other_panels, const void* context) {
  if (signed_inputs) {
    apply_layer_amx_slices<true>(weights, bias, M, K, in, out, panels, other_panels, context);
  } else {
    apply_layer_amx_slices<false>(weights, bias, M, K, in, out, panels, other_panels, context);
  }
}

}  // namespace cpu
}  // namespace nin_ext

#else

namespace nin_ext {
namespace cpu {

bool amx_int8_usable() { return false; }
int64_t amx_packed_layer_bytes(int64_t, int64_t, bool) { return 0; }
void pack_layer_amx(const float*, int64_t, int64_t, bool, int64_t, int64_t, uint8_t*) {}
void apply_layer_amx(const uint8_t*, const float*, int64_t, int64_t, const float*, float*, int64_t, bool, LayerPanelsFn,
                     const void*) {}

}  // namespace cpu
}  // namespace nin_ext

#endif
