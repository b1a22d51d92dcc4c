// Register-blocked micro-kernels for the fused block's three layers.
//
// One call computes an (MR x NR) block of a layer's output for one panel of NR pixels:
//   c[r * ldc + j] = relu(bias[r] + sum_k a[k * MR + r] * b[k * ldb + j])   for r < rows, j < NR
// `a` is an MR-row panel of the packed weights (k-major), `b` a pixel panel (k-major: ldb = NR when
// packed densely; the Winograd products read one point's rows out of a channel-major buffer), and
// bias + ReLU are applied while the block is still in registers. NaN passes the ReLU, as in torch.
// With bias == nullptr the kernel stores the plain product a b (no bias, no ReLU).
//
// The shifted kernel reads the pixels unpacked, from rows of an input at distance ldb, each index k
// through `shifts` offsets (a stride-1 convolution as a sum of shifted products, with no im2col),
// pixel j of the panel at lanes[j] in the rows:
//   c[r * ldc + j] = relu(bias[r] + sum_{k, s} a[(k * shifts + s) * MR + r] * b[k * ldb + offsets[s] + lanes[j]])
// and with `accumulate` adds c's values to the sum before the bias, so that a long reduction can run
// in chunks, each a short sum of its own. A panel's pixels are consecutive in the rows except where
// it crosses an output row's end (lanes jumps past the kernel's overhang): such a panel's vectors are
// read in pieces, whole-vector loads blended by mask (LanePieces, microkernel_register_blocked.h).
#pragma once

#include <cstdint>

#include "max_pool2d_checks.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define NIN_EXT_X86_64 1
#else
#define NIN_EXT_X86_64 0
#endif

namespace nin_ext {
namespace cpu {

// The cache line that the kernels' prefetches step by (64 bytes on x86-64).
constexpr int64_t kCacheLineBytes = 64;
constexpr int kCacheLineFloats = kCacheLineBytes / sizeof(float);

template <typename scalar_t>
using MicroKernelFn = void (*)(int64_t K, const scalar_t* a, const scalar_t* b, int64_t ldb, const scalar_t* bias,
                               scalar_t* c, int64_t ldc, int64_t rows);

// The product with the operands' roles swapped, for Winograd tiles of fewer blocks than NR (a batch's
// few blocks left most of a pixel panel's lanes empty): the tile's `rows` <= MR blocks are the
// broadcast operand, read at a stride, and an NR-channel weight panel (k-major, NR apart) fills the
// vector lanes; the block is stored transposed, where the plain kernel with the weights as rows would
// store it:
//   c[j * ldc + r] = sum_k a[k * lda + r] * b[k * NR + j]   for r < rows, j < NR
// Each value is the plain kernel's sum, in the same order (a product's operands commute), so the bits
// are the same. The kernel computes rows up to its row class and may read a's lanes up to there.
using SwappedProductFn = void (*)(int64_t K, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                                  int64_t rows);

template <typename scalar_t>
using ShiftedMicroKernelFn = void (*)(int64_t K, int64_t shifts, const int64_t* offsets, const scalar_t* a,
                                      const scalar_t* b, int64_t ldb, const int64_t* lanes, const scalar_t* bias,
                                      bool accumulate, scalar_t* c, int64_t ldc, int64_t rows);

// The Winograd input or output transform of F(m x m, r x r) for nr tiles side by side
// (winograd_transform_lanes.h), compiled for the same ISA as the micro-kernel.
using WinogradTransformFn = void (*)(int m, int r, const float* in, int64_t in_stride, float* out,
                                     int64_t out_stride);

// The Winograd input patches of a run of consecutive m x m blocks, from a band of alpha padded input
// rows (winograd_transform_lanes.h, winograd_gather_portable), compiled for the same ISA.
using WinogradGatherFn = void (*)(const float* band, int64_t band_width, int m, int alpha, int64_t bx,
                                  int64_t length, float* d, int64_t nr);

// A run of consecutive values, in[src, src + count), and where it goes, out[dst, dst + count): what a
// tile's gather or write copies.
struct CopyRun {
  int64_t src, count, dst;
};

// A piece of one output row of a run of consecutive m x m Winograd blocks, in raster order: the row's
// values t in [t0, t0 + count), value t being column t % m of the block t / m lanes after the run's
// first, y[src + (t % m) * nr + t / m] in the output transform's y (y[(dy m + dx) nr + lane]; src =
// dy m nr + the first block's lane). They go to out[dst, dst + count): one panel's consecutive pixels.
struct WinogradRowRun {
  int64_t src, t0, count, dst;
};

// out[run.dst + i] = relu(y[run.src + (t % m) nr + t / m] + shift), t = run.t0 + i, for every run
// (winograd_transform_lanes.h, winograd_scatter_portable), compiled for the same ISA.
using WinogradScatterFn = void (*)(const float* y, int m, int64_t nr, float shift, const WinogradRowRun* runs,
                                   int64_t run_count, float* out);

// out[run.dst + i] = in[run.src + i] for every run (copy_runs.h), compiled for the same ISA.
using CopyRunsFn = void (*)(const float* in, const CopyRun* runs, int64_t run_count, float* out);

// out[j] = in[index[j]] for j < count (copy_runs.h): a tile's gather where its runs are a few values
// long, compiled for the same ISA.
using GatherLanesFn = void (*)(const float* in, const int32_t* index, int64_t count, float* out);

// global_avg_pool's means of `planes` float planes of `pixels` values (global_avg_pool_cpu.cpp), with
// the ISA's own instructions.
using PlaneMeansFn = void (*)(const float* in, int64_t planes, int64_t pixels, float* out);

// An input row into channels-last order (copy_runs.h, channels_last_row_portable), compiled for the
// same ISA.
using ChannelsLastRowFn = void (*)(const float* src, int64_t channel_stride, int64_t column_stride, int64_t channels,
                                   int64_t width, float* dst, int64_t pixel_stride);

// The pixel-broadcast conv kernel (microkernel_broadcast_pixels.h) for the same ISA: PR pixels x G
// output channels per call.
using BroadcastPixelsFn = void (*)(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                   const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                   const float* bias, bool accumulate, float* c, int64_t ldc);
struct BroadcastPixelsKernel {
  BroadcastPixelsFn fn = nullptr;
  int64_t pixels = 0, channels = 0;  // PR and G
};

// nin_ext::max_pool2d's and max_pool2d_with_argmax's NCHW plane kernels (max_pool2d_plane.h) for the
// same ISA.
using MaxPool2dPlaneFn = void (*)(const float* in, float* out, const MaxPool2dGeometry& g, float* row);
using MaxPool2dArgmaxPlaneFn = void (*)(const float* in, float* out, int32_t* arg, const MaxPool2dGeometry& g);

// A 1x1 layer of K inputs into M channels on `panels` pixel panels of NR (the plain kernel's
// layout, in [panel][K][NR] -> out [panel][M][NR]), out = relu(W in + b), skipping the products of
// zero inputs (zero_skipping_layer_avx2.cpp): the same bits as the plain kernel. `weights` are
// [K][M] (row k: input k's weights into every channel), finite; M and K multiples of 8. Returns false,
// having written nothing to out, where fewer than min_zero_fraction of the inputs (of every fourth
// panel) are zero. Scratch: `sums` NR * M floats, `masks` NR * ceil(K / 64) words.
using ZeroSkippingLayerFn = bool (*)(const float* weights, const float* bias, int64_t M, int64_t K, const float* in,
                                     float* out, int64_t panels, double min_zero_fraction, float* sums,
                                     uint64_t* masks);

template <typename scalar_t>
struct MicroKernel {
  int64_t mr, nr;
  MicroKernelFn<scalar_t> fn;
  ShiftedMicroKernelFn<scalar_t> shifted_fn;
  const char* isa;
  WinogradTransformFn winograd_input_transform = nullptr;  // float kernels only
  WinogradTransformFn winograd_output_transform = nullptr;
  MaxPool2dPlaneFn max_pool2d_plane = nullptr;       // float kernels only
  MaxPool2dArgmaxPlaneFn max_pool2d_argmax_plane = nullptr;
  WinogradGatherFn winograd_gather = nullptr;  // float kernels only
  WinogradScatterFn winograd_scatter = nullptr;
  CopyRunsFn copy_runs = nullptr;  // float kernels only
  GatherLanesFn gather_lanes = nullptr;
  ChannelsLastRowFn channels_last_row = nullptr;
  // float kernels only: G of two vectors, and of one (for convs into a vector's channels or fewer)
  BroadcastPixelsKernel broadcast_pixels{}, broadcast_pixels_narrow{};
  SwappedProductFn swapped_fn = nullptr;  // float kernels only
  // float kernels only: A dY AT of the output gradient (conv2d_weight_grad_cpu.cpp)
  WinogradTransformFn winograd_output_gradient_transform = nullptr;
  // float kernels of NR 32 only: the wide 1x1 layers run on AMX tiles (packed_layer_amx.h)
  bool amx_layers = false;
  PlaneMeansFn plane_means = nullptr;  // AVX-512 and AVX2 (plane_means_lanes.h); portable: the plain sums
  ZeroSkippingLayerFn zero_skipping_layer = nullptr;  // AVX2 only (NR 16)
};

// Plain C++: the compiler vectorises it for whatever the build targets. Serves float64 and CPUs
// without AVX2. `for_each_k(step)` calls step(a_k, b_k) per reduction index, as in
// microkernel_register_blocked.h.
template <typename scalar_t, int MR, int NR, typename ForEachK>
void portable_product(const ForEachK& for_each_k, const scalar_t* bias, scalar_t* c, int64_t ldc, int64_t rows,
                      bool accumulate = false) {
  scalar_t acc[MR][NR] = {};
  for_each_k([&](const scalar_t* a_k, const scalar_t* b_k) {
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < NR; ++j) {
        acc[r][j] += a_k[r] * b_k[j];
      }
    }
  });
  for (int64_t r = 0; accumulate && r < rows; ++r) {
    for (int j = 0; j < NR; ++j) {
      acc[r][j] = c[r * ldc + j] + acc[r][j];
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int j = 0; j < NR; ++j) {
      if (bias == nullptr) {
        c[r * ldc + j] = acc[r][j];
        continue;
      }
      const scalar_t v = acc[r][j] + bias[r];
      c[r * ldc + j] = v < scalar_t(0) ? scalar_t(0) : v;
    }
  }
}

template <typename scalar_t, int MR, int NR>
void microkernel_portable(int64_t K, const scalar_t* a, const scalar_t* b, int64_t ldb, const scalar_t* bias,
                          scalar_t* c, int64_t ldc, int64_t rows) {
  portable_product<scalar_t, MR, NR>(
      [&](const auto& step) {
        for (int64_t k = 0; k < K; ++k) {
          step(a + k * MR, b + k * ldb);
        }
      },
      bias, c, ldc, rows);
}

// A block of NR columns computed row-major, stored transposed: c[j * ldc + r] for r < rows.
template <int NR>
inline void store_transposed(const float* block, float* c, int64_t ldc, int64_t rows) {
  for (int j = 0; j < NR; ++j) {
    for (int64_t r = 0; r < rows; ++r) {
      c[j * ldc + r] = block[r * NR + j];
    }
  }
}

template <int MR, int NR>
void swapped_product_portable(int64_t K, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                              int64_t rows) {
  float block[MR * NR];
  portable_product<float, MR, NR>(
      [&](const auto& step) {
        for (int64_t k = 0; k < K; ++k) {
          step(a + k * lda, b + k * NR);
        }
      },
      nullptr, block, NR, MR);
  store_transposed<NR>(block, c, ldc, rows);
}

// Whether a panel's n lanes are consecutive positions of the rows (the shifted kernels then read
// them in place).
inline bool lanes_consecutive(const int64_t* lanes, int n) {
  for (int j = 1; j < n; ++j) {
    if (lanes[j] != lanes[0] + j) {
      return false;
    }
  }
  return true;
}

template <typename scalar_t, int MR, int NR>
void shifted_microkernel_portable(int64_t K, int64_t shifts, const int64_t* offsets, const scalar_t* a,
                                  const scalar_t* b, int64_t ldb, const int64_t* lanes, const scalar_t* bias,
                                  bool accumulate, scalar_t* c, int64_t ldc, int64_t rows) {
  const bool consecutive = lanes_consecutive(lanes, NR);
  portable_product<scalar_t, MR, NR>(
      [&](const auto& step) {
        scalar_t pixels[NR];
        for (int64_t k = 0; k < K; ++k) {
          for (int64_t s = 0; s < shifts; ++s) {
            const scalar_t* row = b + k * ldb + offsets[s];
            if (consecutive) {
              step(a + (k * shifts + s) * MR, row + lanes[0]);
              continue;
            }
            for (int j = 0; j < NR; ++j) {
              pixels[j] = row[lanes[j]];
            }
            step(a + (k * shifts + s) * MR, pixels);
          }
        }
      },
      bias, c, ldc, rows, accumulate);
}

#if NIN_EXT_X86_64
// AVX-512 and AVX2 + FMA kernels for float (microkernel_avx512.cpp, microkernel_avx2.cpp).
void microkernel_avx512_12x32(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias, float* c,
                              int64_t ldc, int64_t rows);
void swapped_product_avx512_12x32(int64_t K, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                                  int64_t rows);
void swapped_product_avx2_6x16(int64_t K, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                               int64_t rows);
void microkernel_avx2_6x16(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias, float* c,
                           int64_t ldc, int64_t rows);
void shifted_microkernel_avx512_12x32(int64_t K, int64_t shifts, const int64_t* offsets, const float* a,
                                      const float* b, int64_t ldb, const int64_t* lanes, const float* bias,
                                      bool accumulate, float* c, int64_t ldc, int64_t rows);
void shifted_microkernel_avx2_6x16(int64_t K, int64_t shifts, const int64_t* offsets, const float* a, const float* b,
                                   int64_t ldb, const int64_t* lanes, const float* bias, bool accumulate, float* c,
                                   int64_t ldc, int64_t rows);
void winograd_input_transform_avx512_32(int m, int r, const float* in, int64_t in_stride, float* out,
                                        int64_t out_stride);
void winograd_output_gradient_transform_avx512_32(int m, int r, const float* in, int64_t in_stride, float* out,
                                                  int64_t out_stride);
void winograd_output_transform_avx512_32(int m, int r, const float* in, int64_t in_stride, float* out,
                                         int64_t out_stride);
void winograd_gather_avx512(const float* band, int64_t band_width, int m, int alpha, int64_t bx, int64_t length,
                            float* d, int64_t nr);
void winograd_gather_avx2(const float* band, int64_t band_width, int m, int alpha, int64_t bx, int64_t length,
                          float* d, int64_t nr);
void winograd_scatter_avx512(const float* y, int m, int64_t nr, float shift, const WinogradRowRun* runs,
                             int64_t run_count, float* out);
void winograd_scatter_avx2(const float* y, int m, int64_t nr, float shift, const WinogradRowRun* runs,
                           int64_t run_count, float* out);
void copy_runs_avx512(const float* in, const CopyRun* runs, int64_t run_count, float* out);
void copy_runs_avx2(const float* in, const CopyRun* runs, int64_t run_count, float* out);
void gather_lanes_avx512(const float* in, const int32_t* index, int64_t count, float* out);
void broadcast_pixels_avx512_12x32(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                   const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                   const float* bias, bool accumulate, float* c, int64_t ldc);
void broadcast_pixels_avx512_12x16(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                   const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                   const float* bias, bool accumulate, float* c, int64_t ldc);
void broadcast_pixels_avx2_6x8(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                const float* bias, bool accumulate, float* c, int64_t ldc);
void broadcast_pixels_avx2_6x16(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                const float* bias, bool accumulate, float* c, int64_t ldc);
void channels_last_row_avx512(const float* src, int64_t channel_stride, int64_t column_stride, int64_t channels,
                              int64_t width, float* dst, int64_t pixel_stride);
void gather_lanes_avx2(const float* in, const int32_t* index, int64_t count, float* out);
void plane_means_avx512(const float* in, int64_t planes, int64_t pixels, float* out);
void plane_means_avx2(const float* in, int64_t planes, int64_t pixels, float* out);
bool zero_skipping_layer_avx2(const float* weights, const float* bias, int64_t M, int64_t K, const float* in,
                              float* out, int64_t panels, double min_zero_fraction, float* sums, uint64_t* masks);
void winograd_input_transform_avx2_16(int m, int r, const float* in, int64_t in_stride, float* out,
                                      int64_t out_stride);
void winograd_output_gradient_transform_avx2_16(int m, int r, const float* in, int64_t in_stride, float* out,
                                                int64_t out_stride);
void winograd_output_transform_avx2_16(int m, int r, const float* in, int64_t in_stride, float* out,
                                       int64_t out_stride);
void max_pool2d_plane_avx512(const float* in, float* out, const MaxPool2dGeometry& g, float* row);
void max_pool2d_argmax_plane_avx512(const float* in, float* out, int32_t* arg, const MaxPool2dGeometry& g);
void max_pool2d_plane_avx2(const float* in, float* out, const MaxPool2dGeometry& g, float* row);
void max_pool2d_argmax_plane_avx2(const float* in, float* out, int32_t* arg, const MaxPool2dGeometry& g);
#endif

// The best kernel this CPU runs (microkernel_select.cpp). NIN_EXT_CPU_ISA=avx512|avx2|portable
// forces one, for tests and comparisons.
MicroKernel<float> float_microkernel();

template <typename scalar_t>
MicroKernel<scalar_t> microkernel_for();

template <>
inline MicroKernel<float> microkernel_for<float>() {
  return float_microkernel();
}

template <>
inline MicroKernel<double> microkernel_for<double>() {
  return {4, 8, &microkernel_portable<double, 4, 8>, &shifted_microkernel_portable<double, 4, 8>, "portable"};
}

}  // namespace cpu
}  // namespace nin_ext
