// CPU kernels of fastshap::coalition_values and fastshap::modality_interactions (fastshap/coalitions.py):
// the coalition walk of the Shapley kernel (coalition_walk.h), with the values stored, or accumulated into the
// pairwise Shapley interaction numerators (Grabisch and Roubens 1999) next to the Shapley ones.
//
// Interactions, for i < j: I_ij = (1/(n-1)!) sum_T v(T) k_ij(T) with the integer coefficients
//   k_ij(T) = +w(|T| - 2) if T holds i and j,  -w(|T| - 1) if it holds one of them,  +w(|T|) if neither,
//   w(s) = s! (n - s - 2)!,
// exact in double for the discrete benefits (|v| <= n, sum_T |k_ij(T)| = 4 (n-1)!), divided once, as
// fastshap.coalitions.interactions_from_values does: the two backends agree bit for bit.
#include "cpu/coalition_walk.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <tuple>

namespace fastshap {
namespace {

using at::Tensor;
using cpu::ShapleyAccumulator;
using cpu::store_nan_row;

// Writes row b of values (B, 2^n) float32: column mask = v(mask).
struct ValuesSink {
  float* values;
  int64_t count;

  struct Row {
    float* row;
    inline void add(uint32_t mask, int, double value) { row[mask] = static_cast<float>(value); }
  };
  Row begin(int64_t b) const { return Row{values + b * count}; }
  void end(int64_t, const Row&) const {}
  void nan_row(int64_t b) const { store_nan_row(values + b * count, count); }
};

// The n (n - 1) / 2 pairs i < j in the order of fastshap.coalitions.pairs (torch.triu_indices).
constexpr int64_t kMaxPairs = kMaxModalities * (kMaxModalities - 1) / 2;

struct PairTable {
  int64_t n = 0, pairs = 0;
  std::array<uint32_t, kMaxPairs> both{};       // the bits of i and j
  std::array<double, kMaxModalities + 1> in2{};  // by |T|: +w(|T| - 2), T holds both
  std::array<double, kMaxModalities + 1> in1{};  // -w(|T| - 1), T holds one
  std::array<double, kMaxModalities + 1> in0{};  // +w(|T|), T holds neither
  double denominator = 1.0;                      // (n - 1)!
};

PairTable pair_table(int64_t n) {
  PairTable t;
  t.n = n;
  std::array<double, kMaxModalities + 1> fact{};
  fact[0] = 1.0;
  for (int64_t k = 1; k <= kMaxModalities; ++k) fact[k] = fact[k - 1] * static_cast<double>(k);
  auto w = [&](int64_t s) { return s >= 0 && s <= n - 2 ? fact[s] * fact[n - s - 2] : 0.0; };
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i + 1; j < n; ++j) t.both[t.pairs++] = (1u << i) | (1u << j);
  }
  for (int64_t size = 0; size <= n; ++size) {
    t.in2[size] = w(size - 2);
    t.in1[size] = -w(size - 1);
    t.in0[size] = w(size);
  }
  t.denominator = n >= 1 ? fact[n - 1] : 1.0;
  return t;
}

// Writes row b of out (B, n, n) float32: I_ij off the diagonal, phi_i on it.
struct InteractionsSink {
  const PairTable& table;
  const ShapleyCoefficients& coef;
  float* out;

  struct Numerators {
    const PairTable& table;
    ShapleyAccumulator phi;
    std::array<double, kMaxPairs> num{};

    inline void add(uint32_t mask, int size, double value) {
      phi.add(mask, size, value);
      if (value == 0.0) return;  // the paper benefit's many zeros; NaN goes on, and makes the row NaN
      const double a = value * table.in2[size], b = value * table.in1[size], c = value * table.in0[size];
      for (int64_t q = 0; q < table.pairs; ++q) {
        const uint32_t held = mask & table.both[q];
        num[q] += held == table.both[q] ? a : (held ? b : c);
      }
    }
  };
  Numerators begin(int64_t) const { return Numerators{table, ShapleyAccumulator{coef, table.n}}; }
  void end(int64_t b, const Numerators& acc) const {
    const int64_t n = table.n;
    float* row = out + b * n * n;
    acc.phi.store(row, n + 1);  // the diagonal
    int64_t q = 0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = i + 1; j < n; ++j, ++q) {
        row[i * n + j] = row[j * n + i] = static_cast<float>(acc.num[q] / table.denominator);
      }
    }
  }
  void nan_row(int64_t b) const { store_nan_row(out + b * table.n * table.n, table.n * table.n); }
};

std::tuple<Tensor, Tensor> coalition_values_cpu(at::TensorList features, c10::string_view head,
                                                at::TensorList params, at::TensorList baselines,
                                                const Tensor& labels, c10::string_view benefit_name) {
  const ProblemShape p = check_common(features, baselines, labels);
  const HeadShape h = check_head(head, params, p, features[0]);
  const Benefit benefit = parse_benefit(benefit_name);
  const int64_t count = int64_t{1} << p.n;
  Tensor values = at::empty({p.batch, count}, features[0].options().dtype(at::kFloat));
  ValuesSink sink{values.data_ptr<float>(), count};
  Tensor nonfinite = cpu::for_each_coalition_value(p, h, features, params, baselines, labels, benefit, sink);
  return {values, nonfinite};
}

std::tuple<Tensor, Tensor> modality_interactions_cpu(at::TensorList features, c10::string_view head,
                                                     at::TensorList params, at::TensorList baselines,
                                                     const Tensor& labels, c10::string_view benefit_name) {
  const ProblemShape p = check_common(features, baselines, labels);
  const HeadShape h = check_head(head, params, p, features[0]);
  const Benefit benefit = parse_benefit(benefit_name);
  Tensor out = at::empty({p.batch, p.n, p.n}, features[0].options().dtype(at::kFloat));
  const PairTable table = pair_table(p.n);
  const ShapleyCoefficients coef = shapley_coefficients(p.n);
  InteractionsSink sink{table, coef, out.data_ptr<float>()};
  Tensor nonfinite = cpu::for_each_coalition_value(p, h, features, params, baselines, labels, benefit, sink);
  return {out, nonfinite};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastshap, CPU, m) {
  m.impl("coalition_values", &coalition_values_cpu);
  m.impl("modality_interactions", &modality_interactions_cpu);
}

}  // namespace fastshap
