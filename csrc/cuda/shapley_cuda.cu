// CUDA kernel of the fastshap::shapley op: one fused pass from features to Shapley values (shapley_tile.cuh),
// launched on the current stream of the features' device. This file registers the op and holds the host
// side; the kernels themselves are compiled in kernels_<type>.cu (shapley_kernel.cuh).
//
// Only c10's CUDA headers are included (not ATen/cuda/CUDAContext.h, which needs the cuBLAS/cuSPARSE/
// cuSOLVER headers that a bare toolkit may lack); device properties come from cudaDeviceGetAttribute.
#include "shapley_host.h"
#include "shapley_launch.h"
#include "switches.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Optional.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

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
    // The run-time switches of switches.h: the cp.async staging and the tensor-core first layer (sm_80+).
    const bool pipeline = pipeline_switch();
    const bool tensor_cores = tensor_cores_switch() &&
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

std::tuple<Tensor, Tensor> shapley_cuda(at::TensorList features, c10::string_view head, at::TensorList params,
                                        at::TensorList baselines, const Tensor& labels, c10::string_view benefit) {
  CudaBackend backend;
  return run_op(features, head, params, baselines, labels, benefit, backend);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastshap, CUDA, m) { m.impl("shapley", &shapley_cuda); }

}  // namespace tile
}  // namespace fastshap
