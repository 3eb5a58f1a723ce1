// CPU kernel of fastshap::shapley_sampled: antithetic permutation sampling of modality Shapley values, for
// any number of modalities, over the partial products the exact kernel uses (cpu/partials.h).
//
// fastshap/sampling.py defines the estimator and the canonical computation reproduced here: each walk starts
// from score(empty) and adds delta[i] = present[i] - absent[i] in its order; v(empty) and v(N) are evaluated
// once per sample; marginals and the sums of the pair draws are float64. The additive heads (concat, decision)
// walk sample by sample, in parallel over the batch, one K-vector add and one evaluation per step. The MLP
// head walks a chunk of samples and pairs together (fastshap.sampling.chunk_sizes) and evaluates each step's
// hidden layer with one GEMM, the torch backend's GEMM (same shapes and layout, so the same bits).
#include "cpu/partials.h"
#include "sampling.h"
#include "shapley.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

namespace fastshap {
namespace {

using at::Tensor;
using cpu::all_finite;
using cpu::first_argmax_is;
using cpu::is_finite;
using cpu::label_ok;
using cpu::softmax_at;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// v(S) of a coalition of `size` modalities from its scores (K contiguous); NaN when they are not all finite.
// mean_of > 0: decision fusion, whose probability benefit is the mean of the summed probabilities.
template <typename T>
inline double value_of(const T* score, int64_t K, int64_t label, int64_t size, Benefit benefit, int64_t mean_of) {
  if (benefit == Benefit::Paper && size == 0) return 0.0;  // v(empty) = 0 by definition: never evaluated
  if (!all_finite(score, K)) return kNaN;
  switch (benefit) {
    case Benefit::Paper:
      return first_argmax_is(score, K, label) ? static_cast<double>(size) : 0.0;
    case Benefit::Accuracy:
      return first_argmax_is(score, K, label) ? 1.0 : 0.0;
    case Benefit::Probability:
      return mean_of > 0 ? static_cast<double>(score[label]) / static_cast<double>(mean_of)
                         : softmax_at(score, K, label);
  }
  return 0.0;
}

// The partial products of one call and what every walk starts from.
struct Walks {
  int64_t n, batch, K, pairs;
  Tensor present;  // (n, B, K), unit stride along K
  Tensor absent;   // (n, 1 or B, K) likewise, or undefined (a removed modality contributes zero)
  Tensor start;    // (K,)
  const int64_t* orders;  // (P, 2, n) contiguous
  const int64_t* labels;  // (B,)
  Benefit benefit;
  int64_t mean_of;  // n for decision fusion, else 0
};

// start + parts[0][row] + ... + parts[n-1][row] into out (K), left to right (the exact op's order).
template <typename T>
void left_to_right(const T* start, const T* parts, int64_t s0, int64_t row_offset, int64_t n, int64_t K, T* out) {
  std::copy(start, start + K, out);
  for (int64_t i = 0; i < n; ++i) {
    const T* part = parts + i * s0 + row_offset;
    for (int64_t c = 0; c < K; ++c) out[c] = out[c] + part[c];
  }
}

// Concat-linear and decision-fusion heads: the score is the running sum itself. Writes the sums of the pair
// draws and of their squares, (B, n) float64; a sample with a label outside [0, K) gets NaN sums.
template <typename T>
void additive_walks(const Walks& w, double* first, double* second) {
  const int64_t n = w.n, K = w.K;
  const T* present = w.present.data_ptr<T>();
  const T* absent = w.absent.defined() ? w.absent.data_ptr<T>() : nullptr;
  const T* start = w.start.data_ptr<T>();
  const int64_t ps0 = w.present.stride(0), ps1 = w.present.stride(1);
  const int64_t as0 = absent ? w.absent.stride(0) : 0, as1 = absent ? w.absent.stride(1) : 0;
  const int64_t absent_rows = absent ? w.absent.size(1) : 0;
  // Enough steps per task to amortise the scheduling.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, w.pairs * n * K));
  at::parallel_for(0, w.batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> empty(K), full(K), sums(K), delta(n * K);
    std::vector<double> marginals(2 * n);
    for (int64_t b = begin; b < end; ++b) {
      double* s1 = first + b * n;
      double* s2 = second + b * n;
      const int64_t y = w.labels[b];
      if (!label_ok(y, K)) {
        std::fill(s1, s1 + n, kNaN);
        std::fill(s2, s2 + n, kNaN);
        continue;
      }
      const int64_t a_row = absent_rows == 1 ? 0 : b;
      // delta[i] = present[i] - absent[i] (present[i] alone without baselines), as the torch backend's tensor.
      for (int64_t i = 0; i < n; ++i) {
        const T* p = present + i * ps0 + b * ps1;
        T* d = delta.data() + i * K;
        if (absent) {
          const T* a = absent + i * as0 + a_row * as1;
          for (int64_t c = 0; c < K; ++c) d[c] = p[c] - a[c];
        } else {
          std::copy(p, p + K, d);
        }
      }
      left_to_right(start, present, ps0, b * ps1, n, K, full.data());
      if (absent) {
        left_to_right(start, absent, as0, a_row * as1, n, K, empty.data());
      } else {
        std::copy(start, start + K, empty.data());
      }
      const double v_full = value_of(full.data(), K, y, n, w.benefit, w.mean_of);
      const double v_empty = value_of(empty.data(), K, y, 0, w.benefit, w.mean_of);
      std::fill(s1, s1 + n, 0.0);
      std::fill(s2, s2 + n, 0.0);
      for (int64_t p = 0; p < w.pairs; ++p) {
        for (int64_t k = 0; k < 2; ++k) {
          const int64_t* order = w.orders + (p * 2 + k) * n;
          double* m = marginals.data() + k * n;
          std::copy(empty.begin(), empty.end(), sums.begin());
          double previous = v_empty;
          for (int64_t j = 0; j + 1 < n; ++j) {
            const T* d = delta.data() + order[j] * K;
            for (int64_t c = 0; c < K; ++c) sums[c] = sums[c] + d[c];
            const double value = value_of(sums.data(), K, y, j + 1, w.benefit, w.mean_of);
            m[order[j]] = value - previous;
            previous = value;
          }
          m[order[n - 1]] = v_full - previous;
        }
        for (int64_t i = 0; i < n; ++i) {
          const double draw = (marginals[i] + marginals[n + i]) * 0.5;
          s1[i] += draw;
          s2[i] += draw * draw;
        }
      }
    }
  });
}

// The MLP head: a chunk of samples and pairs walks together; each step's running pre-activations (H, W, rows)
// go through relu and one GEMM, logits (C, W rows) = addmm(b2, W2, relu), as the torch backend computes them.
template <typename T>
void mlp_walks(const Walks& w, const Tensor& weight2, const Tensor& bias2, double* first, double* second) {
  const int64_t n = w.n, H = w.K, C = weight2.size(0), batch = w.batch;
  const auto options = w.present.options();
  const Tensor b2 = bias2.unsqueeze(1);
  // (H, n, B) class-major deltas and (H, B) / (H, 1|B) full and empty sums, as the torch backend's tensors.
  const Tensor delta = (w.absent.defined() ? w.present.sub(w.absent) : w.present).permute({2, 0, 1}).contiguous();
  Tensor full_rows = at::empty({batch, H}, options);
  Tensor empty_rows = at::empty({w.absent.defined() ? w.absent.size(1) : 1, H}, options);
  {
    const T* start = w.start.data_ptr<T>();
    const T* present = w.present.data_ptr<T>();
    for (int64_t b = 0; b < batch; ++b) {
      left_to_right(start, present, w.present.stride(0), b * w.present.stride(1), n, H,
                    full_rows.data_ptr<T>() + b * H);
    }
    if (w.absent.defined()) {
      for (int64_t r = 0; r < empty_rows.size(0); ++r) {
        left_to_right(start, w.absent.data_ptr<T>(), w.absent.stride(0), r * w.absent.stride(1), n, H,
                      empty_rows.data_ptr<T>() + r * H);
      }
    } else {
      std::copy(start, start + H, empty_rows.data_ptr<T>());
    }
  }
  const Tensor full = full_rows.t().contiguous();    // (H, B)
  const Tensor empty = empty_rows.t().contiguous();  // (H, 1|B)
  const T* delta_data = delta.data_ptr<T>();

  // Values of `walks` x `rows` coalitions of `size` modalities from their pre-activations (H, walks, rows):
  // (walks, rows) into out, NaN where the pre-activations or the logits are not all finite.
  auto evaluate = [&](const Tensor& pre_any, int64_t walks, int64_t b0, int64_t rows, int64_t size, double* out) {
    if (w.benefit == Benefit::Paper && size == 0) {
      std::fill(out, out + walks * rows, 0.0);
      return;
    }
    const Tensor pre = pre_any.contiguous();  // (H, walks, rows), read below by index
    const Tensor hidden = pre.relu().contiguous().view({H, walks * rows});
    const Tensor logits = at::addmm(b2, weight2, hidden).t().contiguous();  // (walks rows, C)
    const T* L = logits.data_ptr<T>();
    const T* P = pre.data_ptr<T>();
    const int64_t columns = walks * rows;
    at::parallel_for(0, columns, 256, [&](int64_t begin, int64_t end) {
      // Finite pre-activations, read row by row (a column of (H, columns) is `columns` apart).
      std::vector<char> finite(end - begin, 1);
      for (int64_t h = 0; h < H; ++h) {
        const T* row = P + h * columns;
        for (int64_t col = begin; col < end; ++col) finite[col - begin] &= is_finite(row[col]);
      }
      for (int64_t col = begin; col < end; ++col) {
        const int64_t b = b0 + col % rows;
        out[col] = finite[col - begin] ? value_of(L + col * C, C, w.labels[b], size, w.benefit, 0) : kNaN;
      }
    });
  };

  const auto [rows_step, pairs_step] = chunk_sizes(batch, w.pairs, n, H);
  for (int64_t b0 = 0; b0 < batch; b0 += rows_step) {
    const int64_t rows = std::min(rows_step, batch - b0);
    std::vector<double> v_full(rows), v_empty(rows);
    evaluate(full.narrow(1, b0, rows).unsqueeze(1), 1, b0, rows, n, v_full.data());
    const Tensor e = (empty.size(1) == 1 ? empty : empty.narrow(1, b0, rows)).expand({H, rows}).unsqueeze(1);
    evaluate(e, 1, b0, rows, 0, v_empty.data());
    for (int64_t p0 = 0; p0 < w.pairs; p0 += pairs_step) {
      const int64_t pairs = std::min(pairs_step, w.pairs - p0), walks = 2 * pairs;
      const int64_t* orders = w.orders + p0 * 2 * n;
      Tensor sums = e.expand({H, walks, rows}).contiguous();  // (H, W, rows)
      T* S = sums.data_ptr<T>();
      std::vector<double> marginals(walks * rows * n), previous(walks * rows), value(walks * rows);
      for (int64_t col = 0; col < walks * rows; ++col) previous[col] = v_empty[col % rows];
      for (int64_t j = 0; j + 1 < n; ++j) {
        at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
          for (int64_t h = begin; h < end; ++h) {
            for (int64_t k = 0; k < walks; ++k) {
              const T* d = delta_data + (h * n + orders[k * n + j]) * batch + b0;
              T* s = S + (h * walks + k) * rows;
              for (int64_t r = 0; r < rows; ++r) s[r] = s[r] + d[r];
            }
          }
        });
        evaluate(sums, walks, b0, rows, j + 1, value.data());
        for (int64_t col = 0; col < walks * rows; ++col) {
          const int64_t k = col / rows;
          marginals[col * n + orders[k * n + j]] = value[col] - previous[col];
          previous[col] = value[col];
        }
      }
      for (int64_t col = 0; col < walks * rows; ++col) {
        const int64_t k = col / rows;
        marginals[col * n + orders[k * n + n - 1]] = v_full[col % rows] - previous[col];
      }
      for (int64_t r = 0; r < rows; ++r) {
        double* s1 = first + (b0 + r) * n;
        double* s2 = second + (b0 + r) * n;
        for (int64_t p = 0; p < pairs; ++p) {
          const double* m0 = marginals.data() + ((2 * p) * rows + r) * n;
          const double* m1 = marginals.data() + ((2 * p + 1) * rows + r) * n;
          for (int64_t i = 0; i < n; ++i) {
            const double draw = (m0[i] + m1[i]) * 0.5;
            s1[i] += draw;
            s2[i] += draw * draw;
          }
        }
      }
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> shapley_sampled_cpu(at::TensorList features, c10::string_view head,
                                                       at::TensorList params, at::TensorList baselines,
                                                       const Tensor& labels, c10::string_view benefit_name,
                                                       const Tensor& orders) {
  TORCH_CHECK_VALUE(!features.empty(), "fastshap: the op needs at least one modality's features");
  const ProblemShape p = check_common(features, baselines, labels, std::numeric_limits<int64_t>::max());
  const HeadShape h = check_head(head, params, p, features[0]);
  const Benefit benefit = parse_benefit(benefit_name);
  check_orders(orders, p.n, features[0]);
  const auto ct = cpu::compute_type(features[0]);
  const Tensor order = orders.contiguous();
  const Tensor weight = params[h.kind->first_layer];
  Tensor present = cpu::partial_products(features, weight, p, ct);
  Tensor absent = baselines.empty() ? Tensor() : cpu::partial_products(baselines, weight, p, ct);
  Tensor nonfinite = cpu::count_nonfinite(present);
  if (absent.defined()) nonfinite.add_(cpu::count_nonfinite(absent));
  Tensor y = labels.contiguous();
  // A label outside [0, C) is never read: the walks take class 0 instead, and the row comes back NaN.
  const Tensor bad_labels = y.lt(0).logical_or(y.ge(h.C));
  const Tensor safe = y.masked_fill(bad_labels, 0);

  Walks w{p.n, p.batch, h.K, orders.size(0), present, absent, Tensor(), order.data_ptr<int64_t>(),
          safe.data_ptr<int64_t>(), benefit, 0};
  Tensor first = at::zeros({p.batch, p.n}, features[0].options().dtype(at::kDouble));
  Tensor second = at::zeros({p.batch, p.n}, first.options());
  if (h.kind->code == kDecision) {
    const Tensor bias = params[1].to(ct).unsqueeze(1);
    w.present = at::softmax(present.add(bias), -1);
    w.absent = at::softmax((absent.defined() ? absent : at::zeros({p.n, 1, h.K}, bias.options())).add(bias), -1);
    w.start = at::zeros({h.K}, w.present.options());
    w.mean_of = p.n;
  } else {
    w.start = params[1].to(ct).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(ct, "fastshap_sampled_cpu", [&] {
    if (h.kind->code == kMlp) {
      mlp_walks<scalar_t>(w, params[2].to(ct), params[3].to(ct), first.data_ptr<double>(),
                          second.data_ptr<double>());
    } else {
      additive_walks<scalar_t>(w, first.data_ptr<double>(), second.data_ptr<double>());
    }
  });

  return finish_sampled(first, second, orders.size(0), bad_labels, nonfinite);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastshap, CPU, m) { m.impl("shapley_sampled", &shapley_sampled_cpu); }

}  // namespace fastshap
