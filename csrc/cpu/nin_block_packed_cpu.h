// A NiN block's weights packed for the CPU micro-kernels (the panels of each layer, the AMX tiles'
// layout of the wide 1x1 layers, the conv's Winograd, broadcast and phase-form packings, each built on
// first use), and one packed layer run over a tile's pixel panels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/aligned_vector_cpu.h"
#include "cpu/broadcast_conv_cpu.h"
#include "cpu/conv_phase_forms_cpu.h"
#include "cpu/microkernel.h"
#include "cpu/packed_layer_amx.h"
#include "cpu/thread_scratch_cpu.h"
#include "cpu/winograd_cpu.h"

namespace nin_ext {
namespace cpu {

// How a float layer of at least kAmxMinReduction inputs, for a kernel that runs layers on AMX tiles,
// is packed for them (packed_layer_amx.h): not at all, at once (the 1x1 layers, which always run by
// apply_packed_layer), or on first use (the conv, which runs there only on the direct path; training
// repacks every step, so a packing that the call's path does not read costs each step).
enum class AmxPacking { none, at_once, on_first_use };

// The fraction of a tile's inputs to a 1x1 layer into M channels that must be zero for the layer to
// run by the zero-skipping kernel (microkernel.h, ZeroSkippingLayerFn). At the half zeros of PyTorch's
// initialization it ran the seed's block 1 (96 channels: one pass of the kernel's accumulators)
// 1.05-1.08x as fast as the plain kernel, blocks 2 and 3 (256 and 384 channels: a pass per 96)
// 0.97x and 1.01x; at 57-85% zeros 1.12-1.25x (benchmarks/NOTES.md, v45). NIN_EXT_CPU_ZERO_SKIPPING sets one fraction
// for every layer at start-up (0: always, above 1: never; negative: this rule), changeable at run time
// for tests and comparisons; the bits are the same either way.
inline std::atomic<double>& zero_skipping_setting() {
  static std::atomic<double> setting([] {
    const char* value = std::getenv("NIN_EXT_CPU_ZERO_SKIPPING");
    if (value == nullptr || *value == '\0') {
      return -1.0;
    }
    char* end = nullptr;
    const double fraction = std::strtod(value, &end);
    TORCH_CHECK(end != value && *end == '\0', "NIN_EXT_CPU_ZERO_SKIPPING must be a number (the fraction of a tile's ",
                "inputs to a 1x1 layer that must be zero for the CPU to skip them), got '", value, "'");
    return fraction;
  }());
  return setting;
}

inline double zero_skipping_min_fraction(int64_t M) {
  constexpr int64_t kOnePassChannels = 96;
  const double setting = zero_skipping_setting().load(std::memory_order_relaxed);
  return setting >= 0 ? setting : M <= kOnePassChannels ? 0.4 : 0.55;
}

// How many tiles' 1x1 layers the zero-skipping kernel has run, for tests.
inline std::atomic<int64_t>& zero_skipped_layer_tiles() {
  static std::atomic<int64_t> count{0};
  return count;
}

// A layer's weights (M x K) by input, [K][M], for the zero-skipping kernel; empty where it does not
// apply: not float, M or K not a multiple of 8, or weights not all finite (0 x inf is NaN, which a
// skipped product would lose).
template <typename scalar_t>
AlignedVector<float> weights_by_input(const at::Tensor& w) {
  AlignedVector<float> rows;
  if constexpr (std::is_same_v<scalar_t, float>) {
    const int64_t M = w.size(0), K = w.size(1);
    if (M % 8 != 0 || K % 8 != 0 || !at::isfinite(w).all().item<bool>()) {
      return rows;
    }
    rows.resize(K * M);
    const float* src = w.const_data_ptr<float>();
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t k = 0; k < K; ++k) {
        rows[k * M + m] = src[m * K + k];
      }
    }
  }
  return rows;
}

// One layer's weights (M x K) packed into panels of MR rows, k-major: a[(panel * K + k) * MR + r],
// rows past M zero; the bias padded the same way (zero when the layer has none); and, as `amx` asks,
// its packing for AMX tiles, which apply_packed_layer runs it on. `signed_inputs`: whether the layer's
// inputs may be negative (a conv's; a 1x1 layer's are a ReLU's outputs), which the tiles' slices
// take at one bit less. `zero_skipping`: also the weights by input for the zero-skipping kernel, where
// it applies (weights_by_input).
template <typename scalar_t>
struct PackedLayer {
  int64_t M, K;
  AlignedVector<scalar_t> a, bias;
  AlignedVector<float> rows_by_input;  // weights_by_input: empty where the layer does not skip zeros
  const bool signed_inputs;

  PackedLayer(const at::Tensor& weight, const c10::optional<at::Tensor>& b, int64_t mr,
              AmxPacking amx = AmxPacking::none, bool signed_inputs = false, bool zero_skipping = false)
      : signed_inputs(signed_inputs) {
    const at::Tensor w = weight.detach().reshape({weight.size(0), -1}).contiguous();
    M = w.size(0);
    K = w.size(1);
    const int64_t panels = (M + mr - 1) / mr;
    a.assign(panels * K * mr, scalar_t(0));
    bias.assign(panels * mr, scalar_t(0));
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    // In parallel: training repacks every step (the weights change), and a single thread would take
    // several milliseconds for the seed's wider blocks.
    at::parallel_for(0, M, 8, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        scalar_t* dst = a.data() + (m / mr) * K * mr + m % mr;
        for (int64_t k = 0; k < K; ++k) {
          dst[k * mr] = src[m * K + k];
        }
      }
    });
    if (b.has_value() && b->defined()) {
      const at::Tensor bc = b->detach().contiguous();
      std::copy(bc.const_data_ptr<scalar_t>(), bc.const_data_ptr<scalar_t>() + M, bias.begin());
    }
    if (zero_skipping) {
      rows_by_input = weights_by_input<scalar_t>(w);
    }
    if (std::is_same_v<scalar_t, float> && amx != AmxPacking::none && K >= kAmxMinReduction) {
      amx_source_ = w;
      if (amx == AmxPacking::at_once) {
        amx_tiles();
      }
    }
  }

  // The packing for AMX tiles, built on first use; null for a layer that stays off them (not asked
  // for, too short, or with weights that are not all finite: int8 slices hold finite values only).
  const uint8_t* amx_tiles() const {
    std::call_once(amx_once_, [this] {
      if (!amx_source_.defined() || !at::isfinite(amx_source_).all().item<bool>()) {
        return;
      }
      amx_.resize(amx_packed_layer_bytes(M, K, signed_inputs));
      const float* src = amx_source_.const_data_ptr<float>();
      at::parallel_for(0, (M + kAmxPanel - 1) / kAmxPanel, 1, [&](int64_t begin, int64_t end) {
        pack_layer_amx(src, M, K, signed_inputs, begin, end, amx_.data());
      });
      amx_source_ = at::Tensor();
    });
    return amx_.empty() ? nullptr : amx_.data();
  }

 private:
  mutable at::Tensor amx_source_;  // the weights (M x K), until packed for the tiles
  mutable std::once_flag amx_once_;
  mutable AlignedVector<uint8_t> amx_;
};

// The block's three layers, packed for one micro-kernel; float 3x3 and 5x5 convolutions also get
// Winograd packings, one per output-block size m that a call has used (winograd_cpu.h).
template <typename scalar_t>
struct NinBlockPacked {
  MicroKernel<scalar_t> kernel;
  PackedLayer<scalar_t> conv, pointwise1, pointwise2;
  const bool winograd_weights;  // whether the conv may run as Winograd

  NinBlockPacked(const MicroKernel<scalar_t>& k, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                 const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                 const c10::optional<at::Tensor>& b2)
      : kernel(k),
        conv(w, b, k.mr, k.amx_layers ? AmxPacking::on_first_use : AmxPacking::none, /*signed_inputs=*/true),
        pointwise1(w1, b1, k.mr, k.amx_layers ? AmxPacking::at_once : AmxPacking::none, /*signed_inputs=*/false,
                   /*zero_skipping=*/k.zero_skipping_layer != nullptr),
        pointwise2(w2, b2, k.mr, k.amx_layers ? AmxPacking::at_once : AmxPacking::none, /*signed_inputs=*/false,
                   /*zero_skipping=*/k.zero_skipping_layer != nullptr),
        winograd_weights(std::is_same_v<scalar_t, float> && winograd_weight(w)), conv_taps_(w.size(2)),
        conv_window_(w.size(2) * w.size(3)) {}

  // The Winograd packing for F(m x m), built on first use: which m runs depends on the call's shapes,
  // and training repacks every step, so only the sizes in use are built.
  const PackedWinogradConv& winograd(int m) const {
    std::lock_guard<std::mutex> lock(winograd_mutex_);
    std::unique_ptr<const PackedWinogradConv>& slot = winograd_[m - kWinogradMinTile];
    if (slot == nullptr) {
      slot = std::make_unique<const PackedWinogradConv>(reinterpret_cast<const float*>(conv.a.data()), conv.M,
                                                        conv.K / (conv_taps_ * conv_taps_), conv_taps_, m, kernel.mr,
                                                        kernel.nr);
    }
    return *slot;
  }

  // The conv's packing for the broadcast kernel (broadcast_conv_cpu.h; float only), built on first use.
  const PackedBroadcastConv& broadcast_conv() const {
    std::lock_guard<std::mutex> lock(broadcast_mutex_);
    if (broadcast_ == nullptr) {
      broadcast_ = std::make_unique<const PackedBroadcastConv>(
          broadcast_kernel_for(kernel, conv.M), reinterpret_cast<const float*>(conv.a.data()),
          reinterpret_cast<const float*>(conv.bias.data()), conv.M, conv.K / conv_window_, conv_window_, kernel.mr);
    }
    return *broadcast_;
  }

  // The packing of the block's conv in a phase form (conv_phase_forms_cpu.h), built on first use from
  // the tensors that this packing was made of (the caller's: the cache found them unchanged).
  const NinBlockPacked& phase_form(const ConvPhaseForm& form, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                                   const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                   const c10::optional<at::Tensor>& b2) const {
    const InputPhases& ph = form.phases;
    std::lock_guard<std::mutex> lock(phase_forms_mutex_);
    std::unique_ptr<const NinBlockPacked>& slot = phase_forms_[{ph.SH, ph.SW, ph.AH, ph.AW, ph.DH, ph.DW}];
    if (slot == nullptr) {
      slot = std::make_unique<const NinBlockPacked>(kernel, phase_form_weight(w, ph, form.g.KH, form.g.KW), b, w1, b1,
                                                    w2, b2);
    }
    return *slot;
  }

 private:
  const int conv_taps_;
  const int64_t conv_window_;  // the conv's taps, KH KW
  mutable std::mutex broadcast_mutex_;
  mutable std::unique_ptr<const PackedBroadcastConv> broadcast_;
  mutable std::mutex winograd_mutex_;
  mutable std::unique_ptr<const PackedWinogradConv> winograd_[kWinogradMaxTile - kWinogradMinTile + 1];
  mutable std::mutex phase_forms_mutex_;
  mutable std::map<std::array<int64_t, 6>, std::unique_ptr<const NinBlockPacked>> phase_forms_;
};

// out[panel][m][nr] = relu(W in[panel] + b) for pixel panels [first, first + panels) of a tile, one
// (MR x NR) block at a time; the weight panel stays in cache while it meets every pixel panel.
template <typename scalar_t>
void apply_packed_layer_panels(const MicroKernel<scalar_t>& kernel, const PackedLayer<scalar_t>& layer,
                               const scalar_t* in, scalar_t* out, int64_t first, int64_t panels) {
  for (int64_t m0 = 0; m0 < layer.M; m0 += kernel.mr) {
    const scalar_t* a = layer.a.data() + m0 * layer.K;
    for (int64_t p = first; p < first + panels; ++p) {
      kernel.fn(layer.K, a, in + p * layer.K * kernel.nr, kernel.nr, layer.bias.data() + m0,
                out + (p * layer.M + m0) * kernel.nr, kernel.nr, std::min(kernel.mr, layer.M - m0));
    }
  }
}

// Whether a call that writes `outputs`, (layer, tensor) pairs (run_nin_block), keeps hidden
// activations (layers 0 and 1) for a backward.
inline bool keeps_hidden_for_backward(const std::vector<std::pair<int, at::Tensor*>>& outputs) {
  return std::any_of(outputs.begin(), outputs.end(), [](const auto& output) { return output.first < 2; });
}

// The layer on every panel of a tile: by the zero-skipping kernel where the layer has its weights and
// enough of the tile's inputs are zero (zero_skipping_min_fraction); on AMX tiles where it is packed
// for them and has at least `amx_min_reduction` inputs, the panels whose inputs the tiles' slices
// cannot hold (not finite, or negative for a layer of unsigned inputs) by the micro-kernel.
template <typename scalar_t>
void apply_packed_layer(const MicroKernel<scalar_t>& kernel, const PackedLayer<scalar_t>& layer, const scalar_t* in,
                        scalar_t* out, int64_t panels, int64_t amx_min_reduction) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    const double min_zero_fraction = zero_skipping_min_fraction(layer.M);
    if (kernel.zero_skipping_layer != nullptr && !layer.rows_by_input.empty() && min_zero_fraction <= 1.0) {
      ScratchBuffer<float> sums(kernel.nr * layer.M);
      ScratchBuffer<uint64_t> masks(kernel.nr * ((layer.K + 63) / 64));
      if (kernel.zero_skipping_layer(layer.rows_by_input.data(), layer.bias.data(), layer.M, layer.K, in, out, panels,
                                     min_zero_fraction, sums.data(), masks.data())) {
        zero_skipped_layer_tiles().fetch_add(1, std::memory_order_relaxed);
        return;
      }
    }
    const uint8_t* tiles = layer.K >= amx_min_reduction ? layer.amx_tiles() : nullptr;
    if (tiles != nullptr) {
      struct Call {
        const MicroKernel<float>& kernel;
        const PackedLayer<float>& layer;
        const float* in;
        float* out;
      } call{kernel, layer, in, out};
      apply_layer_amx(tiles, layer.bias.data(), layer.M, layer.K, in, out, panels, layer.signed_inputs,
                      [](const void* context, int64_t first, int64_t count) {
                        const Call& c = *static_cast<const Call*>(context);
                        apply_packed_layer_panels(c.kernel, c.layer, c.in, c.out, first, count);
                      },
                      &call);
      return;
    }
  }
  apply_packed_layer_panels(kernel, layer, in, out, 0, panels);
}

}  // namespace cpu
}  // namespace nin_ext
