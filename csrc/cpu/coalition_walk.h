// The CPU kernels' coalition walk, shared by the exact Shapley op (shapley_cpu.cpp) and the coalition ops
// (coalitions_cpu.cpp): the depth-first walk over the 2^n coalitions of each sample, each coalition's value
// v(S), and one driver that runs the canonical computation of fastshap/reference.py (the padded GEMMs of
// partials.h, the walk's left-to-right sums, the MLP's second layer in the same chunks) and hands every value
// of every sample to a per-sample accumulator. shapley_cpu.cpp accumulates the Shapley numerators;
// coalitions_cpu.cpp stores the values, or accumulates the pairwise interaction numerators. One walk and one
// set of GEMMs: the ops see the same v(S), bit for bit, as each other and as the torch backend.
#pragma once

#include "cpu/partials.h"
#include "shapley.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <vector>

namespace fastshap {
namespace cpu {

inline void store_nan_row(float* row, int64_t count) {
  for (int64_t i = 0; i < count; ++i) row[i] = std::numeric_limits<float>::quiet_NaN();
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

// Accumulates v(S) * k_i(S) into the n Shapley numerators (shapley.h: exact integers for the discrete
// benefits), divided once by n! when stored.
struct ShapleyAccumulator {
  const ShapleyCoefficients& coef;
  int64_t n;
  std::array<double, kMaxModalities> num{};

  inline void add(uint32_t mask, int size, double value) {
    if (value == 0.0) return;
    const double gain = value * coef.in[size], loss = value * coef.out[size];
    for (int64_t i = 0; i < n; ++i) num[i] += ((mask >> i) & 1u) ? gain : -loss;
  }
  inline void store(float* phi_row, int64_t stride = 1) const {
    for (int64_t i = 0; i < n; ++i) phi_row[i * stride] = static_cast<float>(num[i] / coef.n_factorial);
  }
};

// Grain of the batch loop: enough coalitions per task to amortise the scheduling.
inline int64_t batch_grain(int64_t n) { return std::max<int64_t>(1, 256 >> std::min<int64_t>(n, 8)); }

// Samples per second-layer GEMM of the MLP head. Must equal fastshap.reference._mlp_chunk_samples: equal
// GEMM shapes are what makes the two backends bit-identical.
inline int64_t mlp_chunk_samples(int64_t batch, int64_t n, int64_t hidden) {
  const int64_t per_sample = (int64_t{1} << n) * std::max<int64_t>(hidden, 1);
  return std::max<int64_t>(1, std::min<int64_t>(batch, (int64_t{1} << 22) / per_sample));
}

// Concat-linear and decision-fusion heads: the coalition score is a sum of per-modality vectors.
template <typename Sink>
void additive_values(const ProblemShape& p, const Tensor& weight, const Tensor& bias, Tensor present, Tensor absent,
                     const int64_t* y, Benefit benefit, Combine combine, Sink& sink) {
  const int64_t K = weight.size(0);
  const auto ct = present.scalar_type();
  Tensor start;
  if (combine == Combine::MeanProbability) {
    // Decision fusion: each modality's classifier (its weight columns plus its own bias row) goes through
    // its own softmax; a removed modality's classifier sees its baseline (zeros: just its bias).
    Tensor b = bias.to(ct).unsqueeze(1);
    present = at::softmax(present.add(b), -1);
    absent = at::softmax((absent.defined() ? absent : at::zeros({p.n, 1, K}, b.options())).add(b), -1);
    start = at::zeros({K}, present.options());
  } else {
    start = (bias.scalar_type() == ct ? bias : bias.to(ct)).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(present.scalar_type(), "fastshap_additive_cpu", [&] {
    const auto walk = make_walk<scalar_t>(p.n, K, p.batch, start, present, absent);
    at::parallel_for(0, p.batch, batch_grain(p.n), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(p.n * K);
      for (int64_t b = begin; b < end; ++b) {
        if (!label_ok(y[b], K)) {
          sink.nan_row(b);
          continue;
        }
        auto acc = sink.begin(b);
        walk.run(b, scratch.data(), [&](uint32_t mask, int size, const scalar_t* score) {
          acc.add(mask, size, coalition_value(score, K, y[b], size, benefit, combine, p.n));
        });
        sink.end(b, acc);
      }
    });
  });
}

// MLP head: the walk gives each coalition's hidden pre-activations; one GEMM per chunk of samples the logits.
template <typename Sink>
void mlp_values(const ProblemShape& p, const Tensor& weight1, const Tensor& bias1, const Tensor& weight2,
                const Tensor& bias2, const Tensor& present, const Tensor& absent, const int64_t* y, Benefit benefit,
                Sink& sink) {
  const int64_t H = weight1.size(0), C = weight2.size(0);
  const auto ct = present.scalar_type();
  Tensor start = bias1.to(ct).contiguous();
  // The second layer's GEMM pads its output columns too (C to gemm_width(C)): logits rows are C2 apart.
  const Tensor w2t = padded_weight(weight2, ct).t();
  const int64_t C2 = w2t.size(1);
  Tensor b2 = bias2.to(ct);
  if (C2 != C) b2 = at::cat({b2, at::zeros({C2 - C}, b2.options())});
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
            sink.nan_row(b);
            continue;
          }
          auto acc = sink.begin(b);
          for (int64_t mask = 0; mask < coalitions; ++mask) {
            const int size = __builtin_popcount(static_cast<uint32_t>(mask));
            const scalar_t* score = L + (j * coalitions + mask) * C2;
            acc.add(static_cast<uint32_t>(mask), size,
                    coalition_value(score, C, y[b], size, benefit, Combine::Logits, p.n));
          }
          sink.end(b, acc);
        }
      });
    }
  });
}

// The driver: v(S) of every coalition of every sample, in the canonical computation, handed to `sink`:
//   sink.begin(b)                  -> sample b's accumulator `acc` (on the stack)
//   acc.add(mask, size, value)     for every coalition of the sample (bit i of mask: modality i; size = |S|)
//   sink.end(b, acc)               after the sample's last coalition
//   sink.nan_row(b)                instead, for a sample whose label is outside [0, C)
// Samples run in parallel (a sink writes only its sample's rows). Returns the (n,) float counts of rows whose
// partial products hold NaN/Inf (the ops' non-finite statistics). Arguments checked by check_common and
// check_head (shapley_common.cpp).
template <typename Sink>
Tensor for_each_coalition_value(const ProblemShape& p, const HeadShape& h, at::TensorList features,
                                at::TensorList params, at::TensorList baselines, const Tensor& labels,
                                Benefit benefit, Sink& sink) {
  const auto ct = compute_type(features[0]);
  const Tensor y = labels.contiguous();
  const Tensor& first = params[h.kind->first_layer];
  Tensor present = partial_products(features, first, p, ct);
  Tensor absent = baselines.empty() ? Tensor() : partial_products(baselines, first, p, ct);
  Tensor nonfinite = count_nonfinite(present);
  if (absent.defined()) nonfinite.add_(count_nonfinite(absent));
  const int64_t* labels_data = y.data_ptr<int64_t>();
  switch (h.kind->code) {
    case kConcat:
      additive_values(p, params[0], params[1], present, absent, labels_data, benefit, Combine::Logits, sink);
      return nonfinite;
    case kDecision:
      additive_values(p, params[0], params[1], present, absent, labels_data, benefit, Combine::MeanProbability,
                      sink);
      return nonfinite;
    case kMlp:
      mlp_values(p, params[0], params[1], params[2], params[3], present, absent, labels_data, benefit, sink);
      return nonfinite;
  }
  TORCH_CHECK_VALUE(false, "fastshap: the CPU kernels do not run the ", h.kind->name, " head");
}

}  // namespace cpu
}  // namespace fastshap
