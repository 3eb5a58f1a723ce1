// A CPU build of the CUDA kernels' block program (../shapley_tile.cuh) with the same host code
// (../shapley_host.h), for tests on machines without a GPU: the threads of each phase run one after the other
// in a shuffled order, cp.async copies land at the last moment the PTX ISA allows (host_exec.h), and a warp
// model computes what ldmatrix and mma leave in each lane's registers (warp_model.h). It checks the kernels'
// indexing, plans and numerics, and catches most missing barriers, early reads of copies in flight and wrong
// fragment layouts; it cannot check the instructions themselves, timing, or the launch configuration.
// setup.py does not build it: tests/emulation.py compiles it with torch.utils.cpp_extension.load into the op
// namespace fastshap_cuda_emulation, whose op takes the compiled op's arguments plus the shared-memory
// budgets, the fallback grid and whether tensor cores are allowed, so that tests can force every plan.
#include "shapley_emulate.h"
#include "../shapley_host.h"

#include <torch/library.h>

#include <algorithm>
#include <cmath>
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

std::tuple<Tensor, Tensor> emulate(at::TensorList features, c10::string_view head, at::TensorList params,
                                   at::TensorList baselines, const Tensor& labels, c10::string_view benefit,
                                   int64_t soft, int64_t hard, int64_t fallback_grid, int64_t tensor_cores) {
  HostBackend backend{limits_of(soft, hard, fallback_grid, tensor_cores)};
  return run_op(features, head, params, baselines, labels, benefit, backend);
}

int head_code(c10::string_view head) {
  for (const HeadKind& kind : kHeadKinds) {
    if (head == kind.name) return kind.code;
  }
  TORCH_CHECK_VALUE(false, "fastshap: unknown head kind '", std::string(head), "'");
}

// The plan the kernels would use, as "key=value;..." (for tests that must reach a given layout).
std::string describe_plan(c10::string_view head_name, int64_t n, int64_t n_sources, int64_t K, int64_t C, int64_t elem,
                          int64_t absent_rows, int64_t batch, int64_t soft, int64_t hard, int64_t fallback_grid,
                          int64_t tensor_cores) {
  // tensor_cores: as for 16-bit features with weights of their type on a device that allows them.
  const int head = head_code(head_name);
  const Shape sh{head, static_cast<int>(n),      static_cast<int>(n_sources), K, C,
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

// What the emulation's schedule and models catch, on tiny programs of their own (so that a change that
// weakens them fails a test): [threads of a 256-thread phase that saw a neighbour's write of the same phase
// (neither 0 nor 256 when the order is shuffled), copies read before their wait that were garbage, copies read
// after it that were right, tile entries the warp model got right out of 256].
std::vector<int64_t> self_check() {
  HostExec ex;
  ex.begin_block();
  // A missing barrier: thread t writes slot t, then reads slot t + 1 in the same phase.
  std::vector<int> slots(kThreads, 0);
  int64_t saw_write = 0;
  ex.each([&](int tid) {
    slots[tid] = 1;
    saw_write += slots[(tid + 1) % kThreads];
  });
  // cp.async: 16 bytes a thread, read before and after the wait for its group.
  alignas(16) float src[kThreads][4], dst[kThreads][4];
  for (int t = 0; t < kThreads; ++t) std::fill_n(src[t], 4, static_cast<float>(t));
  int64_t garbage_before = 0, right_after = 0;
  ex.each([&](int tid) {
    copy_async16(dst[tid], src[tid], true);
    commit_copies();
    garbage_before += std::isnan(dst[tid][0]) ? 1 : 0;
    wait_copies<0>();
    right_after += dst[tid][0] == static_cast<float>(tid) ? 1 : 0;
  });
  // The warp model: one 16 x 16 tile of A W^T over one step, against the plain product.
  using In = c10::BFloat16;
  alignas(16) In a[kMmaTile * kMmaLd<In>], w[kMmaTile * kMmaLd<In>];
  for (int r = 0; r < kMmaTile; ++r) {
    for (int j = 0; j < kMmaLd<In>; ++j) {
      a[r * kMmaLd<In> + j] = In(static_cast<float>((r * 7 + j * 3) % 11 - 5));
      w[r * kMmaLd<In> + j] = In(static_cast<float>((r * 5 + j) % 9 - 4));
    }
  }
  HostExec::Mma<In> mma;
  float got[kMmaTile][kMmaTile] = {};
  ex.each([&](int tid) {
    if (tid >= 32) return;
    mma.zero(tid, 0);
    mma.step(tid, 0, a, w);
    mma.store(tid, 0, [&](int r, int k, float v) { got[r][k] = v; });
  });
  int64_t mma_right = 0;
  for (int r = 0; r < kMmaTile; ++r) {
    for (int k = 0; k < kMmaTile; ++k) {
      float want = 0.0f;
      for (int j = 0; j < kMmaDepth<In>; ++j) {
        want += static_cast<float>(a[r * kMmaLd<In> + j]) * static_cast<float>(w[k * kMmaLd<In> + j]);
      }
      mma_right += got[r][k] == want ? 1 : 0;
    }
  }
  return {saw_write, garbage_before, right_after, mma_right};
}

}  // namespace

TORCH_LIBRARY(fastshap_cuda_emulation, m) {
  m.def(
      "shapley(Tensor[] features, str head, Tensor[] params, Tensor[] baselines, Tensor labels, str benefit, "
      "int soft_budget, int hard_budget, int fallback_grid, int tensor_cores=0) -> (Tensor, Tensor)",
      &emulate);
  m.def(
      "describe_plan(str head, int n, int n_sources, int K, int C, int elem, int absent_rows, int batch, "
      "int soft_budget, int hard_budget, int fallback_grid, int tensor_cores=0) -> str",
      &describe_plan);
  m.def("self_check() -> int[]", &self_check);
}

}  // namespace tile
}  // namespace fastshap
