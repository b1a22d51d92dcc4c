// Winograd F(2x2, r x r) for the block's spatial convolution (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks"), r = 3 or 5: each 2x2 block of output pixels takes
// (r + 1)^2 multiplications per input/output channel pair instead of 4 r^2, 2.25x fewer for 3x3
// and 2.8x for 5x5 (the seed's blocks 3 and 2). The transforms are built from the interpolation
// points 0, +-1 (and +-2 for r = 5) and infinity; in float32 their error is a few times direct
// convolution's, about 1e-6 of the output's scale (tests/test_winograd.py bounds it), so the path
// can be switched off with NIN_EXT_CPU_WINOGRAD=0.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// The transform matrices of F(2, r), row-major: AT (2 x alpha), G (alpha x r), BT (alpha x alpha).
struct WinogradTransform {
  int r = 0, alpha = 0;
  std::vector<double> AT, G, BT;
  std::vector<float> AT_float, BT_float;  // what the tile transforms use

  explicit WinogradTransform(int taps) : r(taps), alpha(taps + 1) {
    const std::vector<double> points =
        taps == 3 ? std::vector<double>{0, 1, -1} : std::vector<double>{0, 1, -1, 2, -2};
    const int finite = alpha - 1;
    AT.assign(2 * alpha, 0);
    G.assign(alpha * r, 0);
    BT.assign(alpha * alpha, 0);
    for (int j = 0; j < finite; ++j) {
      AT[j] = 1;
      AT[alpha + j] = points[j];
      double scale = 1;
      for (int l = 0; l < finite; ++l) {
        scale *= l == j ? 1 : points[j] - points[l];
      }
      for (int k = 0; k < r; ++k) {
        G[j * r + k] = std::pow(points[j], k) / scale;
      }
    }
    AT[2 * alpha - 1] = 1;
    G[finite * r + r - 1] = 1;
    // Row j of BT: the coefficients of prod_{l != j} (x - p_l); the last row, of prod_l (x - p_l).
    for (int j = 0; j <= finite; ++j) {
      std::vector<double> poly{1};
      for (int l = 0; l < finite; ++l) {
        if (l == j) {
          continue;
        }
        std::vector<double> next(poly.size() + 1, 0);
        for (size_t i = 0; i < poly.size(); ++i) {
          next[i] -= points[l] * poly[i];
          next[i + 1] += poly[i];
        }
        poly = next;
      }
      for (size_t k = 0; k < poly.size(); ++k) {
        BT[j * alpha + k] = poly[k];
      }
    }
    AT_float.assign(AT.begin(), AT.end());
    BT_float.assign(BT.begin(), BT.end());
  }
};

inline const WinogradTransform& winograd_transform(int r) {
  static const WinogradTransform f2_3(3), f2_5(5);
  return r == 3 ? f2_3 : f2_5;
}

inline bool winograd_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NIN_EXT_CPU_WINOGRAD");
    return flag == nullptr || std::strcmp(flag, "0") != 0;
  }();
  return enabled;
}

// Whether a conv weight (C_out, C_in, r, r) gets a Winograd packing: r is 3 or 5 and the layer is
// wide enough for the transforms' cost to pay (narrow layers stay direct).
inline bool winograd_weight(const at::Tensor& w) {
  return winograd_enabled() && w.scalar_type() == at::kFloat && w.size(2) == w.size(3) &&
         (w.size(2) == 3 || w.size(2) == 5) && w.size(0) >= 64 && w.size(1) >= 32;
}

// Whether a call runs the Winograd path: stride 1 and an even output size (whole 2x2 blocks).
inline bool winograd_geometry(const NinBlockGeometry& g) {
  return g.SH == 1 && g.SW == 1 && g.OH % 2 == 0 && g.OW % 2 == 0;
}

// The conv weight in the Winograd domain, U = G g G^T per (C_out, C_in) pair, packed for the
// micro-kernel: one (C_out x C_in) matrix per transform point xi, in MR-row panels, k-major:
// u[((xi * panels + m / MR) * C_in + k) * MR + m % MR].
struct PackedWinogradConv {
  const WinogradTransform& transform;
  int64_t M, K, mr;
  std::vector<float> u;

  PackedWinogradConv(const at::Tensor& weight, int64_t mr_)
      : transform(winograd_transform(static_cast<int>(weight.size(2)))), M(weight.size(0)), K(weight.size(1)),
        mr(mr_) {
    const int r = transform.r, alpha = transform.alpha;
    const int64_t panels = (M + mr - 1) / mr;
    u.assign(alpha * alpha * panels * K * mr, 0.f);
    const at::Tensor w = weight.detach().to(at::kDouble).contiguous();
    const double* src = w.const_data_ptr<double>();
    if (r == 3) {
      transform_weights<3>(src, panels);
    } else {
      transform_weights<5>(src, panels);
    }
  }

  // U = G g G^T for every (output, input) channel pair, in parallel over output channels (training
  // repacks every step); R fixed so that the small products unroll.
  template <int R>
  void transform_weights(const double* src, int64_t panels) {
    constexpr int A = R + 1;
    double G[A][R];
    for (int i = 0; i < A; ++i) {
      for (int j = 0; j < R; ++j) {
        G[i][j] = transform.G[i * R + j];
      }
    }
    at::parallel_for(0, M, 8, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        for (int64_t k = 0; k < K; ++k) {
          const double* g = src + (m * K + k) * R * R;
          double gg[A][R];  // G g
          for (int i = 0; i < A; ++i) {
            for (int j = 0; j < R; ++j) {
              double s = 0;
              for (int l = 0; l < R; ++l) {
                s += G[i][l] * g[l * R + j];
              }
              gg[i][j] = s;
            }
          }
          float* dst = u.data() + ((m / mr) * K + k) * mr + m % mr;
          const int64_t point_stride = panels * K * mr;
          for (int i = 0; i < A; ++i) {  // (G g) G^T
            for (int j = 0; j < A; ++j) {
              double s = 0;
              for (int l = 0; l < R; ++l) {
                s += gg[i][l] * G[j][l];
              }
              dst[(i * A + j) * point_stride] = static_cast<float>(s);
            }
          }
        }
      }
    });
  }

  const float* panel(int xi, int64_t m0) const {
    const int64_t panels = (M + mr - 1) / mr;
    return u.data() + ((xi * panels + m0 / mr) * K) * mr;
  }
};

}  // namespace cpu
}  // namespace nin_ext
