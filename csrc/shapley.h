// Shared host-side pieces of the fastshap ops: the benefit enum, the exact Shapley coefficient tables
// and the argument checks that every backend (CPU, CUDA) runs before launching its kernel.
//
// The semantics every kernel must reproduce bit for bit are documented in fastshap/reference.py
// ("canonical computation"); this header only carries what the C++ kernels share.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <vector>

namespace fastshap {

// n = 16 is the largest exact case: 2^16 coalitions per sample, and 16! * 16 < 2^53, so the Shapley
// numerators below stay exact integers in a double.
constexpr int64_t kMaxModalities = 16;

// Whether the CUDA kernels run the first layer on tensor cores when FASTSHAP_CUDA_TENSOR_CORES is unset
// (sm_80+, features and head weights of one dtype among fp16/bf16/fp32). Off until a GPU run has checked the
// tensor-core path and timed it against the FMA one (bench/GPU-NOTES.md); the GPU tests pin the variable,
// so flipping this default changes no test's expectations. build_info reports it.
constexpr bool kCudaTensorCoresByDefault = false;

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

// Checks features (n tensors (B, d_i), one floating dtype, one device), labels (B,) integer, and the
// optional baselines (n tensors, all (d_i,) or all (B, d_i)); `first_layer` is (K, sum d_i).
ProblemShape check_common(at::TensorList features, const at::Tensor& first_layer, at::TensorList baselines,
                          const at::Tensor& labels);

// Checks that the head parameter `what` (its shape is the caller's to check) is floating point and on the
// device of `features0`.
void check_param(const at::Tensor& param, const char* what, const at::Tensor& features0);

}  // namespace fastshap
