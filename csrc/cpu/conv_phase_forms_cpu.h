// A block's conv as a stride-1, unpadded conv with a smaller kernel over phase channels, so that
// strided convs and kernels past the Winograd tiles' sizes can run by those tiles too. Two forms:
//
// - The polyphase (space-to-depth) form of a strided conv. With stride (s_h, s_w) and zero padding
//   (p_h, p_w), output pixel (i, j) reads the padded input at (s_h i + k_y, s_w j + k_x). Writing
//   k_y = s_h q + a and the padded input row s_h (i + q) + a, the conv is a stride-1 conv with a
//   ceil(k_h / s_h) x ceil(k_w / s_w) kernel over C s_h s_w channels: channel (c, a, b) holds the
//   padded input's rows a, a + s_h, ... and columns b, b + s_w, ..., and the kernel's taps past k_h
//   or k_w are zero. The seed's block 1 (k 11, s 4) becomes a 3x3 conv over 16 channels per input
//   channel: with three input channels (RGB) its F(3x3, 3x3) tiles do 0.6 of the direct path's
//   multiply-adds and ran 1.25x as fast; with one input channel (the seed's) they ran 4% slower, and
//   the Winograd rule (16 channels < 32) keeps it direct.
// - The split form of a stride-1 conv whose square kernel is larger than the Winograd tiles take
//   (kWinogradMaxTaps): the kernel cut into A x A pieces of t = ceil(k / A) taps a side, the conv a
//   sum of A^2 convs with t x t kernels, piece (a, b) reading the input shifted by (t a, t b).
//   Channel (c, a, b) holds the padded input from row t a and column t b on. An 11x11 kernel is
//   2 x 2 pieces of 6x6: F(3x3, 6x6) does 4 x 64 / 9 = 28 multiplications per output where direct
//   convolution does 121.
//
// The tiles read these channels from x in place (InputPhases); only the weight is rearranged, once
// per packing.
#pragma once

#include <ATen/ATen.h>

#include "cpu/winograd_matrices.h"
#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// Where the conv's input comes from: x itself (the identity), or x's phase channels, read in place.
// Channel ci of the form's input is phase (a, b) = (ci / AW % AH, ci % AW) of x's channel
// ci / (AH AW): its row u and column v are x's row SH u + DH a - PH and column SW v + DW b - PW, zero
// outside x. The polyphase form: A = S, D = 1; the split form: S = 1, D = t.
struct InputPhases {
  int64_t SH = 1, SW = 1, PH = 0, PW = 0;  // x's stride and padding
  int64_t AH = 1, AW = 1;                  // phases per x channel, by row and by column
  int64_t DH = 1, DW = 1;                  // the distance between consecutive phases' first rows, columns

  bool identity() const { return SH == 1 && SW == 1 && PH == 0 && PW == 0 && AH == 1 && AW == 1; }
  int64_t phases() const { return AH * AW; }
  int64_t x_channel(int64_t ci) const { return ci / (AH * AW); }
  // Channel ci's row u and column v are x's row SH u + row_offset(ci) and column SW v + column_offset(ci).
  int64_t row_offset(int64_t ci) const { return DH * (ci / AW % AH) - PH; }
  int64_t column_offset(int64_t ci) const { return DW * (ci % AW) - PW; }
  // The first of the form's columns [0, W) whose x column is at or past 0, and the end of those
  // before x's last column: the columns [begin, end) of channel ci that lie inside x.
  int64_t first_column_inside(int64_t ci, int64_t W) const {
    const int64_t offset = column_offset(ci);
    return offset >= 0 ? 0 : std::min(W, (-offset + SW - 1) / SW);
  }
  int64_t end_column_inside(int64_t ci, int64_t W, int64_t x_cols) const {
    const int64_t last = x_cols - 1 - column_offset(ci), begin = first_column_inside(ci, W);
    return last < 0 ? begin : std::max(begin, std::min(W, last / SW + 1));
  }
};

// A block's conv in a phase form: the form's geometry (same output, stride 1, no padding) and where
// its input channels come from.
struct ConvPhaseForm {
  NinBlockGeometry g;
  InputPhases phases;
};

// The pieces a side of the split form of a kernel of k taps: the fewest whose pieces the Winograd
// tiles take.
inline int64_t split_pieces(int64_t k) { return (k + kWinogradMaxTaps - 1) / kWinogradMaxTaps; }

// Whether a block's conv has a phase form: a strided conv (polyphase), or a stride-1 square kernel
// larger than the Winograd tiles take (split).
inline bool has_phase_form(const NinBlockGeometry& g) {
  return g.SH != 1 || g.SW != 1 || (g.KH == g.KW && g.KH > kWinogradMaxTaps);
}

// The phase form of a block's conv (has_phase_form): polyphase for a strided conv, else split.
inline ConvPhaseForm conv_phase_form(const NinBlockGeometry& g) {
  ConvPhaseForm form{g, InputPhases{g.SH, g.SW, g.PH, g.PW, g.SH, g.SW, 1, 1}};
  if (g.SH == 1 && g.SW == 1) {
    const int64_t pieces = split_pieces(g.KH), t = (g.KH + pieces - 1) / pieces;
    form.phases = InputPhases{1, 1, g.PH, g.PW, pieces, pieces, t, t};
    form.g.KH = form.g.KW = t;
  } else {
    form.g.KH = (g.KH + g.SH - 1) / g.SH;
    form.g.KW = (g.KW + g.SW - 1) / g.SW;
  }
  form.g.C0 = g.C0 * form.phases.phases();
  form.g.H = g.OH + form.g.KH - 1;
  form.g.W = g.OW + form.g.KW - 1;
  form.g.SH = form.g.SW = 1;
  form.g.PH = form.g.PW = 0;
  return form;
}

// The conv weight of a phase form, (C_out, C_in AH AW, KH', KW'): channel (c, a, b) holds taps
// (SH q + DH a, SW r + DW b) of channel c for q < KH', r < KW', zero past the kernel.
inline at::Tensor phase_form_weight(const at::Tensor& w, const InputPhases& ph, int64_t kh, int64_t kw) {
  const int64_t out = w.size(0), in = w.size(1);
  at::Tensor form = at::zeros({out, in, ph.AH, ph.AW, kh, kw}, w.options());
  const at::Tensor weight = w.detach();
  for (int64_t a = 0; a < ph.AH; ++a) {
    for (int64_t b = 0; b < ph.AW; ++b) {
      const at::Tensor taps = weight.slice(2, ph.DH * a, w.size(2), ph.SH)
                                  .slice(3, ph.DW * b, w.size(3), ph.SW)
                                  .slice(2, 0, kh)
                                  .slice(3, 0, kw);
      form.select(3, b).select(2, a).slice(2, 0, taps.size(2)).slice(3, 0, taps.size(3)).copy_(taps);
    }
  }
  return form.reshape({out, in * ph.AH * ph.AW, kh, kw});
}

}  // namespace cpu
}  // namespace nin_ext
