// A packed layer (apply_packed_layer's work: out[panel][m][32] = relu(bias[m] + sum_k w[m][k]
// in[panel][k][32])) on AMX tiles at float32 accuracy (packed_layer_amx.cpp), for CPUs with AMX-INT8.
#pragma once

#include <cstdint>

#include "cpu/microkernel.h"

// GCC 11 brought the AMX intrinsics; Linux hands out the tile state on request (arch_prctl).
#if NIN_EXT_X86_64 && defined(__linux__) && !defined(__clang__) && __GNUC__ >= 11
#define NIN_EXT_AMX 1
#else
#define NIN_EXT_AMX 0
#endif

namespace nin_ext {
namespace cpu {

// The shortest reduction (a 1x1 layer's input channels, a conv's C x KH x KW) a layer runs on the
// tiles with, as measured: the seed's block 1 (96 inputs, two 64-wide chunks, a quarter of them zeros)
// ran 11% faster with its 1x1 layers on the tiles once they were read from aligned memory (slower
// before; benchmarks/NOTES.md, v40, v41), and 6-10% faster again with its conv (121) there.
constexpr int64_t kAmxMinReduction = 96;
// The same in a training forward, whose hidden activations set the backward's ReLU masks: below 192
// inputs the tiles' error (block floating point) is 2-3x the micro-kernel's, and in an RGB NiN, whose
// float32 gradients are ill-conditioned (eager's meet float64 on 2 of 13 draws), the seed's block-1
// layers on the tiles met the gradient tolerance on 3 of 13 draws, on the micro-kernel on 5, and
// failed the draw tests/test_phase_forms.py checks (NOTES v41).
constexpr int64_t kAmxMinReductionForBackward = 192;

// The rows of a weight panel and the pixels of a pixel panel on the tiles: two 16-row tiles each.
constexpr int64_t kAmxPanel = 32;

// Whether this CPU and OS run AMX-INT8 tiles (with AVX-512), decided once per process.
bool amx_int8_usable();

// The weights w (M x K, row-major, all finite) as int8 slices in the tiles' layout with a scale per
// row, its kAmxPanel-row panels [begin, end): amx_packed_layer_bytes(M, K, signed_inputs) bytes in
// all. A layer of signed inputs (a conv's) takes a slice more (packed_layer_amx.cpp).
int64_t amx_packed_layer_bytes(int64_t M, int64_t K, bool signed_inputs);
void pack_layer_amx(const float* w, int64_t M, int64_t K, bool signed_inputs, int64_t panel_begin, int64_t panel_end,
                    uint8_t* out);

// Runs pixel panels [first, first + count) of a layer by other means: apply_layer_amx hands over those
// whose inputs the slices cannot hold.
using LayerPanelsFn = void (*)(const void* context, int64_t first, int64_t count);

// The layer on `panels` pixel panels of 32 (the AVX-512 kernel's NR), in[panel][k][32] for k < K;
// bias + ReLU as the micro-kernels apply them. A 1x1 layer's inputs are a ReLU's outputs, which the
// tiles take as unsigned slices; a conv's (`signed_inputs`) take signed ones, one bit less. A pair of
// panels with a value the slices cannot hold (an infinity, a NaN, or a negative value or -0.0 where unsigned)
// goes to `other_panels`.
void apply_layer_amx(const uint8_t* a, const float* bias, int64_t M, int64_t K, const float* in, float* out,
                     int64_t panels, bool signed_inputs, LayerPanelsFn other_panels, const void* context);

}  // namespace cpu
}  // namespace nin_ext
