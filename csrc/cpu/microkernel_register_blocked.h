// The register-blocked micro-kernel bodies shared by the SIMD kernels (see microkernel.h for what they
// compute). Each ISA's translation unit includes this after `#pragma GCC target(...)`, so that it is
// compiled for that ISA only, and instantiates it with a vector type providing:
//   reg, lanes, zero(), load(const float*), broadcast(const float*), fmadd(a, b, acc),
//   store(float*, reg), relu(reg) (NaN passes), add(reg, reg); the Winograd transforms also sub and
//   mul; the shifted kernel's pieces (LanePieces) also mask, lane_mask(bits) and blend(mask, a, b)
#pragma once

#include <cstdint>
#include <type_traits>

#include "cpu/microkernel.h"

namespace nin_ext {
namespace cpu {

// How far ahead the kernels prefetch their weight panel. The panels stream from L3 or memory (a
// Winograd tile reads all the per-point weights, 6-14 MB for the seed's blocks 2 and 3; the weights
// of the network do not fit in L3 together), and the hardware prefetcher leaves their latency
// exposed: 3 KiB ahead cut the network's time at batch 16 by a tenth with the AVX-512 kernel and by
// 2-3% with the AVX2 one (benchmarks/NOTES.md, v10). Prefetches past the panel's end are harmless.
constexpr int64_t kWeightPrefetchBytes = 3072;

template <int MR>
constexpr int64_t weight_prefetch_steps() {
  return kWeightPrefetchBytes / (MR * int64_t(sizeof(float)));
}

// How many reduction steps ahead the plain kernel prefetches its pixel panel's rows. The rows come
// from L2: the 1x1 layers stream a tile's pixel panels past one weight panel, and a Winograd
// product's rows lie a transformed channel apart (3-8 KB on the seed's blocks), where the hardware
// prefetchers do not follow. On a 2-core Intel Xeon (AVX-512, 48 KB L1, 2 MB L2) this cut the seed's
// blocks 1-3 by 2-9% (benchmarks/NOTES.md, v31); 4, 8 and 16 steps measured the same.
constexpr int64_t kPixelPrefetchSteps = 8;

// Vector v of a step's pixels: from b_k's NR consecutive floats, or by a loader, b_k(v).
template <typename Vec, typename Pixels>
__attribute__((always_inline)) inline typename Vec::reg pixel_vector(const Pixels& b_k, int v) {
  if constexpr (std::is_convertible_v<Pixels, const float*>) {
    return Vec::load(b_k + v * Vec::lanes);
  } else {
    return b_k(v);
  }
}

// MR rows x (NV * Vec::lanes) pixels, MR * NV accumulators held in registers; with `accumulate`, c's
// first `rows` rows are added to the products before the bias (a sum of its own, not the start of
// the reduction, so that a reduction in chunks rounds as short sums). `for_each_k(step)` calls
// step(a_k, b_k) once per reduction index: a_k the MR weights of that index, b_k its NR pixels
// (pixel_vector). Always inlined, with the steps, so that the accumulators never leave the registers.
template <typename Vec, int MR, int NV, typename ForEachK>
__attribute__((always_inline)) inline void register_blocked_product(const ForEachK& for_each_k, const float* bias,
                                                                    float* c, int64_t ldc, int64_t rows,
                                                                    bool accumulate = false) {
  typename Vec::reg acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = Vec::zero();
    }
  }
  for_each_k([&](const float* a_k, const auto& b_k) __attribute__((always_inline)) {
    typename Vec::reg b_v[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      b_v[v] = pixel_vector<Vec>(b_k, v);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const typename Vec::reg a_r = Vec::broadcast(a_k + r);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = Vec::fmadd(a_r, b_v[v], acc[r][v]);
      }
    }
  });
  if (accumulate) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      if (r < rows) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          acc[r][v] = Vec::add(Vec::load(c + r * ldc + v * Vec::lanes), acc[r][v]);
        }
      }
    }
  }
  if (bias == nullptr) {  // a linear product (Winograd's per-point products)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      if (r < rows) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          Vec::store(c + r * ldc + v * Vec::lanes, acc[r][v]);
        }
      }
    }
    return;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if (r < rows) {
      const typename Vec::reg shift = Vec::broadcast(bias + r);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        Vec::store(c + r * ldc + v * Vec::lanes, Vec::relu(Vec::add(acc[r][v], shift)));
      }
    }
  }
}

// The kernel on a pixel panel: b_k = b + k * ldb. Computes the first ROWS rows of the MR-row weight
// panel.
template <typename Vec, int MR, int NV, int ROWS = MR>
inline void register_blocked_microkernel(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias,
                                         float* c, int64_t ldc, int64_t rows) {
  register_blocked_product<Vec, ROWS, NV>(
      [&](const auto& step) __attribute__((always_inline)) {
        for (int64_t k = 0; k < K; ++k) {
          __builtin_prefetch(a + (k + weight_prefetch_steps<MR>()) * MR);
#pragma GCC unroll 4
          for (int line = 0; line < NV * Vec::lanes; line += kCacheLineFloats) {
            __builtin_prefetch(b + (k + kPixelPrefetchSteps) * ldb + line);
          }
          step(a + k * MR, b + k * ldb);
        }
      },
      bias, c, ldc, rows);
}

// Calls body(std::integral_constant<int, ROWS>{}) with ROWS the smallest third of MR that covers
// `rows`: a panel's rows past `rows` are zero padding, so a layer's last panel computes its rows
// rounded up to a third of MR only (the seed's 256-channel block 2 has 21 full panels of 12 and one
// of 4 rows: 3% of its products and 1x1 layers were padding).
template <int MR, typename Body>
__attribute__((always_inline)) inline void with_row_class(int64_t rows, const Body& body) {
  static_assert(MR % 3 == 0, "the row classes are thirds of MR");
  if (rows <= MR / 3) {
    body(std::integral_constant<int, MR / 3>{});
  } else if (rows <= 2 * MR / 3) {
    body(std::integral_constant<int, 2 * MR / 3>{});
  } else {
    body(std::integral_constant<int, MR>{});
  }
}

// The kernel for any `rows`, by row class.
template <typename Vec, int MR, int NV>
inline void register_blocked_microkernel_rows(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias,
                                              float* c, int64_t ldc, int64_t rows) {
  with_row_class<MR>(rows, [&](auto row_class) {
    register_blocked_microkernel<Vec, MR, NV, decltype(row_class)::value>(K, a, b, ldb, bias, c, ldc, rows);
  });
}

// The swapped product (microkernel.h, SwappedProductFn), by row class: the rows (a tile's blocks)
// broadcast, the NR-channel weight panel streamed and prefetched as the plain kernel prefetches its
// weights. The block goes through a buffer to `store(row_class, block, c, ldc, rows)`, which stores
// it transposed (store_transposed, or the ISA's transposes in registers: with K = 96, scalar stores
// cost a tenth of the FMAs' time).
template <typename Vec, int MR, int NV, typename StoreTransposed>
inline void register_blocked_swapped_product(int64_t K, const float* a, int64_t lda, const float* b, float* c,
                                             int64_t ldc, int64_t rows, const StoreTransposed& store) {
  constexpr int NR = NV * Vec::lanes;
  with_row_class<MR>(rows, [&](auto row_class) {
    constexpr int ROWS = decltype(row_class)::value;
    alignas(64) float block[ROWS * NR];
    register_blocked_product<Vec, ROWS, NV>(
        [&](const auto& step) __attribute__((always_inline)) {
          for (int64_t k = 0; k < K; ++k) {
            for (int line = 0; line < NR; line += kCacheLineFloats) {  // a step's NR weights
              __builtin_prefetch(b + (k + weight_prefetch_steps<NR>()) * NR + line);
            }
            step(a + k * lda, b + k * NR);
          }
        },
        nullptr, block, NR, ROWS);
    store(row_class, block, c, ldc, rows);
  });
}

// One vector of a panel's pixels as pieces: the lanes whose pixels lie at the same distance from their
// lane, each piece a whole vector loaded from `starts[i]` (where the vector's lane 0 would be) and
// blended in by its lanes' mask. A vector within one output row is one piece, one load. (Masked loads
// measured the same on Zen 4; two pieces for every vector, to spare the branch, 5-10% slower:
// benchmarks/NOTES.md, v22.) Every load stays within the vector's own pixels' span of the rows.
template <typename Vec>
struct LanePieces {
  int count = 0;
  typename Vec::mask masks[Vec::lanes];
  int64_t starts[Vec::lanes];

  LanePieces() = default;
  explicit LanePieces(const int64_t* lanes) {
    uint32_t bits[Vec::lanes] = {};
    for (int i = 0; i < Vec::lanes; ++i) {
      const int64_t start = lanes[i] - i;
      int piece = 0;
      while (piece < count && starts[piece] != start) {
        ++piece;
      }
      if (piece == count) {
        starts[count++] = start;
      }
      bits[piece] |= 1u << i;
    }
    for (int piece = 0; piece < count; ++piece) {
      masks[piece] = Vec::lane_mask(bits[piece]);
    }
  }

  __attribute__((always_inline)) typename Vec::reg load(const float* row) const {
    typename Vec::reg v = Vec::load(row + starts[0]);
    for (int piece = 1; piece < count; ++piece) {
      v = Vec::blend(masks[piece], v, Vec::load(row + starts[piece]));
    }
    return v;
  }
};

// The kernel on shifted rows of an unpacked input (microkernel.h, ShiftedMicroKernelFn), by row class
// (with_row_class). A panel of consecutive pixels reads its vectors in place; one that crosses an
// output row's end reads them by pieces (LanePieces).
template <typename Vec, int MR, int NV>
inline void register_blocked_shifted_microkernel(int64_t K, int64_t shifts, const int64_t* offsets, const float* a,
                                                 const float* b, int64_t ldb, const int64_t* lanes, const float* bias,
                                                 bool accumulate, float* c, int64_t ldc, int64_t rows) {
  const bool consecutive = lanes_consecutive(lanes, NV * Vec::lanes);
  with_row_class<MR>(rows, [&](auto row_class) {
    const auto product = [&](const auto& pixels) __attribute__((always_inline)) {
      register_blocked_product<Vec, decltype(row_class)::value, NV>(
          [&](const auto& step) __attribute__((always_inline)) {
            for (int64_t k = 0; k < K; ++k) {
              for (int64_t s = 0; s < shifts; ++s) {
                __builtin_prefetch(a + (k * shifts + s + weight_prefetch_steps<MR>()) * MR);
                step(a + (k * shifts + s) * MR, pixels(b + k * ldb + offsets[s]));
              }
            }
          },
          bias, c, ldc, rows, accumulate);
    };
    if (consecutive) {
      product([&](const float* row) __attribute__((always_inline)) { return row + lanes[0]; });
      return;
    }
    LanePieces<Vec> pieces[NV];
    for (int v = 0; v < NV; ++v) {
      pieces[v] = LanePieces<Vec>(lanes + v * Vec::lanes);
    }
    product([&](const float* row) __attribute__((always_inline)) {
      return [&pieces, row](int v) __attribute__((always_inline)) { return pieces[v].load(row); };
    });
  });
}

}  // namespace cpu
}  // namespace nin_ext
