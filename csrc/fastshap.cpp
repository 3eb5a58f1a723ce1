// The op schema, defined once. Each backend registers its kernel in its own file (cpu/shapley_cpu.cpp,
// cuda/shapley_cuda.cu) with TORCH_LIBRARY_IMPL; the fake kernel lives in fastshap/_ops.py.
//
// fastshap::shapley takes the n feature tensors (B, d_i), the head's kind and its parameters (head_kinds.h:
// "concat" weight (C, D), bias (C); "decision" weight (C, D), bias (n, C); "mlp" weight1 (H, D), bias1 (H),
// weight2 (C, H), bias2 (C)), optional baselines (an empty list means "a removed modality's features are
// zeros"), int64 labels (B,) and the benefit name, and returns
//   phi   (B, n) float32  per-sample Shapley values
//   stats (4, n) float32  row 0: sum over the batch of phi[:, i]; row 1: count of phi[:, i] < 1;
//                         row 2: count of samples whose modality-i contribution was not finite
//                         (NaN/Inf features or baselines); row 3: [count of NaN rows of phi, 0, ...].
// A sample gets a NaN row when its label is outside [0, C) or when the scores of a coalition it evaluates
// (logits; for the MLP also the hidden pre-activations) hold a NaN or an Inf (NaN/Inf head parameters, or an
// overflow). The kernels never stop on bad values: they count them, so that a GPU call needs no host-device
// synchronisation; the Python wrapper raises on the counts.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "call_plan.h"
#include "cuda/switches.h"
#include "shapley.h"

// A module named _C so that `import fastshap._C` loads this library and runs the registrations below. Its
// only Python functions are the call plans' (call_plan.cpp, for fastshap/_call_plan.py).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, fastshap::call_plan_methods(), nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}

#ifndef FASTSHAP_CUDA_ARCH_LIST
#define FASTSHAP_CUDA_ARCH_LIST ""
#endif

namespace fastshap {

static std::string build_info() {
  std::string info = "cuda=";
  info += FASTSHAP_WITH_CUDA ? "1" : "0";
  info += ";cuda_arch=";
  info += FASTSHAP_CUDA_ARCH_LIST;
  info += ";cuda_tensor_cores_default=";
  info += kCudaTensorCoresByDefault ? "1" : "0";
#ifdef _OPENMP
  info += ";openmp=1";
#else
  info += ";openmp=0";
#endif
  info += ";compiler=";
#if defined(__clang__)
  info += "clang " __clang_version__;
#elif defined(__GNUC__)
  info += "gcc " __VERSION__;
#endif
  return info;
}

TORCH_LIBRARY(fastshap, m) {
  m.def(
      "shapley(Tensor[] features, str head, Tensor[] params, Tensor[] baselines, Tensor labels, str benefit) -> "
      "(Tensor, Tensor)");
  // The sampling estimator for any n (sampling.h, fastshap/sampling.py): orders (P, 2, n) int64, the
  // permutations walked in antithetic pairs; returns phi (B, n), stderr (B, n) and stats (4, n) float32.
  m.def(
      "shapley_sampled(Tensor[] features, str head, Tensor[] params, Tensor[] baselines, Tensor labels, "
      "str benefit, Tensor orders) -> (Tensor, Tensor, Tensor)");
  // Coalition values (B, 2^n) float32 (column S = v(S), bit i of S = modality i) and pairwise Shapley
  // interactions (B, n, n) float32 (phi on the diagonal), each with the (n,) float32 counts of rows whose
  // partial products hold NaN/Inf; the arguments of shapley (cpu/coalitions_cpu.cpp, fastshap/coalitions.py).
  m.def(
      "coalition_values(Tensor[] features, str head, Tensor[] params, Tensor[] baselines, Tensor labels, "
      "str benefit) -> (Tensor, Tensor)");
  m.def(
      "modality_interactions(Tensor[] features, str head, Tensor[] params, Tensor[] baselines, Tensor labels, "
      "str benefit) -> (Tensor, Tensor)");
  m.def("head_kinds() -> str", &head_kinds_description);
  m.def("build_info() -> str", &build_info);
}

}  // namespace fastshap
