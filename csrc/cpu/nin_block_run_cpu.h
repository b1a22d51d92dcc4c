// prepare_nin_block_call: the form a block call runs in (as given, or a phase form) and its path;
// run_nin_block: the fused block over a whole batch, by whichever of the CPU paths the shapes call for.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/nin_block_packed_cache_cpu.h"
#include "cpu/nin_block_shifted_cpu.h"
#include "cpu/nin_block_tiles_cpu.h"

namespace nin_ext {
namespace cpu {

// The CPU paths of a block call: Winograd tiles, shifted products (nin_block_shifted_cpu.h) and
// pixel tiles with an im2col gather (the direct path).
enum class NinBlockPath { winograd, shifted, direct };

// A block call in the form it runs in: the call as given, or its phase form (conv_phase_forms_cpu.h:
// polyphase or split), which reads x's phase channels in place, and the path the form takes.
template <typename scalar_t>
struct NinBlockCall {
  at::Tensor x;
  NinBlockGeometry g;
  InputPhases phases;
  NinBlockPath path;
  int winograd_tile;  // the output-block size m of its Winograd tiles, 0 for the other paths
  std::shared_ptr<const NinBlockPacked<scalar_t>> weights;  // the weights' packing, from the cache
  const NinBlockPacked<scalar_t>* packed;                    // the packing that runs: it or its phase form's
};

// The output-block size m of the Winograd tiles that a block runs by in its phase form (a strided
// block's polyphase form, a large kernel's split form), 0 when it does not: the form runs when its
// Winograd tiles do fewer multiply-adds than the direct path.
inline int phase_form_winograd_tile_size(const NinBlockGeometry& g, bool float_weights, int64_t nr,
                                         int64_t element_size) {
  if (!has_phase_form(g)) {
    return 0;
  }
  const NinBlockGeometry p = conv_phase_form(g).g;
  const bool winograd_weights =
      float_weights && winograd_conv_shape(p.CC, p.C0, p.KH, p.KW) && narrow_winograd_pays(g, p);
  const int m = winograd_tile_size(p, winograd_weights, nr, element_size);
  return m > 0 && winograd_work(p, m, nr) < direct_work(g, direct_tiling(g, element_size, nr)) ? m : 0;
}

// The path a call of these shapes takes, the output-block size m of its Winograd tiles (0 on the
// other paths), and whether it runs in its phase form. In order: Winograd tiles (strided blocks in
// their polyphase form, stride-1 kernels of more than 7 taps in their split form; convs into fewer
// than 64 channels where narrow_winograd_pays), shifted products, a strided block's polyphase form by
// shifted products where that does less work than the gather (a long reduction into few channels, as
// 192 -> 10 channels by an 11x11 kernel at stride 2: 0.46x eager's speed by the gather) and the
// direct path would not run the conv by the broadcast kernel, else the direct path.
// `winograd_weights`: whether the conv's own weights allow the Winograd path.
struct NinBlockChoice {
  NinBlockPath path;
  int m;
  bool phase_form;
};

inline NinBlockChoice choose_nin_block_path(const NinBlockGeometry& g, bool float_weights, bool winograd_weights,
                                            int64_t nr, int64_t element_size) {
  if (const int m = phase_form_winograd_tile_size(g, float_weights, nr, element_size)) {
    return {NinBlockPath::winograd, m, true};
  }
  if (const int m = winograd_tile_size(g, winograd_weights && narrow_winograd_pays(g, g), nr, element_size)) {
    return {NinBlockPath::winograd, m, false};
  }
  if (shifted_conv_pays(g, nr, element_size)) {
    return {NinBlockPath::shifted, 0, false};
  }
  // A strided conv that the direct path runs by the broadcast kernel stays there: its polyphase form's
  // zero taps and short rows cost more than the work model counts (48 -> 10 channels by 11x11 at
  // stride 4: 13.2 ms by the form, 10.4 by the kernel; 96 -> 10 by 5x5 at stride 2: 9.5 and 7.9).
  if ((g.SH != 1 || g.SW != 1) && !direct_conv_by_broadcast(g, element_size) &&
      shifted_path_work(conv_phase_form(g).g, nr) < gather_path_work(g, nr, element_size)) {
    return {NinBlockPath::shifted, 0, true};
  }
  return {NinBlockPath::direct, 0, false};
}

// The weights' packing (cached) and the form the call runs in.
template <typename scalar_t>
NinBlockCall<scalar_t> prepare_nin_block_call(const at::Tensor& x, const NinBlockGeometry& g, const at::Tensor& w,
                                              const c10::optional<at::Tensor>& b, const at::Tensor& w1,
                                              const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                              const c10::optional<at::Tensor>& b2) {
  NinBlockCall<scalar_t> call{
      x, g, InputPhases{}, NinBlockPath::direct, 0, packed_nin_block<scalar_t>(w, b, w1, b1, w2, b2), nullptr};
  call.packed = call.weights.get();
  const NinBlockChoice choice = choose_nin_block_path(g, std::is_same_v<scalar_t, float>,
                                                      call.packed->winograd_weights, call.packed->kernel.nr,
                                                      sizeof(scalar_t));
  call.path = choice.path;
  call.winograd_tile = choice.m;
  if (choice.phase_form) {
    const ConvPhaseForm form = conv_phase_form(g);
    call.g = form.g;
    call.phases = form.phases;
    call.packed = &call.weights->phase_form(form, w, b, w1, b1, w2, b2);
  }
  return call;
}

// Runs the block over the whole batch and writes the activations asked for, (layer, tensor) pairs
// (layer 0: the conv's, 1: the first 1x1's, 2: the block's output), into their (N, C, OH, OW)
// tensors, by the call's path.
template <typename scalar_t>
void run_nin_block(const NinBlockCall<scalar_t>& call, const std::vector<std::pair<int, at::Tensor*>>& outputs) {
  const at::Tensor& x = call.x;
  const NinBlockGeometry& g = call.g;
  const NinBlockPacked<scalar_t>& packed = *call.packed;
  const bool for_backward = keeps_hidden_for_backward(outputs);
  if (call.path == NinBlockPath::winograd) {
    const PackedWinogradConv& winograd = packed.winograd(call.winograd_tile);
    auto write_tile = [&](NinBlockTileWorker<scalar_t>& worker, int64_t b0, int64_t tb) {
      worker.compute_winograd(b0, tb);
      for (const auto& [layer, tensor] : outputs) {
        worker.write_winograd_rows(layer, *tensor);
      }
    };
    for_each_winograd_tile<scalar_t>(x, g, packed, winograd, call.phases, write_tile, for_backward);
    return;
  }
  if (call.path == NinBlockPath::shifted) {
    run_shifted_nin_block<scalar_t>(x, g, call.phases, packed, outputs);
    return;
  }
  const DirectTiling tiling = direct_tiling(g, sizeof(scalar_t), packed.kernel.nr);
  for_each_nin_block_tile<scalar_t>(
      x, g, packed, tiling, [&](NinBlockTileWorker<scalar_t>& worker, int64_t, int64_t n, int64_t p0, int64_t pt) {
        worker.compute(n, p0, pt);
        for (const auto& [layer, tensor] : outputs) {
          worker.write_rows(layer, *tensor, n, p0);
        }
      },
      for_backward);
}

}  // namespace cpu
}  // namespace nin_ext
