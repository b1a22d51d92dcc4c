// Op schemas for nin_ext and the Python module that loads them.
//
// The ops are defined here once; each backend registers its kernels in its own file
// (csrc/cpu/*_cpu.cpp, csrc/cuda/*_cuda.cu). Fake (meta) kernels and autograd are registered
// from Python (nin_ext/_registrations.py), as in pytorch/extension-cpp.
#include <Python.h>
#include <torch/library.h>

#include <exception>

#include "cpu/microkernel.h"
#include "cpu/nin_block_packed_cache_cpu.h"

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
}

static PyObject* clear_weight_cache(PyObject*, PyObject*) {
  nin_ext::cpu::clear_packed_nin_block_caches();
  Py_RETURN_NONE;
}

static PyObject* weight_cache_entries(PyObject*, PyObject*) {
  return PyLong_FromSize_t(nin_ext::cpu::packed_nin_block_cache_entries());
}

// Importing nin_ext._C runs the static registrations above. The module reports how it was built and
// manages the CPU kernels' packed-weight cache; the ops are reached through torch.ops.nin_ext.
extern "C" PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"clear_weight_cache", clear_weight_cache, METH_NOARGS, "Drops every packed copy of the CPU kernels' weights."},
      {"weight_cache_entries", weight_cache_entries, METH_NOARGS, "The number of packed blocks cached."},
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
