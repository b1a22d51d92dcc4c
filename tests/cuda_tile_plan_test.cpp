// CPU-side checks of the CUDA kernel's tiling arithmetic (csrc/cuda/nin_block_tile_plan.h).
// Built and run by tests/test_cuda_tile_plan.py; prints one line per failed check and exits 1.
#include <cstdio>
#include <vector>

#include "cuda/nin_block_tile_plan.h"

using namespace nin_ext::cuda;

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                      \
  do {                                                        \
    ++checks;                                                 \
    if (!(cond)) {                                            \
      ++failures;                                             \
      std::printf("FAIL %s:%d %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                               \
      std::printf("\n");                                      \
    }                                                         \
  } while (0)

// Every pixel in exactly one tile, no tile straddles a segment, tiles of one segment are consecutive.
static void check_tiling(int64_t images, int64_t per_image, bool per_image_segments, int64_t tile_pixels) {
  const PixelTiling t = make_pixel_tiling(images, per_image, per_image_segments, tile_pixels);
  std::vector<int> hits(images * per_image, 0);
  for (int64_t tile = 0; tile < t.tiles(); ++tile) {
    const int64_t first = t.first_pixel(tile);
    const int64_t count = t.pixel_count(tile);
    CHECK(count >= 1 && count <= tile_pixels, "tile %lld count %lld", (long long)tile, (long long)count);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t pixel = first + i;
      CHECK(pixel >= 0 && pixel < images * per_image, "pixel %lld out of range", (long long)pixel);
      if (pixel < 0 || pixel >= images * per_image) return;
      ++hits[pixel];
      if (per_image_segments) {
        CHECK(pixel / per_image == t.segment_of(tile), "tile %lld straddles images", (long long)tile);
      }
    }
  }
  for (int64_t q = 0; q < images * per_image; ++q) {
    CHECK(hits[q] == 1, "pixel %lld covered %d times (N=%lld P=%lld tile %lld)", (long long)q, hits[q],
          (long long)images, (long long)per_image, (long long)tile_pixels);
  }
}

static bool disjoint(int64_t a, int64_t a_bytes, int64_t b, int64_t b_bytes) {
  return a + a_bytes <= b || b + b_bytes <= a;
}

static void check_layout(int64_t tile_pixels, int64_t cc, int64_t c1, int64_t elem, int64_t acc, int group) {
  const SmemLayout s = make_smem_layout(tile_pixels, cc, c1, elem, acc, group);
  const int64_t offsets[6] = {s.h0_offset, s.h1_offset, s.a_offset, s.b_offset, s.c_offset, s.pixels_offset};
  const int64_t sizes[6] = {tile_pixels * s.h0_ld * elem, tile_pixels * s.h1_ld * elem, tile_pixels * s.a_ld * elem,
                            s.chunk_group * kChannelChunk * s.b_ld * elem, tile_pixels * s.c_ld * acc,
                            tile_pixels * kPixelTableBytes};
  // b holds every pass's weight rows: the spatial convolution's first (widest) pass and a 1x1 chunk.
  CHECK(s.chunk_group >= 1 && s.chunk_group <= group && s.chunk_group == chunks_per_pass(cc, group),
        "b holds %d chunks for %lld channels in groups of %d", s.chunk_group, (long long)cc, group);
  for (int i = 0; i < 6; ++i) {
    CHECK(offsets[i] % kSmemAlign == 0, "region %d offset %lld not aligned", i, (long long)offsets[i]);
    CHECK(offsets[i] + sizes[i] <= s.bytes, "region %d past the end", i);
    for (int j = i + 1; j < 6; ++j) CHECK(disjoint(offsets[i], sizes[i], offsets[j], sizes[j]), "regions %d %d", i, j);
  }
  // WMMA: ldm a multiple of 16 bytes; 16-row steps stay 32-byte aligned. Rows an odd number of 16-byte
  // units apart: a fragment's 8 rows x 4 words fall in 32 different banks.
  const int64_t row_bytes[5] = {s.h0_ld * elem, s.h1_ld * elem, s.a_ld * elem, s.b_ld * elem, s.c_ld * acc};
  for (int64_t bytes : row_bytes) {
    CHECK(bytes % 16 == 0 && (bytes / 16) % 2 == 1 && (16 * bytes) % 32 == 0, "row of %lld bytes", (long long)bytes);
  }
  // The next layer reads h up to the reduction chunk past the channel count: inside the row.
  CHECK(round_up(cc, kReductionChunk) <= s.h0_ld && round_up(cc, kChannelChunk) <= s.h0_ld, "h0 row too short");
  CHECK(round_up(c1, kReductionChunk) <= s.h1_ld && round_up(c1, kChannelChunk) <= s.h1_ld, "h1 row too short");
}

int main() {
  // pixel and reduction coordinates round-trip
  for (int64_t OH : {1, 5, 12}) {
    for (int64_t OW : {1, 7, 26}) {
      for (int64_t q = 0; q < 3 * OH * OW; ++q) {
        const PixelCoord c = pixel_coord(q, OH, OW);
        CHECK((c.n * OH + c.oh) * OW + c.ow == q && c.oh < OH && c.ow < OW, "pixel %lld", (long long)q);
      }
    }
  }
  for (int64_t KH : {1, 3, 11}) {
    for (int64_t KW : {1, 2, 5}) {
      for (int64_t k = 0; k < 4 * KH * KW; ++k) {
        const ReductionCoord c = reduction_coord(k, KH, KW);
        CHECK((c.c * KH + c.r) * KW + c.s == k && c.r < KH && c.s < KW, "k %lld", (long long)k);
      }
    }
  }
  // passes of the spatial convolution: whole groups, then the rest; never more than b holds
  for (int group = 1; group <= kMaxChunkGroup; ++group) {
    for (int64_t c : {1, 63, 64, 65, 255, 256, 257, 384, 1000}) {
      int64_t covered = 0;
      while (covered < c) {
        const int chunks = chunks_per_pass(c - covered, group);
        CHECK(chunks >= 1 && chunks <= group && chunks <= chunks_per_pass(c, group), "C=%lld", (long long)c);
        covered += int64_t(chunks) * kChannelChunk;
      }
      CHECK(covered < c + kChannelChunk, "C=%lld passes cover %lld channels", (long long)c, (long long)covered);
    }
  }
  // a 64-bit pixel number (batch x huge image) decomposes without overflow
  const PixelCoord big = pixel_coord(int64_t(3) << 33, int64_t(1) << 16, int64_t(1) << 16);
  CHECK(big.n == 6 && big.oh == 0 && big.ow == 0, "64-bit pixel");

  for (int64_t images : {1, 2, 7}) {
    for (int64_t per_image : {1, 15, 16, 17, 25, 64, 65, 144}) {
      for (int64_t tile : {8, 16, 32, 64}) {
        check_tiling(images, per_image, false, tile);
        check_tiling(images, per_image, true, tile);
      }
    }
  }
  for (int64_t p : {8, 16, 32, 64}) {
    for (int64_t c : {1, 10, 63, 64, 65, 96, 384, 1000, 1024}) {
      for (int group = 1; group <= kMaxChunkGroup; ++group) {
        check_layout(p, c, 2 * c / 3 + 1, 4, 4, group);
        check_layout(p, c, c, 2, 4, group);
        check_layout(p, c, c, 8, 8, group);
      }
    }
  }

  // Plans: fit the limit, prefer big tiles, shrink for wide channels and for small grids.
  const int64_t h100 = 227 * 1024, a100 = 163 * 1024;
  for (int64_t limit : {h100, a100}) {
    for (int64_t c : {1, 96, 256, 384, 1024}) {
      const TilePlan tc = plan_nin_block_tile(c, c, 4, 4, kTensorCoreMinTilePixels, limit, 256, 144, false, 132);
      CHECK(tc.tile_pixels >= kTensorCoreMinTilePixels, "tf32 C=%lld does not fit", (long long)c);
      CHECK(tc.smem.bytes <= limit, "over the limit");
      const TilePlan half = plan_nin_block_tile(c, c, 2, 4, kTensorCoreMinTilePixels, limit, 256, 144, true, 132);
      CHECK(half.tile_pixels >= kTensorCoreMinTilePixels && half.smem.bytes <= limit, "fp16 C=%lld", (long long)c);
      const TilePlan f64 = plan_nin_block_tile(c, c, 8, 8, kSimtMinTilePixels, limit, 256, 144, false, 132);
      CHECK(f64.tile_pixels >= kSimtMinTilePixels && f64.smem.bytes <= limit, "fp64 C=%lld", (long long)c);
      CHECK(f64.smem.chunk_group <= max_chunk_group(8) && tc.smem.chunk_group <= max_chunk_group(4),
            "a pass holds at most the chunks its accumulators fit in registers: C=%lld", (long long)c);
    }
  }
  const TilePlan block1 = plan_nin_block_tile(96, 96, 4, 4, 16, h100, 256, 54 * 54, false, 132);
  CHECK(block1.tile_pixels == kMaxTilePixels, "block 1 at batch 256 takes the biggest tile, got %lld",
        (long long)block1.tile_pixels);
  const TilePlan wide = plan_nin_block_tile(1024, 1024, 4, 4, 16, h100, 256, 144, false, 132);
  CHECK(wide.tile_pixels == 16, "C=1024 fp32 needs 16-pixel tiles, got %lld", (long long)wide.tile_pixels);
  const TilePlan batch1 = plan_nin_block_tile(384, 384, 4, 4, 16, h100, 1, 144, false, 132);
  CHECK(batch1.tile_pixels == 16, "batch 1 shrinks the tile to feed the GPU, got %lld", (long long)batch1.tile_pixels);
  const TilePlan block2 = plan_nin_block_tile(256, 256, 4, 4, 16, h100, 256, 27 * 27, false, 132);
  CHECK(block2.tile_pixels == kMaxTilePixels && block2.smem.chunk_group == 4,
        "block 2 at batch 256 gathers once for its 256 channels, got %lld pixels, group %d",
        (long long)block2.tile_pixels, block2.smem.chunk_group);
  const TilePlan wide_a100 = plan_nin_block_tile(1024, 1024, 4, 4, 16, a100, 256, 144, false, 108);
  CHECK(wide_a100.tile_pixels == 16 && wide_a100.smem.chunk_group < kMaxChunkGroup,
        "C=1024 fp32 on an A100 fits with a smaller group, got %lld pixels, group %d",
        (long long)wide_a100.tile_pixels, wide_a100.smem.chunk_group);
  // packed weights: zero-padded to whole chunks of rows and K, every matrix a whole number of 16-byte rows
  for (int64_t rows : {1, 63, 64, 65, 384}) {
    for (int64_t K : {1, 9, 31, 32, 33, 2400}) {
      const PackedWeightShape w{rows, K};
      CHECK(w.padded_rows() % kChannelChunk == 0 && w.padded_rows() >= rows &&
                w.padded_rows() < rows + kChannelChunk && w.padded_K() % kReductionChunk == 0 &&
                w.padded_K() >= K && w.padded_K() < K + kReductionChunk,
            "packed %lld x %lld", (long long)rows, (long long)K);
      for (int64_t elem : {2, 4, 8}) {
        CHECK(w.padded_K() * elem % 16 == 0, "packed rows of %lld-byte elements", (long long)elem);
      }
    }
  }
  const PackedWeightShapes block1_weights = packed_weight_shapes(96, 121, 96, 10);
  CHECK(block1_weights.offset(0) == 0 && block1_weights.offset(1) == 128 * 128 &&
            block1_weights.offset(2) == 128 * 128 + 128 * 96 &&
            block1_weights.elems() == 128 * 128 + 128 * 96 + 64 * 96,
        "three packed matrices, one after another");
  const TilePlan none = plan_nin_block_tile(8192, 8192, 4, 4, 16, h100, 1, 1, false, 132);
  CHECK(none.tile_pixels == 0, "channels too wide must give no plan");

  std::printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
