// Host side of the fused kernels, shared by the CUDA build (shapley_cuda.cu) and the CPU emulation used by the
// tests (emulation/shapley_emulate.cpp): argument checks, the small precomputations, the plan (tile_plan.h),
// the launch through a `Backend`, and the stats.
//
// A Backend provides
//   void enter(const at::Device&)              checks the device (and holds a device guard)
//   Limits limits() const                      shared-memory budgets and grid sizes
//   void prepare_scratch(at::Tensor&)          called on the global scratch before the launch
//   template <typename In, typename T> void launch(const Params<T>&)
#pragma once

#include "shapley.h"
#include "tile_common.cuh"
#include "tile_mma_fragments.cuh"
#include "tile_plan.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <tuple>
#include <vector>

namespace fastshap {
namespace tile {

static_assert(kPaper == static_cast<int>(Benefit::Paper) && kAccuracy == static_cast<int>(Benefit::Accuracy) &&
                  kProbability == static_cast<int>(Benefit::Probability),
              "benefit codes must match fastshap::Benefit");
static_assert(kMaxN == kMaxModalities, "the kernels are compiled for every n the op accepts");

// What a launch needs besides the plan: the tensors it reads, already checked and in the compute type.
struct Prepared {
  int head = kConcat;
  int benefit = kPaper;
  ProblemShape shape;
  int64_t K = 0, C = 0;
  std::vector<at::Tensor> sources;  // n features, then n per-sample baselines (if any)
  at::Tensor weight1, start, dec_bias, absent, weight2, bias2, labels, phi, stats, scratch;
  at::Tensor weight1_in;  // weight1 in the features' type, for a tensor-core plan
  int64_t absent_stride = 0;
  ShapleyCoefficients coef;
  Plan plan;
};

template <typename T>
Params<T> make_params(const Prepared& pr) {
  Params<T> p;
  p.head = pr.head;
  p.benefit = pr.benefit;
  p.n = static_cast<int>(pr.shape.n);
  p.n_sources = static_cast<int>(pr.sources.size());
  p.batch = pr.shape.batch;
  p.K = pr.K;
  p.C = pr.C;
  p.D = pr.shape.total_dim;
  for (int s = 0; s < p.n_sources; ++s) {
    const at::Tensor& x = pr.sources[s];
    const int64_t i = s % p.n;
    p.src[s] = Source{x.data_ptr(), x.stride(0), x.stride(1), pr.shape.offsets[i], pr.shape.dims[i]};
  }
  p.weight1 = pr.weight1.data_ptr<T>();
  p.weight1_in = pr.weight1_in.defined() ? pr.weight1_in.data_ptr() : nullptr;
  p.start = pr.start.data_ptr<T>();
  p.dec_bias = pr.dec_bias.defined() ? pr.dec_bias.data_ptr<T>() : nullptr;
  p.absent = pr.absent.data_ptr<T>();
  p.absent_stride = pr.absent_stride;
  p.absent_rows = static_cast<int>(pr.absent.size(0));
  p.weight2 = pr.weight2.defined() ? pr.weight2.data_ptr<T>() : nullptr;
  p.bias2 = pr.bias2.defined() ? pr.bias2.data_ptr<T>() : nullptr;
  p.labels = pr.labels.data_ptr<int64_t>();
  p.label_stride = pr.labels.stride(0);
  p.phi = pr.phi.data_ptr<float>();
  p.stats = pr.stats.data_ptr<double>();
  p.scratch = pr.scratch.defined() ? pr.scratch.data_ptr<T>() : nullptr;
  for (int s = 0; s <= kMaxN; ++s) {
    p.coef_in[s] = pr.coef.in[s];
    p.coef_out[s] = pr.coef.out[s];
  }
  p.n_factorial = pr.coef.n_factorial;
  p.plan = pr.plan;
  return p;
}

inline Shape plan_shape(const Prepared& pr, int elem) {
  return Shape{pr.head,           static_cast<int>(pr.shape.n), static_cast<int>(pr.sources.size()), pr.K, pr.C, elem,
               static_cast<int>(pr.absent.size(0)), pr.shape.batch};
}

// The fastshap::shapley op on `backend`: `params` are the parameters of the head kind `head` (head_kinds.h).
template <class Backend>
std::tuple<at::Tensor, at::Tensor> run_op(at::TensorList features, c10::string_view head, at::TensorList params,
                                          at::TensorList baselines, const at::Tensor& labels,
                                          c10::string_view benefit_name, Backend& backend) {
  using at::Tensor;
  Prepared pr;
  pr.shape = check_common(features, baselines, labels);
  const HeadShape hs = check_head(head, params, pr.shape, features[0]);
  pr.head = hs.kind->code;
  TORCH_CHECK_VALUE(pr.head == kConcat || pr.head == kDecision || pr.head == kMlp,
                    "fastshap: the CUDA kernels do not run the ", hs.kind->name, " head");
  pr.benefit = static_cast<int>(parse_benefit(benefit_name));
  const ProblemShape& ps = pr.shape;
  const at::Device device = features[0].device();
  backend.enter(device);

  const int64_t n = ps.n, B = ps.batch, K = hs.K;
  const int head_code = pr.head;
  // The kinds' parameters: the first layer (K, D), the concat bias (C), the decision biases (n, C) or the
  // MLP's first bias (H); the MLP's second layer.
  const Tensor& weight1 = params[0];
  const Tensor& bias1 = params[1];
  const Tensor weight2 = head_code == kMlp ? params[2] : Tensor();
  const Tensor bias2 = head_code == kMlp ? params[3] : Tensor();
  pr.K = K;
  pr.C = hs.C;
  TORCH_CHECK_VALUE(B == 0 || pr.C >= 1, "fastshap: the head has no classes");

  const bool wide = features[0].scalar_type() == at::kDouble;
  const auto ct = wide ? at::kDouble : at::kFloat;
  const auto opts = features[0].options().dtype(ct);
  pr.weight1 = weight1.to(ct).contiguous();
  const bool per_sample = !baselines.empty() && baselines[0].dim() == 2;
  const bool shared = !baselines.empty() && !per_sample;

  // One zero-filled allocation (one fill launch, which a GPU's host pays for) holds the kernel's float64
  // stats accumulators (4, n) and, when removed modalities add nothing, the zero row they add (1, K).
  const bool zero_row = !shared && head_code != kDecision;
  const int64_t stats_bytes = 4 * n * static_cast<int64_t>(sizeof(double));  // a multiple of 32: aligned
  const int64_t row_bytes = zero_row ? K * at::elementSize(ct) : 0;
  const Tensor zeros = at::zeros({stats_bytes + row_bytes}, features[0].options().dtype(at::kByte));
  pr.stats = zeros.narrow(0, 0, stats_bytes).view(at::kDouble).view({4, n});  // accumulated by the kernel

  // A removed modality's contribution when it is the same for every sample: shared baselines' partial
  // products (one small GEMM each), zeros, and for decision fusion their softmax with the classifier's bias.
  Tensor host_nonfinite;  // rows of the shared baselines' products holding NaN/Inf (defined with them)
  Tensor absent;
  if (shared) {
    absent = at::empty({n, K}, opts);
    for (int64_t i = 0; i < n; ++i) {
      Tensor dst = absent.narrow(0, i, 1);
      at::mm_out(dst, baselines[i].to(ct).unsqueeze(0), pr.weight1.narrow(1, ps.offsets[i], ps.dims[i]).t());
    }
    host_nonfinite = at::isfinite(absent).logical_not().any(-1).to(at::kFloat);
  }
  if (head_code == kDecision) {
    pr.dec_bias = bias1.to(ct).contiguous();
    const Tensor logits = shared ? absent : at::zeros({n, K}, opts);
    absent = at::softmax(logits.add(pr.dec_bias), -1).contiguous();
    pr.start = at::zeros({K}, opts);
  } else {
    pr.start = bias1.to(ct).contiguous();
    if (zero_row) absent = zeros.narrow(0, stats_bytes, row_bytes).view(ct).view({1, K});  // adds exactly 0
  }
  pr.absent = absent;
  pr.absent_stride = absent.size(0) == 1 ? 0 : K;
  if (head_code == kMlp) {
    pr.weight2 = weight2.to(ct).contiguous();
    pr.bias2 = bias2.to(ct).contiguous();
  }
  pr.labels = labels;
  pr.phi = at::empty({B, n}, features[0].options().dtype(at::kFloat));
  pr.coef = shapley_coefficients(n);

  if (B > 0) {
    // The kernels read fp32, fp16, bf16 and fp64 features directly; another floating type is widened once.
    const auto in_type = features[0].scalar_type();
    const bool native = in_type == at::kFloat || in_type == at::kHalf || in_type == at::kBFloat16 || wide;
    auto source = [&](const Tensor& t) { return native ? t : t.to(at::kFloat); };
    for (int64_t i = 0; i < n; ++i) pr.sources.push_back(source(features[i]));
    if (per_sample) {
      for (int64_t i = 0; i < n; ++i) pr.sources.push_back(source(baselines[i]));
    }
    // Tensor cores read the weights in the features' type: only when the head is of that type are the
    // products those of the other plans (the sums are in the MMA's order; fp32 as 3xTF32).
    Shape sh = plan_shape(pr, wide ? 8 : 4);
    sh.mma = (in_type == at::kHalf || in_type == at::kBFloat16 || in_type == at::kFloat) &&
             weight1.scalar_type() == in_type;
    pr.plan = make_plan(sh, backend.limits());
    if (pr.plan.mma) pr.weight1_in = weight1.contiguous();
    if (pr.plan.scratch_per_block > 0) {
      pr.scratch = at::empty({pr.plan.grid * pr.plan.scratch_per_block}, opts);
      backend.prepare_scratch(pr.scratch);
    }
    if (!native || in_type == at::kFloat) {
      backend.template launch<float, float>(make_params<float>(pr));
    } else if (in_type == at::kHalf) {
      backend.template launch<c10::Half, float>(make_params<float>(pr));
    } else if (in_type == at::kBFloat16) {
      backend.template launch<c10::BFloat16, float>(make_params<float>(pr));
    } else {
      backend.template launch<double, double>(make_params<double>(pr));
    }
  }
  // The kernel accumulates the stats rows in float64 (one atomic per tile and row): on a GPU every small
  // op here would be a launch the host pays for.
  Tensor stats = pr.stats.to(at::kFloat);
  if (host_nonfinite.defined()) stats.select(0, 2).add_(host_nonfinite);
  const Tensor& phi = pr.phi;
  return {phi, stats};
}

}  // namespace tile
}  // namespace fastshap
