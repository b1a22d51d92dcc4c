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
// Extra bytes per shared-memory row. 16 bytes keep WMMA's ldm a multiple of 16 bytes and make every
// row stride an odd number of 16-byte units: the 8 rows x 4 words that a fragment load reads then
// fall in 32 different banks (a 32-byte pad put rows r and r + 4 in the same bank: 2-way conflicts).
constexpr int64_t kRowPadBytes = 16;
constexpr int kMaxTilePixels = 64;       // pixels per tile, at most; 4 WMMA row fragments
// Each layer computes up to this many channel chunks from each staged chunk of its A: the spatial
// convolution's gather, its costliest staging, then runs once per group of chunks rather than once per
// chunk, and each warp reuses an A fragment for the whole group. The plan picks the group
// (SmemLayout::chunk_group) that fits, since b holds a whole group's weights.
constexpr int kMaxChunkGroup = 4;
// The group that a pass can hold in registers: fp64 accumulators take twice the registers, and a pass
// of 4 chunks spilled 1.7 KB per thread (ptxas, sm_90a).
NIN_HOST_DEVICE constexpr int max_chunk_group(int64_t acc_bytes) { return acc_bytes > 4 ? 2 : kMaxChunkGroup; }
constexpr int kTensorCoreMinTilePixels = 16;  // one WMMA row fragment
constexpr int kSimtMinTilePixels = 8;
constexpr int64_t kSmemAlign = 128;
constexpr int64_t kPixelTableBytes = 2 * 8 + 2 * 4;  // per pixel: two int64 offsets, two int32 coordinates

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
template <typename I>
struct Unraveled3 {
  I i, j, k;
};
template <typename I>
NIN_HOST_DEVICE inline Unraveled3<I> unravel3(I index, I d1, I d2) {
  const I i = index / (d1 * d2);
  const I rest = index - i * (d1 * d2);
  const I j = rest / d2;
  return Unraveled3<I>{i, j, rest - j * d2};
}

// (image, output row, output column) of an output pixel number.
struct PixelCoord {
  int64_t n, oh, ow;
};
NIN_HOST_DEVICE inline PixelCoord pixel_coord(int64_t pixel, int64_t OH, int64_t OW) {
  const Unraveled3<int64_t> u = unravel3(pixel, OH, OW);
  return PixelCoord{u.i, u.j, u.k};
}

// (input channel, kernel row, kernel column) of a reduction index k of the spatial convolution; k
// follows the weight's [C_out][C_in][KH][KW] layout: k = (c * KH + r) * KW + s. In 32 bits (the host
// checks that C_in * KH * KW fits): the kernel decodes one k per thread and K step, and a 64-bit
// division costs several times a 32-bit one.
struct ReductionCoord {
  int32_t c, r, s;
};
NIN_HOST_DEVICE inline ReductionCoord reduction_coord(int32_t k, int32_t KH, int32_t KW) {
  const Unraveled3<uint32_t> u = unravel3<uint32_t>(k, KH, KW);
  return ReductionCoord{int32_t(u.i), int32_t(u.j), int32_t(u.k)};
}

// The row stride, in elements, of a shared-memory row of `elems` elements of `elem_bytes` each. The
// staged chunks a and b and the accumulator chunk c have rows fixed by the element size, so the
// kernel takes their strides as compile-time constants (fragment addresses then fold into immediate
// offsets instead of a multiply per element).
NIN_HOST_DEVICE constexpr int64_t padded_row(int64_t elems, int64_t elem_bytes) {
  return elems + kRowPadBytes / elem_bytes;
}

// The weights as the kernel stages them: a [out][K] matrix becomes [round_up(out, kChannelChunk)]
// [round_up(K, kReductionChunk)], zero-padded and its values in the form the products take (TF32
// rounded for tensor-core fp32), so that a thread stages a chunk by 16-byte loads with no bounds
// check and no conversion. The three matrices lie one after another; each size is a multiple of
// kReductionChunk elements, so every row starts 16-byte aligned.
struct PackedWeightShape {
  int64_t rows, K;  // of the weight
  NIN_HOST_DEVICE int64_t padded_rows() const { return round_up(rows, kChannelChunk); }
  NIN_HOST_DEVICE int64_t padded_K() const { return round_up(K, kReductionChunk); }
  NIN_HOST_DEVICE int64_t elems() const { return padded_rows() * padded_K(); }
};

// A block's three weight matrices (w, w1, w2) in the order they are packed, and where each begins.
struct PackedWeightShapes {
  PackedWeightShape layer[3];
  NIN_HOST_DEVICE int64_t offset(int i) const {
    int64_t at = 0;
    for (int j = 0; j < i; ++j) at += layer[j].elems();
    return at;
  }
  NIN_HOST_DEVICE int64_t elems() const { return offset(3); }
};

NIN_HOST_DEVICE inline PackedWeightShapes packed_weight_shapes(int64_t conv_channels, int64_t conv_K, int64_t c1,
                                                               int64_t c2) {
  return PackedWeightShapes{{{conv_channels, conv_K}, {c1, conv_channels}, {c2, c1}}};
}

// Shared memory of one CTA, offsets in bytes from the (128-byte aligned) base:
//   h0      [tile_pixels][h0_ld]  elem   relu(conv) of the tile, channels padded to kChannelChunk with zeros
//   h1      [tile_pixels][h1_ld]  elem   relu(1x1 conv) of h0
//   a       [tile_pixels][a_ld]   elem   the im2col chunk of the spatial convolution
//   b       [chunk_group * kChannelChunk][b_ld]
//                                 elem   a chunk of a weight matrix, [out channel][k]: a group of
//                                        chunk_group channel chunks
//   c       [tile_pixels][c_ld]   acc    the accumulators of one output-channel chunk
//   pixels  2 x [tile_pixels]     int64  per pixel: x offset of its window's top-left corner, output offset
//           2 x [tile_pixels]     int32  per pixel: first input row and column
struct SmemLayout {
  int64_t h0_ld, h1_ld, a_ld, b_ld, c_ld;  // row strides in elements
  int chunk_group;  // channel chunks per pass of each layer (at most the spatial convolution's chunks)
  int64_t h0_offset, h1_offset, a_offset, b_offset, c_offset, pixels_offset;
  int64_t bytes;
};

NIN_HOST_DEVICE inline SmemLayout make_smem_layout(int64_t tile_pixels, int64_t conv_channels, int64_t c1,
                                                   int64_t elem_bytes, int64_t acc_bytes, int chunk_group) {
  SmemLayout s;
  s.h0_ld = padded_row(round_up(conv_channels, kChannelChunk), elem_bytes);
  s.h1_ld = padded_row(round_up(c1, kChannelChunk), elem_bytes);
  s.a_ld = padded_row(kReductionChunk, elem_bytes);
  s.b_ld = padded_row(kReductionChunk, elem_bytes);
  s.c_ld = padded_row(kChannelChunk, acc_bytes);
  s.chunk_group = chunks_per_pass(conv_channels > 0 ? conv_channels : 1, chunk_group);
  int64_t at = 0;
  auto take = [&at](int64_t bytes) {
    const int64_t offset = at;
    at = round_up(at + bytes, kSmemAlign);
    return offset;
  };
  s.h0_offset = take(tile_pixels * s.h0_ld * elem_bytes);
  s.h1_offset = take(tile_pixels * s.h1_ld * elem_bytes);
  s.a_offset = take(tile_pixels * s.a_ld * elem_bytes);
  s.b_offset = take(int64_t(s.chunk_group) * kChannelChunk * s.b_ld * elem_bytes);
  s.c_offset = take(tile_pixels * s.c_ld * acc_bytes);
  s.pixels_offset = take(tile_pixels * kPixelTableBytes);
  s.bytes = at;
  return s;
}

struct TilePlan {
  int64_t tile_pixels;  // 0 when even the smallest tile does not fit in shared memory
  SmemLayout smem;
};

// The largest tile (kMaxTilePixels, halved down to min_tile_pixels), with the largest chunk group at
// that tile (at most max_chunk_group), whose shared memory fits smem_limit bytes; the tile is halved further while the
// grid would leave multiprocessors idle (fewer than two tiles per multiprocessor), e.g. at batch 1.
inline TilePlan plan_nin_block_tile(int64_t conv_channels, int64_t c1, int64_t elem_bytes, int64_t acc_bytes,
                                    int64_t min_tile_pixels, int64_t smem_limit, int64_t images,
                                    int64_t pixels_per_image, bool per_image, int64_t multiprocessors) {
  TilePlan plan{0, SmemLayout{}};
  for (int64_t p = kMaxTilePixels; p >= min_tile_pixels && plan.tile_pixels == 0; p /= 2) {
    for (int group = max_chunk_group(acc_bytes); group >= 1; --group) {
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
    plan = TilePlan{p2, make_smem_layout(p2, conv_channels, c1, elem_bytes, acc_bytes, plan.smem.chunk_group)};
  }
  return plan;
}

}  // namespace cuda
}  // namespace nin_ext
