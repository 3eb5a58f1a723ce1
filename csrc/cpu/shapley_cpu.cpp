// CPU kernel of the fastshap::shapley op, for every head kind of head_kinds.h.
//
// Per call: (1) ATen GEMMs give each modality's partial products against its slice of the head's first
// layer, for the real features ("present") and for the baselines ("absent"); (2) one pass per sample,
// parallel over the batch, walks all 2^n coalitions depth first, so each coalition costs about one vector
// add, decides correctness (first-index argmax) and accumulates the exact Shapley numerators. The MLP head
// adds a chunked GEMM for its second layer between the walk and the evaluation.
//
// Summation order, GEMM calls and chunking follow fastshap/reference.py exactly, which is why the two
// backends return identical values.
#include "cpu/partials.h"
#include "shapley.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <tuple>
#include <vector>

namespace fastshap {
namespace {

using at::Tensor;
using cpu::all_finite;
using cpu::compute_type;
using cpu::count_nonfinite;
using cpu::first_argmax_is;
using cpu::is_finite;
using cpu::label_ok;
using cpu::padded_weight;
using cpu::partial_products;
using cpu::softmax_at;

void store_nan_row(float* row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) row[i] = std::numeric_limits<float>::quiet_NaN();
}

// The sums that define each coalition's score: level k holds start + sel_0 + ... + sel_{k-1}, where
// sel_i is the present (i in S) or absent (i not in S) contribution of modality i, added left to right.
template <typename T>
struct CoalitionWalk {
  int64_t n, K, batch, absent_rows;
  const T* start;    // (K)
  const T* present;  // (n, batch, K): element (i, b, c) at i * present_s0 + b * present_s1 + c
  const T* absent;   // (n, absent_rows, K) likewise, or nullptr when removed modalities contribute zero
  int64_t present_s0, present_s1, absent_s0, absent_s1;

  // Calls visit(mask, size, score) for every coalition; bit i of mask is modality i. `scratch` holds n*K.
  template <typename Visit>
  void run(int64_t b, T* scratch, Visit&& visit) const {
    std::array<const T*, kMaxModalities + 1> level{};
    level[0] = start;
    const uint32_t count = 1u << n;
    uint32_t mask = 0;
    int64_t from = 0;
    for (uint32_t t = 0; t < count; ++t) {
      // Modality k is decided by bit (n-1-k) of t, so counting t up changes only the last modalities'
      // decisions: recompute the levels from the first changed one.
      if (t != 0) from = n - 1 - __builtin_ctz(t);
      for (int64_t k = from; k < n; ++k) {
        const bool in = (t >> (n - 1 - k)) & 1u;
        mask = in ? (mask | (1u << k)) : (mask & ~(1u << k));
        const T* add = in ? present + k * present_s0 + b * present_s1
                          : (absent ? absent + k * absent_s0 + (absent_rows == 1 ? 0 : b) * absent_s1 : nullptr);
        if (add == nullptr) {
          level[k + 1] = level[k];  // adding a zero contribution is exact: skip it
        } else {
          T* dst = scratch + k * K;
          const T* src = level[k];
          for (int64_t c = 0; c < K; ++c) dst[c] = src[c] + add[c];
          level[k + 1] = dst;
        }
      }
      visit(mask, __builtin_popcount(mask), level[n]);
    }
  }
};

// The walk over start (K) and partial products present / absent ((n, rows, K), unit stride along K).
template <typename T>
CoalitionWalk<T> make_walk(int64_t n, int64_t K, int64_t batch, const Tensor& start, const Tensor& present,
                           const Tensor& absent) {
  TORCH_INTERNAL_ASSERT(start.is_contiguous() && (K <= 1 || present.stride(2) == 1));
  TORCH_INTERNAL_ASSERT(!absent.defined() || K <= 1 || absent.stride(2) == 1);
  const bool a = absent.defined();
  return CoalitionWalk<T>{n, K, batch, a ? absent.size(1) : 0, start.data_ptr<T>(), present.data_ptr<T>(),
                          a ? absent.data_ptr<T>() : nullptr, present.stride(0), present.stride(1),
                          a ? absent.stride(0) : 0, a ? absent.stride(1) : 0};
}

// Accumulates v(S) * k_i(S) into the n Shapley numerators.
struct ShapleyAccumulator {
  const ShapleyCoefficients& coef;
  int64_t n;
  std::array<double, kMaxModalities> num{};

  inline void add(uint32_t mask, int size, double value) {
    if (value == 0.0) return;
    const double gain = value * coef.in[size], loss = value * coef.out[size];
    for (int64_t i = 0; i < n; ++i) num[i] += ((mask >> i) & 1u) ? gain : -loss;
  }
  inline void store(float* phi_row) const {
    for (int64_t i = 0; i < n; ++i) phi_row[i] = static_cast<float>(num[i] / coef.n_factorial);
  }
};

enum class Combine { Logits, MeanProbability };

// v(S) from a coalition's score vector; NaN when the scores are not all finite.
template <typename T>
inline double coalition_value(const T* score, int64_t K, int64_t label, int size, Benefit benefit, Combine combine,
                              int64_t n) {
  if (benefit == Benefit::Paper && size == 0) return 0.0;  // v(empty) = 0 by definition: never evaluated
  if (!all_finite(score, K)) return std::numeric_limits<double>::quiet_NaN();
  switch (benefit) {
    case Benefit::Paper:
      return first_argmax_is(score, K, label) ? static_cast<double>(size) : 0.0;
    case Benefit::Accuracy:
      return first_argmax_is(score, K, label) ? 1.0 : 0.0;
    case Benefit::Probability:
      // Decision fusion scores are sums of per-modality probabilities; the benefit is their mean.
      return combine == Combine::MeanProbability ? static_cast<double>(score[label]) / static_cast<double>(n)
                                                 : softmax_at(score, K, label);
  }
  return 0.0;
}

// Grain of the batch loop: enough coalitions per task to amortise the scheduling.
int64_t batch_grain(int64_t n) { return std::max<int64_t>(1, 256 >> std::min<int64_t>(n, 8)); }

// Concat-linear and decision-fusion heads: the coalition score is a sum of per-modality vectors.
template <typename T>
void additive_kernel(const CoalitionWalk<T>& walk, const int64_t* labels, Benefit benefit, Combine combine,
                     const ShapleyCoefficients& coef, float* phi) {
  at::parallel_for(0, walk.batch, batch_grain(walk.n), [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(walk.n * walk.K);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t y = labels[b];
      if (!label_ok(y, walk.K)) {
        store_nan_row(phi + b * walk.n, walk.n);
        continue;
      }
      ShapleyAccumulator acc{coef, walk.n};
      walk.run(b, scratch.data(), [&](uint32_t mask, int size, const T* score) {
        acc.add(mask, size, coalition_value(score, walk.K, y, size, benefit, combine, walk.n));
      });
      acc.store(phi + b * walk.n);
    }
  });
}

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

std::tuple<Tensor, Tensor> additive_op(const ProblemShape& p, at::TensorList features, const Tensor& weight,
                                       const Tensor& start_or_bias, at::TensorList baselines, const Tensor& labels,
                                       Benefit benefit, Combine combine) {
  const int64_t K = weight.size(0);
  const auto ct = compute_type(features[0]);
  Tensor y = labels.contiguous();
  Tensor phi = at::empty({p.batch, p.n}, features[0].options().dtype(at::kFloat));
  Tensor present = partial_products(features, weight, p, ct);
  Tensor absent = baselines.empty() ? Tensor() : partial_products(baselines, weight, p, ct);
  Tensor nonfinite = count_nonfinite(present);
  if (absent.defined()) nonfinite.add_(count_nonfinite(absent));

  Tensor start;
  if (combine == Combine::MeanProbability) {
    // Decision fusion: each modality's classifier (its weight columns plus its own bias row) goes through
    // its own softmax; a removed modality's classifier sees its baseline (zeros: just its bias).
    Tensor bias = start_or_bias.to(ct).unsqueeze(1);
    present = at::softmax(present.add(bias), -1);
    absent = at::softmax((absent.defined() ? absent : at::zeros({p.n, 1, K}, bias.options())).add(bias), -1);
    start = at::zeros({K}, present.options());
  } else {
    start = start_or_bias.to(ct).contiguous();
  }
  const ShapleyCoefficients coef = shapley_coefficients(p.n);
  AT_DISPATCH_FLOATING_TYPES(present.scalar_type(), "fastshap_additive_cpu", [&] {
    const auto walk = make_walk<scalar_t>(p.n, K, p.batch, start, present, absent);
    additive_kernel(walk, y.data_ptr<int64_t>(), benefit, combine, coef, phi.data_ptr<float>());
  });
  return finish(phi, nonfinite);
}

// Samples per second-layer GEMM of the MLP head. Must equal fastshap.reference._mlp_chunk_samples: equal
// GEMM shapes are what makes the two backends bit-identical.
int64_t mlp_chunk_samples(int64_t batch, int64_t n, int64_t hidden) {
  const int64_t per_sample = (int64_t{1} << n) * std::max<int64_t>(hidden, 1);
  return std::max<int64_t>(1, std::min<int64_t>(batch, (int64_t{1} << 22) / per_sample));
}

std::tuple<Tensor, Tensor> mlp_op(const ProblemShape& p, at::TensorList features, const Tensor& weight1,
                                  const Tensor& bias1, const Tensor& weight2, const Tensor& bias2,
                                  at::TensorList baselines, const Tensor& labels, Benefit benefit) {
  const int64_t H = weight1.size(0), C = weight2.size(0);
  const auto ct = compute_type(features[0]);
  Tensor y_t = labels.contiguous();
  const int64_t* y = y_t.data_ptr<int64_t>();
  Tensor phi = at::empty({p.batch, p.n}, features[0].options().dtype(at::kFloat));
  Tensor present = partial_products(features, weight1, p, ct);
  Tensor absent = baselines.empty() ? Tensor() : partial_products(baselines, weight1, p, ct);
  Tensor nonfinite = count_nonfinite(present);
  if (absent.defined()) nonfinite.add_(count_nonfinite(absent));
  Tensor start = bias1.to(ct).contiguous();
  // The second layer's GEMM pads its output columns too (C to gemm_width(C)): logits rows are C2 apart.
  const Tensor w2t = padded_weight(weight2, ct).t();
  const int64_t C2 = w2t.size(1);
  Tensor b2 = bias2.to(ct);
  if (C2 != C) b2 = at::cat({b2, at::zeros({C2 - C}, b2.options())});
  const ShapleyCoefficients coef = shapley_coefficients(p.n);
  const int64_t coalitions = int64_t{1} << p.n;
  const int64_t chunk = mlp_chunk_samples(p.batch, p.n, H);
  Tensor hidden = at::empty({chunk * coalitions, H}, present.options());

  AT_DISPATCH_FLOATING_TYPES(present.scalar_type(), "fastshap_mlp_cpu", [&] {
    const auto walk = make_walk<scalar_t>(p.n, H, p.batch, start, present, absent);
    for (int64_t c0 = 0; c0 < p.batch; c0 += chunk) {
      const int64_t rows = std::min(chunk, p.batch - c0);
      scalar_t* z = hidden.data_ptr<scalar_t>();
      // Hidden layer of every coalition of every sample in the chunk: row j * 2^n + mask.
      at::parallel_for(0, rows, batch_grain(p.n), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(p.n * H);
        for (int64_t j = begin; j < end; ++j) {
          walk.run(c0 + j, scratch.data(), [&](uint32_t mask, int, const scalar_t* pre) {
            scalar_t* row = z + (j * coalitions + mask) * H;
            // ReLU, except that a NaN/Inf pre-activation goes on as NaN (then the logits and v(S) are NaN).
            for (int64_t h = 0; h < H; ++h) {
              row[h] = !is_finite(pre[h]) ? std::numeric_limits<scalar_t>::quiet_NaN()
                                          : (pre[h] > scalar_t(0) ? pre[h] : scalar_t(0));
            }
          });
        }
      });
      Tensor logits = at::addmm(b2, hidden.narrow(0, 0, rows * coalitions), w2t);
      const scalar_t* L = logits.data_ptr<scalar_t>();
      at::parallel_for(0, rows, batch_grain(p.n), [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          const int64_t b = c0 + j;
          if (!label_ok(y[b], C)) {
            store_nan_row(phi.data_ptr<float>() + b * p.n, p.n);
            continue;
          }
          ShapleyAccumulator acc{coef, p.n};
          for (int64_t mask = 0; mask < coalitions; ++mask) {
            const int size = __builtin_popcount(static_cast<uint32_t>(mask));
            const scalar_t* score = L + (j * coalitions + mask) * C2;
            acc.add(static_cast<uint32_t>(mask), size,
                    coalition_value(score, C, y[b], size, benefit, Combine::Logits, p.n));
          }
          acc.store(phi.data_ptr<float>() + b * p.n);
        }
      });
    }
  });
  return finish(phi, nonfinite);
}

std::tuple<Tensor, Tensor> shapley_cpu(at::TensorList features, c10::string_view head, at::TensorList params,
                                       at::TensorList baselines, const Tensor& labels, c10::string_view benefit_name) {
  const ProblemShape p = check_common(features, baselines, labels);
  const HeadShape h = check_head(head, params, p, features[0]);
  const Benefit benefit = parse_benefit(benefit_name);
  switch (h.kind->code) {
    case kConcat:
      return additive_op(p, features, params[0], params[1], baselines, labels, benefit, Combine::Logits);
    case kDecision:
      return additive_op(p, features, params[0], params[1], baselines, labels, benefit, Combine::MeanProbability);
    case kMlp:
      return mlp_op(p, features, params[0], params[1], params[2], params[3], baselines, labels, benefit);
  }
  TORCH_CHECK_VALUE(false, "fastshap: the CPU kernel does not run the ", h.kind->name, " head");
}

}  // namespace

TORCH_LIBRARY_IMPL(fastshap, CPU, m) { m.impl("shapley", &shapley_cpu); }

}  // namespace fastshap
