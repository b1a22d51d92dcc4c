// The NCHW plane kernels of nin_ext::max_pool2d and max_pool2d_with_argmax, shared by the portable
// build and the per-ISA translation units (like the micro-kernel body). A plane is pooled a row of
// windows at a time; windows that lie inside the row go through the `Steps` policy (vectorised per
// ISA), the few clipped by the padding are pooled one by one. The max: first the element-wise max
// of the window's input rows, then the max along that row for each window; NaN wins every
// comparison, as in torch. The argmax: the window's values in row-major order, the first maximum
// and the last NaN win, as in ATen's CPU kernel.
#pragma once

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <utility>

#include "cpu/microkernel.h"
#include "max_pool2d_checks.h"

namespace nin_ext {
namespace cpu {

template <typename scalar_t>
inline scalar_t nan_max(scalar_t m, scalar_t v) {
  return (v > m || v != v) ? v : m;
}

// The maximum of window (oh, ow) and its index ih * W + iw; element (ih, iw) of the plane sits at
// (ih * W + iw) * pixel_stride of `in`.
template <typename scalar_t>
inline std::pair<scalar_t, int32_t> window_argmax(const scalar_t* in, const MaxPool2dGeometry& g,
                                                  int64_t pixel_stride, int64_t oh, int64_t ow) {
  const int64_t ih0 = oh * g.SH - g.PH, iw0 = ow * g.SW - g.PW;
  const int64_t ih_begin = std::max<int64_t>(ih0, 0), ih_end = std::min(ih0 + g.KH, g.H);
  const int64_t iw_begin = std::max<int64_t>(iw0, 0), iw_end = std::min(iw0 + g.KW, g.W);
  int64_t best = ih_begin * g.W + iw_begin;
  scalar_t best_value = in[best * pixel_stride];
  for (int64_t ih = ih_begin; ih < ih_end; ++ih) {
    for (int64_t iw = iw_begin; iw < iw_end; ++iw) {
      const scalar_t value = in[(ih * g.W + iw) * pixel_stride];
      if (value > best_value || value != value) {
        best_value = value;
        best = ih * g.W + iw;
      }
    }
  }
  return {best_value, static_cast<int32_t>(best)};
}

// Windows [inner_begin, inner_end) of a row lie inside it (no padding read).
inline std::pair<int64_t, int64_t> inner_windows(const MaxPool2dGeometry& g) {
  const int64_t inner_begin = std::min(g.OW, (g.PW + g.SW - 1) / g.SW);
  const int64_t last_start = g.W + g.PW - g.KW;  // windows starting at ow * SW <= this end inside the row
  const int64_t inner_end = last_start < 0 ? inner_begin : std::max(inner_begin, std::min(g.OW, last_start / g.SW + 1));
  return {inner_begin, inner_end};
}

// The NiN pools' shape, which the vector ISAs' plane kernels run without a row buffer: 3x3
// windows at stride 2, no padding, every window inside the plane.
inline bool is_inner_3x3_stride2(const MaxPool2dGeometry& g) {
  return g.KH == 3 && g.KW == 3 && g.SH == 2 && g.SW == 2 && g.PH == 0 && g.PW == 0 && 2 * g.OH + 1 <= g.H &&
         2 * g.OW + 1 <= g.W;
}

// That shape's plane kernel, V::lanes outputs at a time: the three rows' max of input columns
// [2 ow, 2 ow + 3 lanes) stays in three registers, and the windows' three columns are permuted out of
// them (V::even: columns 0, 2, ... of two registers; V::odd: 1, 3, ...; V::even_next: 2, 4, ... of
// three). max_pool2d_plane stores the rows' max and reloads it at offsets 0, 1 and 2, loads that wait
// for those stores: 2-3x slower on the NiN pools (benchmarks/NOTES.md, v15). The same comparisons in
// the same order (rows, then columns), so the results are the same to the bit. V (per ISA): reg,
// lanes, load, load_first(p, n) (lanes past n zero), zero, nan_max, even, odd, even_next,
// store_first(p, n, v).
template <typename V>
void max_pool2d_3x3_stride2_plane(const float* in, float* out, const MaxPool2dGeometry& g) {
  constexpr int64_t L = V::lanes;
  const int64_t columns = 2 * g.OW + 1;  // the input columns the windows read
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const float* r0 = in + 2 * oh * g.W;
    const float* r1 = r0 + g.W;
    const float* r2 = r1 + g.W;
    // The three rows' max of columns [c, c + L), zero past `columns`. Plain loads where whole:
    // masked ones for every vector ran a pool whose input streams from memory 2.3x slower.
    auto rows_max = [&](int64_t c) {
      if (c + L <= columns) {
        return V::nan_max(V::nan_max(V::load(r0 + c), V::load(r1 + c)), V::load(r2 + c));
      }
      const int64_t n = columns - c;
      return V::nan_max(V::nan_max(V::load_first(r0 + c, n), V::load_first(r1 + c, n)), V::load_first(r2 + c, n));
    };
    typename V::reg v0 = rows_max(0);
    for (int64_t ow = 0; ow < g.OW; ow += L) {
      const int64_t c = 2 * ow;
      const typename V::reg v1 = c + L < columns ? rows_max(c + L) : V::zero();
      const typename V::reg v2 = c + 2 * L < columns ? rows_max(c + 2 * L) : V::zero();
      V::store_first(out + oh * g.OW + ow, g.OW - ow,
                     V::nan_max(V::nan_max(V::even(v0, v1), V::odd(v0, v1)), V::even_next(v0, v1, v2)));
      v0 = v2;
    }
  }
}

// The plane kernels' steps on a vector ISA, V::lanes outputs at a time. Stride-2 windows (the NiN
// pools' stride) read their starts as even lanes; other strides run `Fallback`. V (per ISA): the
// primitives of max_pool2d_3x3_stride2_plane, plus store(p, v), even_lanes(p, left) (p[0], p[2],
// ..., reading no further than p[left - 1], zero past it), and for the argmax an index vector and
// lane masks: index, mask, even_indices(start) (start, start + 2, ...), greater_or_nan(v, best),
// select(take, v, best), select_index(take, i, best), store_index_first(p, n, i).
template <typename V, typename Fallback>
struct VectorPoolSteps {
  using reg = typename V::reg;

  // One pass: each vector of the window's rows is loaded once and the max stored once. Full
  // vectors by plain loads: masked loads for every vector (a first version) ran a 36 MB pool, whose
  // input streams from memory, 2.3x slower, as if the hardware prefetcher skipped them.
  static void max_of_rows(const float* first, int64_t row_stride, int64_t rows, float* out, int64_t n) {
    auto max_at = [&](int64_t i, auto load) {
      reg m = load(first + i);
      for (int64_t r = 1; r < rows; ++r) {
        m = V::nan_max(m, load(first + r * row_stride + i));
      }
      return m;
    };
    int64_t i = 0;
    for (; i + V::lanes <= n; i += V::lanes) {
      V::store(out + i, max_at(i, [&](const float* p) { return V::load(p); }));
    }
    if (i < n) {
      const int64_t left = n - i;
      V::store_first(out + i, left, max_at(i, [left](const float* p) { return V::load_first(p, left); }));
    }
  }

  static void windows(const float* first, float* out, int64_t count, int64_t sw, int64_t kw) {
    if (sw != 2) {
      Fallback::windows(first, out, count, sw, kw);
      return;
    }
    // Window i reads first[2i .. 2i + kw); the last one ends at first[2 count + kw - 3].
    const int64_t available = 2 * count + kw - 2;
    for (int64_t i = 0; i < count; i += V::lanes) {
      reg m = V::even_lanes(first + 2 * i, available - 2 * i);
      for (int64_t kx = 1; kx < kw; ++kx) {
        m = V::nan_max(m, V::even_lanes(first + 2 * i + kx, available - 2 * i - kx));
      }
      V::store_first(out + i, count - i, m);
    }
  }

  static void windows_argmax(const float* in, int64_t w, int64_t ih_begin, int64_t ih_end, int64_t first_col,
                             int64_t count, int64_t sw, int64_t kw, float* out, int32_t* arg) {
    if (sw != 2) {
      Fallback::windows_argmax(in, w, ih_begin, ih_end, first_col, count, sw, kw, out, arg);
      return;
    }
    const int64_t row_end = first_col + 2 * count + kw - 2;  // one past the last column any window reads
    for (int64_t i = 0; i < count; i += V::lanes) {
      // Row-major order: the first candidate, then any greater value or NaN. The first is taken
      // before the loop: a first-candidate test in the loop took the AVX-512 mask through a general
      // register, 35% slower.
      const int64_t first = first_col + 2 * i;
      reg best = V::even_lanes(in + ih_begin * w + first, row_end - first);
      typename V::index best_index = V::even_indices(static_cast<int32_t>(ih_begin * w + first));
      for (int64_t ih = ih_begin; ih < ih_end; ++ih) {
        for (int64_t kx = ih == ih_begin ? 1 : 0; kx < kw; ++kx) {
          const int64_t start = first + kx;
          const reg v = V::even_lanes(in + ih * w + start, row_end - start);
          const typename V::mask take = V::greater_or_nan(v, best);
          best = V::select(take, v, best);
          best_index = V::select_index(take, V::even_indices(static_cast<int32_t>(ih * w + start)), best_index);
        }
      }
      V::store_first(out + i, count - i, best);
      V::store_index_first(arg + i, count - i, best_index);
    }
  }
};

// The steps in plain C++ (the compiler vectorises the contiguous one). `Isa` only tells the
// instantiations apart: a translation unit compiled for another ISA (max_pool2d_avx512.cpp's
// fallbacks) passes a type of its own, so that a copy it emits can never stand in for the baseline
// build's at link time (same name, other instructions: SIGILL on a CPU without that ISA).
template <typename Isa>
struct CompilerVectorisedPoolSteps {
  // out[i] = max over r < rows of first[r * row_stride + i] (rows >= 1), for i < n.
  template <typename scalar_t>
  static void max_of_rows(const scalar_t* first, int64_t row_stride, int64_t rows, scalar_t* out, int64_t n) {
    std::copy(first, first + n, out);
    for (int64_t r = 1; r < rows; ++r) {
      for (int64_t i = 0; i < n; ++i) {
        out[i] = nan_max(out[i], first[r * row_stride + i]);
      }
    }
  }

  // out[i] = max over kx < kw of first[i * sw + kx], for i < count.
  template <typename scalar_t>
  static void windows(const scalar_t* first, scalar_t* out, int64_t count, int64_t sw, int64_t kw) {
    for (int64_t i = 0; i < count; ++i) {
      out[i] = first[i * sw];
    }
    for (int64_t kx = 1; kx < kw; ++kx) {
      for (int64_t i = 0; i < count; ++i) {
        out[i] = nan_max(out[i], first[i * sw + kx]);
      }
    }
  }

  // For windows i < count reading columns first_col + i * sw + [0, kw) (inside the row) of rows
  // [ih_begin, ih_end) of a plane of width w: out[i] = the max, arg[i] = its index ih * w + iw.
  template <typename scalar_t>
  static void windows_argmax(const scalar_t* in, int64_t w, int64_t ih_begin, int64_t ih_end, int64_t first_col,
                             int64_t count, int64_t sw, int64_t kw, scalar_t* out, int32_t* arg) {
    for (int64_t i = 0; i < count; ++i) {
      int64_t best = ih_begin * w + first_col + i * sw;
      scalar_t best_value = in[best];
      for (int64_t ih = ih_begin; ih < ih_end; ++ih) {
        for (int64_t kx = 0; kx < kw; ++kx) {
          const int64_t at = ih * w + first_col + i * sw + kx;
          if (in[at] > best_value || in[at] != in[at]) {
            best_value = in[at];
            best = at;
          }
        }
      }
      out[i] = best_value;
      arg[i] = static_cast<int32_t>(best);
    }
  }
};

struct BaselineIsa;
using PortablePoolSteps = CompilerVectorisedPoolSteps<BaselineIsa>;

// The max of each window along one row of W values into OW outputs.
template <typename scalar_t, typename Steps>
void pool_row(const scalar_t* row, scalar_t* dst, const MaxPool2dGeometry& g) {
  const auto [inner_begin, inner_end] = inner_windows(g);
  auto pool_clipped = [&](int64_t ow) {
    const int64_t iw0 = ow * g.SW - g.PW;
    const int64_t iw_begin = std::max<int64_t>(iw0, 0), iw_end = std::min(iw0 + g.KW, g.W);
    scalar_t m = row[iw_begin];
    for (int64_t iw = iw_begin + 1; iw < iw_end; ++iw) {
      m = nan_max(m, row[iw]);
    }
    dst[ow] = m;
  };
  for (int64_t ow = 0; ow < inner_begin; ++ow) {
    pool_clipped(ow);
  }
  Steps::windows(row + inner_begin * g.SW - g.PW, dst + inner_begin, inner_end - inner_begin, g.SW, g.KW);
  for (int64_t ow = inner_end; ow < g.OW; ++ow) {
    pool_clipped(ow);
  }
}

// One (H, W) plane into one (OH, OW) plane; `row` holds W values.
template <typename scalar_t, typename Steps>
void max_pool2d_plane(const scalar_t* in, scalar_t* out, const MaxPool2dGeometry& g, scalar_t* row) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t ih0 = oh * g.SH - g.PH;
    const int64_t ih_begin = std::max<int64_t>(ih0, 0), ih_end = std::min(ih0 + g.KH, g.H);
    Steps::max_of_rows(in + ih_begin * g.W, g.W, ih_end - ih_begin, row, g.W);
    pool_row<scalar_t, Steps>(row, out + oh * g.OW, g);
  }
}

// One (H, W) plane into one (OH, OW) plane of maxima and one of their indices.
template <typename scalar_t, typename Steps>
void max_pool2d_argmax_plane(const scalar_t* in, scalar_t* out, int32_t* arg, const MaxPool2dGeometry& g) {
  const auto [inner_begin, inner_end] = inner_windows(g);
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    for (int64_t ow = 0; ow < inner_begin; ++ow) {
      std::tie(out[oh * g.OW + ow], arg[oh * g.OW + ow]) = window_argmax(in, g, 1, oh, ow);
    }
    for (int64_t ow = inner_end; ow < g.OW; ++ow) {
      std::tie(out[oh * g.OW + ow], arg[oh * g.OW + ow]) = window_argmax(in, g, 1, oh, ow);
    }
    const int64_t ih0 = oh * g.SH - g.PH;
    Steps::windows_argmax(in, g.W, std::max<int64_t>(ih0, 0), std::min(ih0 + g.KH, g.H),
                          inner_begin * g.SW - g.PW, inner_end - inner_begin, g.SW, g.KW,
                          out + oh * g.OW + inner_begin, arg + oh * g.OW + inner_begin);
  }
}

// The plane kernel to run: for float, the one compiled for this CPU's ISA (MicroKernel).
template <typename scalar_t>
inline auto max_pool2d_plane_kernel() {
  return &max_pool2d_plane<scalar_t, PortablePoolSteps>;
}

template <>
inline auto max_pool2d_plane_kernel<float>() {
  return float_microkernel().max_pool2d_plane;
}

template <typename scalar_t>
inline auto max_pool2d_argmax_plane_kernel() {
  return &max_pool2d_argmax_plane<scalar_t, PortablePoolSteps>;
}

template <>
inline auto max_pool2d_argmax_plane_kernel<float>() {
  return float_microkernel().max_pool2d_argmax_plane;
}

}  // namespace cpu
}  // namespace nin_ext
