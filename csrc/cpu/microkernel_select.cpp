// Chooses the float micro-kernel from the CPU's features, once per process.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#include "cpu/copy_runs.h"
#include "cpu/max_pool2d_plane.h"
#include "cpu/microkernel_broadcast_pixels.h"
#include "cpu/microkernel.h"
#include "cpu/packed_layer_amx.h"
#include "cpu/winograd_transform_lanes.h"

namespace nin_ext {
namespace cpu {

namespace {

MicroKernel<float> choose_float_microkernel() {
  const MicroKernel<float> portable{4,
                                    8,
                                    &microkernel_portable<float, 4, 8>,
                                    &shifted_microkernel_portable<float, 4, 8>,
                                    "portable",
                                    &winograd_transform_lanes<ScalarVec, 8, false>,
                                    &winograd_transform_lanes<ScalarVec, 8, true>,
                                    &max_pool2d_plane<float, PortablePoolSteps>,
                                    &max_pool2d_argmax_plane<float, PortablePoolSteps>,
                                    &winograd_gather_portable,
                                    &winograd_scatter_portable,
                                    &copy_runs_portable<float>,
                                    &gather_lanes_portable<float>,
                                    &channels_last_row_portable<float>,
                                    {&broadcast_pixels_microkernel<ScalarVec, 4, 8>, 4, 8},
                                    {&broadcast_pixels_microkernel<ScalarVec, 4, 4>, 4, 4},
                                    &swapped_product_portable<4, 8>,
                                    &winograd_output_gradient_lanes<ScalarVec, 8>,
                                    false,
                                    nullptr};
#if NIN_EXT_X86_64
  const MicroKernel<float> avx512{12,
                                  32,
                                  &microkernel_avx512_12x32,
                                  &shifted_microkernel_avx512_12x32,
                                  "avx512",
                                  &winograd_input_transform_avx512_32,
                                  &winograd_output_transform_avx512_32,
                                  &max_pool2d_plane_avx512,
                                  &max_pool2d_argmax_plane_avx512,
                                  &winograd_gather_avx512,
                                  &winograd_scatter_avx512,
                                  &copy_runs_avx512,
                                  &gather_lanes_avx512,
                                  &channels_last_row_avx512,
                                  {&broadcast_pixels_avx512_12x32, 12, 32},
                                  {&broadcast_pixels_avx512_12x16, 12, 16},
                                  &swapped_product_avx512_12x32,
                                  &winograd_output_gradient_transform_avx512_32,
                                  false,
                                  &plane_means_avx512};
  const MicroKernel<float> avx2{6,
                                16,
                                &microkernel_avx2_6x16,
                                &shifted_microkernel_avx2_6x16,
                                "avx2",
                                &winograd_input_transform_avx2_16,
                                &winograd_output_transform_avx2_16,
                                &max_pool2d_plane_avx2,
                                &max_pool2d_argmax_plane_avx2,
                                &winograd_gather_avx2,
                                &winograd_scatter_avx2,
                                &copy_runs_avx2,
                                &gather_lanes_avx2,
                                &channels_last_row_portable<float>,
                                {&broadcast_pixels_avx2_6x16, 6, 16},
                                {&broadcast_pixels_avx2_6x8, 6, 8},
                                &swapped_product_avx2_6x16,
                                &winograd_output_gradient_transform_avx2_16,
                                false,
                                &plane_means_avx2,
                                &zero_skipping_layer_avx2};
  MicroKernel<float> amx = avx512;  // AVX-512, the wide 1x1 layers on AMX tiles
  amx.isa = "amx";
  amx.amx_layers = true;
  const bool has_amx = amx_int8_usable();
  const bool has_avx512 = __builtin_cpu_supports("avx512f");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  const MicroKernel<float> amx = portable, avx512 = portable, avx2 = portable;
  const bool has_amx = false, has_avx512 = false, has_avx2 = false;
#endif
  const char* forced = std::getenv("NIN_EXT_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    const std::string isa(forced);
    TORCH_CHECK(isa == "amx" || isa == "avx512" || isa == "avx2" || isa == "portable",
                "NIN_EXT_CPU_ISA must be amx, avx512, avx2 or portable, got '", isa, "'");
    TORCH_CHECK(isa != "amx" || has_amx, "NIN_EXT_CPU_ISA=amx, but this CPU or OS has no AMX-INT8 tiles");
    TORCH_CHECK(isa != "avx512" || has_avx512, "NIN_EXT_CPU_ISA=avx512, but this CPU has no AVX-512");
    TORCH_CHECK(isa != "avx2" || has_avx2, "NIN_EXT_CPU_ISA=avx2, but this CPU has no AVX2 + FMA");
    return isa == "amx" ? amx : isa == "avx512" ? avx512 : isa == "avx2" ? avx2 : portable;
  }
  return has_amx ? amx : has_avx512 ? avx512 : has_avx2 ? avx2 : portable;
}

}  // namespace

MicroKernel<float> float_microkernel() {
  static const MicroKernel<float> chosen = choose_float_microkernel();
  return chosen;
}

}  // namespace cpu
}  // namespace nin_ext
