// Pieces of the CPU kernels that the exact op (shapley_cpu.cpp) and the sampled op (sampling_cpu.cpp) share:
// the partial products (padded GEMMs, the torch backend's), the count of their non-finite rows, and how a
// coalition's scores are read (finiteness, first-index argmax, softmax at the label).
#pragma once

#include "shapley.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

namespace fastshap {
namespace cpu {

using at::Tensor;

inline at::ScalarType compute_type(const Tensor& features0) {
  return features0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// `weight` (K, D) in dtype ct with its output rows padded by zero rows to gemm_width(K) (shapley.h: the
// torch backend pads alike, so both run the same GEMMs), and that width. A contiguous weight of dtype ct is
// copied into one allocation: at the batch sizes of a training step each ATen call here costs about as much
// as a GEMM.
inline Tensor padded_weight(const Tensor& weight, at::ScalarType ct) {
  const int64_t K = weight.size(0), width = gemm_width(K);
  if (width != K && weight.scalar_type() == ct && weight.is_contiguous()) {
    Tensor w = at::empty({width, weight.size(1)}, weight.options());
    const int64_t bytes = weight.numel() * weight.element_size();
    std::memcpy(w.data_ptr(), weight.data_ptr(), bytes);
    std::memset(static_cast<char*>(w.data_ptr()) + bytes, 0, (width - K) * weight.size(1) * weight.element_size());
    return w;
  }
  Tensor w = weight.scalar_type() == ct ? weight : weight.to(ct);
  return width == K ? w : at::cat({w, at::zeros({width - K, w.size(1)}, w.options())});
}

// (n, rows, K): xs[i] (rows, d_i) or (d_i,) times the columns of modality i of `weight` (K, D); a view of
// (n, rows, gemm_width(K)) GEMM outputs, so its rows are gemm_width(K) apart.
inline Tensor partial_products(at::TensorList xs, const Tensor& weight, const ProblemShape& p, at::ScalarType ct) {
  const int64_t rows = xs[0].dim() == 1 ? 1 : xs[0].size(0);
  const Tensor w = padded_weight(weight, ct);
  Tensor out = at::empty({p.n, rows, w.size(0)}, weight.options().dtype(ct));
  for (int64_t i = 0; i < p.n; ++i) {
    Tensor x = xs[i].scalar_type() == ct ? xs[i] : xs[i].to(ct);
    if (x.dim() == 1) x = x.unsqueeze(0);
    Tensor dst = out.select(0, i);
    // w.narrow(1, offset, d).t() as one view
    const Tensor wt = w.as_strided({p.dims[i], w.size(0)}, {w.stride(1), w.stride(0)},
                                   w.storage_offset() + p.offsets[i] * w.stride(1));
    at::mm_out(dst, x, wt);
  }
  return out.narrow(2, 0, weight.size(0));
}

// (n,) float: for each modality, how many rows of its partial products (n, rows, K), rows with unit stride,
// hold a NaN or an Inf. A non-finite feature always yields a non-finite partial product (NaN propagates;
// Inf * w is +-Inf or NaN), so this one cheap pass over (n, rows, K) replaces a pass over the much wider
// features.
inline Tensor count_nonfinite(const Tensor& partials) {
  const int64_t n = partials.size(0), rows = partials.size(1), K = partials.size(2);
  const int64_t s0 = partials.stride(0), s1 = partials.stride(1);
  TORCH_INTERNAL_ASSERT(K <= 1 || partials.stride(2) == 1);
  Tensor counts = at::empty({n}, partials.options().dtype(at::kFloat));  // every entry is written below
  float* out = counts.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "fastshap_count_nonfinite", [&] {
    const scalar_t* data = partials.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      out[i] = static_cast<float>(at::parallel_reduce(
          0, rows, 2048, int64_t{0},
          [&](int64_t begin, int64_t end, int64_t found) {
            for (int64_t r = begin; r < end; ++r) {
              const scalar_t* row = data + i * s0 + r * s1;
              // x * 0 is 0 for finite x and NaN otherwise: one compare per row instead of K branches.
              scalar_t total = 0;
              for (int64_t c = 0; c < K; ++c) total += row[c] * scalar_t(0);
              found += total == scalar_t(0) ? 0 : 1;
            }
            return found;
          },
          std::plus<int64_t>()));
    }
  });
  return counts;
}

// A label outside [0, C) gives its sample a NaN row (no coalition is evaluated for it); so does a coalition
// whose scores (logits, MLP hidden pre-activations) hold a NaN or an Inf: its v(S) is NaN. Stats row 3
// counts the NaN rows, as in every backend: the caller decides whether that is an error, without a second
// pass.
inline bool label_ok(int64_t y, int64_t num_classes) { return y >= 0 && y < num_classes; }

// |x| <= max is false for NaN and Inf; written as a compare (no branch, no libm call) so that loops over it
// vectorise.
template <typename T>
inline bool is_finite(T x) {
  return std::fabs(x) <= std::numeric_limits<T>::max();
}

template <typename T>
inline bool all_finite(const T* x, int64_t K) {
  bool ok = true;
  for (int64_t c = 0; c < K; ++c) ok &= is_finite(x[c]);
  return ok;
}

// True when `label` is the first maximal index of score[0:K] (torch.argmax semantics; scores finite).
template <typename T>
inline bool first_argmax_is(const T* score, int64_t K, int64_t label) {
  const T top = score[label];
  bool ok = true;
  for (int64_t c = 0; c < label; ++c) ok &= score[c] < top;
  for (int64_t c = label + 1; c < K; ++c) ok &= !(score[c] > top);
  return ok;
}

template <typename T>
inline double softmax_at(const T* score, int64_t K, int64_t label) {
  double top = static_cast<double>(score[0]);
  for (int64_t c = 1; c < K; ++c) top = std::max(top, static_cast<double>(score[c]));
  double total = 0.0;
  for (int64_t c = 0; c < K; ++c) total += std::exp(static_cast<double>(score[c]) - top);
  return std::exp(static_cast<double>(score[label]) - top) / total;
}

}  // namespace cpu
}  // namespace fastshap
