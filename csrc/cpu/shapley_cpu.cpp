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

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <vector>

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
// the NaN rows of phi (labels outside [0, C), non-finite scores). One pass over phi written straight into the
// stats: at the batch sizes of a training step the ATen reductions this replaces (a dozen ops) cost more than
// the whole coalition walk. The sums run in double over fixed chunks of rows, added in chunk order: the same
// figures whatever the thread count.
std::tuple<Tensor, Tensor> finish(const Tensor& phi, const Tensor& nonfinite) {
  const int64_t batch = phi.size(0), n = phi.size(1);
  constexpr int64_t kRows = 4096;
  struct Partial {
    std::array<double, kMaxModalities> sum{};
    std::array<int64_t, kMaxModalities> below{};
    int64_t nan_rows = 0;
  };
  std::vector<Partial> partials(std::max<int64_t>(1, (batch + kRows - 1) / kRows));
  const float* values = phi.data_ptr<float>();  // (B, n), contiguous: made by at::empty
  at::parallel_for(0, static_cast<int64_t>(partials.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      Partial& part = partials[chunk];
      for (int64_t b = chunk * kRows; b < std::min(batch, (chunk + 1) * kRows); ++b) {
        bool nan_row = false;
        for (int64_t i = 0; i < n; ++i) {
          const float x = values[b * n + i];
          part.sum[i] += x;
          part.below[i] += x < 1.0f ? 1 : 0;
          nan_row |= std::isnan(x);
        }
        part.nan_rows += nan_row ? 1 : 0;
      }
    }
  });
  std::array<double, kMaxModalities> sum{};
  std::array<int64_t, kMaxModalities> below{};
  int64_t nan_rows = 0;
  for (const Partial& part : partials) {
    for (int64_t i = 0; i < n; ++i) {
      sum[i] += part.sum[i];
      below[i] += part.below[i];
    }
    nan_rows += part.nan_rows;
  }
  Tensor stats = at::empty({4, n}, phi.options());
  float* out = stats.data_ptr<float>();
  std::fill_n(out, 4 * n, 0.0f);
  const Tensor counts = nonfinite.contiguous();
  const float* bad = counts.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<float>(sum[i]);
    out[n + i] = static_cast<float>(below[i]);
    out[2 * n + i] = bad[i];
  }
  out[3 * n] = static_cast<float>(nan_rows);
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
