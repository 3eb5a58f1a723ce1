// What the block program's files share: the launch constants, the kernel parameters (Params) and the plan they
// carry (Plan, decided on the host: tile_plan.h), the arithmetic that rounds the same on a GPU and in the CPU
// emulation, and how a phase runs on the GPU (DeviceExec).
//
// Ran on a GPU (an H100, 2026-11-27; docs/internals.md, "What has run on a GPU"): the arithmetic helpers as
// they are (check_aligned16 only stops the CPU emulation) and DeviceExec's phases. Not run since: its float64
// atomic add (the in-kernel batch stats), and the fields Params and Plan have gained for them and for the
// staging and tensor-core paths.
#pragma once

#include "head_kinds.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)
#define FASTSHAP_FN __device__ __forceinline__
#define FASTSHAP_UNROLL _Pragma("unroll")
#define FASTSHAP_NO_UNROLL _Pragma("unroll 1")
#else
#define FASTSHAP_FN inline
#define FASTSHAP_UNROLL
#define FASTSHAP_NO_UNROLL
#endif

namespace fastshap {
namespace tile {

constexpr int kThreads = 256;        // threads per block (the program assumes exactly this many)
constexpr int kMicro = 4;            // each thread owns a kMicro x kMicro block of a GEMM's outputs
constexpr int kMaxN = 16;            // modalities
constexpr int kMaxSources = 2 * kMaxN;
constexpr int kLoadsInFlight = 8;    // independent global loads per thread when staging a GEMM operand
constexpr int kVec = 4;              // terms read per shared-memory vector load in the GEMM (16 bytes of fp32)

// Feature columns staged per GEMM step: a power of two, so staging index math is shifts.
template <typename T>
constexpr int kDepth = sizeof(T) == 8 ? 16 : 32;

enum BenefitCode : int { kPaper = 0, kAccuracy = 1, kProbability = 2 };  // = fastshap::Benefit

// One GEMM input of the first layer: features (or per-sample baselines) of one modality.
struct Source {
  const void* data;     // (B, depth) in the features' dtype
  int64_t row_stride;   // elements
  int64_t col_stride;
  int64_t col_offset;   // first column of this modality in weight1
  int64_t depth;        // d_i
};

// Tile sizes and where each buffer lives. Offsets are bytes into shared memory for buffers there, elements
// into the block's scratch slice for the others.
struct Plan {
  int tb = 0;         // samples per tile (16, 32, 64 or 128)
  int td = 0;         // feature columns staged per GEMM step (= kDepth<T>)
  int rows = 0;       // (sample, coalition) rows per chunk
  int tx1 = 0;        // threads along the output columns of GEMM 1 (rows of GEMM 1 = tb = kMicro * kThreads / tx1)
  int tx2 = 0;        // same for GEMM 2 (MLP logits; rows = `rows`)
  int xs_stride = 0;  // staged A operand: xs[r * xs_stride + j] (td + kVec: 16-byte rows, no bank conflicts)
  int ws_stride = 0;  // staged weights:   ws[k * ws_stride + j]
  int64_t p_stride = 0, h_stride = 0, l_stride = 0;  // row strides of P, hidden, logits (odd: no bank conflicts)
  bool p_shared = false, hl_shared = false, consts_shared = false;
  bool pipe = false;  // the first layer's operands staged asynchronously through two stages at off_pipe
  int64_t off_pipe = 0;
  // The first layer on tensor cores (features and weights of one type): mma_stages stages of (tb + kpad) rows
  // of kMmaRowBytes at off_mma.
  bool mma = false;
  int kpad = 0;        // K rounded up to whole 16-column tiles
  int mma_stages = 0;  // 2 or kMaxMmaStages
  int64_t off_mma = 0;
  int64_t off_num = 0, off_vals = 0, off_xs = 0, off_ws = 0, off_start = 0, off_absent = 0, off_b2 = 0;
  int64_t off_p = 0, off_h = 0, off_l = 0;
  int64_t smem_bytes = 0;
  int64_t g_p = 0, g_h = 0, g_l = 0, scratch_per_block = 0;
  int64_t num_tiles = 0, grid = 0;
};

template <typename T>
struct Params {
  int head = kConcat;
  int benefit = kPaper;
  int n = 0;
  int n_sources = 0;    // n, or 2n with per-sample baselines (sources n..2n-1)
  int64_t batch = 0;
  int64_t K = 0;        // width of the first layer: C (concat, decision) or H (MLP)
  int64_t C = 0;        // classes
  int64_t D = 0;        // sum d_i: row stride of weight1
  Source src[kMaxSources];
  const T* weight1 = nullptr;   // (K, D) contiguous
  const void* weight1_in = nullptr;  // the same in the features' type, for plan.mma (else null)
  const T* start = nullptr;     // (K): bias (concat), zeros (decision), bias1 (MLP)
  const T* dec_bias = nullptr;  // (n, K): decision fusion's per-classifier bias
  const T* absent = nullptr;    // shared contribution of a removed modality i: absent + i * absent_stride
  int64_t absent_stride = 0;    // K, or 0 when one row (zeros) serves every modality
  int absent_rows = 1;
  const T* weight2 = nullptr;   // (C, H) contiguous (MLP)
  const T* bias2 = nullptr;     // (C) (MLP)
  const int64_t* labels = nullptr;
  int64_t label_stride = 0;
  float* phi = nullptr;                     // (B, n) contiguous
  double* stats = nullptr;                  // (4, n) accumulators zeroed by the host: fastshap.cpp's stats rows
  T* scratch = nullptr;                     // grid * plan.scratch_per_block elements, or null
  double coef_in[kMaxN + 1] = {};           // k_i(S) = coef_in[|S|] if i in S, else -coef_out[|S|]
  double coef_out[kMaxN + 1] = {};
  double n_factorial = 1.0;
  Plan plan;
};

// ---------------------------------------------------------------------------------------------------------
// Execution of phases on the GPU: every thread of the block runs f(threadIdx.x), then the block synchronises.
// (The CPU emulation's HostExec, emulation/host_exec.h, runs them one after the other.)

#if defined(__CUDACC__)
struct DeviceExec {
  template <class F>
  __device__ __forceinline__ void each(F&& f) {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
  __device__ __forceinline__ static void add(double* total, double value) { atomicAdd(total, value); }
  template <typename In>
  struct Mma;  // the tensor-core first layer: tile_mma.cuh
};
#endif

// f(std::integral_constant<int, n>{}) for a run-time n in [1, kMaxN]: how the host picks the block program
// compiled for n modalities (run_block<In, T, N>). Host code only.
template <class F, int... Ns>
inline void dispatch_modalities(int n, F&& f, std::integer_sequence<int, Ns...>) {
  const bool found = ((n == Ns + 1 ? (f(std::integral_constant<int, Ns + 1>{}), true) : false) || ...);
  if (!found) std::abort();  // unreachable: check_common rejects n outside [1, kMaxN] before any launch
}
template <class F>
inline void with_modality_count(int n, F&& f) {
  dispatch_modalities(n, f, std::make_integer_sequence<int, kMaxN>{});
}

// ---------------------------------------------------------------------------------------------------------
// Arithmetic with the same rounding on the GPU and in the CPU emulation (setup.py builds without
// --use_fast_math, whose flush of subnormals to zero would break that).

FASTSHAP_FN float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
FASTSHAP_FN double fma_rn(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
FASTSHAP_FN float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
FASTSHAP_FN double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
// acc + a * b rounded twice (never contracted into an fma), as the CPU kernel computes it.
FASTSHAP_FN double mul_add_rn(double acc, double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(acc, __dmul_rn(a, b));
#else
  const volatile double product = a * b;
  return acc + product;
#endif
}
// exp rounded from a float64 exp: as accurate as the library expf, and immune to fast-math intrinsics.
FASTSHAP_FN float exp_rn(float x) { return static_cast<float>(::exp(static_cast<double>(x))); }
FASTSHAP_FN double exp_rn(double x) { return ::exp(x); }

FASTSHAP_FN uint32_t bits_of(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
FASTSHAP_FN uint64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
// Bit tests, so that no fast-math assumption about NaN/Inf can remove them.
FASTSHAP_FN bool is_finite(float x) { return (bits_of(x) & 0x7f800000u) != 0x7f800000u; }
FASTSHAP_FN bool is_finite(double x) { return (bits_of(x) & 0x7ff0000000000000ull) != 0x7ff0000000000000ull; }
FASTSHAP_FN bool is_nan(float x) { return (bits_of(x) & 0x7fffffffu) > 0x7f800000u; }
FASTSHAP_FN bool is_nan(double x) { return (bits_of(x) & 0x7fffffffffffffffull) > 0x7ff0000000000000ull; }

FASTSHAP_FN int popcount(uint32_t m) {
#if defined(__CUDA_ARCH__)
  return __popc(m);
#else
  return __builtin_popcount(m);
#endif
}

// The emulation stops where a GPU would fault: a 16-byte access at an address not 16-byte aligned. (Called
// only from the CPU branches of the functions below.)
FASTSHAP_FN void check_aligned16(const void* p) {
#if !defined(__CUDACC__)
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) std::abort();
#endif
}

// out[0..kVec) = p[0..kVec); p is 16-byte aligned (one 128-bit shared-memory load for fp32, two for fp64).
FASTSHAP_FN void load_vec(const float* p, float (&out)[kVec]) {
#if defined(__CUDA_ARCH__)
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
#else
  check_aligned16(p);
  for (int i = 0; i < kVec; ++i) out[i] = p[i];
#endif
}
FASTSHAP_FN void load_vec(const double* p, double (&out)[kVec]) {
#if defined(__CUDA_ARCH__)
  const double2 v0 = reinterpret_cast<const double2*>(p)[0], v1 = reinterpret_cast<const double2*>(p)[1];
  out[0] = v0.x;
  out[1] = v0.y;
  out[2] = v1.x;
  out[3] = v1.y;
#else
  check_aligned16(p);
  for (int i = 0; i < kVec; ++i) out[i] = p[i];
#endif
}

}  // namespace tile
}  // namespace fastshap
