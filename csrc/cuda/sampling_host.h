// The host side of fastshap::shapley_sampled on CUDA, shared with its CPU emulation (the tests'): the
// argument checks, the partial products and what every walk shares (ATen ops on the features' device), the
// launch of one thread per (pair group, sample) through `Launch`, and the reduction of the groups' sums.
// Only the concat-linear and decision-fusion heads: the MLP's steps are GEMMs (the torch backend's).
#pragma once

#include "cuda/sampling_walk.cuh"
#include "sampling.h"
#include "shapley.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <tuple>

namespace fastshap {
namespace sampled {

// start (K,) + parts[0] + ... + parts[n-1], parts (n, rows, K): (rows, K), left to right (the exact op's order).
inline at::Tensor left_to_right(const at::Tensor& start, const at::Tensor& parts) {
  at::Tensor total = start.expand({parts.size(1), start.size(0)});
  for (int64_t i = 0; i < parts.size(0); ++i) total = total + parts.select(0, i);
  return total;
}

// (n, rows, K): xs[i] (rows, d_i) or (d_i,) times the columns of modality i of `weight` (K, D), one GEMM per
// modality, as the torch backend computes them: padded to gemm_width(K) output columns on the CPU (the
// emulation), unpadded on a GPU.
inline at::Tensor device_partials(at::TensorList xs, const at::Tensor& weight, const ProblemShape& p,
                                  at::ScalarType ct) {
  const int64_t rows = xs[0].dim() == 1 ? 1 : xs[0].size(0), K = weight.size(0);
  const int64_t width = weight.is_cpu() ? gemm_width(K) : K;
  at::Tensor w = weight.to(ct);
  if (width != K) w = at::cat({w, at::zeros({width - K, w.size(1)}, w.options())});
  at::Tensor out = at::empty({p.n, rows, width}, w.options());
  for (int64_t i = 0; i < p.n; ++i) {
    at::Tensor x = xs[i].to(ct);
    if (x.dim() == 1) x = x.unsqueeze(0);
    at::Tensor dst = out.select(0, i);
    at::mm_out(dst, x, w.narrow(1, p.offsets[i], p.dims[i]).t());
  }
  return out.narrow(2, 0, K);
}

inline at::Tensor nonfinite_rows(const at::Tensor& partials) {
  return partials.isfinite().logical_not().any(-1).sum(-1).to(at::kFloat);
}

// Launch(args, threads) runs walk_thread for threads t = g * B + b, t < threads.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_additive(at::TensorList features, c10::string_view head,
                                                                at::TensorList params, at::TensorList baselines,
                                                                const at::Tensor& labels,
                                                                c10::string_view benefit_name,
                                                                const at::Tensor& orders, Launch&& launch) {
  const ProblemShape p = check_common(features, baselines, labels, std::numeric_limits<int64_t>::max());
  const HeadShape h = check_head(head, params, p, features[0]);
  const Benefit benefit = parse_benefit(benefit_name);
  TORCH_CHECK_VALUE(h.kind->code == kConcat || h.kind->code == kDecision, "fastshap: the CUDA sampled kernel walks ",
                    "the concat and decision heads, not the ", h.kind->name, " head");
  check_orders_shape(orders, p.n, features[0]);
  const auto ct = features[0].scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t K = h.K, n = p.n, B = p.batch;
  at::Tensor present = device_partials(features, params[0], p, ct);
  at::Tensor absent = baselines.empty() ? at::Tensor() : device_partials(baselines, params[0], p, ct);
  at::Tensor nonfinite = nonfinite_rows(present);
  if (absent.defined()) nonfinite = nonfinite + nonfinite_rows(absent);
  at::Tensor start;
  int mean_of = 0;
  if (h.kind->code == kDecision) {
    const at::Tensor bias = params[1].to(ct).unsqueeze(1);
    present = at::softmax(present + bias, -1);
    absent = at::softmax((absent.defined() ? absent : at::zeros({n, 1, K}, bias.options())) + bias, -1);
    start = at::zeros({K}, present.options());
    mean_of = static_cast<int>(n);
  } else {
    start = params[1].to(ct);
  }
  const at::Tensor delta = (absent.defined() ? present - absent : present).permute({0, 2, 1}).contiguous();
  const at::Tensor full = left_to_right(start, present).t().contiguous();
  const at::Tensor empty = (absent.defined() ? left_to_right(start, absent) : start.unsqueeze(0)).t().contiguous();
  const at::Tensor bad_labels = labels.lt(0).logical_or(labels.ge(K));
  const at::Tensor safe = labels.masked_fill(bad_labels, 0).contiguous();
  const at::Tensor walk_orders = orders.contiguous();
  const int64_t pairs = orders.size(0);
  const auto [groups, per_group] = pair_groups(B, pairs);
  at::Tensor first = at::zeros({groups, B, n}, features[0].options().dtype(at::kDouble));
  at::Tensor second = at::zeros_like(first);
  at::Tensor scratch = at::empty_like(first);
  at::Tensor sums = at::empty({K, groups * B}, present.options());
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "fastshap_sampled_cuda", [&] {
      WalkArgs<scalar_t> args{delta.data_ptr<scalar_t>(), empty.data_ptr<scalar_t>(), full.data_ptr<scalar_t>(),
                              safe.data_ptr<int64_t>(),   walk_orders.data_ptr<int64_t>(),
                              sums.data_ptr<scalar_t>(),  scratch.data_ptr<double>(),
                              first.data_ptr<double>(),   second.data_ptr<double>(),
                              B, n, K, pairs, empty.size(1), groups, per_group,
                              static_cast<int>(benefit), mean_of};
      launch(args, groups * B);
    });
  }
  return finish_sampled(first.sum(0), second.sum(0), pairs, bad_labels, nonfinite);
}

}  // namespace sampled
}  // namespace fastshap
