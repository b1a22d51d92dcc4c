// nin_ext::global_avg_pool on the CPU: (N, C, H, W) -> (N, C), the mean over H and W.
// Sums are accumulated in the accumulate type (double for float) in a fixed order.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/microkernel.h"
#include "cpu/tensor_cache_cpu.h"
#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

namespace {

// The sum of `count` values in 8 interleaved partial sums, added up in a fixed order: the same bits
// on every run, and independent lanes the compiler vectorises (one running sum is bound by the add
// latency: 8x slower on the seed's 12x12 maps).
template <typename acc_t, typename scalar_t>
acc_t sum_in_lanes(const scalar_t* values, int64_t count) {
  constexpr int kLanes = 8;
  acc_t partial[kLanes] = {};
  int64_t p = 0;
  for (; p + kLanes <= count; p += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      partial[lane] += static_cast<acc_t>(values[p + lane]);
    }
  }
  for (; p < count; ++p) {
    partial[0] += static_cast<acc_t>(values[p]);
  }
  acc_t total = 0;
  for (int lane = 0; lane < kLanes; ++lane) {
    total += partial[lane];
  }
  return total;
}

// out[i] = the mean of plane i (`pixels` values from in + i * pixels) for i < planes, by sum_in_lanes.
template <typename scalar_t>
void plane_means_of(const scalar_t* in, int64_t planes, int64_t pixels, scalar_t* out) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
  const acc_t inv_pixels = acc_t(1) / static_cast<acc_t>(pixels);
  for (int64_t plane = 0; plane < planes; ++plane) {
    out[plane] = static_cast<scalar_t>(sum_in_lanes<acc_t>(in + plane * pixels, pixels) * inv_pixels);
  }
}

// float planes: the same sums by the CPU's vectors (AVX-512 or AVX2, plane_means_lanes.h) where it has them.
void plane_means_of(const float* in, int64_t planes, int64_t pixels, float* out) {
  if (const PlaneMeansFn plane_means = float_microkernel().plane_means) {
    plane_means(in, planes, pixels, out);
    return;
  }
  plane_means_of<float>(in, planes, pixels, out);
}

}  // namespace

at::Tensor global_avg_pool_cpu(const at::Tensor& x) {
  check_global_avg_pool_args(x, "global_avg_pool");
  const int64_t N = x.size(0), C = x.size(1), pixels = x.size(2) * x.size(3);
  at::Tensor out = empty_cached({N, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) {
    return out;
  }
  const bool channels_last = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const at::Tensor input = x.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "global_avg_pool_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const acc_t inv_pixels = acc_t(1) / static_cast<acc_t>(pixels);
    if (channels_last) {
      // Pixels are rows of C values: accumulate whole rows, one image per task.
      at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> sums(C);
        for (int64_t n = begin; n < end; ++n) {
          std::fill(sums.begin(), sums.end(), acc_t(0));
          const scalar_t* image = in + n * pixels * C;
          for (int64_t p = 0; p < pixels; ++p) {
            for (int64_t c = 0; c < C; ++c) {
              sums[c] += static_cast<acc_t>(image[p * C + c]);
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            o[n * C + c] = static_cast<scalar_t>(sums[c] * inv_pixels);
          }
        }
      });
    } else {
      // Each (n, c) plane is contiguous.
      at::parallel_for(0, N * C, 16, [&](int64_t begin, int64_t end) {
        plane_means_of(in + begin * pixels, end - begin, pixels, o + begin);
      });
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("global_avg_pool", &nin_ext::cpu::global_avg_pool_cpu);
}
