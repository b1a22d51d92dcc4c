// nin_ext::conv2d_weight_grad on the CPU: the gradient of a conv2d with respect to its weight, which
// the training step's backward needs for every block. A stride-1 conv's runs by Winograd
// F(m x m, r x r) tiles (3x3 and 5x5 kernels) where they pay; a conv of few input channels (block 1)
// as one im2col product (conv2d_weight_grad_im2col_cpu.cpp). The forward computes each m x m output
// block as Y = AT (U (.) V) A, with U = G g G^T and V = BT d B; so dU = sum over the blocks of
// (A dY AT) (.) V, one product per transform point with the blocks as the reduction, and
// dW = G^T dU G. The sum over many blocks is coherent, so the transforms' rounding weighs less than
// in the input gradient (benchmarks/NOTES.md v29, v30). ATen's convolution_backward runs the other
// calls.
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "cpu/conv2d_weight_grad_cpu.h"
#include "cpu/microkernel.h"
#include "cpu/tensor_cache_cpu.h"
#include "cpu/thread_scratch_cpu.h"

namespace nin_ext {
namespace cpu {
namespace {

// Blocks whose transforms are held at once: each point's product reduces over them, and the sums of
// the chunks are added up in order (so that the result does not depend on the thread count). 128
// blocks of the seed's block 2 hold 11.5 MB of transforms; all 784 of batch 16 would take 70 MB,
// more than a training step's peak memory leaves to spare against eager's.
constexpr int64_t kBlocksPerChunk = 128;

// The input channels that the last transform, G^T dU G, takes at once.
constexpr int64_t kLanes = 16;

void check_conv2d_weight_grad_args(const at::Tensor& grad_out, const at::Tensor& x, c10::IntArrayRef kernel_size,
                                   c10::IntArrayRef stride, c10::IntArrayRef padding) {
  constexpr const char* op = "conv2d_weight_grad";
  TORCH_CHECK(grad_out.dim() == 4, op, ": expected grad_out to be a 4-d (N, C_out, H_out, W_out) tensor, got ",
              grad_out.dim(), " dimensions");
  TORCH_CHECK(x.dim() == 4, op, ": expected x to be a 4-d (N, C_in, H, W) tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected x to have a floating-point dtype, got ",
              x.scalar_type());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out has dtype ", grad_out.scalar_type(),
              " but x has dtype ", x.scalar_type(), "; they must match");
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(), " but x is on ",
              x.device());
  TORCH_CHECK(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0, op,
              ": expected kernel_size to be two positive ints, got ", kernel_size);
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op,
              ": expected stride to be two positive ints, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
              ": expected padding to be two non-negative ints, got ", padding);
  TORCH_CHECK(grad_out.size(0) == x.size(0), op, ": grad_out has a batch of ", grad_out.size(0), " but x of ",
              x.size(0));
  const int64_t oh = x.size(2) + 2 * padding[0] - kernel_size[0], ow = x.size(3) + 2 * padding[1] - kernel_size[1];
  TORCH_CHECK(oh >= 0 && ow >= 0 && oh / stride[0] + 1 == grad_out.size(2) && ow / stride[1] + 1 == grad_out.size(3),
              op, ": grad_out's spatial size ", grad_out.sizes().slice(2), " is not the conv output of x's ",
              x.sizes().slice(2), " with kernel_size ", kernel_size, ", stride ", stride, " and padding ", padding);
}

at::Tensor aten_conv2d_weight_grad(const at::Tensor& grad_out, const at::Tensor& x, c10::IntArrayRef kernel_size,
                                   c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const at::Tensor weight = empty_cached({grad_out.size(1), x.size(1), kernel_size[0], kernel_size[1]}, x.options());
  // contiguous, as the tiles' result (ATen's follows x's memory format)
  return std::get<1>(at::convolution_backward(grad_out, x, weight, c10::nullopt, stride, padding, {1, 1}, false,
                                              {0, 0}, 1, {false, true, false}))
      .contiguous();
}

// dst[(i size + j) nr + lane] = image[((row0 + i) width + col0 + j) channels + c0 + lane] for i, j <
// size and lane < nr: a size x size block of a channels-last image's pixels, nr of their channels,
// zero outside the image and past its channels.
void copy_pixel_block(const float* image, int64_t height, int64_t width, int64_t channels, int64_t row0,
                      int64_t col0, int size, int64_t c0, int64_t nr, float* dst) {
  const int64_t lanes = std::min(nr, channels - c0);
  for (int i = 0; i < size; ++i) {
    for (int j = 0; j < size; ++j, dst += nr) {
      const int64_t row = row0 + i, col = col0 + j;
      if (row < 0 || row >= height || col < 0 || col >= width) {
        std::fill(dst, dst + nr, 0.f);
        continue;
      }
      std::memcpy(dst, image + (row * width + col) * channels + c0, lanes * sizeof(float));
      std::fill(dst + lanes, dst + nr, 0.f);
    }
  }
}

}  // namespace

at::Tensor conv2d_weight_grad_cpu(const at::Tensor& grad_out, const at::Tensor& x, c10::IntArrayRef kernel_size,
                                  c10::IntArrayRef stride, c10::IntArrayRef padding) {
  check_conv2d_weight_grad_args(grad_out, x, kernel_size, stride, padding);
  const int64_t r = kernel_size[0];
  const int64_t N = x.size(0), CI = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t CO = grad_out.size(1), OH = grad_out.size(2), OW = grad_out.size(3);
  const bool is_float = x.scalar_type() == at::kFloat;
  const bool stride_1 = stride[0] == 1 && stride[1] == 1;
  const int m = is_float && stride_1 ? conv2d_weight_grad_tile_size(N, CI, CO, OH, OW, kernel_size[0], kernel_size[1])
                                     : 0;
  if (m == 0) {
    if (is_float && conv2d_weight_grad_by_im2col(N, CI, CO, OH, OW, kernel_size[0], kernel_size[1])) {
      return conv2d_weight_grad_im2col(grad_out, x, kernel_size, stride, padding);
    }
    return aten_conv2d_weight_grad(grad_out, x, kernel_size, stride, padding);
  }
  const MicroKernel<float> kernel = swapped_product_kernel();
  const int64_t nr = kernel.nr, mr = kernel.mr;
  const WinogradMatrices& t = winograd_matrices(m, static_cast<int>(r));
  const int alpha = t.alpha, points = alpha * alpha;
  const int64_t ph = padding[0], pw = padding[1];
  const int64_t bh = (OH + m - 1) / m, bw = (OW + m - 1) / m, blocks = N * bh * bw;
  const int64_t ci_groups = (CI + nr - 1) / nr, co_groups = (CO + nr - 1) / nr;
  const int64_t ldv = ci_groups * nr;                                   // V's row stride
  const int64_t ldu = (ldv + kLanes - 1) / kLanes * kLanes;             // dU's row stride
  // Channels last, so that a pixel's channels are the transforms' lanes.
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor dyc = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  const float* xd = xc.const_data_ptr<float>();
  const float* dyd = dyc.const_data_ptr<float>();
  // Per chunk of blocks, each written by its transform in place: V, v[(xi chunk + block) ldv + ci], the
  // swapped product's broadcast rows (read at stride ldv), and A dY AT in nr-channel panels,
  // mg[((xi co_groups + g) chunk + block) nr + lane], its vector lanes. dU, the chunks' sums:
  // du[(xi C_out + co) ldu + ci]. Tensors, so that torch's allocator counts them (17.8 MB for the
  // seed's block 2) in a training step's memory.
  const int64_t chunk = std::min(kBlocksPerChunk, blocks);
  const int64_t v_point = chunk * ldv, mg_point = co_groups * chunk * nr;  // a point's floats in each
  const at::TensorOptions options = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor v_tensor = empty_cached({points * v_point}, options), mg_tensor = empty_cached({points * mg_point}, options);
  at::Tensor du_tensor = empty_cached({points * CO * ldu}, options).zero_();
  float* const v = v_tensor.data_ptr<float>();
  float* const mg = mg_tensor.data_ptr<float>();
  float* const du = du_tensor.data_ptr<float>();
  for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
    const int64_t count = std::min(chunk, blocks - b0);
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      ScratchBuffer<float> patch(points * nr);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t block = b0 + i, n = block / (bh * bw), by = block / bw % bh, bx = block % bw;
        for (int64_t c0 = 0; c0 < CI; c0 += nr) {  // V = BT d B of nr input channels
          copy_pixel_block(xd + n * H * W * CI, H, W, CI, by * m - ph, bx * m - pw, alpha, c0, nr, patch.data());
          kernel.winograd_input_transform(m, static_cast<int>(r), patch.data(), nr, v + i * ldv + c0, v_point);
        }
        for (int64_t g = 0; g < co_groups; ++g) {  // A dY AT of nr output channels
          copy_pixel_block(dyd + n * OH * OW * CO, OH, OW, CO, by * m, bx * m, m, g * nr, nr, patch.data());
          kernel.winograd_output_gradient_transform(m, static_cast<int>(r), patch.data(), nr,
                                                    mg + (g * chunk + i) * nr, mg_point);
        }
      }
    });
    // dU[xi] += (A dY AT)[xi] V[xi]^T over the chunk's blocks, per (point, nr output channels): the
    // swapped product, MR input channels of V as its rows, stores dU's block transposed, (co, ci).
    at::parallel_for(0, points * co_groups, 1, [&](int64_t begin, int64_t end) {
      ScratchBuffer<float> product(nr * kSwappedProductStride);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t xi = job / co_groups, g = job % co_groups, channels = std::min(nr, CO - g * nr);
        const float* b = mg + xi * mg_point + g * chunk * nr;
        for (int64_t ci0 = 0; ci0 < CI; ci0 += mr) {
          const int64_t rows_here = std::min(mr, CI - ci0);
          kernel.swapped_fn(count, v + xi * v_point + ci0, ldv, b, product.data(), kSwappedProductStride,
                            rows_here);
          add_swapped_product(product.data(), channels, rows_here, du + (xi * CO + g * nr) * ldu + ci0, ldu);
        }
      }
    });
  }
  // dW = G^T dU G per channel pair, in double, kLanes input channels at a time (dU's rows hold them
  // side by side, so the loops over them vectorize; its rows are whole kLanes groups long).
  at::Tensor grad_weight = empty_cached({CO, CI, r, r}, x.options().memory_format(at::MemoryFormat::Contiguous));
  float* out = grad_weight.data_ptr<float>();
  at::parallel_for(0, CO, 1, [&](int64_t begin, int64_t end) {
    double gu[kWinogradMaxTaps][kWinogradMaxAlpha][kLanes], s[kLanes];  // G^T dU
    for (int64_t co = begin; co < end; ++co) {
      for (int64_t c0 = 0; c0 < CI; c0 += kLanes) {
        const int64_t lanes = std::min(kLanes, CI - c0);
        const float* u = du + co * ldu + c0;  // dU[xi] of these channels: u[xi * CO * ldu + lane]
        for (int i = 0; i < r; ++i) {
          for (int b = 0; b < alpha; ++b) {
            std::fill(s, s + kLanes, 0.0);
            for (int a = 0; a < alpha; ++a) {
              const double c = t.G[a][i];
              const float* row = u + (a * alpha + b) * CO * ldu;
              for (int64_t lane = 0; lane < kLanes; ++lane) {
                s[lane] += c * row[lane];
              }
            }
            std::copy(s, s + kLanes, gu[i][b]);
          }
        }
        for (int i = 0; i < r; ++i) {
          for (int j = 0; j < r; ++j) {
            std::fill(s, s + kLanes, 0.0);
            for (int b = 0; b < alpha; ++b) {
              const double c = t.G[b][j];
              for (int64_t lane = 0; lane < kLanes; ++lane) {
                s[lane] += gu[i][b][lane] * c;
              }
            }
            for (int64_t lane = 0; lane < lanes; ++lane) {
              out[((co * CI + c0 + lane) * r + i) * r + j] = static_cast<float>(s[lane]);
            }
          }
        }
      }
    }
  });
  return grad_weight;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("conv2d_weight_grad", &nin_ext::cpu::conv2d_weight_grad_cpu);
}
