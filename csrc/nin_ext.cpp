// Op schemas for nin_ext and the Python module that loads them.
//
// The ops are defined here once; each backend registers its kernels in its own file
// (csrc/cpu/*_cpu.cpp, csrc/cuda/*_cuda.cu). Fake (meta) kernels and autograd are registered
// from Python (nin_ext/_registrations.py), as in pytorch/extension-cpp.
#include <Python.h>
#include <torch/library.h>

#include <exception>

#include "cpu/conv2d_weight_grad_cpu.h"
#include "cpu/microkernel.h"
#include "cpu/nin_block_packed_cache_cpu.h"
#include "cpu/nin_block_run_cpu.h"
#include "cpu/nin_block_shifted_cpu.h"
#include "cpu/tensor_cache_cpu.h"

#ifndef NIN_EXT_CUDA_ARCHS
#define NIN_EXT_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(nin_ext, m) {
  // relu(conv1x1(relu(conv1x1(relu(conv2d(x, w, b, stride, padding)), w1, b1)), w2, b2))
  m.def(
      "nin_block(Tensor x, Tensor w, Tensor? b, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "int[2] stride, int[2] padding) -> Tensor");
  // nin_block that also returns its two hidden activations (relu of the conv, relu of the first 1x1):
  // the forward of training, whose backward needs them.
  m.def(
      "nin_block_with_hidden(Tensor x, Tensor w, Tensor? b, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "int[2] stride, int[2] padding) -> (Tensor, Tensor, Tensor)");
  // nin_block followed by the mean over the spatial dimensions: (N, C2).
  m.def(
      "nin_block_gap(Tensor x, Tensor w, Tensor? b, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "int[2] stride, int[2] padding) -> Tensor");
  // max_pool2d(nin_block(...), pool_kernel, pool_stride, pool_padding, ceil_mode): a NiN block and the
  // pool after it (inference; CPU only, the other backends run the two ops).
  m.def(
      "nin_block_max_pool(Tensor x, Tensor w, Tensor? b, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "int[2] stride, int[2] padding, int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding, bool ceil_mode) "
      "-> Tensor");
  // nin_block_max_pool that also returns the block's two hidden activations and the pool's argmax (an
  // int32 index into the block output's (H, W) plane): the forward of training, CPU only.
  m.def(
      "nin_block_max_pool_with_hidden(Tensor x, Tensor w, Tensor? b, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "int[2] stride, int[2] padding, int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding, bool ceil_mode) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Mean over the spatial dimensions of an (N, C, H, W) tensor: (N, C).
  m.def("global_avg_pool(Tensor x) -> Tensor");
  // torch's max_pool2d with dilation 1, the pooling between NiN blocks.
  m.def("max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode) -> Tensor");
  // max_pool2d that also returns where each window's maximum is: an int32 index into the input's
  // (H, W) plane, laid out like the output (the forward of training).
  m.def(
      "max_pool2d_with_argmax(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode) "
      "-> (Tensor, Tensor)");
  // The gradient of max_pool2d with respect to its input (of size input_size), from the argmax.
  m.def("max_pool2d_backward(Tensor grad_out, Tensor argmax, SymInt[4] input_size, bool channels_last) -> Tensor");
  // The gradient of conv2d(x, weight, stride, padding) with respect to its weight (of spatial size
  // kernel_size), from that of its output: the training backward of every block's conv (CPU only).
  m.def("conv2d_weight_grad(Tensor grad_out, Tensor x, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
}

static PyObject* clear_weight_cache(PyObject*, PyObject*) {
  nin_ext::cpu::clear_packed_nin_block_caches();
  Py_RETURN_NONE;
}

static PyObject* clear_tensor_cache(PyObject*, PyObject*) {
  return PyLong_FromSize_t(nin_ext::cpu::clear_tensor_cache());
}

static PyObject* tensor_cache_free_bytes(PyObject*, PyObject*) {
  return PyLong_FromSize_t(nin_ext::cpu::tensor_cache_free_bytes());
}

static PyObject* weight_cache_entries(PyObject*, PyObject*) {
  return PyLong_FromSize_t(nin_ext::cpu::packed_nin_block_cache_entries());
}

// The geometry of a nin_block call from ((N, C0, H, W), (CC, C0, KH, KW), C1, C2, (SH, SW), (PH, PW)),
// and the conv weight's input channels; false (with the Python error set) on bad arguments.
static bool parse_nin_block_shapes(PyObject* args, nin_ext::NinBlockGeometry& g, int64_t& weight_in) {
  if (!PyArg_ParseTuple(args, "(LLLL)(LLLL)LL(LL)(LL)", &g.N, &g.C0, &g.H, &g.W, &g.CC, &weight_in, &g.KH, &g.KW,
                        &g.C1, &g.C2, &g.SH, &g.SW, &g.PH, &g.PW)) {
    return false;
  }
  g.OH = (g.H + 2 * g.PH - g.KH) / g.SH + 1;
  g.OW = (g.W + 2 * g.PW - g.KW) / g.SW + 1;
  return true;
}

// The path a float32 nin_block of these shapes takes on the CPU (csrc/cpu/nin_block_run_cpu.h).
static nin_ext::cpu::NinBlockChoice float_block_choice(const nin_ext::NinBlockGeometry& g, int64_t weight_in) {
  const bool weights = nin_ext::cpu::winograd_conv_shape(g.CC, weight_in, g.KH, g.KW);
  return nin_ext::cpu::choose_nin_block_path(g, true, weights, nin_ext::cpu::float_microkernel().nr, sizeof(float));
}

// winograd_tile_size((N, C0, H, W), (CC, C0, KH, KW), C1, C2, (SH, SW), (PH, PW)): the output-block size
// m of the Winograd path that a float32 nin_block of these shapes runs on the CPU (in its phase form
// where it has one: a strided block's polyphase form, a large kernel's split form), 0 for the other
// paths; tests and benchmarks use it to know which path they check.
static PyObject* winograd_tile_size(PyObject*, PyObject* args) {
  nin_ext::NinBlockGeometry g{};
  int64_t weight_in = 0;
  if (!parse_nin_block_shapes(args, g, weight_in)) {
    return nullptr;
  }
  return PyLong_FromLong(float_block_choice(g, weight_in).m);
}

// shifted_conv(same arguments): whether a float32 nin_block of these shapes runs its conv by shifted
// products on the CPU (csrc/cpu/nin_block_shifted_cpu.h; a strided one in its polyphase form), for
// the tests.
static PyObject* shifted_conv(PyObject*, PyObject* args) {
  nin_ext::NinBlockGeometry g{};
  int64_t weight_in = 0;
  if (!parse_nin_block_shapes(args, g, weight_in)) {
    return nullptr;
  }
  return PyBool_FromLong(float_block_choice(g, weight_in).path == nin_ext::cpu::NinBlockPath::shifted);
}

// shifted_bands(same arguments): the bands of output rows per image that a float32 nin_block of these
// shapes on the shifted path runs by (1: tiles of whole images), for the tests.
static PyObject* shifted_bands(PyObject*, PyObject* args) {
  nin_ext::NinBlockGeometry g{};
  int64_t weight_in = 0;
  if (!parse_nin_block_shapes(args, g, weight_in)) {
    return nullptr;
  }
  const bool phase_form = float_block_choice(g, weight_in).phase_form;
  const nin_ext::NinBlockGeometry form = phase_form ? nin_ext::cpu::conv_phase_form(g).g : g;
  const int64_t nr = nin_ext::cpu::float_microkernel().nr;
  return PyLong_FromLongLong(nin_ext::cpu::shifted_tiling(form, sizeof(float), nr).bands);
}

// direct_tile_pixels(same arguments): the most pixels a tile holds on the direct path for a float32
// nin_block of these shapes (tiles cross images where an image ends inside one), for the tests.
static PyObject* direct_tile_pixels(PyObject*, PyObject* args) {
  nin_ext::NinBlockGeometry g{};
  int64_t weight_in = 0;
  if (!parse_nin_block_shapes(args, g, weight_in)) {
    return nullptr;
  }
  const int64_t nr = nin_ext::cpu::float_microkernel().nr;
  return PyLong_FromLongLong(nin_ext::cpu::direct_tiling(g, sizeof(float), nr).tile_pixels());
}

// direct_conv_by_broadcast(same arguments): whether a float32 nin_block of these shapes on the direct
// path runs its conv by the pixel-broadcast kernel (csrc/cpu/broadcast_conv_cpu.h) rather than an
// im2col gather, for the tests.
static PyObject* direct_conv_by_broadcast(PyObject*, PyObject* args) {
  nin_ext::NinBlockGeometry g{};
  int64_t weight_in = 0;
  if (!parse_nin_block_shapes(args, g, weight_in)) {
    return nullptr;
  }
  return PyBool_FromLong(nin_ext::cpu::direct_conv_by_broadcast(g, sizeof(float)));
}

// winograd_channel_lanes(channels, blocks): whether a float32 Winograd tile of `blocks` blocks into
// `channels` output channels runs its products with the channels in the vector lanes (the swapped
// product), for the tests.
static PyObject* winograd_channel_lanes(PyObject*, PyObject* args) {
  long long channels = 0, blocks = 0;
  if (!PyArg_ParseTuple(args, "LL", &channels, &blocks)) {
    return nullptr;
  }
  return PyBool_FromLong(nin_ext::cpu::winograd_channel_lanes(nin_ext::cpu::float_microkernel(), channels, blocks));
}

// conv2d_weight_grad_tile_size(N, C_in, C_out, H_out, W_out, KH, KW): the output-block size m of the
// Winograd tiles that the weight gradient of a float32 stride-1 conv of these shapes runs by on the
// CPU (csrc/cpu/conv2d_weight_grad_cpu.h), 0 where ATen runs it; for the tests.
static PyObject* conv2d_weight_grad_tile_size(PyObject*, PyObject* args) {
  long long n = 0, c_in = 0, c_out = 0, oh = 0, ow = 0, kh = 0, kw = 0;
  if (!PyArg_ParseTuple(args, "LLLLLLL", &n, &c_in, &c_out, &oh, &ow, &kh, &kw)) {
    return nullptr;
  }
  return PyLong_FromLong(nin_ext::cpu::conv2d_weight_grad_tile_size(n, c_in, c_out, oh, ow, kh, kw));
}

// conv2d_weight_grad_by_im2col(N, C_in, C_out, H_out, W_out, KH, KW): whether the weight gradient of a
// float32 conv of these shapes that the tiles do not take runs as one im2col product on the CPU
// (csrc/cpu/conv2d_weight_grad_cpu.h) rather than by ATen; for the tests.
static PyObject* conv2d_weight_grad_by_im2col(PyObject*, PyObject* args) {
  long long n = 0, c_in = 0, c_out = 0, oh = 0, ow = 0, kh = 0, kw = 0;
  if (!PyArg_ParseTuple(args, "LLLLLLL", &n, &c_in, &c_out, &oh, &ow, &kh, &kw)) {
    return nullptr;
  }
  return PyBool_FromLong(nin_ext::cpu::conv2d_weight_grad_by_im2col(n, c_in, c_out, oh, ow, kh, kw));
}

// set_winograd_mode(mode) -> the previous mode: -1 chooses m per call, 0 turns the Winograd path off,
// 2, 3 or 4 forces that m (NIN_EXT_CPU_WINOGRAD sets the mode at start-up). For tests and comparisons.
static PyObject* set_winograd_mode(PyObject*, PyObject* arg) {
  const long mode = PyLong_AsLong(arg);
  if (mode == -1 && PyErr_Occurred()) {
    return nullptr;
  }
  if (mode != -1 && mode != 0 && (mode < nin_ext::cpu::kWinogradMinTile || mode > nin_ext::cpu::kWinogradMaxTile)) {
    PyErr_Format(PyExc_ValueError, "set_winograd_mode: mode must be -1, 0, 2, 3 or 4, got %ld", mode);
    return nullptr;
  }
  return PyLong_FromLong(nin_ext::cpu::winograd_mode().exchange(static_cast<int>(mode)));
}

// set_broadcast_conv(on) -> the previous setting: whether the CPU direct path may run convs by the
// pixel-broadcast kernel (NIN_EXT_CPU_BROADCAST=0 turns it off at start-up). For tests and comparisons.
static PyObject* set_broadcast_conv(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) {
    return nullptr;
  }
  return PyBool_FromLong(nin_ext::cpu::broadcast_mode().exchange(on != 0));
}

// set_channel_lanes(on) -> the previous setting: whether the CPU's Winograd tiles of few blocks may run
// their products with the output channels in the vector lanes (NIN_EXT_CPU_CHANNEL_LANES=0 turns it
// off at start-up; the bits are the same either way). For tests and comparisons.
static PyObject* set_channel_lanes(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) {
    return nullptr;
  }
  return PyBool_FromLong(nin_ext::cpu::channel_lanes_mode().exchange(on != 0));
}

// set_zero_skipping(fraction) -> the previous setting: the fraction of a tile's inputs to a CPU 1x1
// layer that must be zero for its products to skip them (0 always, above 1 never, negative: the rule
// by the layer's width; NIN_EXT_CPU_ZERO_SKIPPING sets it at start-up; the bits are the same either
// way). For tests and comparisons.
static PyObject* set_zero_skipping(PyObject*, PyObject* arg) {
  const double fraction = PyFloat_AsDouble(arg);
  if (fraction == -1.0 && PyErr_Occurred()) {
    return nullptr;
  }
  return PyFloat_FromDouble(nin_ext::cpu::zero_skipping_setting().exchange(fraction));
}

// zero_skipped_layer_tiles() -> how many tiles' 1x1 layers the CPU's zero-skipping kernel has run.
static PyObject* zero_skipped_layer_tiles(PyObject*, PyObject*) {
  return PyLong_FromLongLong(nin_ext::cpu::zero_skipped_layer_tiles().load());
}

// Importing nin_ext._C runs the static registrations above. The module reports how it was built and
// manages the CPU kernels' packed-weight cache; the ops are reached through torch.ops.nin_ext.
extern "C" PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"clear_weight_cache", clear_weight_cache, METH_NOARGS, "Drops every packed copy of the CPU kernels' weights."},
      {"weight_cache_entries", weight_cache_entries, METH_NOARGS, "The number of packed blocks cached."},
      {"clear_tensor_cache", clear_tensor_cache, METH_NOARGS,
       "Frees the CPU ops' cached free blocks of large tensors; returns their bytes."},
      {"tensor_cache_free_bytes", tensor_cache_free_bytes, METH_NOARGS,
       "The bytes of the free blocks the CPU ops' tensor cache holds."},
      {"winograd_tile_size", winograd_tile_size, METH_VARARGS,
       "The Winograd output-block size a float32 nin_block of these shapes runs on the CPU (0: direct)."},
      {"shifted_conv", shifted_conv, METH_VARARGS,
       "Whether a float32 nin_block of these shapes runs its conv by shifted products on the CPU."},
      {"shifted_bands", shifted_bands, METH_VARARGS,
       "The bands of rows per image a float32 nin_block of these shapes on the shifted path runs by."},
      {"direct_conv_by_broadcast", direct_conv_by_broadcast, METH_VARARGS,
       "Whether a float32 nin_block of these shapes on the direct path runs its conv by the broadcast kernel."},
      {"direct_tile_pixels", direct_tile_pixels, METH_VARARGS,
       "The most pixels a tile holds on the CPU's direct path for a float32 nin_block of these shapes."},
      {"winograd_channel_lanes", winograd_channel_lanes, METH_VARARGS,
       "Whether a float32 Winograd tile of these many blocks and output channels puts the channels in the lanes."},
      {"conv2d_weight_grad_tile_size", conv2d_weight_grad_tile_size, METH_VARARGS,
       "The Winograd m of a float32 conv weight gradient of these shapes on the CPU (0: ATen's)."},
      {"conv2d_weight_grad_by_im2col", conv2d_weight_grad_by_im2col, METH_VARARGS,
       "Whether a float32 conv weight gradient of these shapes outside the tiles runs as an im2col product."},
      {"set_winograd_mode", set_winograd_mode, METH_O,
       "Sets the CPU Winograd mode (-1 choose, 0 off, 2-4 force m); returns the previous one."},
      {"set_broadcast_conv", set_broadcast_conv, METH_O,
       "Whether the CPU direct path may run convs by the broadcast kernel; returns the previous setting."},
      {"set_channel_lanes", set_channel_lanes, METH_O,
       "Whether CPU Winograd tiles of few blocks may put output channels in the lanes; returns the previous setting."},
      {"set_zero_skipping", set_zero_skipping, METH_O,
       "The fraction of zero inputs from which CPU 1x1 layers skip their products; returns the previous one."},
      {"zero_skipped_layer_tiles", zero_skipped_layer_tiles, METH_NOARGS,
       "How many tiles' 1x1 layers the CPU's zero-skipping kernel has run."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "nin_ext compiled kernels (ops under torch.ops.nin_ext)", -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef NIN_EXT_WITH_CUDA
  PyModule_AddObject(module, "cuda_built", Py_NewRef(Py_True));
#else
  PyModule_AddObject(module, "cuda_built", Py_NewRef(Py_False));
#endif
  PyModule_AddStringConstant(module, "cuda_archs", NIN_EXT_CUDA_ARCHS);
  try {
    PyModule_AddStringConstant(module, "cpu_microkernel", nin_ext::cpu::float_microkernel().isa);
  } catch (const std::exception& error) {  // a bad NIN_EXT_CPU_ISA
    Py_DECREF(module);
    PyErr_SetString(PyExc_ImportError, error.what());
    return nullptr;
  }
  return module;
}
