// A packed layer on AMX tiles in float32 accuracy from bfloat16 products. Each float is split into
// three bfloat16 parts, x = x0 + x1 + x2 (round to nearest each: 8 significand bits apiece, so the
// split is exact), and w x is summed as the six part products down to 2^-16 of it (w0 x0, w0 x1, w1
// x0, w1 x1, w0 x2, w2 x0; "bf16x6"). A product of two bfloat16 is exact in float32, which the tiles
// accumulate in, so what is dropped is below float32's own rounding. Compiled for AMX by the pragma
// and called only where amx_bf16_usable() (microkernel_select.cpp); benchmarks/NOTES.md v33 has the
// measurements, benchmarks/amx_bf16x6_rate.cpp the rates alone.
#include "cpu/packed_layer_amx.h"

#if NIN_EXT_AMX
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16")
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_* as unused merge sources, which
// -Wmaybe-uninitialized reports as a false positive (as in microkernel_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "cpu/thread_scratch_cpu.h"

namespace nin_ext {
namespace cpu {
namespace {

// A tile holds 16 rows of 64 bytes: 16 x 32 bfloat16 (weights: rows x k) or 16 x 16 pairs (pixels:
// k pairs x 16 pixels, each pixel's two consecutive k adjacent, the layout TDPBF16PS reads).
constexpr int kTileRows = 16, kTileK = 32, kTileElements = kTileRows * kTileK;
constexpr int kParts = 3;
// Per 32-wide step of k and per panel (32 weight rows or 32 pixels): its two tiles of each part.
constexpr int64_t kStepElements = int64_t{kParts} * 2 * kTileElements;
static_assert(kAmxPanel == 2 * kTileRows, "a panel is two tiles");

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

__m512 widen(__m256i bf16) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16)); }

// The three bfloat16 parts of 16 floats: v = p[0] + p[1] + p[2]; the lanes where p[0] is infinite or
// NaN (the value, or one that rounds past bfloat16's largest) are returned, their other parts zero.
__mmask16 split_parts(__m512 v, __m256i p[kParts]) {
  p[0] = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  const __m512 f0 = widen(p[0]);
  constexpr int kInfOrNaN = 0x01 | 0x08 | 0x10 | 0x80;  // QNaN, +inf, -inf, SNaN
  const __mmask16 non_finite = _mm512_fpclass_ps_mask(f0, kInfOrNaN);
  const __m512 r1 = _mm512_maskz_sub_ps(static_cast<__mmask16>(~non_finite), v, f0);
  p[1] = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(r1));
  p[2] = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_sub_ps(r1, widen(p[1]))));
  return non_finite;
}

// Row k's and row k + 1's 16 values as 16 pairs (one tile row of pixels).
__m512i interleave_pairs(__m256i even, __m256i odd) {
  const __m512i index = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(index, _mm512_inserti64x4(_mm512_castsi256_si512(even), odd, 1));
}

__m512 load_or_zero(const float* p, bool present) { return present ? _mm512_loadu_ps(p) : _mm512_setzero_ps(); }

// One pixel panel, in[k][32] for k < K (zero past K), into its parts' tiles:
// out[((step * 3 + part) * 2 + half) * 512 + pair * 32 + 2 * pixel + k % 2], k = step * 32 + 2 * pair.
// Returns whether every value is finite.
bool pack_pixel_panel(const float* in, int64_t K, int64_t steps, uint16_t* out) {
  __mmask16 non_finite = 0;
  for (int64_t step = 0; step < steps; ++step) {
    for (int pair = 0; pair < kTileRows; ++pair) {
      const int64_t k = step * kTileK + 2 * pair;
      for (int half = 0; half < 2; ++half) {
        __m256i even[kParts], odd[kParts];
        non_finite |= split_parts(load_or_zero(in + k * kAmxPanel + half * kTileRows, k < K), even);
        non_finite |= split_parts(load_or_zero(in + (k + 1) * kAmxPanel + half * kTileRows, k + 1 < K), odd);
        for (int part = 0; part < kParts; ++part) {
          _mm512_storeu_si512(out + ((step * kParts + part) * 2 + half) * kTileElements + pair * kTileK,
                              interleave_pairs(even[part], odd[part]));
        }
      }
    }
  }
  return non_finite == 0;
}

// Accumulators 0-3 (the 2 x 2 tiles of a 32 x 32 block) += one 32-wide step's six part products;
// tiles 4 and 5 take the weights' two row halves of a part, 6 and 7 the pixels'. The order walks the
// six (weight part, pixel part) pairs changing one operand at a time, 14 tile loads a step where the
// smallest-first order took 16 (tile loads bound the layer: 3-15% faster alone, the same results),
// and adds w0 x0 last.
void multiply_step(const uint16_t* a, const uint16_t* b) {
  auto load_weights = [&](int part) {
    _tile_loadd(4, a + (part * 2) * kTileElements, 64);
    _tile_loadd(5, a + (part * 2 + 1) * kTileElements, 64);
  };
  auto load_pixels = [&](int part) {
    _tile_loadd(6, b + (part * 2) * kTileElements, 64);
    _tile_loadd(7, b + (part * 2 + 1) * kTileElements, 64);
  };
  auto multiply = [] {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  };
  load_weights(0);
  load_pixels(2);
  multiply();  // w0 x2
  load_pixels(1);
  multiply();  // w0 x1
  load_weights(1);
  multiply();  // w1 x1
  load_pixels(0);
  multiply();  // w1 x0
  load_weights(2);
  multiply();  // w2 x0
  load_weights(0);
  multiply();  // w0 x0
}

}  // namespace

bool amx_bf16_usable() {
  static const bool usable = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
      return false;
    }
    const bool avx512f = (ebx >> 16) & 1, avx512dq = (ebx >> 17) & 1, avx512bw = (ebx >> 30) & 1,
               avx512vl = (ebx >> 31) & 1, amx_bf16 = (edx >> 22) & 1, amx_tile = (edx >> 24) & 1;
    unsigned eax1 = 0, ebx1 = 0, ecx1 = 0, edx1 = 0;
    __get_cpuid_count(7, 1, &eax1, &ebx1, &ecx1, &edx1);
    const bool avx512bf16 = (eax1 >> 5) & 1;
    if (!(avx512f && avx512dq && avx512bw && avx512vl && avx512bf16 && amx_bf16 && amx_tile &&
          __builtin_cpu_supports("avx512f"))) {  // the OS saves the AVX-512 state
      return false;
    }
    constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

int64_t amx_packed_layer_elements(int64_t M, int64_t K) {
  return (M + kAmxPanel - 1) / kAmxPanel * ((K + kTileK - 1) / kTileK) * kStepElements;
}

void pack_layer_amx(const float* w, int64_t M, int64_t K, int64_t panel_begin, int64_t panel_end, uint16_t* out) {
  const int64_t steps = (K + kTileK - 1) / kTileK;
  alignas(64) float row[kTileK];
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    for (int r = 0; r < kAmxPanel; ++r) {
      const int64_t m = panel * kAmxPanel + r;
      for (int64_t step = 0; step < steps; ++step) {
        for (int kk = 0; kk < kTileK; ++kk) {
          const int64_t k = step * kTileK + kk;
          row[kk] = m < M && k < K ? w[m * K + k] : 0.f;
        }
        uint16_t* tiles = out + (panel * steps + step) * kStepElements + (r / kTileRows) * kTileElements;
        for (int h = 0; h < 2; ++h) {
          __m256i parts[kParts];
          split_parts(_mm512_load_ps(row + kTileRows * h), parts);
          for (int part = 0; part < kParts; ++part) {
            _mm256_storeu_si256(
                reinterpret_cast<__m256i*>(tiles + part * 2 * kTileElements + (r % kTileRows) * kTileK + 16 * h),
                parts[part]);
          }
        }
      }
    }
  }
}

void apply_layer_amx(const uint16_t* a, const float* bias, int64_t M, int64_t K, const float* in, float* out,
                     int64_t panels, LayerPanelsFn non_finite_panels, const void* context) {
  configure_tiles();
  const int64_t steps = (K + kTileK - 1) / kTileK, row_panels = (M + kAmxPanel - 1) / kAmxPanel;
  // Pixel panels split into parts two at a time: their 2 x 48 KB of tiles (256 channels) stay in
  // cache while every weight panel passes (groups of 1, 4 and 16 ran the same or slower).
  constexpr int64_t kGroup = 2;
  ScratchBuffer<uint16_t> pixels(kGroup * steps * kStepElements);
  alignas(64) float block[kAmxPanel * kAmxPanel];
  for (int64_t p0 = 0; p0 < panels; p0 += kGroup) {
    const int64_t group = std::min(kGroup, panels - p0);
    bool finite = true;
    for (int64_t g = 0; g < group; ++g) {
      finite &= pack_pixel_panel(in + (p0 + g) * K * kAmxPanel, K, steps, pixels.data() + g * steps * kStepElements);
    }
    if (!finite) {
      non_finite_panels(context, p0, group);
      continue;
    }
    for (int64_t rp = 0; rp < row_panels; ++rp) {
      const int64_t m0 = rp * kAmxPanel, rows = std::min(kAmxPanel, M - m0);
      for (int64_t g = 0; g < group; ++g) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const uint16_t* b = pixels.data() + g * steps * kStepElements;
        for (int64_t step = 0; step < steps; ++step) {
          multiply_step(a + (rp * steps + step) * kStepElements, b + step * kStepElements);
        }
        constexpr int64_t kRowBytes = kAmxPanel * sizeof(float);
        _tile_stored(0, block, kRowBytes);
        _tile_stored(1, block + kTileRows, kRowBytes);
        _tile_stored(2, block + kTileRows * kAmxPanel, kRowBytes);
        _tile_stored(3, block + kTileRows * kAmxPanel + kTileRows, kRowBytes);
        float* c = out + ((p0 + g) * M + m0) * kAmxPanel;
        for (int64_t r = 0; r < rows; ++r) {
          const __m512 shift = _mm512_set1_ps(bias[m0 + r]);
          for (int h = 0; h < 2; ++h) {
            const __m512 v = _mm512_add_ps(_mm512_load_ps(block + r * kAmxPanel + kTileRows * h), shift);
            // MAXPS returns its second operand when either is NaN: max(0, NaN) = NaN, as torch.relu.
            _mm512_storeu_ps(c + r * kAmxPanel + kTileRows * h, _mm512_max_ps(_mm512_setzero_ps(), v));
          }
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace nin_ext

#else

namespace nin_ext {
namespace cpu {

bool amx_bf16_usable() { return false; }
int64_t amx_packed_layer_elements(int64_t, int64_t) { return 0; }
void pack_layer_amx(const float*, int64_t, int64_t, int64_t, int64_t, uint16_t*) {}
void apply_layer_amx(const uint16_t*, const float*, int64_t, int64_t, const float*, float*, int64_t, LayerPanelsFn,
                     const void*) {}

}  // namespace cpu
}  // namespace nin_ext

#endif
