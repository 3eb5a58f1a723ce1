// CUDA kernel of fastshap::shapley_sampled for the concat-linear and decision-fusion heads: one thread per
// (pair group, sample) walks that sample's orders of the group (sampling_walk.cuh), the host side
// (sampling_host.h) computes the partial products with ATen and adds the groups' sums. The MLP head's steps
// are GEMMs: on a GPU it takes the torch backend (fastshap/sampling.py), which runs them on cuBLAS.
//
// Only c10's CUDA headers are included, as in shapley_cuda.cu.
#include "cuda/sampling_host.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace fastshap {
namespace sampled {
namespace {

template <typename T>
__global__ void walk_kernel(WalkArgs<T> args, int64_t threads) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Consecutive threads take consecutive samples of one group: their loads of delta (n, K, B) and their
  // running scores (K, G B) are contiguous across a warp.
  if (t < threads) walk_thread(args, t / args.B, t % args.B);
}

struct CudaLaunch {
  template <typename T>
  void operator()(const WalkArgs<T>& args, int64_t threads) const {
    constexpr int kThreads = 128;
    const int64_t blocks = (threads + kThreads - 1) / kThreads;
    TORCH_CHECK_VALUE(blocks <= 0x7fffffff, "fastshap: too many samples x pair groups for one launch");
    walk_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(args, threads);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> shapley_sampled_cuda(at::TensorList features, c10::string_view head,
                                                                    at::TensorList params, at::TensorList baselines,
                                                                    const at::Tensor& labels,
                                                                    c10::string_view benefit,
                                                                    const at::Tensor& orders) {
  TORCH_CHECK_VALUE(!features.empty(), "fastshap: the op needs at least one modality's features");
  TORCH_CHECK_VALUE(features[0].is_cuda(), "fastshap: the CUDA kernels take CUDA tensors, got tensors on ",
                    features[0].device());
  c10::cuda::CUDAGuard guard(features[0].device());
  return sampled_additive(features, head, params, baselines, labels, benefit, orders, CudaLaunch{});
}

}  // namespace
}  // namespace sampled

TORCH_LIBRARY_IMPL(fastshap, CUDA, m) { m.impl("shapley_sampled", &sampled::shapley_sampled_cuda); }

}  // namespace fastshap
