// Shared host-side pieces of the fastshap op: the benefit enum, the exact Shapley coefficient tables and the
// argument checks that every backend (CPU, CUDA) runs before launching its kernel. Those checks guard memory
// (counts, ranks, shapes, dtypes, devices: what a kernel would read out of bounds or misread); the checks of
// values with a user's words are fastshap.modality_shapley's (fastshap/api.py).
//
// The semantics every kernel must reproduce bit for bit are documented in fastshap/reference.py
// ("canonical computation"); this header only carries what the C++ kernels share.
#pragma once

#include "head_kinds.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace fastshap {

// n = 16 is the largest exact case: 2^16 coalitions per sample, and 16! * 16 < 2^53, so the Shapley
// numerators below stay exact integers in a double.
constexpr int64_t kMaxModalities = 16;

enum class Benefit : int {
  Paper = 0,        // v(S) = |S| * 1[argmax H(S) == y], v(empty) = 0
  Accuracy = 1,     // v(S) = 1[argmax H(S) == y], v(empty) evaluated on the all-removed input
  Probability = 2,  // v(S) = softmax(H(S))[y] (decision fusion: mean of per-modality softmax)[y]
};

Benefit parse_benefit(c10::string_view name);

// Output columns of the CPU kernels' GEMMs (partial products, the MLP's second layer) for `width` real ones:
// 8 or more are padded with zero weight rows to a multiple of 8, because the CPU BLAS runs some widths far
// slower than the next multiple of 8 (torch 2.14.1 here: 4096 x 512 by 31 columns 1.8 ms, by 32 0.8 ms). The
// extra columns are never read. fastshap/reference.py pads its CPU GEMMs by the same rule, so that the two
// backends run the same GEMMs and stay bit-identical.
inline int64_t gemm_width(int64_t width) { return width < 8 ? width : (width + 7) / 8 * 8; }

// phi_i = (1/n!) * sum_S v(S) * k_i(S), with the integer coefficients
//   k_i(S) = +(|S|-1)! (n-|S|)!   if i in S
//   k_i(S) = -|S|! (n-1-|S|)!     if i not in S
// Every backend accumulates these integers (exact in double for n <= 16) and divides by n! once,
// which is what makes backends agree exactly for the discrete benefits.
struct ShapleyCoefficients {
  std::array<double, kMaxModalities + 1> in{};   // indexed by |S|, for i in S
  std::array<double, kMaxModalities + 1> out{};  // indexed by |S|, for i not in S
  double n_factorial = 1.0;
};
ShapleyCoefficients shapley_coefficients(int64_t n);

// What the argument checks found out about a call.
struct ProblemShape {
  int64_t n = 0;                  // modalities
  int64_t batch = 0;              // B
  std::vector<int64_t> dims;      // d_i
  std::vector<int64_t> offsets;   // column offset of modality i in the concatenated feature vector
  int64_t total_dim = 0;          // sum d_i
  int64_t baseline_rows = 0;      // 0: zeros; 1: one shared baseline per modality; B: per-sample
};

// Checks features (n tensors (B, d_i), one floating dtype, one device; 1 <= n <= max_modalities), labels (B,)
// int64 on that device, and the optional baselines (n tensors, all (d_i,) or all (B, d_i), of the features'
// dtype and device). The sampled op (sampling.h) takes any n.
ProblemShape check_common(at::TensorList features, at::TensorList baselines, const at::Tensor& labels,
                          int64_t max_modalities = kMaxModalities);

// What the parameter checks found out: the kind, the first layer's width K (C, or H for the MLP) and C.
struct HeadShape {
  const HeadKind* kind = nullptr;
  int64_t K = 0;
  int64_t C = 0;
};

// The kind named `head` (head_kinds.h), after checking its parameters: their count, each one's shape against
// the table's symbols, floating point, on the device of `features0`.
HeadShape check_head(c10::string_view head, at::TensorList params, const ProblemShape& p, const at::Tensor& features0);

// The table of head_kinds.h as "name:code:param=SHAPE,...;..." (the fastshap::head_kinds op).
std::string head_kinds_description();

}  // namespace fastshap
