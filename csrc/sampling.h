// Host-side pieces of fastshap::shapley_sampled that its CPU and CUDA kernels share: the checks of the orders,
// how the walks are chunked and grouped, and the reduction of the sums of the pair draws to phi, stderr and
// stats. fastshap/sampling.py defines the estimator and its canonical computation; each function here names
// the Python function it must agree with.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>
#include <utility>

namespace fastshap {

// orders (P >= 1, 2, n) int64 on the device of `features0` (shape, dtype, device only).
void check_orders_shape(const at::Tensor& orders, int64_t n, const at::Tensor& features0);

// Also reads the orders (CPU tensors): every row a permutation of 0..n-1, as fastshap.sampling._check_orders.
void check_orders(const at::Tensor& orders, int64_t n, const at::Tensor& features0);

// (samples, pairs) walked together: fastshap.sampling.chunk_sizes (the MLP's GEMM shapes, so equal bits).
std::pair<int64_t, int64_t> chunk_sizes(int64_t batch, int64_t pairs, int64_t n, int64_t width);

// (groups, pairs per group) of the CUDA kernel: a few hundred tiles' worth of threads, at most 64 groups (the
// sums of the groups are exact for the discrete benefits, so the grouping changes no value there).
std::pair<int64_t, int64_t> pair_groups(int64_t batch, int64_t pairs);

// phi, stderr (B, n) float32 and stats (4, n) float32 from the sums of the pair draws and of their squares
// (B, n) float64: fastshap.sampling._finish, with the same tensor operations (so the same bits). Rows with a
// NaN, or whose label was outside [0, C) (bad_labels (B,) bool), are NaN.
std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_sampled(const at::Tensor& first, const at::Tensor& second,
                                                              int64_t pairs, const at::Tensor& bad_labels,
                                                              const at::Tensor& nonfinite);

}  // namespace fastshap
