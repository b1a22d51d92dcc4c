// The fused NiN block on the CPU, one tile of output pixels at a time.
//
// A tile is a few panels of NR consecutive output pixels of the batch (direct_tiling). Per tile, the
// im2col gather writes the input patch straight into the packed panel layout ([panel][k][NR]); each
// layer then runs the register-blocked micro-kernel (microkernel.h) over (MR channels x NR pixels)
// blocks and writes its output in the same panel layout, which is what the next layer reads. A float
// conv of 16 input channels or more into up to 128 (192 by 3x3) runs instead by the pixel-broadcast
// kernel on a channels-last copy of the tile's input rows (broadcast_conv_cpu.h), with no patch. The patch and
// the three activations of a tile live in a per-thread workspace sized to stay in cache; no tensor
// of the block's hidden activations is ever allocated at full size.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

#include "cpu/aligned_vector_cpu.h"
#include "cpu/broadcast_conv_cpu.h"
#include "cpu/copy_runs.h"
#include "cpu/microkernel.h"
#include "cpu/conv_phase_forms_cpu.h"
#include "cpu/nin_block_packed_cpu.h"
#include "cpu/nin_block_tiling_cpu.h"
#include "cpu/parallel_tasks_cpu.h"
#include "cpu/thread_scratch_cpu.h"
#include "cpu/winograd_cpu.h"
#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// Prefetches every cache line of p[0, count) for writing.
template <typename T>
inline void prefetch_for_write(const T* p, int64_t count) {
  constexpr int64_t kLineElements = kCacheLineBytes / sizeof(T);
  for (int64_t i = 0; i < count + kLineElements - 1; i += kLineElements) {
    __builtin_prefetch(p + std::min(i, count - 1), 1);
  }
}

// out[run.dst + i] = in[run.src + i] for every run, with the micro-kernel's ISA where it has one.
template <typename scalar_t>
inline void copy_runs_with(const MicroKernel<scalar_t>& kernel, const scalar_t* in, const CopyRun* runs,
                           int64_t count, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    kernel.copy_runs(in, runs, count, out);
  } else {
    copy_runs_portable(in, runs, count, out);
  }
}

// out[j] = in[index[j]] for j < count, with the micro-kernel's ISA where it has one.
template <typename scalar_t>
inline void gather_lanes_with(const MicroKernel<scalar_t>& kernel, const scalar_t* in, const int32_t* index,
                              int64_t count, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    kernel.gather_lanes(in, index, count, out);
  } else {
    gather_lanes_portable(in, index, count, out);
  }
}

// Writes a tile's activation (`values`, `channels` channels in the panel layout [panel][channel][NR])
// by runs: channel 0's runs from values into data, every channel c at c * s_c, pixels at s_p. NCHW
// (s_p == 1): channel by channel, each run one copy, with the rows of the channel
// kWritePrefetchChannels ahead prefetched (the runs of a row merged; panel by panel instead, the
// writes were as many streams as channels: 9% of the seed's block 1 at batch 16). Other layouts
// (channels_last): value by value.
template <typename scalar_t>
class TileWriter {
 public:
  explicit TileWriter(const MicroKernel<scalar_t>& kernel) : kernel_(kernel) {}

  void write(const std::vector<CopyRun>& runs, const scalar_t* values, int64_t channels, scalar_t* data, int64_t s_c,
             int64_t s_p) {
    const int64_t nr = kernel_.nr;
    if (s_p == 1) {
      rows_.clear();
      for (const CopyRun& run : runs) {
        if (!rows_.empty() && rows_.back().dst + rows_.back().count == run.dst) {
          rows_.back().count += run.count;
        } else {
          rows_.push_back(run);
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        scalar_t* dst = data + c * s_c;
        if (c + kWritePrefetchChannels < channels) {
          for (const CopyRun& row : rows_) {
            prefetch_for_write(dst + kWritePrefetchChannels * s_c + row.dst, row.count);
          }
        }
        copy_runs_with(kernel_, values + c * nr, runs.data(), static_cast<int64_t>(runs.size()), dst);
      }
      return;
    }
    for (int64_t c = 0; c < channels; ++c) {
      for (const CopyRun& run : runs) {
        for (int64_t i = 0; i < run.count; ++i) {
          data[c * s_c + run.dst + i * s_p] = values[c * nr + run.src + i];
        }
      }
    }
  }

 private:
  // How many channels ahead the writes prefetch their lines for writing. A tile writes a few short
  // rows per channel, too little for the hardware prefetcher to follow: the Winograd writes took 7%
  // of the seed's block 2 at batch 16 without the prefetch, 4% with it.
  static constexpr int64_t kWritePrefetchChannels = 4;

  const MicroKernel<scalar_t>& kernel_;
  std::vector<CopyRun> rows_;  // the runs merged into rows (dst, count)
};

// Per-thread workspace and the tile computation.
template <typename scalar_t>
class NinBlockTileWorker {
 public:
  // A Winograd worker's (winograd != nullptr) tiles are up to NR blocks of m x m output pixels (up to
  // m^2 NR pixels); its patch holds the transformed input and `products_` the per-point products,
  // swapped where `channel_lanes` (winograd_channel_lanes). It may read the conv's input as x's phase
  // channels (conv_phase_forms_cpu.h; g is then the form's).
  NinBlockTileWorker(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                     int64_t tile_pixels, const PackedWinogradConv* winograd = nullptr, InputPhases phases = {},
                     bool channel_lanes = false)
      : x_(x), g_(g), phases_(phases), packed_(packed), winograd_(winograd), channel_lanes_(channel_lanes),
        nr_(packed.kernel.nr),
        broadcast_(winograd == nullptr ? broadcast_packing(packed, g) : nullptr),
        patch_(winograd ? g.C0 * winograd_channel_floats() : broadcast_ ? 0 : g.K() * tile_pixels),
        hidden0_(g.CC * tile_pixels),
        hidden1_(g.C1 * tile_pixels), hidden2_(g.C2 * tile_pixels),
        products_(winograd ? winograd_products_floats() : 0),
        transform_scratch_(winograd ? (winograd_points() + winograd->transform.m * winograd->transform.m) * nr_ +
                                          winograd_band_floats()
                                    : 0),
        writer_(packed.kernel) {
    if (winograd) {  // the band's padding columns stay zero (compute_winograd writes the others)
      std::fill(winograd_band(), winograd_band() + winograd_band_floats(), 0.f);
    }
  }

  // The hidden activations of the tiles computed from now on are kept for a backward: the 1x1 layers
  // run on AMX tiles from kAmxMinReductionForBackward inputs (packed_layer_amx.h).
  void keep_hidden_for_backward() { amx_min_reduction_ = kAmxMinReductionForBackward; }

  // Computes the block's three activations for pixels [p0, p0 + pt) of image n into the worker's
  // buffers (for_each_row reads them out); pixels past the image's last are the next images' (tiles
  // cross images, direct_tiling).
  void compute(int64_t n, int64_t p0, int64_t pt) {
    pt_ = pt;
    panels_ = (pt + nr_ - 1) / nr_;
    TORCH_INTERNAL_ASSERT(phases_.identity(), "the direct path reads x itself");
    compute_conv(n, p0, pt);
    apply_packed_layer(packed_.kernel, packed_.pointwise1, hidden0_.data(), hidden1_.data(), panels_, amx_min_reduction_);
    apply_packed_layer(packed_.kernel, packed_.pointwise2, hidden1_.data(), hidden2_.data(), panels_, amx_min_reduction_);
  }

  // Computes the block's three activations for the m x m output blocks [b0, b0 + tb) of the batch
  // (block b is image b / (bh * bw), block row and column within it, bh = ceil(OH / m) and bw =
  // ceil(OW / m); tb <= NR) with the Winograd conv. The tile's pixels are its blocks' pixels that lie
  // in the map, in raster order per run of blocks in one block row (output row, then column): the
  // 1x1 layers run on them packed densely, so blocks past the map's edge cost the products only (on
  // the seed's 26x26 block 2, F(4x4) computes 28x28), and the writes copy whole rows.
  void compute_winograd(int64_t b0, int64_t tb) {
    const PackedWinogradConv& wino = *winograd_;
    const WinogradMatrices& t = wino.transform;
    const int m = t.m, r = t.r, alpha = t.alpha, points = alpha * alpha;
    const NinBlockGeometry& g = g_;
    const int64_t nr = nr_, bw = (g.OW + m - 1) / m, blocks_per_image = (g.OH + m - 1) / m * bw;
    // Scratch: the input patches of one channel (zero in lanes past the tile's last block), the
    // output block of one channel, the band of input rows.
    float* d = transform_scratch_.data();
    float* y = d + points * nr;
    std::fill(d, d + points * nr, 0.f);
    // The tile's blocks as runs of consecutive blocks in one block row of one image.
    const int64_t sn = x_.stride(0), sc = x_.stride(1), sh = x_.stride(2), sw = x_.stride(3);
    block_runs_.clear();
    for (int64_t lane = 0; lane < tb;) {
      const int64_t b = b0 + lane, within = b % blocks_per_image, bx = within % bw;
      const int64_t length = std::min(tb - lane, bw - bx);
      block_runs_.push_back({lane, length, b / blocks_per_image, b / blocks_per_image * sn, within / bw, bx});
      lane += length;
    }
    // The dense pixel order: per block run, its output rows within the map, each split where a panel
    // ends. Tile pixels [j, j + count) are one row piece, at (j / nr) * CC * nr + j % nr in channel
    // 0's panels.
    tile_rows_.clear();
    row_runs_.clear();
    int64_t j = 0;
    for (const BlockRun& run : block_runs_) {
      const int64_t ow0 = m * run.bx, width = std::min(m * run.length, g.OW - ow0);
      for (int64_t dy = 0; dy < m && m * run.by + dy < g.OH; ++dy) {
        for (int64_t t = 0; t < width;) {
          const int64_t count = std::min(width - t, nr - j % nr);
          tile_rows_.push_back({run.n, m * run.by + dy, ow0 + t, count, j});
          row_runs_.push_back({dy * m * nr + run.lane, t, count, (j / nr) * g.CC * nr + j % nr});
          t += count;
          j += count;
        }
      }
    }
    pt_ = j;
    panels_ = (pt_ + nr - 1) / nr;
    if (const int64_t tail = panels_ * nr - pt_) {  // the last panel's unused columns: zero, not stale
      for (int64_t c = 0; c < g.CC; ++c) {
        scalar_t* row = hidden0_.data() + ((panels_ - 1) * g.CC + c) * nr;
        std::fill(row + nr - tail, row + nr, scalar_t(0));
      }
    }
    // Input transform, V = BT d B per channel (v[ci * vs + xi * nr + lane], winograd_channel_floats),
    // all the tile's blocks at once. Per run, the alpha input rows it reads are first copied into a
    // zero-padded band (band column c is input column c - PW), from which each patch element of every
    // block is a stride-m read with no bounds check (the kernel's winograd_gather). The band's padding
    // columns are zero from the worker's construction on and never written: only columns [PW, PW + W)
    // are (a fill call per row for the padding cost block 3 1%). A phase form's input rows are read
    // from x's phases in place.
    const int64_t band_width = winograd_band_width();
    float* band = winograd_band();
    const scalar_t* xd = x_.const_data_ptr<scalar_t>();
    const int64_t x_rows = x_.size(2), x_cols = x_.size(3);
    const InputPhases& ph = phases_;
    float* v = reinterpret_cast<float*>(patch_.data());
    const int64_t vs = winograd_channel_floats();
    for (int64_t ci = 0; ci < g.C0; ++ci) {
      // The channel's phase of x's channel (conv_phase_forms_cpu.h): its column iw is x's column
      // SW iw + column_offset, inside x for iw in [iw0, iw1) (all of [0, W) when the input is x itself).
      const int64_t row_offset = ph.row_offset(ci), column_offset = ph.column_offset(ci);
      const int64_t iw0 = ph.first_column_inside(ci, g.W), iw1 = ph.end_column_inside(ci, g.W, x_cols);
      const int64_t column_stride = ph.SW * sw;
      for (const BlockRun& run : block_runs_) {
        const scalar_t* plane = xd + run.image_offset + ph.x_channel(ci) * sc;
        band_rows_.clear();
        for (int i = 0; i < alpha; ++i) {
          float* row = band + i * band_width + g.PW;  // the input row's column 0
          const int64_t ih = m * run.by - g.PH + i, xh = ph.SH * ih + row_offset;  // its row in the input, in x
          if (ih < 0 || ih >= g.H || xh < 0 || xh >= x_rows) {
            std::fill(row, row + g.W, 0.f);
            continue;
          }
          if (iw0 > 0) {
            std::fill(row, row + iw0, 0.f);
          }
          if (iw1 < g.W) {
            std::fill(row + iw1, row + g.W, 0.f);
          }
          const int64_t src = xh * sh + (ph.SW * iw0 + column_offset) * sw;  // in plane
          if (std::is_same_v<scalar_t, float> && column_stride == 1) {  // NCHW: one contiguous run per row
            band_rows_.push_back({src, iw1 - iw0, row + iw0 - band});
          } else {
            for (int64_t iw = iw0; iw < iw1; ++iw) {
              row[iw] = static_cast<float>(plane[src + (iw - iw0) * column_stride]);
            }
          }
        }
        if constexpr (std::is_same_v<scalar_t, float>) {
          copy_runs_with(packed_.kernel, plane, band_rows_.data(), static_cast<int64_t>(band_rows_.size()), band);
        }
        packed_.kernel.winograd_gather(band, band_width, m, alpha, run.bx, run.length, d + run.lane, nr);
      }
      packed_.kernel.winograd_input_transform(m, r, d, nr, v + ci * vs, nr);
    }
    // Per chunk of output channels (the chunk's products stay in L2): the products, one GEMM per
    // transform point, M[xi] = U[xi] V[xi] (V[xi]'s rows vs apart); then the output transform,
    // Y = AT M A per channel, and bias + ReLU into the m^2 pixel panels.
    // With channel lanes (winograd_channel_lanes), the same products come from the swapped kernel, the
    // tile's blocks as its rows, in chunks of whole NR-channel panels, each point's a channel more than
    // the chunk apart (32 channels of 32 lanes, 4 KiB apart, put the output transform's reads of a
    // channel in one L1 set: the transforms took 2.5x the time); the lanes past the tile's blocks keep
    // what the buffer held (the output transform runs on them, the scatter never reads them).
    float* products = reinterpret_cast<float*>(products_.data());
    const scalar_t* bias = packed_.conv.bias.data();
    const int64_t chunk = channel_lanes_ ? std::max(nr, wino.chunk_channels / nr * nr) : wino.chunk_channels;
    const int64_t point_stride = channel_lanes_ ? chunk + 1 : chunk;
    for (int64_t c0 = 0; c0 < g.CC; c0 += chunk) {
      const int64_t channels = std::min(chunk, g.CC - c0);
      for (int xi = 0; xi < points; ++xi) {
        if (channel_lanes_) {
          for (int64_t j0 = 0; j0 < channels; j0 += nr) {
            const float* weights = wino.channel_panel(xi, c0 + j0);
            for (int64_t lane = 0; lane < tb; lane += wino.mr) {
              packed_.kernel.swapped_fn(g.C0, v + xi * nr + lane, vs, weights,
                                        products + (xi * point_stride + j0) * nr + lane, nr,
                                        std::min(wino.mr, tb - lane));
            }
          }
          continue;
        }
        if (xi + 1 < points) {
          prefetch_pixel_rows(v + (xi + 1) * nr, g.C0, vs);
        }
        // The chunk's panels of this point follow each other in U (PackedWinogradConv::panel_offset).
        const float* weights = wino.panel(xi, c0);
        for (int64_t m0 = 0; m0 < channels; m0 += wino.mr, weights += wino.mr * wino.K) {
          packed_.kernel.fn(g.C0, reinterpret_cast<const scalar_t*>(weights),
                            reinterpret_cast<const scalar_t*>(v + xi * nr), vs, nullptr,
                            reinterpret_cast<scalar_t*>(products + (xi * point_stride + m0) * nr), nr,
                            std::min(wino.mr, channels - m0));
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        packed_.kernel.winograd_output_transform(m, r, products + c * nr, point_stride * nr, y, nr);
        packed_.kernel.winograd_scatter(y, m, nr, static_cast<float>(bias[c0 + c]), row_runs_.data(),
                                        static_cast<int64_t>(row_runs_.size()),
                                        reinterpret_cast<float*>(hidden0_.data()) + (c0 + c) * nr);
      }
    }
    apply_packed_layer(packed_.kernel, packed_.pointwise1, hidden0_.data(), hidden1_.data(), panels_, amx_min_reduction_);
    apply_packed_layer(packed_.kernel, packed_.pointwise2, hidden1_.data(), hidden2_.data(), panels_, amx_min_reduction_);
  }

  // Prefetches the rows of the next point's pixel panel (`rows` rows of NR floats, `stride` apart)
  // while this point's products run: they are read again by each panel of the chunk, but the first
  // kernel call would otherwise wait on each of its first rows (the kernel's own prefetch runs
  // kPixelPrefetchSteps rows ahead). 3-8% of the seed's block 2 on a 2-core Intel Xeon (NOTES v31).
  void prefetch_pixel_rows(const float* rows_start, int64_t rows, int64_t stride) const {
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t line = 0; line < nr_; line += kCacheLineFloats) {
        __builtin_prefetch(rows_start + row * stride + line);
      }
    }
  }

  // Writes activation `layer` of the last Winograd tile into t, an (N', C, OH, OW) tensor of any
  // strides holding images [first_image, first_image + N'): the tile's pixels of other images are
  // skipped.
  void write_winograd_rows(int layer, at::Tensor& t, int64_t first_image = 0) {
    const scalar_t* values = activation(layer);
    const int64_t channels = t.size(1), images = t.size(0);
    scalar_t* data = t.data_ptr<scalar_t>();
    const int64_t sn = t.stride(0), sc = t.stride(1), sh = t.stride(2), sw = t.stride(3);
    // The tile's row pieces of these images only (a tile spans up to a few images, written one at a
    // time by nin_block_max_pool): where each is in `values` (channel 0) and in t.
    std::vector<CopyRun>& runs = output_runs_;
    runs.clear();
    for (const TileRow& row : tile_rows_) {
      const int64_t n = row.n - first_image;
      if (n >= 0 && n < images) {
        runs.push_back({row.j / nr_ * channels * nr_ + row.j % nr_, row.count, n * sn + row.oh * sh + row.ow * sw});
      }
    }
    writer_.write(runs, values, channels, data, sc, sw);
  }

  // Hands over activation `layer` of the last computed tile (0: the conv's, 1: the first 1x1's, 2:
  // the block's output) one run at a time: row_fn(c, j0, values, count) gets channel c of tile
  // pixels [j0, j0 + count), contiguous (one panel's worth).
  template <typename RowFn>
  void for_each_row(int layer, const RowFn& row_fn) const {
    const scalar_t* values = activation(layer);
    const int64_t channels = activation_channels(layer);
    for (int64_t panel = 0; panel < panels_; ++panel) {
      const int64_t j0 = panel * nr_, count = std::min(nr_, pt_ - j0);
      for (int64_t c = 0; c < channels; ++c) {
        row_fn(c, j0, values + (panel * channels + c) * nr_, count);
      }
    }
  }

  // Writes activation `layer` of the last computed tile (pixels from p0 of image n, continuing into
  // the next images past an image's last pixel) into t, an (N, C, OH, OW) tensor in NCHW or
  // channels_last layout: pixel p of channel c of image n sits at n * s_n + c * s_c + p * s_p in both.
  void write_rows(int layer, at::Tensor& t, int64_t n, int64_t p0) {
    scalar_t* data = t.data_ptr<scalar_t>() + n * t.stride(0);
    const int64_t s_n = t.stride(0), s_c = t.stride(1), s_p = t.stride(3), P = g_.pixels();
    const scalar_t* values = activation(layer);
    const int64_t channels = activation_channels(layer);
    // Channel 0's panel rows, split where an image ends, and where they go (tile pixel j is pixel
    // (p0 + j) % P of image n + (p0 + j) / P).
    std::vector<CopyRun>& runs = output_runs_;
    runs.clear();
    for (int64_t j = 0; j < pt_;) {
      const int64_t q = p0 + j, count = std::min({nr_ - j % nr_, pt_ - j, P - q % P});
      runs.push_back({j / nr_ * channels * nr_ + j % nr_, count, q / P * s_n + q % P * s_p});
      j += count;
    }
    writer_.write(runs, values, channels, data, s_c, s_p);
  }

 private:
  // Activation `layer` of the last computed tile (0: the conv's, 1: the first 1x1's, 2: the block's
  // output), in the panel layout, and its channel count.
  const scalar_t* activation(int layer) const {
    return (layer == 0 ? hidden0_ : layer == 1 ? hidden1_ : hidden2_).data();
  }
  int64_t activation_channels(int layer) const { return layer == 0 ? g_.CC : layer == 1 ? g_.C1 : g_.C2; }

  // The products buffer: a chunk of channels per point (plain, or whole NR-channel panels and one
  // channel of padding).
  int64_t winograd_products_floats() const {
    return winograd_points() * (std::max(nr_, winograd_->chunk_channels) + 1) * nr_;
  }

  // The Winograd band's width: the padded input row, plus the zero columns that blocks past the map's
  // right edge read.
  int64_t winograd_band_width() const {
    const int m = winograd_->transform.m;
    return std::max(g_.W + 2 * g_.PW, (g_.OW + m - 1) / m * m + g_.KW - 1);
  }

  int64_t winograd_band_floats() const { return winograd_->transform.alpha * winograd_band_width(); }
  // The band's place in the transform scratch: after the patches and the output block.
  float* winograd_band() {
    return transform_scratch_.data() + (winograd_points() + winograd_->transform.m * winograd_->transform.m) * nr_;
  }

  int winograd_points() const { return winograd_->transform.alpha * winograd_->transform.alpha; }

  // The transformed input's floats per input channel: the channel's points one after another, so that
  // the input transform writes one contiguous run per channel (point-major, its alpha^2 stores per
  // channel at a C0 NR distance were 5% of block 2's samples), and one point of padding, so that the
  // rows one point's product reads (one per channel) do not all fall in the same L1 sets.
  int64_t winograd_channel_floats() const { return (winograd_points() + 1) * nr_; }

  // im2col of the tile into panels: patch[panel][(ci * KH + ky) * KW + kx][j] = x[n, ci, ih, iw], zero
  // outside the image and past the tile's last pixel. Works for any strides of x. Per input channel
  // and image of the tile (tiles cross images), the input rows the tile
  // reads are first copied into a zero-padded band (band column c is input column c - PW), split
  // into SW phases by column (phase c % SW, column c / SW); every patch element is then one read from
  // the band at an offset that depends on the pixel (a table built once per tile) plus one that
  // depends on (ky, kx): no bounds checks and no per-row bookkeeping, which dominated small maps (the
  // seed's 5x5 block 4). With the phases, the pixels of a panel that share an output row read
  // consecutive values even when the conv is strided (the seed's block 1: stride 4), so a panel is
  // one contiguous copy per output row it touches.
  void gather_patch(int64_t n, int64_t p0, int64_t pt, int64_t panels) {
    const NinBlockGeometry& g = g_;
    const int64_t band_width = g.W + 2 * g.PW, phase_width = (band_width + g.SW - 1) / g.SW;
    // The tile's pixels as runs of one output row within one panel, per image: band offsets [src,
    // src + count) (plus the (ky, kx) offset) go to lanes [lane, lane + count) of the panel, at dst =
    // panel K NR + lane (plus k NR) in the patch.
    const int64_t band_rows = plan_tile_images(n, p0, pt);
    gather_runs_.clear();
    int64_t j = 0;  // the segment's first tile pixel
    for (GatherImage& segment : gather_images_) {
      const int64_t oh_first = segment.p_first / g.OW;
      segment.runs_begin = static_cast<int64_t>(gather_runs_.size());
      for (int64_t i = 0; i < segment.count;) {
        const int64_t p = segment.p_first + i, oh = p / g.OW, ow = p % g.OW;
        const int64_t panel = (j + i) / nr_, lane = (j + i) % nr_;
        const int64_t length = std::min({segment.count - i, g.OW - ow, nr_ - lane});
        gather_runs_.push_back({(oh - oh_first) * g.SH * phase_width + ow, length, panel * g.K() * nr_ + lane});
        i += length;
      }
      segment.runs_end = static_cast<int64_t>(gather_runs_.size());
      j += segment.count;
    }
    // One band per image of the tile, all with the same rows per phase, so that a tap's offset is the
    // same in each.
    const int64_t band_floats = g.SW * band_rows * phase_width;
    band_.resize(band_floats * gather_images_.size());
    const bool by_lanes = gathers_by_lanes(pt);
    if (by_lanes) {  // each tile pixel's offset in the bands
      lane_index_.resize(panels * nr_);
      for (size_t s = 0; s < gather_images_.size(); ++s) {
        for (int64_t r = gather_images_[s].runs_begin; r < gather_images_[s].runs_end; ++r) {
          const CopyRun& run = gather_runs_[r];
          const int64_t j = run.dst / (g.K() * nr_) * nr_ + run.dst % (g.K() * nr_);
          for (int64_t i = 0; i < run.count; ++i) {
            lane_index_[j + i] = static_cast<int32_t>(static_cast<int64_t>(s) * band_floats + run.src + i);
          }
        }
      }
    }
    const int64_t sc = x_.stride(1), sh = x_.stride(2), sw = x_.stride(3);
    const int64_t tail = panels * nr_ - pt;  // unused columns of the last panel
    for (int64_t ci = 0; ci < g.C0; ++ci) {
      for (size_t s = 0; s < gather_images_.size(); ++s) {
        const GatherImage& segment = gather_images_[s];
        const scalar_t* plane = x_.const_data_ptr<scalar_t>() + segment.n * x_.stride(0) + ci * sc;
        for (int64_t r = 0; r < segment.band_rows; ++r) {
          const int64_t ih = segment.ih_first + r;
          const scalar_t* src = plane + ih * sh;
          for (int64_t phase = 0; phase < g.SW; ++phase) {
            scalar_t* row = band_.data() + s * band_floats + (phase * band_rows + r) * phase_width;
            for (int64_t col = 0, c = phase; c < band_width; ++col, c += g.SW) {
              const int64_t iw = c - g.PW;
              row[col] = ih < 0 || ih >= g.H || iw < 0 || iw >= g.W ? scalar_t(0) : src[iw * sw];
            }
          }
        }
      }
      for (int64_t ky = 0; ky < g.KH; ++ky) {
        for (int64_t kx = 0; kx < g.KW; ++kx) {
          const int64_t k = (ci * g.KH + ky) * g.KW + kx;
          const scalar_t* tap = band_.data() + ((kx % g.SW) * band_rows + ky) * phase_width + kx / g.SW;
          if (by_lanes) {
            for (int64_t panel = 0; panel < panels; ++panel) {
              gather_lanes_with(packed_.kernel, tap, lane_index_.data() + panel * nr_, std::min(nr_, pt - panel * nr_),
                                patch_.data() + (panel * g.K() + k) * nr_);
            }
            continue;
          }
          for (size_t s = 0; s < gather_images_.size(); ++s) {
            const GatherImage& segment = gather_images_[s];
            copy_runs_with(packed_.kernel, tap + s * band_floats, gather_runs_.data() + segment.runs_begin,
                           segment.runs_end - segment.runs_begin, patch_.data() + k * nr_);
          }
        }
      }
      if (tail > 0) {
        for (int64_t k = ci * g.KH * g.KW; k < (ci + 1) * g.KH * g.KW; ++k) {
          scalar_t* last_row = patch_.data() + ((panels - 1) * g.K() + k) * nr_;
          std::fill(last_row + nr_ - tail, last_row + nr_, scalar_t(0));
        }
      }
    }
  }

  // gather_images_ for tile pixels [0, pt), from pixel p0 of image n on (tiles cross images), without
  // their runs; returns the most band rows among them.
  int64_t plan_tile_images(int64_t n, int64_t p0, int64_t pt) {
    const NinBlockGeometry& g = g_;
    const int64_t P = g.pixels();
    gather_images_.clear();
    int64_t band_rows = 0;
    for (int64_t j = 0; j < pt;) {
      const int64_t q = p0 + j, p_first = q % P, count = std::min(pt - j, P - p_first);
      const int64_t oh_first = p_first / g.OW, oh_last = (p_first + count - 1) / g.OW;
      gather_images_.push_back(
          {n + q / P, oh_first * g.SH - g.PH, (oh_last - oh_first) * g.SH + g.KH, p_first, count, 0, 0});
      band_rows = std::max(band_rows, gather_images_.back().band_rows);
      j += count;
    }
    return band_rows;
  }

  // hidden0 of the tile: by the broadcast kernel, or by the im2col gather and the micro-kernel.
  void compute_conv(int64_t n, int64_t p0, int64_t pt) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (broadcast_ != nullptr) {
        conv_by_broadcast(n, p0, pt);
        return;
      }
    }
    gather_patch(n, p0, pt, panels_);
    apply_packed_layer(packed_.kernel, packed_.conv, patch_.data(), hidden0_.data(), panels_, amx_min_reduction_);
  }

  // The conv's packing for the broadcast kernel where the direct path runs the conv by it, else null.
  static const PackedBroadcastConv* broadcast_packing(const NinBlockPacked<scalar_t>& packed,
                                                      const NinBlockGeometry& g) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (direct_conv_by_broadcast(g, sizeof(float))) {
        return &packed.broadcast_conv();
      }
    }
    return nullptr;
  }

  // hidden0 of the tile's pixels (as compute) by the broadcast kernel: the tile's input rows, per image
  // (as gather_patch's bands), are copied into a zero-padded channels-last band (band[(row Wp +
  // column) C0 + ci], Wp = W + 2 PW); each pixel's taps are read from it in place. The products go to
  // a pixel-major buffer, per group of G output channels and chunk of input channels, then into
  // hidden0's panels.
  void conv_by_broadcast(int64_t n, int64_t p0, int64_t pt) {
    const NinBlockGeometry& g = g_;
    const PackedBroadcastConv& conv = *broadcast_;
    const BroadcastPixelsKernel& kernel = conv.kernel;
    const int64_t Wp = g.W + 2 * g.PW, G = conv.group_channels, ldc = conv.groups * G;
    // The tile's images (as gather_patch's, without runs); each pixel's offset in the bands.
    const int64_t band_rows = plan_tile_images(n, p0, pt), image_floats = band_rows * Wp * g.C0;
    pixel_offsets_.clear();
    for (size_t s = 0; s < gather_images_.size(); ++s) {
      const GatherImage& image = gather_images_[s];
      for (int64_t p = image.p_first; p < image.p_first + image.count; ++p) {
        const int64_t row = p / g.OW * g.SH - g.PH - image.ih_first, column = p % g.OW * g.SW;
        pixel_offsets_.push_back(static_cast<int64_t>(s) * image_floats + (row * Wp + column) * g.C0);
      }
    }
    const int64_t blocks = (pt + kernel.pixels - 1) / kernel.pixels;
    pixel_offsets_.resize(blocks * kernel.pixels, pixel_offsets_.back());
    // The bands, channels last; their padding zero (rows past an image's band are never read).
    band_.resize(image_floats * gather_images_.size());
    const int64_t sn = x_.stride(0), sc = x_.stride(1), sh = x_.stride(2), sw = x_.stride(3);
    const float* xd = x_.const_data_ptr<float>();
    for (size_t s = 0; s < gather_images_.size(); ++s) {
      const GatherImage& image = gather_images_[s];
      for (int64_t r = 0; r < image.band_rows; ++r) {
        const int64_t ih = image.ih_first + r;
        float* row = band_.data() + s * image_floats + r * Wp * g.C0;
        if (ih < 0 || ih >= g.H) {
          std::fill(row, row + Wp * g.C0, 0.f);
          continue;
        }
        std::fill(row, row + g.PW * g.C0, 0.f);
        std::fill(row + (g.PW + g.W) * g.C0, row + Wp * g.C0, 0.f);
        float* dst = row + g.PW * g.C0;
        packed_.kernel.channels_last_row(xd + image.n * sn + ih * sh, sc, sw, g.C0, g.W, dst, g.C0);
      }
    }
    tap_offsets_.clear();
    for (int64_t ky = 0; ky < g.KH; ++ky) {
      for (int64_t kx = 0; kx < g.KW; ++kx) {
        tap_offsets_.push_back((ky * Wp + kx) * g.C0);
      }
    }
    // The products, per group and chunk of input channels: a chunk is at most 2048 reduction steps
    // (its sum rounds as a short one: by chunks of 4000, a 400-channel 11x11 conv had 3x the error of
    // the shifted path's short sums) and 512 KiB of weights, which stay in L2 while they meet every
    // pixel of the tile (chunks of 32 and 128 KiB ran 2-20% slower).
    broadcast_products_.resize(blocks * kernel.pixels * ldc);
    float* products = broadcast_products_.data();
    const int64_t weight_bound = (int64_t{512} << 10) / (conv.taps * G * int64_t(sizeof(float)));
    const int64_t chunk = std::max<int64_t>(1, std::min(weight_bound, kBroadcastChunkSteps / conv.taps));
    for (int64_t group = 0; group < conv.groups; ++group) {
      for (int64_t c0 = 0; c0 < g.C0; c0 += chunk) {
        const int64_t channels = std::min(chunk, g.C0 - c0);
        const bool last = c0 + channels == g.C0;
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t j0 = b * kernel.pixels;
          kernel.fn(conv.taps, tap_offsets_.data(), channels, band_.data() + c0, pixel_offsets_.data() + j0,
                    std::min(kernel.pixels, pt - j0), conv.group(group) + c0 * G, g.C0,
                    last ? conv.bias.data() + group * G : nullptr, c0 > 0, products + j0 * ldc + group * G, ldc);
        }
      }
    }
    // Into hidden0's panels, zero past the tile's last pixel.
    float* h0 = reinterpret_cast<float*>(hidden0_.data());
    for (int64_t panel = 0; panel < panels_; ++panel) {
      for (int64_t c = 0; c < g.CC; ++c) {
        float* dst = h0 + (panel * g.CC + c) * nr_;
        for (int64_t lane = 0; lane < nr_; ++lane) {
          const int64_t j = panel * nr_ + lane;
          dst[lane] = j < pt ? products[j * ldc + c] : 0.f;
        }
      }
    }
  }

  // Whether the gather reads the tile lane by lane, one vector gather per panel and tap, rather than
  // by runs of an output row: where the runs average under 3.5 pixels (output rows of 1-3 pixels). On
  // tiles of 64 images (Zen 4, AVX-512), a 96 -> 32 block with an 11x11 kernel at stride 4 on 16x16
  // maps (2x2 outputs) ran 4.00 -> 2.61 ms, and a 5x5 one on 9x9 maps (3x3 outputs) 1.01 -> 0.87;
  // rows of 4 pixels ran the same either way, and rows of 5-7 up to 20% slower by lanes.
  bool gathers_by_lanes(int64_t pt) const { return 2 * pt < 7 * static_cast<int64_t>(gather_runs_.size()); }

  const at::Tensor& x_;
  const NinBlockGeometry& g_;
  const InputPhases phases_;
  const NinBlockPacked<scalar_t>& packed_;
  const PackedWinogradConv* const winograd_;  // null for a direct-path worker
  const bool channel_lanes_;                  // Winograd: whether the products run swapped
  const int64_t nr_;
  const PackedBroadcastConv* const broadcast_;  // the direct path's conv by the broadcast kernel, or null
  ScratchBuffer<scalar_t> patch_, hidden0_, hidden1_, hidden2_;
  ScratchBuffer<scalar_t> products_;        // Winograd: the per-point products of a tile
  ScratchBuffer<float> transform_scratch_;  // Winograd: the transforms' inputs and outputs
  struct BlockRun {
    int64_t lane, length;  // tile lanes [lane, lane + length)
    int64_t n, image_offset, by, bx;  // the image and its offset in x, the block row, the first block's column
  };
  std::vector<BlockRun> block_runs_;  // Winograd: the tile's blocks, by block row
  struct TileRow {
    int64_t n, oh, ow, count, j;  // tile pixels [j, j + count): image n, row oh, columns [ow, ow + count)
  };
  std::vector<TileRow> tile_rows_;           // Winograd: the tile's pixels, densely, as row pieces
  std::vector<WinogradRowRun> row_runs_;     // Winograd: the same pieces, from the output blocks

  struct GatherImage {
    int64_t n, ih_first, band_rows;  // the image, the first input row its band holds, the band's rows
    int64_t p_first, count;          // its pixels [p_first, p_first + count), the tile's next ones
    int64_t runs_begin, runs_end;    // its pixels' runs in gather_runs_ (the gather's)
  };
  AlignedVector<scalar_t> band_;           // gather: the input rows of one channel and image that the tile reads
  std::vector<CopyRun> gather_runs_;       // gather: the tile's pixels by image, panel and output row
  std::vector<int32_t> lane_index_;        // gather by lanes: each tile pixel's offset in the bands
  std::vector<int64_t> pixel_offsets_, tap_offsets_;  // broadcast conv: each tile pixel's and tap's offset
  AlignedVector<float> broadcast_products_;  // broadcast conv: the tile's conv, pixel-major
  std::vector<GatherImage> gather_images_;  // gather: the tile's images
  std::vector<CopyRun> band_rows_;      // Winograd: the input rows of a block run, from x to the band
  std::vector<CopyRun> output_runs_;    // the writes: the tile's panel rows of one channel
  TileWriter<scalar_t> writer_;
  int64_t pt_ = 0, panels_ = 0;  // the last computed tile's pixels and panels
  int64_t amx_min_reduction_ = kAmxMinReduction;
};

// Runs `tile_fn(worker, tile, n, p0, pt)` for every tile of the batch (pixels [p0, p0 + pt) from
// image n on, continuing into the next images past an image's last pixel; direct_tiling), in parallel
// over tiles; each thread builds its workspace once and reuses it for all its tiles. `for_backward`:
// the workers keep their hidden activations for a backward.
template <typename scalar_t, typename TileFn>
void for_each_nin_block_tile(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                             const DirectTiling& tiling, const TileFn& tile_fn, bool for_backward = false) {
  const int64_t P = g.pixels();
  parallel_shared_tasks(tiling.tiles(), [&](SharedTasks& tasks) {
    NinBlockTileWorker<scalar_t> worker(x, g, packed, tiling.tile_pixels());
    if (for_backward) {
      worker.keep_hidden_for_backward();
    }
    for (int64_t tile; (tile = tasks.take()) >= 0;) {
      const int64_t q = tiling.first_pixel(tile);
      tile_fn(worker, tile, q / P, q % P, tiling.pixels_in(tile));
    }
  });
}

// Runs `tile_fn(worker, b0, tb)` for every Winograd tile of the batch (winograd_tiles: tb consecutive
// m x m output blocks from b0), in parallel over tiles; tiles may span images. `for_backward`: as
// for_each_nin_block_tile's.
template <typename scalar_t, typename TileFn>
void for_each_winograd_tile(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                            const PackedWinogradConv& winograd, InputPhases phases, const TileFn& tile_fn,
                            bool for_backward = false) {
  const int m = winograd.transform.m;
  const int64_t nr = packed.kernel.nr, blocks = g.N * ((g.OH + m - 1) / m) * ((g.OW + m - 1) / m);
  const TileSplit tiles = winograd_tiles(blocks, nr);
  const bool channel_lanes = winograd_channel_lanes(packed.kernel, g.CC, tiles.largest());
  parallel_shared_tasks(tiles.count, [&](SharedTasks& tasks) {
    NinBlockTileWorker<scalar_t> worker(x, g, packed, m * m * nr, &winograd, phases, channel_lanes);
    if (for_backward) {
      worker.keep_hidden_for_backward();
    }
    for (int64_t tile; (tile = tasks.take()) >= 0;) {
      tile_fn(worker, tiles.first(tile), tiles.size(tile));
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
