// Winograd F(m x m, r x r) for the block's spatial convolution (winograd_matrices.h): each m x m
// block of output pixels takes (m + r - 1)^2 multiplications per input/output channel pair instead of
// m^2 r^2 (for the seed's 5x5 block 2, F(4x4) does 4 per output pixel, direct convolution 25; a 7x7
// conv by F(2x2) 16 instead of 49). In float32 the error grows with the transform's points and with
// the reduction's length, up to ten times direct convolution's (about 1e-6 of the block output's
// scale): a call takes only the sizes whose modeled error stays within budget (winograd_accurate;
// tests/test_winograd.py bounds it). NIN_EXT_CPU_WINOGRAD=0 switches the path off, =2, 3 or 4 forces
// that m wherever the path applies and F(m x m, r x r) exists, accurate or not.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cpu/aligned_vector_cpu.h"
#include "cpu/winograd_matrices.h"
#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// -1: choose m per call (winograd_tile_size); 0: off; 2..4: that m. From NIN_EXT_CPU_WINOGRAD
// ("0", "2", "3", "4"; anything else means choose), changeable at run time for tests and comparisons.
inline std::atomic<int>& winograd_mode() {
  static std::atomic<int> mode([] {
    const char* flag = std::getenv("NIN_EXT_CPU_WINOGRAD");
    const std::string value = flag == nullptr ? "" : flag;
    return value == "0" ? 0 : value == "2" ? 2 : value == "3" ? 3 : value == "4" ? 4 : -1;
  }());
  return mode;
}

// The fewest output channels of a conv that runs by Winograd tiles on any shapes, and the fewest on
// the shapes of narrow_winograd_pays.
constexpr int64_t kWinogradWideChannels = 64;
constexpr int64_t kWinogradNarrowChannels = 10;

// Whether a conv weight (C_out, C_in, r, r) may get a Winograd packing: square, with an F(2x2, r x r)
// (3 <= r <= 7; the larger m exist for fewer r), and the layer wide enough for the transforms' cost to
// pay (below 10 output channels convs stay direct; below 64 only on narrow_winograd_pays's shapes).
// 2x2 kernels (the polyphase form of 3x3 at stride 2, of 5x5 and 7x7 at stride 4) stay direct: their
// F(m x m, 2 x 2) tiles save few multiplications, and measured 0.68-1.19x the direct path's speed,
// more often slower (benchmarks/NOTES.md, v24).
inline bool winograd_conv_shape(int64_t out_channels, int64_t in_channels, int64_t kh, int64_t kw) {
  return kh == kw && winograd_size(kWinogradMinTile, static_cast<int>(kh)) &&
         out_channels >= kWinogradNarrowChannels && in_channels >= 32;
}

// Whether a block into fewer than 64 channels (`g`, as called) may run its conv by Winograd tiles, in
// the form `form` (g itself, or its phase form): stride 1, at most 512 input channels in the form
// and output maps of 16x16 or more. Each tile's transformed input meets few weights there, so it must
// stay small: of 44 family shapes into 10-32 channels, the 28 with stride 1, outputs of 16x16 or more
// and at most 1024 channels ran 1.05-3.1x as fast as by their other paths (most 1.5-2.4x), while most
// polyphase forms (0.29-0.92x against the broadcast kernel), 1536 channels in a split form (0.68x) and
// 5x5-6x6 outputs (0.62-0.83x) ran slower; 3x3 convs into 10-16 channels on 8x8-12x12 maps (a last
// block into the classes) ran 0.80-1.03x. The one with 1024 (256 -> 10 by 11x11, split) reached 1.1e-5
// of the output's scale in error in one draw, so 512 is the bound (benchmarks/NOTES.md, v27).
inline bool narrow_winograd_pays(const NinBlockGeometry& g, const NinBlockGeometry& form) {
  return g.CC >= kWinogradWideChannels ||
         (g.SH == 1 && g.SW == 1 && form.C0 <= 512 && g.OH >= 16 && g.OW >= 16);
}

// Whether Winograd tiles of few blocks may run their products with the output channels in the vector
// lanes (the micro-kernel's swapped product): yes unless NIN_EXT_CPU_CHANNEL_LANES=0, changeable at
// run time for tests and comparisons. Either way gives the same bits.
inline std::atomic<bool>& channel_lanes_mode() {
  static std::atomic<bool> mode([] {
    const char* flag = std::getenv("NIN_EXT_CPU_CHANNEL_LANES");
    return flag == nullptr || std::string(flag) != "0";
  }());
  return mode;
}

// The relative error (max |y - y64| over max |y64|) of a block whose conv runs by F(m x m, r x r)
// tiles over `channels` input channels (a phase form's: a split or polyphase form sums its pieces in
// the same reduction): the worst of six random draws at 96 channels (128 output channels, 24x24
// maps, batch 4; benchmarks/NOTES.md, v33), growing with the square root of the channels (1.2-1.5x
// from 96 to 192 measured). Direct convolution: about 1e-6 at any count.
inline double winograd_error_estimate(int m, int r, int64_t channels) {
  constexpr double kErrorAt96Channels[kWinogradMaxTile - kWinogradMinTile + 1]
                                     [kWinogradMaxTaps - kWinogradMinTaps + 1] = {
                                         {0.44e-6, 1.8e-6, 3.8e-6, 5.3e-6, 5.0e-6},  // m = 2, r = 3..7
                                         {1.8e-6, 4.5e-6, 5.6e-6, 5.8e-6, 0},         // m = 3
                                         {5.7e-6, 0, 5.7e-6, 0, 0},                   // m = 4
                                     };
  return kErrorAt96Channels[m - kWinogradMinTile][r - kWinogradMinTaps] *
         std::sqrt(static_cast<double>(channels) / 96.0);
}

// Whether F(m x m, r x r) over `channels` input channels keeps a block's modeled error within
// 6.5e-6, so that random draws stay within the 1e-5 relative error the package holds float32 to
// (they reached 1.8e-5 before this bound, on split and polyphase forms over 256 channels or more).
// F(4x4, 5x5) on the seed's 96-channel block 2 (5.7e-6) passes; F(4x4, 3x3) on its 256-channel
// block 3 (9.3e-6 modeled, 8.3e-6 measured) does not, nor on 192 channels (8.0e-6 measured).
inline bool winograd_accurate(int m, int r, int64_t channels) {
  constexpr double kErrorBudget = 6.5e-6;
  return winograd_error_estimate(m, r, channels) <= kErrorBudget;
}

inline bool winograd_weight(const at::Tensor& w) {
  return w.scalar_type() == at::kFloat && winograd_conv_shape(w.size(0), w.size(1), w.size(2), w.size(3));
}

// Whether a call's geometry allows the Winograd path: stride 1 (any output size: blocks past the
// map's edge are computed on zero padding and not written).
inline bool winograd_geometry(const NinBlockGeometry& g) {
  return g.SH == 1 && g.SW == 1;
}

// The conv weight in the Winograd domain, U = G g G^T per (C_out, C_in) pair, packed for the
// micro-kernel: one (C_out x C_in) matrix per transform point xi, in MR-row panels, k-major
// (panel_offset); for the swapped product (channel_panel) also in NR-column panels, built on first
// use.
struct PackedWinogradConv {
  const WinogradMatrices& transform;
  int64_t M, K, mr, nr;
  // The output channels whose products a tile computes together, every point's, before their output
  // transform: a multiple of MR whose products (NR lanes per channel and point) fill about 512 KiB,
  // half the L2 of the machines we tune on (1-2% faster than 256 KiB on the seed's blocks 2 and 3).
  int64_t chunk_channels;
  AlignedVector<float> u;

  // From the direct path's packing of the same weight (`conv_panels`, MR-row panels of the
  // (C_out x C_in r r) matrix, k-major): the float weights, widened to double exactly.
  PackedWinogradConv(const float* conv_panels, int64_t out_channels, int64_t in_channels, int r, int m, int64_t mr_,
                     int64_t nr_)
      : transform(winograd_matrices(m, r)), M(out_channels), K(in_channels), mr(mr_), nr(nr_),
        chunk_channels(std::max<int64_t>(
            mr, (int64_t{512} << 10) / (transform.alpha * transform.alpha * nr * int64_t(sizeof(float))) / mr * mr)) {
    const int alpha = transform.alpha;
    const int64_t panels = (M + mr - 1) / mr;
    u.assign(alpha * alpha * panels * K * mr, 0.f);
    switch (r) {
      case 3: transform_weights<3>(conv_panels, panels); return;
      case 4: transform_weights<4>(conv_panels, panels); return;
      case 5: transform_weights<5>(conv_panels, panels); return;
      case 6: transform_weights<6>(conv_panels, panels); return;
      case 7: transform_weights<7>(conv_panels, panels); return;
    }
    TORCH_INTERNAL_ASSERT(false, "no Winograd transform for ", r, "x", r, " kernels");
  }

  // U = G g G^T for every (output, input) channel pair, in parallel over panels of MR output channels
  // (training repacks every step); R fixed so that the small products unroll. A panel's MR channels
  // are transformed together: their weights are MR consecutive floats per (input channel, tap), and
  // their U values MR consecutive floats per (input channel, point), so the loops over the rows
  // vectorize and U is written in sequential runs. One channel at a time (U's writes in 16-64 strided
  // streams), a packing of the seed's block 3 took 6.2-6.9 ms, now 3.1-4.6 (benchmarks/NOTES.md v29).
  template <int R>
  void transform_weights(const float* conv_panels, int64_t panels) {
    constexpr int kMaxRows = 16;
    TORCH_INTERNAL_ASSERT(mr <= kMaxRows, "Winograd packing: panels of at most ", kMaxRows, " rows, got ", mr);
    const int alpha = transform.alpha;
    const auto& G = transform.G;
    const int64_t conv_k = K * R * R;
    at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
      double g[R][R][kMaxRows], gg[kWinogradMaxAlpha][R][kMaxRows], s[kMaxRows];
      for (int64_t panel = begin; panel < end; ++panel) {
        const int64_t stride = point_stride(panel * mr);  // between points
        for (int64_t k = 0; k < K; ++k) {
          const float* src = conv_panels + (panel * conv_k + k * R * R) * mr;  // weight(row, k, i, j)
          for (int i = 0; i < R; ++i) {
            for (int j = 0; j < R; ++j) {
              for (int64_t r = 0; r < mr; ++r) {
                g[i][j][r] = src[(i * R + j) * mr + r];
              }
            }
          }
          for (int i = 0; i < alpha; ++i) {  // G g
            for (int j = 0; j < R; ++j) {
              std::fill(s, s + mr, 0.0);
              for (int l = 0; l < R; ++l) {
                for (int64_t r = 0; r < mr; ++r) {
                  s[r] += G[i][l] * g[l][j][r];
                }
              }
              std::copy(s, s + mr, gg[i][j]);
            }
          }
          float* dst = u.data() + panel_offset(0, panel * mr) + k * mr;
          for (int i = 0; i < alpha; ++i) {  // (G g) G^T
            for (int j = 0; j < alpha; ++j) {
              std::fill(s, s + mr, 0.0);
              for (int l = 0; l < R; ++l) {
                for (int64_t r = 0; r < mr; ++r) {
                  s[r] += gg[i][l][r] * G[j][l];
                }
              }
              float* out = dst + (i * alpha + j) * stride;
              for (int64_t r = 0; r < mr; ++r) {
                out[r] = static_cast<float>(s[r]);
              }
            }
          }
        }
      }
    });
  }

  // Where point xi's panel of MR output channels holding channel m0 starts in u: chunk by chunk
  // (chunk_channels), each chunk's points one after another, so that a chunk's products read its U
  // as one sequential stream. Point-major over all channels, each point's chunk was a run of its
  // own, 98 KB from the last for the seed's block 2, which the weight prefetch ran past: the chunked
  // order took block 2 at batch 16 4-6% faster on a 2-vCPU Intel Xeon (NOTES v32).
  int64_t panel_offset(int xi, int64_t m0) const {
    const int64_t p = m0 / mr, first = chunk_first_panel(m0);
    return (first * transform.alpha * transform.alpha * K + (p - first) * K) * mr + xi * point_stride(m0);
  }

  // The distance in u from point xi's panel of m0 to point xi + 1's: the panels of m0's chunk.
  int64_t point_stride(int64_t m0) const {
    const int64_t panels = (M + mr - 1) / mr;
    return std::min(chunk_channels / mr, panels - chunk_first_panel(m0)) * K * mr;
  }

  // The first panel of the chunk that holds output channel m0.
  int64_t chunk_first_panel(int64_t m0) const {
    const int64_t chunk_panels = chunk_channels / mr;
    return m0 / mr / chunk_panels * chunk_panels;
  }

  const float* panel(int xi, int64_t m0) const { return u.data() + panel_offset(xi, m0); }

  // The NR output channels from m0 (a multiple of NR) of point xi, k-major, for the swapped product:
  // u_nr[((xi * groups + m0 / NR) * C_in + k) * NR + m % NR], zero past C_out. Built on first use
  // (only tiles of few blocks read it; any thread may ask first).
  const float* channel_panel(int xi, int64_t m0) const {
    const int64_t groups = (M + nr - 1) / nr;
    std::call_once(channel_panels_built_, [&] {
      const int64_t points = transform.alpha * transform.alpha;
      u_nr_.assign(points * groups * K * nr, 0.f);
      for (int64_t xi = 0; xi < points; ++xi) {
        for (int64_t m = 0; m < M; ++m) {
          const float* src = panel(static_cast<int>(xi), m) + m % mr;
          float* dst = u_nr_.data() + ((xi * groups + m / nr) * K) * nr + m % nr;
          for (int64_t k = 0; k < K; ++k) {
            dst[k * nr] = src[k * mr];
          }
        }
      }
    });
    return u_nr_.data() + ((xi * groups + m0 / nr) * K) * nr;
  }

 private:
  mutable std::once_flag channel_panels_built_;
  mutable AlignedVector<float> u_nr_;
};

}  // namespace cpu
}  // namespace nin_ext
