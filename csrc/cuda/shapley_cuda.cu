// CUDA kernels of the fastshap ops: one fused pass from features to Shapley values (shapley_tile.cuh),
// launched on the current stream of the features' device. This file registers the ops and holds the host
// side; the kernels themselves are compiled in kernels_<type>.cu (shapley_kernel.cuh).
//
// Only c10's CUDA headers are included (not ATen/cuda/CUDAContext.h, which needs the cuBLAS/cuSPARSE/
// cuSOLVER headers that a bare toolkit may lack); device properties come from cudaDeviceGetAttribute.
#include "shapley_host.h"
#include "shapley_launch.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Optional.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

namespace fastshap {
namespace tile {
namespace {

using at::Tensor;

// Device attributes asked of the driver once per device instead of on every call (each call's host time
// matters on a GPU). The cache holds value + 1, so that zero means not asked yet (an attribute may be 0:
// the reserved shared memory before sm_80); two threads racing only repeat a call.
int device_attribute(cudaDeviceAttr attribute, int device, std::atomic<int>* cache) {
  if (device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached != 0) return cached - 1;
  }
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  if (device < kMaxDevices) cache[device].store(value + 1, std::memory_order_relaxed);
  return value;
}

struct CudaBackend {
  c10::optional<c10::cuda::CUDAGuard> guard;

  void enter(const at::Device& device) {
    TORCH_CHECK_VALUE(device.is_cuda(), "fastshap: the CUDA kernels take CUDA tensors, got tensors on ", device);
    guard.emplace(device);
  }

  Limits limits() const {
    static std::atomic<int> optin_cache[kMaxDevices], sms_cache[kMaxDevices], per_sm_cache[kMaxDevices],
        reserved_cache[kMaxDevices], major_cache[kMaxDevices];
    const int device = c10::cuda::current_device();
    const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device, optin_cache);
    const int sms = device_attribute(cudaDevAttrMultiProcessorCount, device, sms_cache);
    const int per_sm = device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor, device, per_sm_cache);
    const int reserved = device_attribute(cudaDevAttrReservedSharedMemoryPerBlock, device, reserved_cache);
    const int64_t hard = std::max<int64_t>(optin, kDefaultSharedMemory);
    // Two blocks per multiprocessor: half its shared memory less what the system keeps per block (H100: 228
    // KB, 1 KB reserved -> 113 KB).
    const int64_t soft = std::min<int64_t>(hard, int64_t{per_sm} / 2 - reserved);
    // FASTSHAP_CUDA_PIPELINE=0 turns the first layer's asynchronous staging off (read once), to compare the
    // two on a GPU without rebuilding.
    static const bool pipeline = [] {
      const char* value = std::getenv("FASTSHAP_CUDA_PIPELINE");
      return value == nullptr || std::string(value) != "0";
    }();
    // FASTSHAP_CUDA_TENSOR_CORES=1 / 0: the first layer of fp16/bf16/fp32 features with weights of their type
    // on tensor cores (sm_80+) or on FMAs; unset: kCudaTensorCoresByDefault. Read on every call, so that one
    // process can time both.
    const char* tc = std::getenv("FASTSHAP_CUDA_TENSOR_CORES");
    TORCH_CHECK_VALUE(tc == nullptr || std::string(tc) == "0" || std::string(tc) == "1",
                      "fastshap: FASTSHAP_CUDA_TENSOR_CORES must be 0 or 1 (or unset), got '", tc, "'");
    const bool tensor_cores = (tc == nullptr ? kCudaTensorCoresByDefault : std::string(tc) == "1") &&
                              device_attribute(cudaDevAttrComputeCapabilityMajor, device, major_cache) >= 8;
    return Limits{std::max<int64_t>(soft, kDefaultSharedMemory), hard, 2 * int64_t{std::max(sms, 1)},
                  int64_t{1} << 24, pipeline, tensor_cores};
  }

  void prepare_scratch(Tensor&) {}

  template <typename In, typename T>
  void launch(const Params<T>& p) {
    launch_tile_kernel<In, T>(p, c10::cuda::current_device(), c10::cuda::getCurrentCUDAStream());
  }
};

std::tuple<Tensor, Tensor> shapley_concat_cuda(at::TensorList features, const Tensor& weight, const Tensor& bias,
                                               at::TensorList baselines, const Tensor& labels,
                                               c10::string_view benefit) {
  CudaBackend backend;
  return run_op(kConcat, features, weight, bias, Tensor(), Tensor(), baselines, labels, benefit, backend);
}

std::tuple<Tensor, Tensor> shapley_decision_cuda(at::TensorList features, const Tensor& weight, const Tensor& bias,
                                                 at::TensorList baselines, const Tensor& labels,
                                                 c10::string_view benefit) {
  CudaBackend backend;
  return run_op(kDecision, features, weight, bias, Tensor(), Tensor(), baselines, labels, benefit, backend);
}

std::tuple<Tensor, Tensor> shapley_mlp_cuda(at::TensorList features, const Tensor& weight1, const Tensor& bias1,
                                            const Tensor& weight2, const Tensor& bias2, at::TensorList baselines,
                                            const Tensor& labels, c10::string_view benefit) {
  CudaBackend backend;
  return run_op(kMlp, features, weight1, bias1, weight2, bias2, baselines, labels, benefit, backend);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastshap, CUDA, m) {
  m.impl("shapley_concat", &shapley_concat_cuda);
  m.impl("shapley_decision", &shapley_decision_cuda);
  m.impl("shapley_mlp", &shapley_mlp_cuda);
}

}  // namespace tile
}  // namespace fastshap
