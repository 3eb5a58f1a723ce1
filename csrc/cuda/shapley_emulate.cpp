// A CPU build of the CUDA kernels' block program (shapley_tile.cuh) with the same host code
// (shapley_host.h), for tests on machines without a GPU: the threads of each phase run one after the other
// in a shuffled order, cp.async copies land at the last moment the PTX ISA allows, and a warp model computes
// what ldmatrix and mma leave in each lane's registers (HostExec, shapley_tile.cuh). It checks the kernels'
// indexing, plans and numerics, and catches most missing barriers, early reads of copies in flight and wrong
// fragment layouts; it cannot check the instructions themselves, timing, or the launch configuration.
// setup.py does not build it: tests/test_cuda.py compiles it
// with torch.utils.cpp_extension.load into the op namespace fastshap_cuda_emulation, whose ops take the
// shared-memory budgets, the fallback grid and whether tensor cores are allowed as extra arguments so that
// tests can force every plan.
#include "shapley_emulate.h"
#include "shapley_host.h"

#include <torch/library.h>

#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace fastshap {
namespace tile {
namespace {

using at::Tensor;

struct HostBackend {
  Limits lim;

  void enter(const at::Device& device) {
    TORCH_CHECK_VALUE(device.is_cpu(), "fastshap: the emulated CUDA kernels take CPU tensors, got ", device);
  }
  Limits limits() const { return lim; }
  // Uninitialised memory reads as NaN, so that a read before a write shows in the results.
  void prepare_scratch(Tensor& scratch) { scratch.fill_(std::numeric_limits<double>::quiet_NaN()); }

  template <typename In, typename T>
  void launch(const Params<T>& p) {
    std::vector<double> storage(static_cast<size_t>(p.plan.smem_bytes / 8 + 2));
    // 16-byte aligned start, filled with NaN bytes.
    auto* base = reinterpret_cast<unsigned char*>(storage.data());
    unsigned char* smem = base + (reinterpret_cast<uintptr_t>(base) % 16 == 0 ? 0 : 8);
    std::memset(smem, 0xff, static_cast<size_t>(p.plan.smem_bytes));
    emulate_blocks<In, T>(p, smem);
  }
};

Limits limits_of(int64_t soft, int64_t hard, int64_t fallback_grid, int64_t tensor_cores) {
  return Limits{soft, hard, fallback_grid, int64_t{1} << 24, true, tensor_cores != 0};
}

std::tuple<Tensor, Tensor> emulate_concat(at::TensorList features, const Tensor& weight, const Tensor& bias,
                                          at::TensorList baselines, const Tensor& labels, c10::string_view benefit,
                                          int64_t soft, int64_t hard, int64_t fallback_grid, int64_t tensor_cores) {
  HostBackend backend{limits_of(soft, hard, fallback_grid, tensor_cores)};
  return run_op(kConcat, features, weight, bias, Tensor(), Tensor(), baselines, labels, benefit, backend);
}

std::tuple<Tensor, Tensor> emulate_decision(at::TensorList features, const Tensor& weight, const Tensor& bias,
                                            at::TensorList baselines, const Tensor& labels, c10::string_view benefit,
                                            int64_t soft, int64_t hard, int64_t fallback_grid, int64_t tensor_cores) {
  HostBackend backend{limits_of(soft, hard, fallback_grid, tensor_cores)};
  return run_op(kDecision, features, weight, bias, Tensor(), Tensor(), baselines, labels, benefit, backend);
}

std::tuple<Tensor, Tensor> emulate_mlp(at::TensorList features, const Tensor& weight1, const Tensor& bias1,
                                       const Tensor& weight2, const Tensor& bias2, at::TensorList baselines,
                                       const Tensor& labels, c10::string_view benefit, int64_t soft, int64_t hard,
                                       int64_t fallback_grid, int64_t tensor_cores) {
  HostBackend backend{limits_of(soft, hard, fallback_grid, tensor_cores)};
  return run_op(kMlp, features, weight1, bias1, weight2, bias2, baselines, labels, benefit, backend);
}

// The plan the kernels would use, as "key=value;..." (for tests that must reach a given layout).
std::string describe_plan(int64_t head, int64_t n, int64_t n_sources, int64_t K, int64_t C, int64_t elem,
                          int64_t absent_rows, int64_t batch, int64_t soft, int64_t hard, int64_t fallback_grid,
                          int64_t tensor_cores) {
  // tensor_cores: as for 16-bit features with weights of their type on a device that allows them.
  const Shape sh{static_cast<int>(head), static_cast<int>(n),      static_cast<int>(n_sources), K, C,
                 static_cast<int>(elem), static_cast<int>(absent_rows), batch,                   tensor_cores != 0};
  const Plan pl = make_plan(sh, limits_of(soft, hard, fallback_grid, tensor_cores));
  std::ostringstream out;
  out << "tb=" << pl.tb << ";rows=" << pl.rows << ";p=" << (pl.p_shared ? "shared" : "global")
      << ";hl=" << (head == kMlp ? (pl.hl_shared ? "shared" : "global") : "none")
      << ";consts=" << (pl.consts_shared ? "shared" : "global") << ";pipe=" << (pl.pipe ? 1 : 0)
      << ";mma=" << (pl.mma ? 1 : 0) << ";stages=" << pl.mma_stages
      << ";smem=" << pl.smem_bytes << ";grid=" << pl.grid << ";tiles=" << pl.num_tiles
      << ";scratch=" << pl.scratch_per_block;
  return out.str();
}

}  // namespace

TORCH_LIBRARY(fastshap_cuda_emulation, m) {
  m.def(
      "shapley_concat(Tensor[] features, Tensor weight, Tensor bias, Tensor[] baselines, Tensor labels, "
      "str benefit, int soft_budget, int hard_budget, int fallback_grid, int tensor_cores=0) -> (Tensor, Tensor)",
      &emulate_concat);
  m.def(
      "shapley_decision(Tensor[] features, Tensor weight, Tensor bias, Tensor[] baselines, Tensor labels, "
      "str benefit, int soft_budget, int hard_budget, int fallback_grid, int tensor_cores=0) -> (Tensor, Tensor)",
      &emulate_decision);
  m.def(
      "shapley_mlp(Tensor[] features, Tensor weight1, Tensor bias1, Tensor weight2, Tensor bias2, "
      "Tensor[] baselines, Tensor labels, str benefit, int soft_budget, int hard_budget, int fallback_grid, "
      "int tensor_cores=0) -> (Tensor, Tensor)",
      &emulate_mlp);
  m.def(
      "describe_plan(int head, int n, int n_sources, int K, int C, int elem, int absent_rows, int batch, "
      "int soft_budget, int hard_budget, int fallback_grid, int tensor_cores=0) -> str",
      &describe_plan);
}

}  // namespace tile
}  // namespace fastshap
