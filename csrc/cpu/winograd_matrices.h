// The matrices of Winograd F(m x m, r x r) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks"), m = 2, 3 or 4 and r = 3 to 7 with at most 8 transform points per side (winograd_size),
// built at compile time from the interpolation points 0, +-1, +-2, +-1/2 (as many as m + r - 2
// takes) and infinity, so that the tile transforms (winograd_transform_lanes.h) see their
// coefficients as constants. No ATen here: the per-ISA translation units include it.
#pragma once

namespace nin_ext {
namespace cpu {

constexpr int kWinogradMinTile = 2, kWinogradMaxTile = 4, kWinogradMinTaps = 3, kWinogradMaxTaps = 7;
constexpr int kWinogradMaxAlpha = 8;  // the interpolation points below, and infinity

// Whether F(m x m, r x r) has a Winograd path: its alpha = m + r - 1 points are among the 8. F(4x4,
// 4x4) is left out: its 7 points are not symmetric (1/2 without -1/2), and its float32 error was 12x
// direct convolution's in a simulation, against 4-6x for the other sizes of 7 and 8 points
// (benchmarks/NOTES.md, v24).
constexpr bool winograd_size(int m, int r) {
  return m >= kWinogradMinTile && m <= kWinogradMaxTile && r >= kWinogradMinTaps && r <= kWinogradMaxTaps &&
         m + r - 1 <= kWinogradMaxAlpha && !(m == 4 && r == 4);
}

// AT (m x alpha), G (alpha x r), BT (alpha x alpha), alpha = m + r - 1, and A = AT^T (alpha x m: the
// weight gradient's transform of the output gradient, A dY AT); unused entries zero.
struct WinogradMatrices {
  int m = 0, r = 0, alpha = 0;
  double AT[kWinogradMaxTile][kWinogradMaxAlpha] = {};
  double A[kWinogradMaxAlpha][kWinogradMaxAlpha] = {};
  double G[kWinogradMaxAlpha][kWinogradMaxTaps] = {};
  double BT[kWinogradMaxAlpha][kWinogradMaxAlpha] = {};
};

constexpr WinogradMatrices make_winograd_matrices(int m, int r) {
  WinogradMatrices t;
  t.m = m;
  t.r = r;
  t.alpha = m + r - 1;
  const double points[] = {0, 1, -1, 2, -2, 0.5, -0.5};
  const int finite = t.alpha - 1;
  for (int j = 0; j < finite; ++j) {
    double scale = 1;
    for (int l = 0; l < finite; ++l) {
      scale *= l == j ? 1 : points[j] - points[l];
    }
    double power = 1;
    for (int i = 0; i < m; ++i, power *= points[j]) {
      t.AT[i][j] = power;
    }
    power = 1;
    for (int k = 0; k < r; ++k, power *= points[j]) {
      t.G[j][k] = power / scale;
    }
  }
  t.AT[m - 1][finite] = 1;  // the point at infinity reaches the last output only
  t.G[finite][r - 1] = 1;
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < t.alpha; ++j) {
      t.A[j][i] = t.AT[i][j];
    }
  }
  // Row j of BT: the coefficients of prod_{l != j} (x - p_l); the last row, of prod_l (x - p_l).
  for (int j = 0; j <= finite; ++j) {
    double poly[kWinogradMaxAlpha] = {1};
    int degree = 0;
    for (int l = 0; l < finite; ++l) {
      if (l == j) {
        continue;
      }
      for (int i = degree + 1; i > 0; --i) {  // poly *= (x - p_l)
        poly[i] = poly[i - 1] - points[l] * poly[i];
      }
      poly[0] = -points[l] * poly[0];
      ++degree;
    }
    for (int k = 0; k <= degree; ++k) {
      t.BT[j][k] = poly[k];
    }
  }
  return t;
}

struct WinogradMatricesTable {
  WinogradMatrices f[kWinogradMaxTile - kWinogradMinTile + 1][kWinogradMaxTaps - kWinogradMinTaps + 1];
};

constexpr WinogradMatricesTable make_winograd_matrices_table() {
  WinogradMatricesTable t;
  for (int m = kWinogradMinTile; m <= kWinogradMaxTile; ++m) {
    for (int r = kWinogradMinTaps; r <= kWinogradMaxTaps; ++r) {
      if (winograd_size(m, r)) {
        t.f[m - kWinogradMinTile][r - kWinogradMinTaps] = make_winograd_matrices(m, r);
      }
    }
  }
  return t;
}

inline constexpr WinogradMatricesTable kWinogradMatrices = make_winograd_matrices_table();

// F(m x m, r x r)'s matrices; winograd_size(m, r) must hold.
constexpr const WinogradMatrices& winograd_matrices(int m, int r) {
  return kWinogradMatrices.f[m - kWinogradMinTile][r - kWinogradMinTaps];
}

}  // namespace cpu
}  // namespace nin_ext
