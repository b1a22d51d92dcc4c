// Tiling of the fused nin_block CUDA kernel: which output pixels a thread block (CTA) owns, how its
// shared memory is laid out, and how many pixels a tile holds for given channel counts.
// Plain C++ usable on host and device, so that a CPU-only test (tests/cuda_tile_plan_test.cpp)
// checks the arithmetic that the kernel relies on.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define NIN_HOST_DEVICE __host__ __device__
#else
#define NIN_HOST_DEVICE
#endif

namespace nin_ext {
namespace cuda {

constexpr int kThreads = 512;            // 16 warps per CTA: the wide layers fit one CTA per SM
constexpr int kChannelChunk = 64;        // output channels per chunk: 4 warps side by side x 16 WMMA columns
constexpr int kReductionChunk = 32;      // reduction elements (K) staged in shared memory per pass
constexpr int kRowPad = 8;               // extra elements per shared-memory row (WMMA ldm is a multiple of 8)
constexpr int kMaxTilePixels = 64;       // pixels per tile, at most; 4 WMMA row fragments
// The spatial convolution computes up to this many channel chunks from each staged im2col chunk: the
// gather, its costliest staging, then runs once per group of chunks rather than once per chunk. The
// plan picks the group (SmemLayout::conv_group) that fits, since b holds a whole group's weights.
constexpr int kMaxConvChunkGroup = 4;
constexpr int kTensorCoreMinTilePixels = 16;  // one WMMA row fragment
constexpr int kSimtMinTilePixels = 8;
constexpr int64_t kSmemAlign = 128;

NIN_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
NIN_HOST_DEVICE constexpr int64_t round_up(int64_t v, int64_t m) { return ceil_div(v, m) * m; }

// Channel chunks a layer's pass computes when `channels` output channels are left: a group of
// `group` chunks, or fewer at the end.
NIN_HOST_DEVICE constexpr int chunks_per_pass(int64_t channels, int group) {
  return channels >= int64_t(group) * kChannelChunk ? group : static_cast<int>(ceil_div(channels, kChannelChunk));
}

// Output pixels are numbered image by image, row by row: pixel = (n * OH + oh) * OW + ow. They are
// grouped in segments that no tile straddles: the whole batch for nin_block (a tile may span two
// images), one image for nin_block_gap (a tile's channel sums then belong to one image).
struct PixelTiling {
  int64_t segment_pixels;     // pixels per segment
  int64_t segments;
  int64_t tile_pixels;        // pixels per tile (the last tile of a segment may hold fewer)
  int64_t tiles_per_segment;

  NIN_HOST_DEVICE int64_t tiles() const { return segments * tiles_per_segment; }
  NIN_HOST_DEVICE int64_t segment_of(int64_t tile) const { return tile / tiles_per_segment; }
  NIN_HOST_DEVICE int64_t first_pixel(int64_t tile) const {
    return segment_of(tile) * segment_pixels + (tile % tiles_per_segment) * tile_pixels;
  }
  NIN_HOST_DEVICE int64_t pixel_count(int64_t tile) const {
    const int64_t begin = (tile % tiles_per_segment) * tile_pixels;
    const int64_t left = segment_pixels - begin;
    return left < tile_pixels ? left : tile_pixels;
  }
};

NIN_HOST_DEVICE inline PixelTiling make_pixel_tiling(int64_t images, int64_t pixels_per_image, bool per_image,
                                                     int64_t tile_pixels) {
  PixelTiling t;
  t.segment_pixels = per_image ? pixels_per_image : images * pixels_per_image;
  t.segments = per_image ? images : 1;
  t.tile_pixels = tile_pixels;
  t.tiles_per_segment = ceil_div(t.segment_pixels, tile_pixels);
  return t;
}

// The three coordinates of a row-major index into dimensions (any, d1, d2).
struct Unraveled3 {
  int64_t i, j, k;
};
NIN_HOST_DEVICE inline Unraveled3 unravel3(int64_t index, int64_t d1, int64_t d2) {
  const int64_t i = index / (d1 * d2);
  const int64_t rest = index - i * (d1 * d2);
  const int64_t j = rest / d2;
  return Unraveled3{i, j, rest - j * d2};
}

// (image, output row, output column) of an output pixel number.
struct PixelCoord {
  int64_t n, oh, ow;
};
NIN_HOST_DEVICE inline PixelCoord pixel_coord(int64_t pixel, int64_t OH, int64_t OW) {
  const Unraveled3 u = unravel3(pixel, OH, OW);
  return PixelCoord{u.i, u.j, u.k};
}

// (input channel, kernel row, kernel column) of a reduction index k of the spatial convolution; k
// follows the weight's [C_out][C_in][KH][KW] layout: k = (c * KH + r) * KW + s.
struct ReductionCoord {
  int64_t c, r, s;
};
NIN_HOST_DEVICE inline ReductionCoord reduction_coord(int64_t k, int64_t KH, int64_t KW) {
  const Unraveled3 u = unravel3(k, KH, KW);
  return ReductionCoord{u.i, u.j, u.k};
}

// Shared memory of one CTA, offsets in bytes from the (128-byte aligned) base:
//   h0      [tile_pixels][h0_ld]  elem   relu(conv) of the tile, channels padded to kChannelChunk with zeros
//   h1      [tile_pixels][h1_ld]  elem   relu(1x1 conv) of h0
//   a       [tile_pixels][a_ld]   elem   the im2col chunk of the spatial convolution
//   b       [conv_group * kChannelChunk][b_ld]
//                                 elem   a chunk of a weight matrix, [out channel][k]: one channel
//                                        chunk, or conv_group of them for the spatial convolution
//   c       [tile_pixels][c_ld]   acc    the accumulators of one output-channel chunk
//   pixels  4 x [tile_pixels]     int64  per pixel: x offset of its window's top-left corner, first
//                                        input row and column, output offset
struct SmemLayout {
  int64_t h0_ld, h1_ld, a_ld, b_ld, c_ld;  // row strides in elements
  int conv_group;                          // channel chunks per pass of the spatial convolution
  int64_t h0_offset, h1_offset, a_offset, b_offset, c_offset, pixels_offset;
  int64_t bytes;
};

NIN_HOST_DEVICE inline SmemLayout make_smem_layout(int64_t tile_pixels, int64_t conv_channels, int64_t c1,
                                                   int64_t elem_bytes, int64_t acc_bytes, int conv_group) {
  SmemLayout s;
  s.h0_ld = round_up(conv_channels, kChannelChunk) + kRowPad;
  s.h1_ld = round_up(c1, kChannelChunk) + kRowPad;
  s.a_ld = kReductionChunk + kRowPad;
  s.b_ld = kReductionChunk + kRowPad;
  s.c_ld = kChannelChunk + kRowPad;
  s.conv_group = chunks_per_pass(conv_channels > 0 ? conv_channels : 1, conv_group);
  int64_t at = 0;
  auto take = [&at](int64_t bytes) {
    const int64_t offset = at;
    at = round_up(at + bytes, kSmemAlign);
    return offset;
  };
  s.h0_offset = take(tile_pixels * s.h0_ld * elem_bytes);
  s.h1_offset = take(tile_pixels * s.h1_ld * elem_bytes);
  s.a_offset = take(tile_pixels * s.a_ld * elem_bytes);
  s.b_offset = take(int64_t(s.conv_group) * kChannelChunk * s.b_ld * elem_bytes);
  s.c_offset = take(tile_pixels * s.c_ld * acc_bytes);
  s.pixels_offset = take(4 * tile_pixels * int64_t(sizeof(int64_t)));
  s.bytes = at;
  return s;
}

struct TilePlan {
  int64_t tile_pixels;  // 0 when even the smallest tile does not fit in shared memory
  SmemLayout smem;
};

// The largest tile (kMaxTilePixels, halved down to min_tile_pixels), with the largest convolution
// group at that tile, whose shared memory fits smem_limit bytes; the tile is halved further while the
// grid would leave multiprocessors idle (fewer than two tiles per multiprocessor), e.g. at batch 1.
inline TilePlan plan_nin_block_tile(int64_t conv_channels, int64_t c1, int64_t elem_bytes, int64_t acc_bytes,
                                    int64_t min_tile_pixels, int64_t smem_limit, int64_t images,
                                    int64_t pixels_per_image, bool per_image, int64_t multiprocessors) {
  TilePlan plan{0, SmemLayout{}};
  for (int64_t p = kMaxTilePixels; p >= min_tile_pixels && plan.tile_pixels == 0; p /= 2) {
    for (int group = kMaxConvChunkGroup; group >= 1; --group) {
      const SmemLayout s = make_smem_layout(p, conv_channels, c1, elem_bytes, acc_bytes, group);
      if (s.bytes <= smem_limit) {
        plan = TilePlan{p, s};
        break;
      }
    }
  }
  if (plan.tile_pixels == 0) {
    return plan;
  }
  while (plan.tile_pixels > min_tile_pixels &&
         make_pixel_tiling(images, pixels_per_image, per_image, plan.tile_pixels).tiles() < 2 * multiprocessors) {
    const int64_t p2 = plan.tile_pixels / 2;
    plan = TilePlan{p2, make_smem_layout(p2, conv_channels, c1, elem_bytes, acc_bytes, plan.smem.conv_group)};
  }
  return plan;
}

}  // namespace cuda
}  // namespace nin_ext
