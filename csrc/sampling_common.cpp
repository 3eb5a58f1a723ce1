// The host-side pieces that the sampled op's CPU and CUDA kernels share (sampling.h).
#include "sampling.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace fastshap {

void check_orders_shape(const at::Tensor& orders, int64_t n, const at::Tensor& features0) {
  TORCH_CHECK_VALUE(orders.dim() == 3 && orders.size(0) >= 1 && orders.size(1) == 2 && orders.size(2) == n,
                    "fastshap: orders must be (P >= 1, 2, ", n, ") int64, got ", orders.sizes());
  TORCH_CHECK_VALUE(orders.scalar_type() == at::kLong, "fastshap: orders must be int64, got ", orders.scalar_type());
  TORCH_CHECK_VALUE(orders.device() == features0.device(), "fastshap: orders are on ", orders.device(),
                    ", features on ", features0.device());
}

void check_orders(const at::Tensor& orders, int64_t n, const at::Tensor& features0) {
  check_orders_shape(orders, n, features0);
  const at::Tensor o = orders.contiguous();
  const int64_t* data = o.data_ptr<int64_t>();
  const int64_t walks = orders.size(0) * 2;
  std::vector<int64_t> seen(n, -1);  // seen[i]: the last walk that added modality i
  for (int64_t w = 0; w < walks; ++w) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = data[w * n + j];
      TORCH_CHECK_VALUE(i >= 0 && i < n && seen[i] != w, "fastshap: every row of orders must be a permutation of 0..",
                        n - 1, " (orders[", w / 2, ", ", w % 2, "] is not)");
      seen[i] = w;
    }
  }
}

std::pair<int64_t, int64_t> chunk_sizes(int64_t batch, int64_t pairs, int64_t n, int64_t width) {
  constexpr int64_t kElementBudget = int64_t{1} << 22;
  const int64_t per_walk_sample = std::max<int64_t>(width, 1) + 2 * n;
  const int64_t samples = std::max<int64_t>(1, std::min<int64_t>(batch, kElementBudget / (2 * per_walk_sample)));
  return {samples, std::max<int64_t>(1, std::min<int64_t>(pairs, kElementBudget / (2 * samples * per_walk_sample)))};
}

std::pair<int64_t, int64_t> pair_groups(int64_t batch, int64_t pairs) {
  constexpr int64_t kMaxGroups = 64;
  const int64_t tiles = std::max<int64_t>(1, (batch + 63) / 64);
  int64_t groups = std::max<int64_t>(1, std::min({pairs, kMaxGroups, (kMaxGroups * 4 + tiles - 1) / tiles}));
  const int64_t per_group = (pairs + groups - 1) / groups;
  groups = (pairs + per_group - 1) / per_group;
  return {groups, per_group};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_sampled(const at::Tensor& first, const at::Tensor& second,
                                                              int64_t pairs, const at::Tensor& bad_labels,
                                                              const at::Tensor& nonfinite) {
  const double p = static_cast<double>(pairs);
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  at::Tensor phi = first / p;
  at::Tensor stderr_ =
      pairs > 1 ? ((second - first * first / p) / (p - 1)).clamp_min(0.0).div(p).sqrt() : at::full_like(phi, kNaN);
  const at::Tensor nan_rows = phi.isnan().any(1).logical_or(bad_labels).unsqueeze(1);
  phi = phi.to(at::kFloat).masked_fill(nan_rows, kNaN);
  stderr_ = stderr_.to(at::kFloat).masked_fill(nan_rows, kNaN);
  at::Tensor stats = at::zeros({4, phi.size(1)}, phi.options());
  stats.select(0, 0).copy_(phi.sum(0));
  stats.select(0, 1).copy_(phi.lt(1.0).sum(0));
  stats.select(0, 2).copy_(nonfinite);
  if (phi.size(1) > 0) stats.select(0, 3).select(0, 0).copy_(nan_rows.sum());
  return {phi, stderr_, stats};
}

}  // namespace fastshap
