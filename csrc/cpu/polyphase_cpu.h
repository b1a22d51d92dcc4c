// A strided convolution as a stride-1 one (the polyphase, or space-to-depth, form), so that strided
// blocks can run by Winograd tiles too.
//
// With stride (s_h, s_w) and zero padding (p_h, p_w), output pixel (i, j) reads the padded input at
// (s_h i + k_y, s_w j + k_x). Writing k_y = s_h q + a and the padded input row s_h (i + q) + a, the
// conv is a stride-1, unpadded conv with a ceil(k_h / s_h) x ceil(k_w / s_w) kernel over an input of
// C s_h s_w channels: channel (c, a, b) holds the padded input's rows a, a + s_h, ... and columns
// b, b + s_w, ..., and the kernel's taps past k_h or k_w are zero. The seed's block 1 (k 11, s 4)
// becomes a 3x3 conv over 16 channels per input channel: with three input channels (RGB) its
// F(3x3, 3x3) tiles do 0.6 of the direct path's multiply-adds and ran 1.2x as fast; with one input
// channel (the seed's) they ran 4% slower, and the Winograd rule (16 channels < 32) keeps it direct.
#pragma once

#include <ATen/ATen.h>

#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// The geometry of the polyphase form of a strided block: same output, stride 1, no padding.
inline NinBlockGeometry polyphase_geometry(const NinBlockGeometry& g) {
  NinBlockGeometry p = g;
  p.KH = (g.KH + g.SH - 1) / g.SH;
  p.KW = (g.KW + g.SW - 1) / g.SW;
  p.C0 = g.C0 * g.SH * g.SW;
  p.H = g.OH + p.KH - 1;
  p.W = g.OW + p.KW - 1;
  p.SH = p.SW = 1;
  p.PH = p.PW = 0;
  return p;
}

// t (N, C, s_h rows, s_w cols) zero-padded by (top, left) and cut or zero-extended to s_h rows x s_w
// cols, then split into its s_h s_w phases: (N, C s_h s_w, rows, cols), channel (c, a, b) = phase
// (a, b) of channel c. Serves the input (padded by the conv's padding) and the weight (not padded).
inline at::Tensor polyphase_split(const at::Tensor& t, int64_t top, int64_t left, int64_t rows, int64_t cols,
                                  int64_t sh, int64_t sw) {
  const int64_t n = t.size(0), c = t.size(1);
  const at::Tensor padded = at::constant_pad_nd(t, {left, cols * sw - t.size(3) - left, top, rows * sh - t.size(2) - top});
  return padded.reshape({n, c, rows, sh, cols, sw}).permute({0, 1, 3, 5, 2, 4}).reshape({n, c * sh * sw, rows, cols});
}

// The input of the polyphase form, contiguous: (N, C0 SH SW, p.H, p.W).
inline at::Tensor polyphase_input(const at::Tensor& x, const NinBlockGeometry& g) {
  const NinBlockGeometry p = polyphase_geometry(g);
  return polyphase_split(x, g.PH, g.PW, p.H, p.W, g.SH, g.SW).contiguous();
}

// The conv weight of the polyphase form: (C_out, C_in SH SW, ceil(KH / SH), ceil(KW / SW)).
inline at::Tensor polyphase_weight(const at::Tensor& w, int64_t sh, int64_t sw) {
  return polyphase_split(w.detach(), 0, 0, (w.size(2) + sh - 1) / sh, (w.size(3) + sw - 1) / sw, sh, sw).contiguous();
}

}  // namespace cpu
}  // namespace nin_ext
