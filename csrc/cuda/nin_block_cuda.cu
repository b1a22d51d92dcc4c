// nin_ext::nin_block and nin_ext::nin_block_gap on CUDA: one kernel template for both.
//
// A CTA owns a tile of output pixels and runs the whole block on it: the spatial convolution as an
// implicit GEMM (im2col chunks gathered into shared memory), bias + ReLU, then both 1x1 layers from
// the activations it keeps in shared memory (h0, h1), and an epilogue that stores the block output
// or, for nin_block_gap, sums it per channel over the tile. Every layer is computed in chunks of
// kChannelChunk output channels and kReductionChunk reduction elements, so any channel count works;
// only the tile's pixel count shrinks (host plan, nin_block_tile_plan.h) when h0 and h1 are wide. Each
// layer accumulates a group of channel chunks from each staged chunk of its A, so that the im2col
// gather runs once per group rather than once per chunk. The launch first writes the weights in the
// form the kernel stages (pack_weights_kernel: padded, rounded), so that staging them is a copy.
//
// The inner product of a chunk is a policy: WmmaMath (tensor cores through WMMA: TF32, fp16, bf16
// with fp32 accumulation; sm_80+) or SimtMath (FFMA: exact fp32, and fp64).
// The per-tile sums of nin_block_gap are reduced per image by gap_mean_kernel in tile order, so the
// result does not depend on scheduling.
#include <cuda_runtime.h>
#include <mma.h>

#include "cuda/elem_convert.cuh"
#include "cuda/nin_block_launch.h"

namespace nin_ext {
namespace cuda {
namespace {

constexpr int kWarps = kThreads / 32;
constexpr int kColumnWarps = kChannelChunk / 16;  // warps side by side across a chunk's channels
constexpr int kRowWarps = kWarps / kColumnWarps;  // warps stacked over the tile's pixels
static_assert(kWarps % kColumnWarps == 0, "WmmaMath: each warp owns 16 output channels of a chunk");
static_assert(kThreads % kChannelChunk == 0, "SimtMath gives each thread one channel of a chunk");
static_assert(kThreads % kReductionChunk == 0, "the im2col stage gives each thread one column of a chunk");
constexpr int kStageRowStep = kThreads / kReductionChunk;  // pixels apart that one thread gathers

// FFMA: thread t computes channel t % kChannelChunk of the chunk for pixels t / kChannelChunk + i * kRowGroups.
// The product is an outer product per k: a thread loads its rows' a values and its channels' b values
// once per k and does kRowsPerThread x G FMAs with them, reading both in 16-byte vectors. The 32
// lanes of a warp share their rows (a: broadcasts) and read b rows kLd elements apart (b_ld = 36
// floats or 34 doubles: each group of 8 lanes covers all 32 banks once). Each accumulator still sums
// over k in ascending order, so the result is the same as a dot product per (pixel, channel).
template <typename T>
struct SimtMath {
  using Elem = T;
  using Acc = typename AccumulateOf<T>::type;
  static constexpr int kRowGroups = kThreads / kChannelChunk;
  static constexpr int kRowsPerThread = kMaxTilePixels / kRowGroups;
  static constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte shared-memory load
  static_assert(kReductionChunk % kVec == 0, "the reduction chunk is a whole number of vectors");
  struct __align__(16) Vec {
    T v[kVec];
  };
  struct Fragment {
    Acc v[kRowsPerThread];
  };

  __device__ static void zero(Fragment& f) {
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) f.v[i] = Acc(0);
  }

  __device__ static T to_input(T v) { return v; }

  // f[g] += a[0:P, 0:kReductionChunk] @ b[g * kChannelChunk + (0:kChannelChunk), 0:kReductionChunk]^T
  // for each of the G fragments; a and b are 16-byte aligned, and so are their row strides.
  template <int G>
  __device__ static void mma(Fragment (&f)[G], const T* a, int64_t a_ld, const T* b, int64_t b_ld, int P) {
    const int col = threadIdx.x % kChannelChunk;
    const int row0 = threadIdx.x / kChannelChunk;
#pragma unroll 2  // (fully unrolled, the loop held more loads in flight and was 69% FFMA, against 78%)
    for (int k = 0; k < kReductionChunk; k += kVec) {
      Vec a_vec[kRowsPerThread];
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) {
        const int p = row0 + i * kRowGroups;
        if (p < P) a_vec[i] = *reinterpret_cast<const Vec*>(a + p * a_ld + k);
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const Vec b_vec = *reinterpret_cast<const Vec*>(b + (g * kChannelChunk + col) * b_ld + k);
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          if (row0 + i * kRowGroups < P) {
            Acc s = f[g].v[i];
#pragma unroll
            for (int e = 0; e < kVec; ++e) s = fma(to_acc(a_vec[i].v[e]), to_acc(b_vec.v[e]), s);
            f[g].v[i] = s;
          }
        }
      }
    }
  }

  __device__ static void store(const Fragment& f, Acc* c, int64_t c_ld, int P) {
    const int col = threadIdx.x % kChannelChunk;
    const int row0 = threadIdx.x / kChannelChunk;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int p = row0 + i * kRowGroups;
      if (p < P) c[p * c_ld + col] = f.v[i];
    }
  }
};

// Fragment loads from shared memory. nvcc emits the WMMA API's TF32 and bf16 loads as generic-space
// loads (64-bit address arithmetic per load; the fp16 ones come out as .shared), so those two are
// issued here as the same PTX instruction with the .shared state space: the fragment layout is the
// instruction's, unchanged. Each fragment is 4 registers.
#define NIN_WMMA_LOAD_SHARED(name, instruction)                                                          \
  template <typename Frag, typename T>                                                                  \
  __device__ __forceinline__ void name(Frag& frag, const T* p, unsigned ld) {                           \
    static_assert(sizeof(frag.x) == 16, "a 4-register fragment");                                       \
    unsigned* r = reinterpret_cast<unsigned*>(frag.x);                                                  \
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(p));                        \
    asm volatile(instruction " {%0, %1, %2, %3}, [%4], %5;"                                              \
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                                       \
                 : "r"(address), "r"(ld)                                                                \
                 : "memory");                                                                           \
  }
NIN_WMMA_LOAD_SHARED(load_tf32_a, "wmma.load.a.sync.aligned.row.m16n16k8.shared.tf32")
NIN_WMMA_LOAD_SHARED(load_tf32_b, "wmma.load.b.sync.aligned.col.m16n16k8.shared.tf32")
NIN_WMMA_LOAD_SHARED(load_bf16_a, "wmma.load.a.sync.aligned.row.m16n16k16.shared.bf16")
NIN_WMMA_LOAD_SHARED(load_bf16_b, "wmma.load.b.sync.aligned.col.m16n16k16.shared.bf16")
#undef NIN_WMMA_LOAD_SHARED

// Per input type: the WMMA element type, the K of a fragment, the tensor cores' value of an element
// (TF32 rounds fp32 to nearest; done once when a value is staged into shared memory rather than in
// every fragment load of every warp), and the fragment loads from shared memory.
template <typename T>
struct WmmaInput;
template <>
struct WmmaInput<float> {
  using type = nvcuda::wmma::precision::tf32;
  static constexpr int k = 8;
  __device__ static float to_input(float v) { return nvcuda::wmma::__float_to_tf32(v); }
  template <typename Frag>
  __device__ static void load_a(Frag& f, const float* p, unsigned ld) { load_tf32_a(f, p, ld); }
  template <typename Frag>
  __device__ static void load_b(Frag& f, const float* p, unsigned ld) { load_tf32_b(f, p, ld); }
};
template <>
struct WmmaInput<__half> {
  using type = __half;
  static constexpr int k = 16;
  __device__ static __half to_input(__half v) { return v; }
  template <typename Frag>
  __device__ static void load_a(Frag& f, const __half* p, unsigned ld) { nvcuda::wmma::load_matrix_sync(f, p, ld); }
  template <typename Frag>
  __device__ static void load_b(Frag& f, const __half* p, unsigned ld) { nvcuda::wmma::load_matrix_sync(f, p, ld); }
};
template <>
struct WmmaInput<__nv_bfloat16> {
  using type = __nv_bfloat16;
  static constexpr int k = 16;
  __device__ static __nv_bfloat16 to_input(__nv_bfloat16 v) { return v; }
  template <typename Frag>
  __device__ static void load_a(Frag& f, const __nv_bfloat16* p, unsigned ld) { load_bf16_a(f, p, ld); }
  template <typename Frag>
  __device__ static void load_b(Frag& f, const __nv_bfloat16* p, unsigned ld) { load_bf16_b(f, p, ld); }
};

// Tensor cores: warp w computes channels [16 c, 16 c + 16) of the chunk, c = w % kColumnWarps, for
// the tile's 16-pixel row fragments r, r + kRowWarps, ... with r = w / kColumnWarps (one fragment per
// warp at the largest tile).
template <typename T>
struct WmmaMath {
  using Elem = T;
  using Acc = float;
  using In = typename WmmaInput<T>::type;
  static constexpr int kK = WmmaInput<T>::k;
  static constexpr int kRowFragments = (kMaxTilePixels / 16 + kRowWarps - 1) / kRowWarps;  // per warp
  static_assert(kReductionChunk % kK == 0, "the reduction chunk is a whole number of WMMA steps");

  __device__ static int column_of_warp() { return static_cast<int>(threadIdx.x / 32) % kColumnWarps; }
  // the tile row (in 16-pixel fragments) of the warp's fragment f
  __device__ static int row_of_fragment(int f) {
    return static_cast<int>(threadIdx.x / 32) / kColumnWarps + f * kRowWarps;
  }
  struct Fragment {
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, kK, float> v[kRowFragments];
  };

  __device__ static void zero(Fragment& f) {
#pragma unroll
    for (int i = 0; i < kRowFragments; ++i) nvcuda::wmma::fill_fragment(f.v[i], 0.0f);
  }

  // Every value staged into a, b, h0 and h1 passes through this, so fragments load ready inputs.
  __device__ static T to_input(T v) { return WmmaInput<T>::to_input(v); }

  // As SimtMath::mma: the warp's fragments of the G channel chunks; each A fragment is loaded once
  // for all of them.
  template <int G>
  __device__ static void mma(Fragment (&f)[G], const T* a, int64_t a_ld, const T* b, int64_t b_ld, int P) {
    using namespace nvcuda;
    const int column = column_of_warp();
    if (row_of_fragment(0) * 16 >= P) return;  // a small tile leaves this warp without rows
#pragma unroll
    for (int kk = 0; kk < kReductionChunk; kk += kK) {
#pragma unroll
      for (int i = 0; i < kRowFragments; ++i) {
        const int row = row_of_fragment(i);
        if (row * 16 < P) {
          wmma::fragment<wmma::matrix_a, 16, 16, kK, In, wmma::row_major> a_frag;
          WmmaInput<T>::load_a(a_frag, a + row * 16 * a_ld + kk, static_cast<unsigned>(a_ld));
#pragma unroll
          for (int g = 0; g < G; ++g) {
            wmma::fragment<wmma::matrix_b, 16, 16, kK, In, wmma::col_major> b_frag;
            WmmaInput<T>::load_b(b_frag, b + (g * kChannelChunk + column * 16) * b_ld + kk,
                                 static_cast<unsigned>(b_ld));
            wmma::mma_sync(f[g].v[i], a_frag, b_frag, f[g].v[i]);
          }
        }
      }
    }
  }

  __device__ static void store(const Fragment& f, float* c, int64_t c_ld, int P) {
    const int column = column_of_warp();
#pragma unroll
    for (int i = 0; i < kRowFragments; ++i) {
      const int row = row_of_fragment(i);
      if (row * 16 < P) {
        nvcuda::wmma::store_matrix_sync(c + row * 16 * c_ld + column * 16, f.v[i], static_cast<unsigned>(c_ld),
                                        nvcuda::wmma::mem_row_major);
      }
    }
  }
};

// The packed weights (PackedWeightShape) of one layer, as the kernel reads them.
template <typename T>
struct PackedWeight {
  const T* data;  // [padded rows][padded_K]
  int64_t padded_K;
};

// One weight matrix to pack, and where to.
struct PackJob {
  const void* weight;  // [rows][K], contiguous
  void* packed;
  PackedWeightShape shape;
};
struct PackJobs {
  PackJob job[3];
};

// Writes the packed form of one weight matrix per blockIdx.y (w, w1, w2): zeros past its rows and K,
// values through Math::to_input.
template <typename Math>
__global__ void pack_weights_kernel(const PackJobs jobs) {
  using T = typename Math::Elem;
  const PackJob& job = jobs.job[blockIdx.y];
  const T* weight = static_cast<const T*>(job.weight);
  T* packed = static_cast<T*>(job.packed);
  const int64_t padded_K = job.shape.padded_K();
  const int64_t elems = job.shape.elems();
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < elems; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / padded_K;
    const int64_t k = e - r * padded_K;
    packed[e] = r < job.shape.rows && k < job.shape.K ? Math::to_input(weight[r * job.shape.K + k]) : from_acc<T>(0);
  }
}

// A [kRows][kReductionChunk] chunk of a layer's packed weights ([out channel][k]), staged through
// registers in 16-byte pieces: load() issues the global loads of the next chunk before the current
// chunk's products, store() puts them into shared memory after them, so that their latency overlaps
// the tensor-core work. The packing's zeros and rounding leave a plain copy to do.
template <typename T, int kRows>
struct WeightStage {
  using Piece = uint4;
  static constexpr int kPieceElems = sizeof(Piece) / sizeof(T);
  static constexpr int kPiecesPerRow = kReductionChunk / kPieceElems;
  static constexpr int kRowStep = kThreads / kPiecesPerRow;  // rows apart that one thread stages
  static constexpr int kPerThread = (kRows + kRowStep - 1) / kRowStep;
  static constexpr int64_t kLd = padded_row(kReductionChunk, sizeof(T));  // b's row stride
  static_assert(kReductionChunk % kPieceElems == 0 && kThreads % kPiecesPerRow == 0, "whole pieces per thread");
  static_assert(kLd % kPieceElems == 0, "b's rows are 16-byte aligned");
  Piece v[kPerThread];

  __device__ static int first_row() { return static_cast<int>(threadIdx.x) / kPiecesPerRow; }
  // whether this thread's piece j is a row of the chunk (always, when the rows are a multiple of kRowStep)
  __device__ static bool has_row(int j) { return kRows % kRowStep == 0 || first_row() + j * kRowStep < kRows; }
  __device__ void load(const PackedWeight<T>& w, int64_t n0, int64_t k0) {
    const Piece* piece = reinterpret_cast<const Piece*>(w.data + (n0 + first_row()) * w.padded_K + k0) +
                         threadIdx.x % kPiecesPerRow;
    const int64_t row_step = kRowStep * w.padded_K / kPieceElems;  // in pieces
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if (has_row(j)) v[j] = piece[j * row_step];
    }
  }
  __device__ void store(T* b_tile) const {
    Piece* piece = reinterpret_cast<Piece*>(b_tile + first_row() * kLd) + threadIdx.x % kPiecesPerRow;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if (has_row(j)) piece[j * kRowStep * kLd / kPieceElems] = v[j];
    }
  }
};

// One pass of a layer over the tile: output channels [n0, n0 + kChunks * kChannelChunk),
// acc = A[0:P, 0:K] @ weight[those channels, 0:K]^T, then epilogue(n0 + g * kChannelChunk) for each
// chunk g with its accumulators in c. The chunk count is a compile-time constant so that the products
// run without a branch per chunk. a_stage provides A's columns [k0, k0 + kReductionChunk): load(k0)
// and store() stage them (as WeightStage does, or nothing when A is already in shared memory),
// tile(k0) and ld() read them; A and the packed weights are zero beyond K.
template <int kChunks, typename Math, typename AStage, typename Epilogue>
__device__ void layer_pass(const PackedWeight<typename Math::Elem>& weight, int64_t K, int64_t n0, int P,
                           typename Math::Elem* b_tile, typename Math::Acc* c_tile, int64_t c_ld, AStage& a_stage,
                           Epilogue& epilogue) {
  using T = typename Math::Elem;
  using Stage = WeightStage<T, kChunks * kChannelChunk>;
  const int64_t steps = ceil_div(K, kReductionChunk);
  typename Math::Fragment acc[kChunks];
#pragma unroll
  for (int g = 0; g < kChunks; ++g) Math::zero(acc[g]);
  Stage b_stage;
  if (steps > 0) {
    __syncthreads();  // the previous pass's readers of a and b are done
    b_stage.load(weight, n0, 0);
    a_stage.load(0);
    b_stage.store(b_tile);
    a_stage.store();
    __syncthreads();
  }
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t k0 = step * kReductionChunk;
    const bool more = step + 1 < steps;
    if (more) {  // the next chunk's global loads, in flight during the products
      b_stage.load(weight, n0, k0 + kReductionChunk);
      a_stage.load(k0 + kReductionChunk);
    }
    Math::mma(acc, a_stage.tile(k0), a_stage.ld(), b_tile, Stage::kLd, P);
    if (more) {
      __syncthreads();  // the products' readers of a and b are done
      b_stage.store(b_tile);
      a_stage.store();
      __syncthreads();
    }
  }
#pragma unroll
  for (int g = 0; g < kChunks; ++g) {
    __syncthreads();  // the products' and the previous epilogue's readers of c are done
    Math::store(acc[g], c_tile, c_ld, P);
    __syncthreads();
    epilogue(n0 + int64_t(g) * kChannelChunk);
  }
}

// One layer of the block for the tile, in passes of `group` (at most max_chunk_group) channel chunks
// (fewer in the last): each pass computes its chunks from each staged chunk of A, and b holds them.
template <typename Math, typename AStage, typename Epilogue>
__device__ void tile_layer(const PackedWeight<typename Math::Elem>& weight, int64_t K, int64_t out_channels,
                           int group, int P, typename Math::Elem* b_tile, typename Math::Acc* c_tile, int64_t c_ld,
                           AStage& a_stage, Epilogue epilogue) {
  constexpr int kGroup = max_chunk_group(sizeof(typename Math::Acc));
  static_assert(kGroup <= 4, "a case per chunk count below");
  const int per_pass = group < kGroup ? group : kGroup;
  for (int64_t n0 = 0; n0 < out_channels; n0 += int64_t(per_pass) * kChannelChunk) {
    // the same in every thread: the barriers in the pass are uniform
    const int chunks = chunks_per_pass(out_channels - n0, per_pass);
    if (chunks == 1) {
      layer_pass<1, Math>(weight, K, n0, P, b_tile, c_tile, c_ld, a_stage, epilogue);
    } else if (chunks == 2) {
      layer_pass<2, Math>(weight, K, n0, P, b_tile, c_tile, c_ld, a_stage, epilogue);
    } else if constexpr (kGroup >= 3) {
      if (chunks == 3) {
        layer_pass<3, Math>(weight, K, n0, P, b_tile, c_tile, c_ld, a_stage, epilogue);
      } else {
        layer_pass<4, Math>(weight, K, n0, P, b_tile, c_tile, c_ld, a_stage, epilogue);
      }
    }
  }
}

template <typename Acc>
__device__ __forceinline__ Acc relu(Acc v) {
  return v > Acc(0) ? v : Acc(0);
}

template <typename T>
__device__ __forceinline__ typename AccumulateOf<T>::type bias_at(const T* bias, int64_t c) {
  return bias != nullptr ? to_acc(bias[c]) : typename AccumulateOf<T>::type(0);
}

// Epilogue of the first two layers: relu(acc + bias) into h. Channels past out_channels (up to the
// chunk's end) become zeros, which the next layer's reduction reads.
template <typename Math>
struct ReluToSmem {
  using T = typename Math::Elem;
  using Acc = typename Math::Acc;
  T* h;
  int64_t h_ld;
  const T* bias;
  int64_t out_channels;
  const Acc* c_tile;
  int64_t c_ld;
  int P;

  __device__ void operator()(int64_t n0) const {
    for (int e = threadIdx.x; e < P * kChannelChunk; e += kThreads) {
      const int i = e / kChannelChunk;
      const int n = e % kChannelChunk;
      const int64_t c = n0 + n;
      const Acc v = c < out_channels ? relu(c_tile[i * c_ld + n] + bias_at(bias, c)) : Acc(0);
      h[i * h_ld + c] = Math::to_input(from_acc<T>(v));
    }
  }
};

// A of the spatial convolution: the im2col chunk, gathered from x through registers (as
// WeightStage). Each thread stages one column kk of the chunk, for every (kThreads /
// kReductionChunk)-th pixel, so it decodes its kernel tap once per chunk rather than once per element.
template <typename Math>
struct Im2colStage {
  using T = typename Math::Elem;
  static constexpr int kPerThread = (kMaxTilePixels + kStageRowStep - 1) / kStageRowStep;
  const T* x;
  const int64_t* x_corner;  // per pixel: offset of its window's top-left corner (may be padding)
  const int32_t* ih0;
  const int32_t* iw0;
  T* a_tile;
  int64_t a_ld;
  int32_t K;  // C0 * KH * KW
  int32_t KH, KW;
  int64_t sc, sh, sw;
  int32_t H, W;
  int count, P;
  T v[kPerThread];

  __device__ void load(int64_t k0) {
    const int32_t k = static_cast<int32_t>(k0) + static_cast<int32_t>(threadIdx.x % kReductionChunk);
    const bool k_valid = k < K;
    const ReductionCoord rc = reduction_coord(k_valid ? k : 0, KH, KW);
    const int64_t tap_offset = rc.c * sc + rc.r * sh + rc.s * sw;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = threadIdx.x / kReductionChunk + j * kStageRowStep;
      T value = from_acc<T>(0);
      if (k_valid && i < count) {
        // unsigned compares: a row or column above or left of the image wraps to a large value
        const uint32_t ih = static_cast<uint32_t>(ih0[i] + rc.r);
        const uint32_t iw = static_cast<uint32_t>(iw0[i] + rc.s);
        if (ih < static_cast<uint32_t>(H) && iw < static_cast<uint32_t>(W)) value = x[x_corner[i] + tap_offset];
      }
      v[j] = value;
    }
  }
  __device__ void store() const {
    const int kk = threadIdx.x % kReductionChunk;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = threadIdx.x / kReductionChunk + j * kStageRowStep;
      if (i < P) a_tile[i * a_ld + kk] = Math::to_input(v[j]);
    }
  }
  __device__ const T* tile(int64_t) const { return a_tile; }
  __device__ int64_t ld() const { return a_ld; }
};

// A of a 1x1 layer: the previous layer's activations, already in shared memory.
template <typename T>
struct SmemRows {
  const T* h;
  int64_t h_ld;
  __device__ void load(int64_t) {}
  __device__ void store() const {}
  __device__ const T* tile(int64_t k0) const { return h + k0; }
  __device__ int64_t ld() const { return h_ld; }
};

template <typename Math>
__global__ void __launch_bounds__(kThreads, 1) nin_block_kernel(const NinBlockLaunch p) {
  using T = typename Math::Elem;
  using Acc = typename Math::Acc;
  extern __shared__ __align__(128) unsigned char smem[];
  T* h0 = reinterpret_cast<T*>(smem + p.smem.h0_offset);
  T* h1 = reinterpret_cast<T*>(smem + p.smem.h1_offset);
  T* a_tile = reinterpret_cast<T*>(smem + p.smem.a_offset);
  T* b_tile = reinterpret_cast<T*>(smem + p.smem.b_offset);
  Acc* c_tile = reinterpret_cast<Acc*>(smem + p.smem.c_offset);
  const int P = static_cast<int>(p.tiling.tile_pixels);
  int64_t* x_corner = reinterpret_cast<int64_t*>(smem + p.smem.pixels_offset);
  int64_t* out_offset = x_corner + P;
  int32_t* ih0 = reinterpret_cast<int32_t*>(out_offset + P);
  int32_t* iw0 = ih0 + P;

  const T* x = static_cast<const T*>(p.x);
  const T* b = static_cast<const T*>(p.b);
  const T* b1 = static_cast<const T*>(p.b1);
  const T* b2 = static_cast<const T*>(p.b2);
  const int64_t conv_K = p.C0 * p.KH * p.KW;
  const PackedWeightShapes shapes = p.packed_shapes();
  const T* packed = static_cast<const T*>(p.packed_weights);
  const PackedWeight<T> w{packed, shapes.layer[0].padded_K()};  // (the three one after another: offset())
  const PackedWeight<T> w1{w.data + shapes.layer[0].elems(), shapes.layer[1].padded_K()};
  const PackedWeight<T> w2{w1.data + shapes.layer[1].elems(), shapes.layer[2].padded_K()};

  const int64_t tile = blockIdx.x;
  const int64_t first = p.tiling.first_pixel(tile);
  const int count = static_cast<int>(p.tiling.pixel_count(tile));
  for (int i = threadIdx.x; i < P; i += kThreads) {
    if (i < count) {
      const PixelCoord q = pixel_coord(first + i, p.OH, p.OW);
      ih0[i] = static_cast<int32_t>(q.oh * p.SH - p.PH);
      iw0[i] = static_cast<int32_t>(q.ow * p.SW - p.PW);
      x_corner[i] = q.n * p.x_stride[0] + int64_t(ih0[i]) * p.x_stride[2] + int64_t(iw0[i]) * p.x_stride[3];
      out_offset[i] = q.n * p.out_stride[0] + q.oh * p.out_stride[2] + q.ow * p.out_stride[3];
    } else {
      x_corner[i] = ih0[i] = iw0[i] = out_offset[i] = 0;
    }
  }
  // (tile_layer's first __syncthreads publishes the pixel table)

  // (the host checks that K, H and W plus padding fit in int32)
  // a and c strides as constants, as b's (WeightStage::kLd); the host's layout has the same values
  constexpr int64_t a_ld = padded_row(kReductionChunk, sizeof(T));
  constexpr int64_t c_ld = padded_row(kChannelChunk, sizeof(Acc));
  Im2colStage<Math> gather{x, x_corner, ih0, iw0, a_tile, a_ld,
                        static_cast<int32_t>(conv_K), static_cast<int32_t>(p.KH),
                        static_cast<int32_t>(p.KW), p.x_stride[1], p.x_stride[2], p.x_stride[3],
                        static_cast<int32_t>(p.H), static_cast<int32_t>(p.W), count, P};
  SmemRows<T> from_h0{h0, p.smem.h0_ld};
  SmemRows<T> from_h1{h1, p.smem.h1_ld};
  using ToSmem = ReluToSmem<Math>;
  const int group = p.smem.chunk_group;
  tile_layer<Math>(w, conv_K, p.CC, group, P, b_tile, c_tile, c_ld, gather,
                   ToSmem{h0, p.smem.h0_ld, b, p.CC, c_tile, c_ld, P});
  tile_layer<Math>(w1, p.CC, p.C1, group, P, b_tile, c_tile, c_ld, from_h0,
                   ToSmem{h1, p.smem.h1_ld, b1, p.C1, c_tile, c_ld, P});
  if (p.gap) {
    Acc* partial = static_cast<Acc*>(p.gap_partial) + tile * p.C2;
    tile_layer<Math>(w2, p.C1, p.C2, group, P, b_tile, c_tile, c_ld, from_h1, [&](int64_t n0) {
      for (int n = threadIdx.x; n < kChannelChunk; n += kThreads) {
        const int64_t c = n0 + n;
        if (c < p.C2) {
          const Acc bias = bias_at(b2, c);
          Acc sum = Acc(0);
          for (int i = 0; i < count; ++i) sum += relu(c_tile[i * c_ld + n] + bias);
          partial[c] = sum;
        }
      }
    });
  } else {
    T* out = static_cast<T*>(p.out);
    // Consecutive threads take consecutive channels when they are adjacent in memory (channels_last),
    // else consecutive pixels.
    const bool channels_fastest = p.out_stride[1] == 1;
    tile_layer<Math>(w2, p.C1, p.C2, group, P, b_tile, c_tile, c_ld, from_h1, [&](int64_t n0) {
      for (int e = threadIdx.x; e < P * kChannelChunk; e += kThreads) {
        const int i = channels_fastest ? e / kChannelChunk : e % P;
        const int n = channels_fastest ? e % kChannelChunk : e / P;
        const int64_t c = n0 + n;
        if (i < count && c < p.C2) {
          out[out_offset[i] + c * p.out_stride[1]] = from_acc<T>(relu(c_tile[i * c_ld + n] + bias_at(b2, c)));
        }
      }
    });
  }
}

// out[n, c] = (sum over the image's tiles, in tile order, of partial[tile, c]) / pixels.
template <typename T>
__global__ void gap_mean_kernel(const typename AccumulateOf<T>::type* partial, T* out, int64_t N, int64_t C,
                                int64_t tiles_per_image, int64_t pixels) {
  using Acc = typename AccumulateOf<T>::type;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= N * C) return;
  const int64_t n = index / C;
  const int64_t c = index - n * C;
  Acc sum = Acc(0);
  for (int64_t t = 0; t < tiles_per_image; ++t) sum += partial[(n * tiles_per_image + t) * C + c];
  out[index] = from_acc<T>(sum / static_cast<Acc>(pixels));
}

template <typename Math>
cudaError_t launch_with(const NinBlockLaunch& p, cudaStream_t stream) {
  using T = typename Math::Elem;
  PackJobs pack{};
  const PackedWeightShapes shapes = p.packed_shapes();
  const void* weights[3] = {p.w, p.w1, p.w2};
  int64_t largest = 0;
  for (int i = 0; i < 3; ++i) {
    pack.job[i] = PackJob{weights[i], static_cast<T*>(p.packed_weights) + shapes.offset(i), shapes.layer[i]};
    largest = shapes.layer[i].elems() > largest ? shapes.layer[i].elems() : largest;
  }
  constexpr int kPackThreads = 256;
  constexpr int64_t kPackMaxBlocks = 1024;  // the kernel strides over larger matrices
  const int64_t pack_blocks = ceil_div(largest, kPackThreads);
  if (pack_blocks > 0) {  // (no weights at all with zero channels: an empty grid is a launch error)
    pack_weights_kernel<Math>
        <<<dim3(static_cast<unsigned>(pack_blocks < kPackMaxBlocks ? pack_blocks : kPackMaxBlocks), 3), kPackThreads,
           0, stream>>>(pack);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  cudaError_t err = cudaFuncSetAttribute(nin_block_kernel<Math>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(p.smem.bytes));
  if (err != cudaSuccess) return err;
  nin_block_kernel<Math><<<static_cast<unsigned>(p.tiling.tiles()), kThreads, p.smem.bytes, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess || !p.gap) return err;
  constexpr int kMeanThreads = 256;
  const int64_t outputs = p.N * p.C2;
  gap_mean_kernel<T><<<static_cast<unsigned>(ceil_div(outputs, kMeanThreads)), kMeanThreads, 0, stream>>>(
      static_cast<const typename AccumulateOf<T>::type*>(p.gap_partial), static_cast<T*>(p.out), p.N, p.C2,
      p.tiling.tiles_per_segment, p.OH * p.OW);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_nin_block(const NinBlockLaunch& p, cudaStream_t stream) {
  switch (p.dtype) {
    case ElemType::f32:
      return p.tf32 ? launch_with<WmmaMath<float>>(p, stream) : launch_with<SimtMath<float>>(p, stream);
    case ElemType::f64:
      return launch_with<SimtMath<double>>(p, stream);
    case ElemType::f16:
      return launch_with<WmmaMath<__half>>(p, stream);
    case ElemType::bf16:
      return launch_with<WmmaMath<__nv_bfloat16>>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace nin_ext
