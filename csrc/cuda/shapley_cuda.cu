// CUDA kernels of the fastshap ops: one fused pass from features to Shapley values (shapley_tile.cuh),
// launched on the current stream of the features' device.
//
// Only c10's CUDA headers are included (not ATen/cuda/CUDAContext.h, which needs the cuBLAS/cuSPARSE/
// cuSOLVER headers that a bare toolkit may lack); device properties come from cudaDeviceGetAttribute.
#include "shapley_host.h"
#include "shapley_tile.cuh"

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

// Kernel parameters are passed by value; 4 KB is the limit on every supported architecture.
static_assert(sizeof(Params<double>) <= 4096 && sizeof(Params<float>) <= 4096, "kernel parameters too large");

template <typename In, typename T>
__global__ void __launch_bounds__(kThreads) shapley_kernel(const Params<T> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  DeviceExec ex;
  run_block<In, T>(ex, p, smem, static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(gridDim.x));
}

constexpr int64_t kDefaultSharedMemory = 48 * 1024;

// Per-device facts asked of the driver once instead of on every call (each call's host time matters on a
// GPU): device attributes, and how far each kernel's dynamic shared memory has been raised. Zero means not
// asked yet; two threads racing only repeat a call. Devices past kMaxDevices are asked every time.
constexpr int kMaxDevices = 64;

int device_attribute(cudaDeviceAttr attribute, int device, std::atomic<int>* cache) {
  if (device < kMaxDevices && cache[device].load(std::memory_order_relaxed) != 0) return cache[device].load();
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  if (device < kMaxDevices) cache[device].store(value);
  return value;
}

template <typename In, typename T>
void allow_shared_memory(int device, int64_t smem) {
  static std::atomic<int64_t> allowed[kMaxDevices];
  if (device < kMaxDevices && allowed[device].load(std::memory_order_relaxed) >= smem) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(&shapley_kernel<In, T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  if (device < kMaxDevices) allowed[device].store(smem);
}

struct CudaBackend {
  c10::optional<c10::cuda::CUDAGuard> guard;

  void enter(const at::Device& device) {
    TORCH_CHECK_VALUE(device.is_cuda(), "fastshap: the CUDA kernels take CUDA tensors, got tensors on ", device);
    guard.emplace(device);
  }

  Limits limits() const {
    static std::atomic<int> optin_cache[kMaxDevices], sms_cache[kMaxDevices];
    const int device = c10::cuda::current_device();
    const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device, optin_cache);
    const int sms = device_attribute(cudaDevAttrMultiProcessorCount, device, sms_cache);
    const int64_t hard = std::max<int64_t>(optin, kDefaultSharedMemory);
    return Limits{std::max<int64_t>(hard / 2, kDefaultSharedMemory), hard, 2 * int64_t{std::max(sms, 1)},
                  int64_t{1} << 24};
  }

  void prepare_scratch(Tensor&) {}

  template <typename In, typename T>
  void launch(const Params<T>& p) {
    auto kernel = &shapley_kernel<In, T>;
    const int64_t smem = p.plan.smem_bytes;
    if (smem > kDefaultSharedMemory) allow_shared_memory<In, T>(c10::cuda::current_device(), smem);
    kernel<<<static_cast<unsigned int>(p.plan.grid), kThreads, static_cast<size_t>(smem),
             c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
