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

struct CudaBackend {
  c10::optional<c10::cuda::CUDAGuard> guard;

  void enter(const at::Device& device) {
    TORCH_CHECK_VALUE(device.is_cuda(), "fastshap: the CUDA kernels take CUDA tensors, got tensors on ", device);
    guard.emplace(device);
  }

  Limits limits() const {
    const int device = c10::cuda::current_device();
    int optin = 0, sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int64_t hard = std::max<int64_t>(optin, kDefaultSharedMemory);
    return Limits{std::max<int64_t>(hard / 2, kDefaultSharedMemory), hard, 2 * int64_t{std::max(sms, 1)},
                  int64_t{1} << 24};
  }

  void prepare_scratch(Tensor&) {}

  template <typename In, typename T>
  void launch(const Params<T>& p) {
    auto kernel = &shapley_kernel<In, T>;
    const int64_t smem = p.plan.smem_bytes;
    if (smem > kDefaultSharedMemory) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    }
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
