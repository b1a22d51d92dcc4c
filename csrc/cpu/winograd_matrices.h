// The matrices of Winograd F(m x m, r x r) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks"), r = 3 or 5, m = 2, 3 or 4, built at compile time from the interpolation points 0, +-1,
// +-2, +-1/2 (as many as m + r - 2 takes) and infinity, so that the tile transforms
// (winograd_transform_lanes.h) see their coefficients as constants. No ATen here: the per-ISA
// translation units include it.
#pragma once

namespace nin_ext {
namespace cpu {

constexpr int kWinogradMinTile = 2, kWinogradMaxTile = 4, kWinogradMaxTaps = 5;
constexpr int kWinogradMaxAlpha = kWinogradMaxTile + kWinogradMaxTaps - 1;

// AT (m x alpha), G (alpha x r), BT (alpha x alpha), alpha = m + r - 1; unused entries zero.
struct WinogradMatrices {
  int m = 0, r = 0, alpha = 0;
  double AT[kWinogradMaxTile][kWinogradMaxAlpha] = {};
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

inline constexpr WinogradMatrices kWinogradMatrices[][2] = {
    {make_winograd_matrices(2, 3), make_winograd_matrices(2, 5)},
    {make_winograd_matrices(3, 3), make_winograd_matrices(3, 5)},
    {make_winograd_matrices(4, 3), make_winograd_matrices(4, 5)}};

constexpr const WinogradMatrices& winograd_matrices(int m, int r) {
  return kWinogradMatrices[m - kWinogradMinTile][r == 3 ? 0 : 1];
}

}  // namespace cpu
}  // namespace nin_ext
