// CPU kernel of the fastshap::shapley op, for every head kind of head_kinds.h.
//
// Per call: (1) ATen GEMMs give each modality's partial products against its slice of the head's first
// layer, for the real features ("present") and for the baselines ("absent"); (2) one pass per sample,
// parallel over the batch, walks all 2^n coalitions depth first, so each coalition costs about one vector
// add, decides correctness (first-index argmax) and accumulates the exact Shapley numerators. The MLP head
// adds a chunked GEMM for its second layer between the walk and the evaluation.
//
// Summation order, GEMM calls and chunking follow fastshap/reference.py exactly, which is why the two
// backends return identical values. The GEMMs, the walk and the driver live in coalition_walk.h, shared with
// the coalition ops (coalitions_cpu.cpp); this file accumulates the Shapley numerators.
#include "cpu/coalition_walk.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

namespace fastshap {
namespace {

using at::Tensor;
using cpu::ShapleyAccumulator;

// Accumulates each sample's Shapley numerators and stores its phi row.
struct PhiSink {
  const ShapleyCoefficients& coef;
  int64_t n;
  float* phi;

  ShapleyAccumulator begin(int64_t) const { return ShapleyAccumulator{coef, n}; }
  void end(int64_t b, const ShapleyAccumulator& acc) const { acc.store(phi + b * n); }
  void nan_row(int64_t b) const { cpu::store_nan_row(phi + b * n, n); }
};

// stats (4, n): batch sums of phi, counts of phi < 1, non-finite rows per modality, and in column 0 of row 3
// the NaN rows of phi (labels outside [0, C), non-finite scores).
std::tuple<Tensor, Tensor> finish(const Tensor& phi, const Tensor& nonfinite) {
  Tensor stats = at::zeros({4, phi.size(1)}, phi.options());
  stats.select(0, 0).copy_(phi.sum(0));
  stats.select(0, 1).copy_(phi.lt(1.0).sum(0));
  stats.select(0, 2).copy_(nonfinite);
  if (phi.size(1) > 0) stats.select(0, 3).select(0, 0).copy_(phi.isnan().any(1).sum());
  return {phi, stats};
}

std::tuple<Tensor, Tensor> shapley_cpu(at::TensorList features, c10::string_view head, at::TensorList params,
                                       at::TensorList baselines, const Tensor& labels, c10::string_view benefit_name) {
  const ProblemShape p = check_common(features, baselines, labels);
  const HeadShape h = check_head(head, params, p, features[0]);
  const Benefit benefit = parse_benefit(benefit_name);
  Tensor phi = at::empty({p.batch, p.n}, features[0].options().dtype(at::kFloat));
  const ShapleyCoefficients coef = shapley_coefficients(p.n);
  PhiSink sink{coef, p.n, phi.data_ptr<float>()};
  Tensor nonfinite = cpu::for_each_coalition_value(p, h, features, params, baselines, labels, benefit, sink);
  return finish(phi, nonfinite);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastshap, CPU, m) { m.impl("shapley", &shapley_cpu); }

}  // namespace fastshap
