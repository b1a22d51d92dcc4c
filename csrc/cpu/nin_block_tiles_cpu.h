// The fused NiN block on the CPU, one tile of output pixels at a time.
//
// A tile is `pt` consecutive output pixels of one image. Its im2col patch (K x pt), the conv result
// (CC x pt) and the first 1x1 result (C1 x pt) live in a per-thread workspace sized to stay in
// cache (see nin_block_tile_pixels); the second 1x1 result is written straight to its destination (the output tensor, or a
// buffer the caller reduces). No tensor of the block's hidden activations is ever allocated at full
// size. The three products go through ATen's matmul (MKL/oneDNN here) on those small tiles.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// The block's weights as matrices: the spatial conv as (CC x K), the 1x1 convs as (C1 x CC), (C2 x C1).
// Detached: the kernel runs below autograd, and ATen's out= matmuls refuse tensors that require grad.
struct NinBlockMatrices {
  at::Tensor w, w1, w2;   // contiguous matrices
  at::Tensor b, b1, b2;   // contiguous vectors, or undefined when the layer has no bias

  NinBlockMatrices(const NinBlockGeometry& g, const at::Tensor& w_, const c10::optional<at::Tensor>& b_,
                   const at::Tensor& w1_, const c10::optional<at::Tensor>& b1_, const at::Tensor& w2_,
                   const c10::optional<at::Tensor>& b2_)
      : w(w_.detach().contiguous().view({g.CC, g.K()})),
        w1(w1_.detach().reshape({g.C1, g.CC}).contiguous()),
        w2(w2_.detach().reshape({g.C2, g.C1}).contiguous()),
        b(vector_or_undefined(b_)),
        b1(vector_or_undefined(b1_)),
        b2(vector_or_undefined(b2_)) {}

 private:
  static at::Tensor vector_or_undefined(const c10::optional<at::Tensor>& v) {
    return v.has_value() && v->defined() ? v->detach().contiguous() : at::Tensor();
  }
};

// Pixels per tile: the tile's patch and activations take about 4 MiB (L2 plus a slice of L3 on the
// machines we tune on: larger tiles amortise the matmul's packing of the weights), the batch gives at
// least 8 tiles to share among threads, and an image splits into tiles of equal size. The choice
// depends on the shapes only, so results do not depend on the thread count.
inline int64_t nin_block_tile_pixels(const NinBlockGeometry& g, int64_t element_size) {
  const int64_t per_pixel_bytes = (g.K() + g.CC + g.C1 + g.C2) * element_size;
  const int64_t cache_fit = (int64_t{4} << 20) / per_pixel_bytes;
  const int64_t eighth_of_batch = (g.N * g.pixels() + 7) / 8;
  const int64_t cap = std::max<int64_t>(16, std::min({cache_fit, eighth_of_batch, int64_t{1024}}));
  const int64_t tiles_per_image = (g.pixels() + cap - 1) / cap;
  return (g.pixels() + tiles_per_image - 1) / tiles_per_image;
}

// y = relu(y + bias) over a (channels x pixels) strided view; NaN passes through as in torch.relu.
template <typename scalar_t>
void add_bias_relu_(at::Tensor& y, const at::Tensor& bias) {
  scalar_t* data = y.data_ptr<scalar_t>();
  const scalar_t* bias_data = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  const int64_t rows = y.size(0), cols = y.size(1), rs = y.stride(0), cs = y.stride(1);
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t shift = bias_data ? bias_data[r] : scalar_t(0);
    scalar_t* row = data + r * rs;
    for (int64_t j = 0; j < cols; ++j) {
      const scalar_t v = row[j * cs] + shift;
      row[j * cs] = v < scalar_t(0) ? scalar_t(0) : v;
    }
  }
}

// Per-thread workspace and the tile computation.
template <typename scalar_t>
class NinBlockTileWorker {
 public:
  NinBlockTileWorker(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockMatrices& m, int64_t tile_pixels)
      : x_(x), g_(g), m_(m), tile_pixels_(tile_pixels) {
    const auto options = x.options().memory_format(at::MemoryFormat::Contiguous);
    patch_ = at::empty({g.K(), tile_pixels}, options);
    hidden0_ = at::empty({g.CC, tile_pixels}, options);
    hidden1_ = at::empty({g.C1, tile_pixels}, options);
    row_base_.resize(tile_pixels);
    col_base_.resize(tile_pixels);
  }

  // Computes the block's output for pixels [p0, p0 + pt) of image n into `out`, a (C2 x pt) view.
  void run(int64_t n, int64_t p0, int64_t pt, at::Tensor out) {
    gather_patch(n, p0, pt);
    at::Tensor h0 = hidden0_.narrow(1, 0, pt);
    at::mm_out(h0, m_.w, patch_.narrow(1, 0, pt));
    add_bias_relu_<scalar_t>(h0, m_.b);
    at::Tensor h1 = hidden1_.narrow(1, 0, pt);
    at::mm_out(h1, m_.w1, h0);
    add_bias_relu_<scalar_t>(h1, m_.b1);
    at::mm_out(out, m_.w2, h1);
    add_bias_relu_<scalar_t>(out, m_.b2);
  }

  // The same into the worker's own (C2 x pt) buffer, for callers that reduce the tile further.
  at::Tensor run(int64_t n, int64_t p0, int64_t pt) {
    if (!hidden2_.defined()) {
      hidden2_ = at::empty({g_.C2, tile_pixels_}, patch_.options());
    }
    at::Tensor out = hidden2_.narrow(1, 0, pt);
    run(n, p0, pt, out);
    return out;
  }

 private:
  // im2col of the tile: patch[(ci * KH + ky) * KW + kx][j] = x[n, ci, ih, iw] (zero outside the
  // image), the row order of the (CC x K) weight matrix. Works for any strides of x.
  void gather_patch(int64_t n, int64_t p0, int64_t pt) {
    const NinBlockGeometry& g = g_;
    for (int64_t j = 0; j < pt; ++j) {
      const int64_t p = p0 + j;
      row_base_[j] = (p / g.OW) * g.SH - g.PH;
      col_base_[j] = (p % g.OW) * g.SW - g.PW;
    }
    const int64_t sc = x_.stride(1), sh = x_.stride(2), sw = x_.stride(3);
    const scalar_t* image = x_.const_data_ptr<scalar_t>() + n * x_.stride(0);
    scalar_t* patch = patch_.data_ptr<scalar_t>();
    for (int64_t ci = 0; ci < g.C0; ++ci) {
      const scalar_t* plane = image + ci * sc;
      for (int64_t ky = 0; ky < g.KH; ++ky) {
        for (int64_t kx = 0; kx < g.KW; ++kx) {
          scalar_t* row = patch + ((ci * g.KH + ky) * g.KW + kx) * tile_pixels_;
          for (int64_t j = 0; j < pt; ++j) {
            const int64_t ih = row_base_[j] + ky, iw = col_base_[j] + kx;
            const bool inside = static_cast<uint64_t>(ih) < static_cast<uint64_t>(g.H) &&
                                static_cast<uint64_t>(iw) < static_cast<uint64_t>(g.W);
            row[j] = inside ? plane[ih * sh + iw * sw] : scalar_t(0);
          }
        }
      }
    }
  }

  const at::Tensor& x_;
  const NinBlockGeometry& g_;
  const NinBlockMatrices& m_;
  const int64_t tile_pixels_;
  at::Tensor patch_, hidden0_, hidden1_, hidden2_;
  std::vector<int64_t> row_base_, col_base_;
};

// Runs `tile_fn(worker, tile, n, p0, pt)` for every tile of the batch, in parallel over tiles; each
// thread builds its workspace once and reuses it for all its tiles.
template <typename scalar_t, typename TileFn>
void for_each_nin_block_tile(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockMatrices& m,
                             int64_t tile_pixels, const TileFn& tile_fn) {
  const int64_t tiles_per_image = (g.pixels() + tile_pixels - 1) / tile_pixels;
  at::parallel_for(0, g.N * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
    NinBlockTileWorker<scalar_t> worker(x, g, m, tile_pixels);
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n = tile / tiles_per_image;
      const int64_t p0 = (tile % tiles_per_image) * tile_pixels;
      tile_fn(worker, tile, n, p0, std::min(tile_pixels, g.pixels() - p0));
    }
  });
}

}  // namespace cpu
}  // namespace nin_ext
