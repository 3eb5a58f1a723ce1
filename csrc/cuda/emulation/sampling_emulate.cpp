// A CPU build of the CUDA kernel of fastshap::shapley_sampled (tests only): the same host side
// (sampling_host.h) and thread program (sampling_walk.cuh), every thread of the launch run on the CPU, last
// thread first (no thread may depend on another's progress). setup.py does not build it (csrc/cuda/emulation/):
// tests/kernels/test_sampling_kernels.py compiles it with torch.utils.cpp_extension.load into the op
// namespace fastshap_sampled_emulation.
#include "cuda/sampling_host.h"

#include <torch/library.h>

namespace fastshap {
namespace sampled {
namespace {

struct HostLaunch {
  template <typename T>
  void operator()(const WalkArgs<T>& args, int64_t threads) const {
    for (int64_t t = threads - 1; t >= 0; --t) walk_thread(args, t / args.B, t % args.B);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> shapley_sampled_emulated(
    at::TensorList features, c10::string_view head, at::TensorList params, at::TensorList baselines,
    const at::Tensor& labels, c10::string_view benefit, const at::Tensor& orders) {
  return sampled_additive(features, head, params, baselines, labels, benefit, orders, HostLaunch{});
}

}  // namespace
}  // namespace sampled
}  // namespace fastshap

TORCH_LIBRARY(fastshap_sampled_emulation, m) {
  m.def(
      "shapley_sampled(Tensor[] features, str head, Tensor[] params, Tensor[] baselines, Tensor labels, "
      "str benefit, Tensor orders) -> (Tensor, Tensor, Tensor)",
      &fastshap::sampled::shapley_sampled_emulated);
}
