// The Winograd transforms' inner step, shared by the per-ISA translation units (like the
// micro-kernel body): for LANES tiles side by side (one per SIMD lane),
//   out[(i * rows + j) * out_stride + lane] = sum_{k, l} C[i][k] in[(k * inner + l) * in_stride + lane] C[j][l]
// with C = BT of F(m, r) (input transform, rows = inner = alpha), AT (output transform, rows = m,
// inner = alpha) or A (the weight gradient's transform of the output gradient, rows = alpha, inner =
// m), winograd_matrices.h. The coefficients are compile-time constants: zeros vanish, +-1
// become adds and subtracts, and each point pair +-p costs one multiply-add chain instead of two
// (TransformMatrix below). Each pass keeps a column of its input in registers (Vec, as in
// microkernel_register_blocked.h) for one vector of lanes at a time, so that every input is loaded
// once. Also the portable patch gather and output scatter of a tile's lanes, and the table the vector
// scatters interleave by (the vector gather and scatters are in microkernel_avx512.cpp and
// microkernel_avx2.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "cpu/microkernel.h"
#include "cpu/winograd_matrices.h"

namespace nin_ext {
namespace cpu {

// One transform matrix C (rows x inner) as the passes use it. The rows of BT for points p and -p are
// even/odd mirrors, C[i + 1][k] = (-1)^k C[i][k], when the finite points are symmetric (alpha even):
// both rows come from E = sum_{k even} C[i][k] x_k and O = sum_{k odd}, as E + O and E - O. The
// columns of AT for p and -p are mirrors by row, C[i][j + 1] = (-1)^i C[i][j]: with S = x_j + x_{j+1}
// and D = x_j - x_{j+1}, row i takes C[i][j] S (i even) or C[i][j] D (i odd). The seed's F(4x4, 5x5)
// passes take 30 (input) and 16 (output) operations per vector of lanes instead of about 50 and 26
// multiply-adds.
struct TransformMatrix {
  int rows = 0, inner = 0;
  float c[kWinogradMaxAlpha][kWinogradMaxAlpha] = {};
  bool row_pair[kWinogradMaxAlpha] = {};     // rows i and i + 1 are mirrors
  bool column_pair[kWinogradMaxAlpha] = {};  // columns j and j + 1 are mirrors (then no row pairs)
};

constexpr TransformMatrix make_transform_matrix(const double (*c)[kWinogradMaxAlpha], int rows, int inner) {
  TransformMatrix t;
  t.rows = rows;
  t.inner = inner;
  for (int i = 0; i < rows; ++i) {
    for (int k = 0; k < inner; ++k) {
      t.c[i][k] = static_cast<float>(c[i][k]);  // exact: sums of products of 0, +-1, +-2, +-1/2
    }
  }
  bool any_column_pair = false;
  for (int j = 0; j + 1 < inner; ++j) {
    bool mirror = !(j > 0 && t.column_pair[j - 1]), odd_nonzero = false;
    for (int i = 0; i < rows; ++i) {
      mirror = mirror && t.c[i][j + 1] == (i % 2 ? -t.c[i][j] : t.c[i][j]);
      odd_nonzero = odd_nonzero || (i % 2 && t.c[i][j] != 0);
    }
    t.column_pair[j] = mirror && odd_nonzero;
    any_column_pair = any_column_pair || t.column_pair[j];
  }
  for (int i = 0; i + 1 < rows && !any_column_pair; ++i) {
    bool mirror = !(i > 0 && t.row_pair[i - 1]), odd_nonzero = false;
    for (int k = 0; k < inner; ++k) {
      mirror = mirror && t.c[i + 1][k] == (k % 2 ? -t.c[i][k] : t.c[i][k]);
      odd_nonzero = odd_nonzero || (k % 2 && t.c[i][k] != 0);
    }
    t.row_pair[i] = mirror && odd_nonzero;
  }
  return t;
}

template <int M, int R>
struct WinogradTransformMatrices {
  static_assert(winograd_size(M, R), "no such Winograd size");
  static constexpr const WinogradMatrices& f = winograd_matrices(M, R);
  static constexpr TransformMatrix input = make_transform_matrix(f.BT, f.alpha, f.alpha);
  static constexpr TransformMatrix output = make_transform_matrix(f.AT, M, f.alpha);
  static constexpr TransformMatrix output_gradient = make_transform_matrix(f.A, f.alpha, M);
};

// acc = coefficient x (first term) or acc += coefficient x, with the constant folded: zero adds
// nothing, +-1 is an add or a subtract.
template <typename Vec>
__attribute__((always_inline)) inline void accumulate_term(float coefficient, typename Vec::reg x,
                                                           typename Vec::reg& acc, bool& first) {
  if (coefficient == 0.f) {
    return;
  }
  if (first) {
    acc = coefficient == 1.f    ? x
          : coefficient == -1.f ? Vec::sub(Vec::zero(), x)
                                : Vec::mul(Vec::broadcast(&coefficient), x);
  } else {
    acc = coefficient == 1.f    ? Vec::add(acc, x)
          : coefficient == -1.f ? Vec::sub(acc, x)
                                : Vec::fmadd(Vec::broadcast(&coefficient), x, acc);
  }
  first = false;
}

// out[i * out_i + c * out_c + lane] = sum_k T.c[i][k] in[k * in_k + c * in_c + lane] for i < T.rows,
// c < columns and the LANES lanes (NV vectors, which share each coefficient's broadcast).
template <typename Vec, int LANES, const TransformMatrix& T>
__attribute__((always_inline)) inline void transform_pass(int columns, const float* in, int64_t in_k, int64_t in_c,
                                                          float* out, int64_t out_i, int64_t out_c) {
  constexpr int NV = LANES / Vec::lanes;
  using reg = typename Vec::reg;
  for (int c = 0; c < columns; ++c) {
    reg x[kWinogradMaxAlpha][NV];
#pragma GCC unroll 8
    for (int k = 0; k < T.inner; ++k) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        x[k][v] = Vec::load(in + k * in_k + c * in_c + v * Vec::lanes);
      }
    }
#pragma GCC unroll 8
    for (int k = 0; k + 1 < T.inner; ++k) {  // mirrored columns j, j + 1 -> S, D in their places
      if (T.column_pair[k]) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          const reg s = Vec::add(x[k][v], x[k + 1][v]), d = Vec::sub(x[k][v], x[k + 1][v]);
          x[k][v] = s;
          x[k + 1][v] = d;
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < T.rows; ++i) {
      if (i > 0 && T.row_pair[i - 1]) {
        continue;  // made with row i - 1
      }
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        reg even = Vec::zero(), odd = Vec::zero();  // odd: the odd k of a row pair only
        bool no_even = true, no_odd = true;
#pragma GCC unroll 8
        for (int k = 0; k < T.inner; ++k) {
          if (k > 0 && T.column_pair[k - 1]) {
            continue;  // in column k - 1's S or D
          }
          const reg term = T.column_pair[k] ? x[k + i % 2][v] : x[k][v];
          if (T.row_pair[i] && k % 2) {
            accumulate_term<Vec>(T.c[i][k], term, odd, no_odd);
          } else {
            accumulate_term<Vec>(T.c[i][k], term, even, no_even);
          }
        }
        float* row = out + i * out_i + c * out_c + v * Vec::lanes;
        if (T.row_pair[i]) {
          Vec::store(row, Vec::add(even, odd));
          Vec::store(row + out_i, Vec::sub(even, odd));
        } else {
          Vec::store(row, even);
        }
      }
    }
  }
}

// C in C^T for LANES lanes, the size fixed so that the passes unroll into registers.
template <typename Vec, int LANES, const TransformMatrix& T>
void transform_fixed(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  constexpr int ROWS = T.rows, INNER = T.inner;
  float half[ROWS * INNER * LANES];  // C in: [i][l][lane]
  // half[i][l] = sum_k C[i][k] in[k][l]: column l of in, over k.
  transform_pass<Vec, LANES, T>(INNER, in, INNER * in_stride, in_stride, half, INNER * LANES, LANES);
  // out[i][j] = sum_l C[j][l] half[i][l]: row i of half, over l.
  transform_pass<Vec, LANES, T>(ROWS, half, LANES, INNER * LANES, out, out_stride, ROWS * out_stride);
}

// The input (BT d B, alpha x alpha) or the output (AT M A, m x m) transform of F(m x m, r x r). BT
// depends on alpha = m + r - 1 only and AT on m and alpha, so sizes that share them share a transform.
template <typename Vec, int LANES, bool OUTPUT>
void winograd_transform_lanes(int m, int r, const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  const int alpha = m + r - 1;
  if (!OUTPUT) {
    switch (alpha) {
#define NIN_EXT_INPUT_TRANSFORM(ALPHA)                                                                   \
  case ALPHA:                                                                                          \
    return transform_fixed<Vec, LANES, WinogradTransformMatrices<2, ALPHA - 1>::input>(in, in_stride, out, \
                                                                                         out_stride);
      NIN_EXT_INPUT_TRANSFORM(4)
      NIN_EXT_INPUT_TRANSFORM(5)
      NIN_EXT_INPUT_TRANSFORM(6)
      NIN_EXT_INPUT_TRANSFORM(7)
      NIN_EXT_INPUT_TRANSFORM(8)
#undef NIN_EXT_INPUT_TRANSFORM
    }
  } else {
    switch (m * 16 + alpha) {
#define NIN_EXT_OUTPUT_TRANSFORM(M, ALPHA)                                                                   \
  case M * 16 + ALPHA:                                                                                     \
    return transform_fixed<Vec, LANES, WinogradTransformMatrices<M, ALPHA - M + 1>::output>(in, in_stride, out, \
                                                                                              out_stride);
      NIN_EXT_OUTPUT_TRANSFORM(2, 4)
      NIN_EXT_OUTPUT_TRANSFORM(2, 5)
      NIN_EXT_OUTPUT_TRANSFORM(2, 6)
      NIN_EXT_OUTPUT_TRANSFORM(2, 7)
      NIN_EXT_OUTPUT_TRANSFORM(2, 8)
      NIN_EXT_OUTPUT_TRANSFORM(3, 5)
      NIN_EXT_OUTPUT_TRANSFORM(3, 6)
      NIN_EXT_OUTPUT_TRANSFORM(3, 7)
      NIN_EXT_OUTPUT_TRANSFORM(3, 8)
      NIN_EXT_OUTPUT_TRANSFORM(4, 6)
      NIN_EXT_OUTPUT_TRANSFORM(4, 8)
#undef NIN_EXT_OUTPUT_TRANSFORM
    }
  }
  std::abort();  // unreachable: no other size passes winograd_size
}

// The weight gradient's transform of an m x m block of the output gradient, A dY AT (alpha x alpha),
// for the sizes conv2d_weight_grad_cpu.h chooses: F(2x2, 3x3) and F(4x4, 5x5).
template <typename Vec, int LANES>
void winograd_output_gradient_lanes(int m, int r, const float* in, int64_t in_stride, float* out,
                                    int64_t out_stride) {
  if (m == 2 && r == 3) {
    return transform_fixed<Vec, LANES, WinogradTransformMatrices<2, 3>::output_gradient>(in, in_stride, out,
                                                                                         out_stride);
  }
  if (m == 4 && r == 5) {
    return transform_fixed<Vec, LANES, WinogradTransformMatrices<4, 5>::output_gradient>(in, in_stride, out,
                                                                                         out_stride);
  }
  std::abort();  // unreachable: conv2d_weight_grad_tile_size chooses no other size
}

// The input patches of `length` consecutive m x m blocks, the first at block column bx, side by side:
//   d[(i * alpha + j) * nr + l] = band[i * band_width + m * (bx + l) + j]   for i, j < alpha, l < length
// (band: alpha padded input rows). Scalar: a stride-m read per value.
inline void winograd_gather_portable(const float* band, int64_t band_width, int m, int alpha, int64_t bx,
                                     int64_t length, float* d, int64_t nr) {
  for (int i = 0; i < alpha; ++i) {
    for (int j = 0; j < alpha; ++j) {
      const float* src = band + i * band_width + m * bx + j;
      float* dst = d + (i * alpha + j) * nr;
      for (int64_t l = 0; l < length; ++l) {
        dst[l] = src[m * l];
      }
    }
  }
}

// Bias + ReLU of the output blocks' rows into the tile's panels in raster order, run by run
// (WinogradRowRun, microkernel.h).
inline void winograd_scatter_portable(const float* y, int m, int64_t nr, float shift, const WinogradRowRun* runs,
                                      int64_t run_count, float* out) {
  for (int64_t r = 0; r < run_count; ++r) {
    const WinogradRowRun& run = runs[r];
    int64_t dx = run.t0 % m, lane = run.t0 / m;  // value t's column and lane, stepped (no division per value)
    for (int64_t i = 0; i < run.count; ++i) {
      const float value = y[run.src + dx * nr + lane] + shift;
      out[run.dst + i] = value < 0.f ? 0.f : value;  // NaN passes, as in torch.relu
      if (++dx == m) {
        dx = 0;
        ++lane;
      }
    }
  }
}

// Calls vector_fn(src, phase, n, dst) for every vector of `width` raster values of every run (the
// vector scatters' loop): n <= width values from row value t, phase = t % m, whose lanes start at
// y's src (value t's block), going to out's dst.
template <int width, typename VectorFn>
inline void for_each_row_vector(const float* y, int m, const WinogradRowRun* runs, int64_t run_count, float* out,
                                const VectorFn& vector_fn) {
  for (int64_t r = 0; r < run_count; ++r) {
    const WinogradRowRun& run = runs[r];
    for (int64_t i = 0; i < run.count; i += width) {
      const int64_t t = run.t0 + i;
      vector_fn(y + run.src + t / m, static_cast<int>(t % m), std::min<int64_t>(width, run.count - i),
                out + run.dst + i);
    }
  }
}

// The vector scatters' view of a row's raster order: 16 values from row value t, phase = t % m, are
// value e = column[m][phase][e] of lane[m][phase][e] (lanes counted from value t's block); pair_index
// is the same lane as a two-source permute index over columns (0, 1) or (2, 3).
struct RowInterleaveTable {
  alignas(64) int32_t lane[kWinogradMaxTile + 1][kWinogradMaxTile][16];
  alignas(64) int32_t column[kWinogradMaxTile + 1][kWinogradMaxTile][16];
  alignas(64) int32_t pair_index[kWinogradMaxTile + 1][kWinogradMaxTile][16];
};

// Built at compile time: a constant, with no initialization code that the per-ISA translation
// units could each compile for their own ISA (one copy would serve all of them).
constexpr RowInterleaveTable make_row_interleave_table() {
  RowInterleaveTable t{};
  for (int m = kWinogradMinTile; m <= kWinogradMaxTile; ++m) {
    for (int phase = 0; phase < m; ++phase) {
      for (int e = 0; e < 16; ++e) {
        t.lane[m][phase][e] = (phase + e) / m;
        t.column[m][phase][e] = (phase + e) % m;
        t.pair_index[m][phase][e] = (phase + e) % m % 2 * 16 + (phase + e) / m;
      }
    }
  }
  return t;
}

inline constexpr RowInterleaveTable kRowInterleaveTable = make_row_interleave_table();

// One float per "vector", for the portable kernel (the compiler vectorises what it can).
struct ScalarVec {
  using reg = float;
  static constexpr int lanes = 1;
  static reg zero() { return 0.f; }
  static reg load(const float* p) { return *p; }
  static reg broadcast(const float* p) { return *p; }
  static reg fmadd(reg a, reg b, reg acc) { return acc + a * b; }
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg relu(reg v) { return v < 0.f ? 0.f : v; }  // NaN passes, as in torch.relu
  static void store(float* p, reg v) { *p = v; }
};

}  // namespace cpu
}  // namespace nin_ext
