// A strided convolution as a stride-1 one (the polyphase, or space-to-depth, form), so that strided
// blocks can run by Winograd tiles too.
//
// With stride (s_h, s_w) and zero padding (p_h, p_w), output pixel (i, j) reads the padded input at
// (s_h i + k_y, s_w j + k_x). Writing k_y = s_h q + a and the padded input row s_h (i + q) + a, the
// conv is a stride-1, unpadded conv with a ceil(k_h / s_h) x ceil(k_w / s_w) kernel over an input of
// C s_h s_w channels: channel (c, a, b) holds the padded input's rows a, a + s_h, ... and columns
// b, b + s_w, ..., and the kernel's taps past k_h or k_w are zero. The Winograd tiles read these
// phases from x in place (InputPhases); only the weight is rearranged, once per packing. The seed's
// block 1 (k 11, s 4) becomes a 3x3 conv over 16 channels per input channel: with three input
// channels (RGB) its F(3x3, 3x3) tiles do 0.6 of the direct path's multiply-adds and ran 1.25x as
// fast; with one input channel (the seed's) they ran 4% slower, and the Winograd rule (16 channels
// < 32) keeps it direct.
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

// Where the conv's input comes from: x itself (the identity), or x's phases for the polyphase form,
// read in place. Channel (c, a, b) = (c SH + a) SW + b of the form's input holds x's rows SH u + a - PH
// and columns SW v + b - PW (u, v: the form's rows and columns), zero outside x.
struct InputPhases {
  int64_t SH = 1, SW = 1, PH = 0, PW = 0;

  static InputPhases of(const NinBlockGeometry& g) { return {g.SH, g.SW, g.PH, g.PW}; }
  bool identity() const { return SH == 1 && SW == 1 && PH == 0 && PW == 0; }
};

// The conv weight of the polyphase form, (C_out, C_in SH SW, ceil(KH / SH), ceil(KW / SW)): the
// kernel zero-extended to whole phases, channel (c, a, b) holding taps (SH q + a, SW r + b).
inline at::Tensor polyphase_weight(const at::Tensor& w, int64_t sh, int64_t sw) {
  const int64_t out = w.size(0), in = w.size(1), kh = (w.size(2) + sh - 1) / sh, kw = (w.size(3) + sw - 1) / sw;
  const at::Tensor padded = at::constant_pad_nd(w.detach(), {0, kw * sw - w.size(3), 0, kh * sh - w.size(2)});
  return padded.reshape({out, in, kh, sh, kw, sw})
      .permute({0, 1, 3, 5, 2, 4})
      .reshape({out, in * sh * sw, kh, kw})
      .contiguous();
}

}  // namespace cpu
}  // namespace nin_ext
