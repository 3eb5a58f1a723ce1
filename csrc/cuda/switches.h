// Every path of the CUDA kernels that is off by default or can be switched at run time, in one place: each
// switch's default and whether the code behind it has run on a GPU. (docs/internals.md, "Switches", lists
// them with the build's own switches; docs/gpu.md says what the next GPU run should check.)
//
// What has run on a GPU: the fused kernel's FMA first layer with element-wise staging and the coalition
// phases, on an H100 (the GPU tests and benchmarks of 2026-11-27). Everything named below as "not run" was
// written and tested since on the CPU emulation only (csrc/cuda/emulation/).
//
// Plain C++ (no CUDA headers): fastshap.cpp reports the defaults in build_info in CPU-only builds too.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace fastshap {

// The first layer on tensor cores (ldmatrix + mma.sync, fp16/bf16 or 3xTF32 fp32; sm_80 and later, features
// and head weights of one dtype): taken when FASTSHAP_CUDA_TENSOR_CORES is unset. Default OFF. Not run on a
// GPU yet: the GPU tests (tests/kernels/test_cuda.py -k tensor_cores) decide whether it may become the default.
// The tests pin the variable, so flipping this constant changes no test's expectations.
constexpr bool kCudaTensorCoresByDefault = false;

// FASTSHAP_CUDA_TENSOR_CORES=1 / 0: the tensor-core first layer on / off; unset: kCudaTensorCoresByDefault;
// any other value is an error. Read on every call, so that one process can time both.
constexpr const char* kTensorCoresVariable = "FASTSHAP_CUDA_TENSOR_CORES";

// FASTSHAP_CUDA_PIPELINE=0 turns off the FMA first layer's asynchronous staging (cp.async through two
// shared-memory stages, sm_80+; the plan takes it when its stages fit). Default ON. Not run on a GPU yet: the
// variable rules it out (and times the staging without it) without a rebuild. Read once per process.
constexpr const char* kPipelineVariable = "FASTSHAP_CUDA_PIPELINE";

// Whether this call may plan the tensor-core first layer (before the device's own capability is asked).
inline bool tensor_cores_switch() {
  const char* value = std::getenv(kTensorCoresVariable);
  TORCH_CHECK_VALUE(value == nullptr || std::string(value) == "0" || std::string(value) == "1", "fastshap: ",
                    kTensorCoresVariable, " must be 0 or 1 (or unset), got '", value, "'");
  return value == nullptr ? kCudaTensorCoresByDefault : std::string(value) == "1";
}

// Whether the plans may take the asynchronous staging (read once: the first call's environment decides).
inline bool pipeline_switch() {
  static const bool on = [] {
    const char* value = std::getenv(kPipelineVariable);
    return value == nullptr || std::string(value) != "0";
  }();
  return on;
}

}  // namespace fastshap
