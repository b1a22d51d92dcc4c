// The fused NiN block on the CPU, one tile of output pixels at a time.
//
// A tile is a few panels of NR consecutive output pixels of one image. Per tile, the im2col gather
// writes the input patch straight into the packed panel layout ([panel][k][NR]); each layer then
// runs the register-blocked micro-kernel (microkernel.h) over (MR channels x NR pixels) blocks and
// writes its output in the same panel layout, which is what the next layer reads. The patch and
// the three activations of a tile live in a per-thread workspace sized to stay in cache; no tensor
// of the block's hidden activations is ever allocated at full size.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "cpu/microkernel.h"
#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// One layer's weights (M x K) packed into panels of MR rows, k-major: a[(panel * K + k) * MR + r],
// rows past M zero; the bias padded the same way (zero when the layer has none).
template <typename scalar_t>
struct PackedLayer {
  int64_t M, K;
  std::vector<scalar_t> a, bias;

  PackedLayer(const at::Tensor& weight, const c10::optional<at::Tensor>& b, int64_t mr) {
    const at::Tensor w = weight.detach().reshape({weight.size(0), -1}).contiguous();
    M = w.size(0);
    K = w.size(1);
    const int64_t panels = (M + mr - 1) / mr;
    a.assign(panels * K * mr, scalar_t(0));
    bias.assign(panels * mr, scalar_t(0));
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    for (int64_t m = 0; m < M; ++m) {
      scalar_t* dst = a.data() + (m / mr) * K * mr + m % mr;
      for (int64_t k = 0; k < K; ++k) {
        dst[k * mr] = src[m * K + k];
      }
    }
    if (b.has_value() && b->defined()) {
      const at::Tensor bc = b->detach().contiguous();
      std::copy(bc.const_data_ptr<scalar_t>(), bc.const_data_ptr<scalar_t>() + M, bias.begin());
    }
  }
};

// The block's three layers, packed for one micro-kernel.
template <typename scalar_t>
struct NinBlockPacked {
  MicroKernel<scalar_t> kernel;
  PackedLayer<scalar_t> conv, pointwise1, pointwise2;

  NinBlockPacked(const MicroKernel<scalar_t>& k, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                 const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                 const c10::optional<at::Tensor>& b2)
      : kernel(k), conv(w, b, k.mr), pointwise1(w1, b1, k.mr), pointwise2(w2, b2, k.mr) {}
};

// Pixels per tile: whole panels of nr pixels; the tile's patch and activations take about 1 MiB
// (the L2 size of the machines we tune on); the batch gives at least 8 tiles to share among
// threads; an image splits into tiles of about equal size. Depends on the shapes and the
// micro-kernel only, so results do not depend on the thread count.
inline int64_t nin_block_tile_pixels(const NinBlockGeometry& g, int64_t element_size, int64_t nr) {
  const int64_t per_pixel_bytes = (g.K() + g.CC + g.C1 + g.C2) * element_size;
  const int64_t cache_fit = (int64_t{1} << 20) / per_pixel_bytes;
  const int64_t eighth_of_batch = (g.N * g.pixels() + 7) / 8;
  const int64_t cap = std::max<int64_t>(nr, std::min({cache_fit, eighth_of_batch, int64_t{1024}}));
  const int64_t tiles_per_image = (g.pixels() + cap - 1) / cap;
  const int64_t pixels = (g.pixels() + tiles_per_image - 1) / tiles_per_image;
  return (pixels + nr - 1) / nr * nr;
}

// Per-thread workspace and the tile computation.
template <typename scalar_t>
class NinBlockTileWorker {
 public:
  NinBlockTileWorker(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                     int64_t tile_pixels)
      : x_(x), g_(g), packed_(packed), nr_(packed.kernel.nr),
        patch_(g.K() * tile_pixels), hidden0_(g.CC * tile_pixels), hidden1_(g.C1 * tile_pixels),
        hidden2_(g.C2 * tile_pixels) {}

  // Computes the block's three activations for pixels [p0, p0 + pt) of image n into the worker's
  // buffers (for_each_row reads them out).
  void compute(int64_t n, int64_t p0, int64_t pt) {
    pt_ = pt;
    panels_ = (pt + nr_ - 1) / nr_;
    gather_patch(n, p0, pt, panels_);
    apply_layer(packed_.conv, patch_.data(), hidden0_.data(), panels_);
    apply_layer(packed_.pointwise1, hidden0_.data(), hidden1_.data(), panels_);
    apply_layer(packed_.pointwise2, hidden1_.data(), hidden2_.data(), panels_);
  }

  // Hands over activation `layer` of the last computed tile (0: the conv's, 1: the first 1x1's, 2:
  // the block's output) one run at a time: row_fn(c, j0, values, count) gets channel c of tile
  // pixels [j0, j0 + count), contiguous (one panel's worth).
  template <typename RowFn>
  void for_each_row(int layer, const RowFn& row_fn) const {
    const std::vector<scalar_t>& values = layer == 0 ? hidden0_ : layer == 1 ? hidden1_ : hidden2_;
    const int64_t channels = layer == 0 ? g_.CC : layer == 1 ? g_.C1 : g_.C2;
    for (int64_t panel = 0; panel < panels_; ++panel) {
      const int64_t j0 = panel * nr_, count = std::min(nr_, pt_ - j0);
      for (int64_t c = 0; c < channels; ++c) {
        row_fn(c, j0, values.data() + (panel * channels + c) * nr_, count);
      }
    }
  }

  // Writes activation `layer` of the last computed tile (pixels from p0 of image n) into t, an
  // (N, C, OH, OW) tensor in NCHW or channels_last layout: pixel p of channel c of image n sits at
  // n * s_n + c * s_c + p * s_p in both.
  void write_rows(int layer, at::Tensor& t, int64_t n, int64_t p0) const {
    scalar_t* data = t.data_ptr<scalar_t>();
    const int64_t s_n = t.stride(0), s_c = t.stride(1), s_p = t.stride(3);
    for_each_row(layer, [&](int64_t c, int64_t j0, const scalar_t* values, int64_t count) {
      scalar_t* dst = data + n * s_n + c * s_c + (p0 + j0) * s_p;
      for (int64_t j = 0; j < count; ++j) {
        dst[j * s_p] = values[j];
      }
    });
  }

 private:
  // out[panel][m][nr] = relu(W in[panel] + b) for every panel, one (MR x NR) block at a time; the
  // weight panel stays in cache while it meets every pixel panel of the tile.
  void apply_layer(const PackedLayer<scalar_t>& layer, const scalar_t* in, scalar_t* out, int64_t panels) {
    const int64_t mr = packed_.kernel.mr;
    for (int64_t m0 = 0; m0 < layer.M; m0 += mr) {
      const scalar_t* a = layer.a.data() + m0 * layer.K;
      for (int64_t p = 0; p < panels; ++p) {
        packed_.kernel.fn(layer.K, a, in + p * layer.K * nr_, layer.bias.data() + m0,
                          out + (p * layer.M + m0) * nr_, nr_, std::min(mr, layer.M - m0));
      }
    }
  }

  // A run of tile pixels that share a panel and an output row: tile pixels [j, j + length) of
  // panel `panel` are output pixels (oh, ow), (oh, ow + 1), ... of the image.
  struct RowSegment {
    int64_t panel, j, oh, ow, length;
  };

  // im2col of the tile into panels: patch[panel][(ci * KH + ky) * KW + kx][j] = x[n, ci, ih, iw], zero
  // outside the image and past the tile's last pixel. Works for any strides of x; along an output
  // row the input pixels are evenly spaced, so each row segment is one strided copy.
  void gather_patch(int64_t n, int64_t p0, int64_t pt, int64_t panels) {
    const NinBlockGeometry& g = g_;
    segments_.clear();
    for (int64_t j = 0; j < pt;) {
      const int64_t p = p0 + j, oh = p / g.OW, ow = p % g.OW;
      const int64_t length = std::min({g.OW - ow, pt - j, nr_ - j % nr_});
      segments_.push_back({j / nr_, j % nr_, oh, ow, length});
      j += length;
    }
    const int64_t sc = x_.stride(1), sh = x_.stride(2), sw = x_.stride(3);
    const scalar_t* image = x_.const_data_ptr<scalar_t>() + n * x_.stride(0);
    const int64_t tail = panels * nr_ - pt;  // unused columns of the last panel
    for (int64_t ci = 0; ci < g.C0; ++ci) {
      const scalar_t* plane = image + ci * sc;
      for (int64_t ky = 0; ky < g.KH; ++ky) {
        for (int64_t kx = 0; kx < g.KW; ++kx) {
          const int64_t k = (ci * g.KH + ky) * g.KW + kx;
          for (const RowSegment& seg : segments_) {
            scalar_t* dst = patch_.data() + (seg.panel * g.K() + k) * nr_ + seg.j;
            const int64_t ih = seg.oh * g.SH - g.PH + ky;
            // Pixel t of the segment reads column iw = iw0 + t * SW; [t_begin, t_end) are inside the image.
            const int64_t iw0 = seg.ow * g.SW - g.PW + kx;
            int64_t t_begin = 0, t_end = 0;
            if (ih >= 0 && ih < g.H) {
              t_begin = std::min(seg.length, iw0 >= 0 ? 0 : (-iw0 + g.SW - 1) / g.SW);
              t_end = std::max(t_begin, std::min(seg.length, iw0 >= g.W ? 0 : (g.W - 1 - iw0) / g.SW + 1));
            }
            std::fill(dst, dst + t_begin, scalar_t(0));
            const int64_t step = g.SW * sw;
            const scalar_t* src = plane + ih * sh + iw0 * sw;
            if (step == 1) {  // stride-1 conv over contiguous rows (blocks 2-4 of NiN): a plain copy
              std::copy(src + t_begin, src + t_end, dst + t_begin);
            } else {
              for (int64_t t = t_begin; t < t_end; ++t) {
                dst[t] = src[t * step];
              }
            }
            std::fill(dst + t_end, dst + seg.length, scalar_t(0));
          }
          if (tail > 0) {
            scalar_t* last_row = patch_.data() + ((panels - 1) * g.K() + k) * nr_;
            std::fill(last_row + nr_ - tail, last_row + nr_, scalar_t(0));
          }
        }
      }
    }
  }

  const at::Tensor& x_;
  const NinBlockGeometry& g_;
  const NinBlockPacked<scalar_t>& packed_;
  const int64_t nr_;
  std::vector<scalar_t> patch_, hidden0_, hidden1_, hidden2_;
  std::vector<RowSegment> segments_;
  int64_t pt_ = 0, panels_ = 0;  // the last computed tile's pixels and panels
};

// Runs `tile_fn(worker, tile, n, p0, pt)` for every tile of the batch, in parallel over tiles; each
// thread builds its workspace once and reuses it for all its tiles.
template <typename scalar_t, typename TileFn>
void for_each_nin_block_tile(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                             int64_t tile_pixels, const TileFn& tile_fn) {
  const int64_t tiles_per_image = (g.pixels() + tile_pixels - 1) / tile_pixels;
  at::parallel_for(0, g.N * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
    NinBlockTileWorker<scalar_t> worker(x, g, packed, tile_pixels);
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n = tile / tiles_per_image;
      const int64_t p0 = (tile % tiles_per_image) * tile_pixels;
      tile_fn(worker, tile, n, p0, std::min(tile_pixels, g.pixels() - p0));
    }
  });
}

// The float32 computation serves float16 and bfloat16 inputs: `op` runs on float copies, and the
// result is rounded back once (the reference rounds every layer's output instead).
inline bool computes_in_float(const at::Tensor& x) {
  return x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
}

inline at::Tensor cast_result(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(dtype);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> cast_result(
    const std::tuple<at::Tensor, at::Tensor, at::Tensor>& t, at::ScalarType dtype) {
  return {std::get<0>(t).to(dtype), std::get<1>(t).to(dtype), std::get<2>(t).to(dtype)};
}

template <typename Op>
auto run_in_float(const Op& op, const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                  const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                  const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  auto to_float = [](const c10::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() ? c10::optional<at::Tensor>(t->to(at::kFloat)) : c10::nullopt;
  };
  return cast_result(op(x.to(at::kFloat), w.to(at::kFloat), to_float(b), w1.to(at::kFloat), to_float(b1),
                        w2.to(at::kFloat), to_float(b2), stride, padding),
                     x.scalar_type());
}

}  // namespace cpu
}  // namespace nin_ext
