// The block program of the fused CUDA kernels: one thread block takes a tile of samples and goes from their
// features to their Shapley values in one pass.
//
//   1. partial products  P[src][s][k] = sum_j x_src[s][j] * W1[k][off_src + j]   (a tiled GEMM per source:
//      the n modalities' features, then the n per-sample baselines when there are any), one fma per term
//      in increasing j whatever the tiling, so every plan below gives the same bits;
//   2. rows of P holding NaN/Inf are counted per modality (stats row 2); decision fusion turns each row into
//      softmax(row + bias[i]) in place;
//   3. the 2^n coalitions of each sample, `rows` (sample, coalition) pairs at a time, row g = s * 2^n + mask:
//      score(S) = start + sel_0 + ... + sel_{n-1} summed left to right (sel_i = present or absent row of i),
//      for the MLP head hidden = relu(score) and logits = W2 hidden + b2 by a second tiled GEMM; then
//      v(S) (first-index argmax / softmax at the label in float64 / mean probability), NaN when a score, a
//      logit or a hidden pre-activation is NaN or Inf (NaN/Inf head parameters, or an overflow), so that
//      the sample's phi row comes out NaN and is counted in stats row 3;
//   4. Shapley numerators sum_S v(S) k_i(S) in float64 (exact integers for the discrete benefits), one
//      thread per (sample, modality) in coalition order, divided by n! once when phi is stored.
//
// The program is written as a sequence of phases `ex.each(f)`: every thread runs f(thread index), then the
// block synchronises. The CUDA kernel (shapley_kernel.cuh) runs it with DeviceExec; a CPU build of the same
// code with HostExec (shapley_emulate.cpp, tests only) runs the threads of a phase one after the other, in an
// order shuffled for every phase, lands asynchronous copies as late as the PTX ISA allows and models each
// warp's MMA registers: that is how the kernels' indexing, numerics, barriers, copy waits and fragment layouts
// are tested on machines without a GPU. Nothing a thread keeps in registers outlives its phase (except the
// tensor-core accumulators, which each warp keeps over a source's steps: HostExec::Mma keeps them per warp
// too); all other state between phases lives in shared or global memory. Asynchronous
// copies (cp.async, the first layer's pipelined staging) may still be in flight when their phase ends: the
// issuing thread waits for them in a later phase, and only it reads them before that phase's barrier.
//
// Where the buffers live (shared memory, or a per-block slice of a global scratch tensor when a tile of them
// does not fit) is decided on the host by make_plan(); the code reads them through plain pointers.
#pragma once

#include "head_kinds.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

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

// The tensor-core first layer (first_layer_mma): features times weights of the same type, fp32 sums. fp16 and
// bf16 take mma.m16n8k16; fp32 takes mma.m16n8k8 on tf32 three times ("3xTF32": each operand split into a
// tf32 head and a tf32 remainder, the remainders' product dropped), which is about as accurate as fp32 FMAs.
constexpr int kWarps = kThreads / 32;
constexpr int kMmaTile = 16;        // output tiles of 16 x 16 (two 16 x 8 MMAs)
constexpr int kMmaTiles = 2;        // 16 x 16 output tiles a warp accumulates (8 fp32 registers each)
constexpr int kMmaStepBytes = 128;  // bytes of each row staged per step: four MMA depths of 32 bytes
constexpr int kMmaRowBytes = 144;   // a staged row: 128 bytes + 16, so that the 8 rows of each 16-byte
                                    // matrix load (ldmatrix) fall on distinct shared-memory banks
constexpr int kMaxMmaStages = 3;    // copies in flight up to two steps ahead
template <typename In>
constexpr int kMmaDepth = kMmaStepBytes / static_cast<int>(sizeof(In));  // feature columns per step
template <typename In>
constexpr int kMmaLd = kMmaRowBytes / static_cast<int>(sizeof(In));      // staged row stride in elements
template <typename In>
constexpr bool kMmaInput = std::is_same<In, c10::Half>::value || std::is_same<In, c10::BFloat16>::value ||
                           std::is_same<In, float>::value;

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
// Execution of phases.

#if defined(__CUDACC__)
struct DeviceExec {
  template <class F>
  __device__ __forceinline__ void each(F&& f) {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
  __device__ __forceinline__ static void add(double* total, double value) { atomicAdd(total, value); }
  template <typename In>
  struct Mma;  // defined below
};
#else
// The CPU emulation's model of cp.async, as late as the PTX ISA lets a copy land: from its issue the
// destination holds garbage (NaN bytes in every floating-point type), and its bytes land when the issuing
// thread's cp.async.wait_group covers its commit group; a copy never committed or never waited for never
// lands. So a read of a stage before the wait for its group, or a copy issued into a stage that a thread
// still reads, shows up as NaN in the results. (The copy's source is read at the issue: it is input that no
// kernel writes.)
class EmulatedCopies {
 public:
  void begin_block() {  // copies a block leaves in flight die with its shared memory
    for (Thread& t : threads_) {
      t.open.clear();
      t.committed.clear();
    }
  }
  void set_thread(int tid) { current_ = tid; }
  void issue(void* dst, const void* src, bool valid) {
    Copy c{static_cast<unsigned char*>(dst), {}};
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0)) {
      std::abort();  // cp.async of 16 bytes needs both addresses 16-byte aligned
    }
    if (valid) std::memcpy(c.bytes, src, sizeof c.bytes);  // else zeros, as cp.async's src-size 0
    std::memset(dst, 0xff, sizeof c.bytes);
    threads_[current_].open.push_back(c);
  }
  void commit() {
    Thread& t = threads_[current_];
    t.committed.push_back(std::move(t.open));
    t.open.clear();
  }
  void wait(int pending) {  // lands the oldest groups until at most `pending` are in flight
    Thread& t = threads_[current_];
    while (static_cast<int>(t.committed.size()) > pending) {
      for (const Copy& c : t.committed.front()) std::memcpy(c.dst, c.bytes, sizeof c.bytes);
      t.committed.pop_front();
    }
  }

 private:
  struct Copy {
    unsigned char* dst;
    unsigned char bytes[16];
  };
  struct Thread {
    std::vector<Copy> open;
    std::deque<std::vector<Copy>> committed;
  };
  Thread threads_[kThreads];
  int current_ = 0;
};
// The model the emulated phase now running uses (set by HostExec::each).
inline thread_local EmulatedCopies* emulated_copies = nullptr;

// Runs a phase's threads one after the other, in an order shuffled anew for each phase (a fixed seed, so
// runs repeat): a thread that reads in one phase what another thread of the phase writes (a missing barrier)
// sees the write in some phases and not in others, and the results change.
struct HostExec {
  EmulatedCopies copies;
  uint64_t state = 0x9e3779b97f4a7c15ull;
  int order[kThreads];

  HostExec() {
    for (int t = 0; t < kThreads; ++t) order[t] = t;
  }
  void begin_block() { copies.begin_block(); }
  template <class F>
  void each(F&& f) {
    for (int i = kThreads - 1; i > 0; --i) std::swap(order[i], order[next() % static_cast<uint64_t>(i + 1)]);
    EmulatedCopies* const outer = emulated_copies;
    emulated_copies = &copies;
    for (int t : order) {
      copies.set_thread(t);
      f(t);
    }
    emulated_copies = outer;
  }
  static void add(double* total, double value) { *total += value; }
  template <typename In>
  struct Mma;  // defined below

 private:
  uint64_t next() {  // xorshift64*
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
  }
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

// ---------------------------------------------------------------------------------------------------------
// One warp's share of a tensor-core GEMM: fp32 accumulators of up to kMmaTiles 16 x 16 output tiles, tile i
// accumulating A W^T over kMmaDepth<In> columns (128 bytes) a step, where A (16 rows) and W (16 rows) are
// in shared memory, rows kMmaRowBytes apart, 16-byte aligned. Every lane of the warp calls each method
// with the same i (the calls are warp-wide on the GPU); i must be a compile-time constant after unrolling,
// so that the accumulators stay in registers.

// Where each lane's data sits, shared by the device code and the CPU emulation's warp model, which computes
// from them what ldmatrix and mma give each lane by the PTX ISA's fragment tables, so that the emulation
// tests these formulas:
// ldmatrix .x4 over 16-byte rows: lane l gives the address of one row of four 8 x 16-byte matrices. A: row
// l % 16, bytes (l / 16) * 16 -> the four registers of the MMA's A fragment. W: row (l % 8) + (l / 16) * 8,
// bytes ((l / 8) % 2) * 16 -> the two B registers of output columns 0-7, then those of columns 8-15. The same
// bytes make the fragments of m16n8k16 (fp16/bf16: 8 values a 16-byte row) and of m16n8k8 on tf32 (fp32: 4
// values a row), so one addressing serves both.
FASTSHAP_FN int mma_a_lane_offset(int lane) { return (lane % 16) * kMmaRowBytes + (lane / 16) * 16; }
FASTSHAP_FN int mma_w_lane_offset(int lane) {
  return ((lane % 8) + (lane / 16) * 8) * kMmaRowBytes + ((lane / 8) % 2) * 16;
}
// Accumulator e (< 4) of the 16 x 8 MMA that makes output columns nb * 8 .. nb * 8 + 8 of a 16 x 16 tile: its
// row and column in the tile (the accumulator fragment of m16n8k16 and m16n8k8 alike: rows lane / 4 and
// lane / 4 + 8, columns 2 (lane % 4) and the next).
FASTSHAP_FN int mma_acc_row(int lane, int e) { return lane / 4 + 8 * (e / 2); }
FASTSHAP_FN int mma_acc_col(int lane, int nb, int e) { return nb * 8 + 2 * (lane % 4) + e % 2; }

#if defined(__CUDACC__)
template <typename In>
struct DeviceExec::Mma {
  // Tile i, columns nb * 8 .. nb * 8 + 8: accumulator e at (mma_acc_row, mma_acc_col).
  float c[kMmaTiles][2][4];

  __device__ __forceinline__ void zero(int, int i) {
    FASTSHAP_UNROLL
    for (int nb = 0; nb < 2; ++nb) {
      FASTSHAP_UNROLL
      for (int e = 0; e < 4; ++e) c[i][nb][e] = 0.0f;
    }
  }

  __device__ __forceinline__ void step(int tid, int i, const In* a, const In* w) {
#if __CUDA_ARCH__ >= 800
    const int lane = tid % 32;
    const unsigned a_row = static_cast<unsigned>(__cvta_generic_to_shared(a) + mma_a_lane_offset(lane));
    const unsigned w_row = static_cast<unsigned>(__cvta_generic_to_shared(w) + mma_w_lane_offset(lane));
    FASTSHAP_UNROLL
    for (int kb = 0; kb < kMmaStepBytes; kb += 32) {  // one MMA depth: 32 bytes of each row
      uint32_t ar[4], br[4];
      load_matrices(ar, a_row + kb);
      load_matrices(br, w_row + kb);
      mma(c[i][0], ar, br[0], br[1]);
      mma(c[i][1], ar, br[2], br[3]);
    }
#else
    __trap();  // the host plans tensor cores only on sm_80 and later
#endif
  }

  // put(r, k, value) for this lane's values of tile i (r, k < 16).
  template <class Put>
  __device__ __forceinline__ void store(int tid, int i, Put&& put) {
    const int lane = tid % 32;
    FASTSHAP_UNROLL
    for (int nb = 0; nb < 2; ++nb) {
      FASTSHAP_UNROLL
      for (int e = 0; e < 4; ++e) put(mma_acc_row(lane, e), mma_acc_col(lane, nb, e), c[i][nb][e]);
    }
  }

 private:
  __device__ __forceinline__ static void load_matrices(uint32_t (&out)[4], unsigned address) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3])
                 : "r"(address)
                 : "memory");
#endif
  }
  // x = head + remainder, both tf32 (round to nearest): head * head + head * remainder + remainder * head
  // misses x * y by the remainders' product only.
  __device__ __forceinline__ static void split_tf32(uint32_t x, uint32_t& head, uint32_t& rest) {
#if __CUDA_ARCH__ >= 800
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(head) : "f"(__uint_as_float(x)));
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(rest) : "f"(__fsub_rn(__uint_as_float(x), __uint_as_float(head))));
#endif
  }
  __device__ __forceinline__ static void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
  // d += A B for one MMA depth: 16 x 8 x 16 (fp16/bf16) or 16 x 8 x 8 in three tf32 products (fp32).
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    if constexpr (std::is_same<In, float>::value) {
      uint32_t a_head[4], a_rest[4], b_head[2], b_rest[2];
      FASTSHAP_UNROLL
      for (int e = 0; e < 4; ++e) split_tf32(a[e], a_head[e], a_rest[e]);
      split_tf32(b0, b_head[0], b_rest[0]);
      split_tf32(b1, b_head[1], b_rest[1]);
      mma_tf32(d, a_rest, b_head[0], b_head[1]);  // the small terms first
      mma_tf32(d, a_head, b_rest[0], b_rest[1]);
      mma_tf32(d, a_head, b_head[0], b_head[1]);
    } else if constexpr (std::is_same<In, c10::BFloat16>::value) {
      asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
  }
};
#else
// The CPU emulation's model of one warp (run by lane 0 for all 32): each lane's registers as ldmatrix and mma
// fill them by the PTX ISA's tables, from the addresses the lanes give (mma_a_lane_offset,
// mma_w_lane_offset), and each lane's accumulators stored where mma_acc_row / mma_acc_col say. A wrong
// formula puts values in the wrong place and the results change. Each MMA sums in increasing column order
// with one fma a term (the CPU kernel's order, so the emulation keeps its bits; fp32 is not split into tf32).
template <typename In>
struct HostExec::Mma {
  static constexpr int kLanes = 32;
  float c[kWarps][kMmaTiles][kLanes][2][4];  // [warp][tile][lane][nb][accumulator e]

  void zero(int tid, int i) {
    if (tid % kLanes == 0) std::memset(c[tid / kLanes][i], 0, sizeof c[0][0]);
  }
  void step(int tid, int i, const In* a, const In* w) {
    if (tid % kLanes != 0) return;
    for (int kb = 0; kb < kMmaStepBytes; kb += 32) {
      uint32_t ar[kLanes][4], br[kLanes][4];
      load_matrices(ar, reinterpret_cast<const unsigned char*>(a) + kb, mma_a_lane_offset);
      load_matrices(br, reinterpret_cast<const unsigned char*>(w) + kb, mma_w_lane_offset);
      mma(c[tid / kLanes][i], 0, ar, br, 0);  // columns 0-7: B registers 0 and 1
      mma(c[tid / kLanes][i], 1, ar, br, 2);  // columns 8-15: B registers 2 and 3
    }
  }
  template <class Put>
  void store(int tid, int i, Put&& put) {
    if (tid % kLanes != 0) return;
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int nb = 0; nb < 2; ++nb) {
        for (int e = 0; e < 4; ++e) put(mma_acc_row(lane, e), mma_acc_col(lane, nb, e), c[tid / kLanes][i][lane][nb][e]);
      }
    }
  }

 private:
  static constexpr bool kTf32 = std::is_same<In, float>::value;  // m16n8k8 on tf32, else m16n8k16
  static constexpr int kDepthPerMma = kTf32 ? 8 : 16;

  // ldmatrix.x4 (no .trans): lanes 8j .. 8j + 7 give the addresses of rows 0-7 of matrix j (16-byte aligned);
  // lane l receives in its register j the 32-bit word l % 4 of row l / 4 of matrix j.
  template <class Offset>
  static void load_matrices(uint32_t (&regs)[kLanes][4], const unsigned char* base, Offset&& offset) {
    for (int l = 0; l < kLanes; ++l) check_aligned16(base + offset(l));
    for (int l = 0; l < kLanes; ++l) {
      for (int j = 0; j < 4; ++j) std::memcpy(&regs[l][j], base + offset(8 * j + l / 4) + 4 * (l % 4), 4);
    }
  }
  // Element e (low to high) of a fragment register holding 32 / sizeof(In) values.
  static float element(uint32_t reg, int e) {
    if constexpr (kTf32) {
      float x;
      std::memcpy(&x, &reg, 4);
      return x;
    } else {
      return static_cast<float>(In(static_cast<uint16_t>(reg >> (16 * e)), In::from_bits()));
    }
  }
  // d += A B for lanes' fragments: A from registers ar, B from registers b, b + 1 of br; d = accumulators of
  // column block nb. The fragment tables (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k8"), with
  // g = lane >> 2 and t = lane % 4:
  //   m16n8k16 .f16/.bf16: A value q (0-7): row g + 8 ((q / 2) % 2), col 2t + (q & 1) + 8 (q / 4);
  //                        B value q (0-3): row 2t + (q & 1) + 8 (q / 2), col g;
  //   m16n8k8 .tf32:       A value q (0-3): row g + 8 (q % 2), col t + 4 (q / 2);
  //                        B value q (0-1): row t + 4 q, col g;
  //   accumulators (both): value q (0-3): row g + 8 (q / 2), col 2t + (q & 1).
  // Value q of a fragment sits in register q / (values per register), element q % (values per register).
  static void mma(float (&acc)[kLanes][2][4], int nb, const uint32_t (&ar)[kLanes][4],
                  const uint32_t (&br)[kLanes][4], int b) {
    constexpr int per_reg = kTf32 ? 1 : 2;
    float A[16][kDepthPerMma], B[kDepthPerMma][8];
    for (int l = 0; l < kLanes; ++l) {
      const int g = l >> 2, t = l % 4;
      for (int q = 0; q < 4 * per_reg; ++q) {
        const float v = element(ar[l][q / per_reg], q % per_reg);
        if (kTf32) {
          A[g + 8 * (q % 2)][t + 4 * (q / 2)] = v;
        } else {
          A[g + 8 * ((q / 2) % 2)][2 * t + (q & 1) + 8 * (q / 4)] = v;
        }
      }
      for (int q = 0; q < 2 * per_reg; ++q) {
        const float v = element(br[l][b + q / per_reg], q % per_reg);
        if (kTf32) {
          B[t + 4 * q][g] = v;
        } else {
          B[2 * t + (q & 1) + 8 * (q / 2)][g] = v;
        }
      }
    }
    float D[16][8];
    for (int l = 0; l < kLanes; ++l) {
      for (int q = 0; q < 4; ++q) D[(l >> 2) + 8 * (q / 2)][2 * (l % 4) + (q & 1)] = acc[l][nb][q];
    }
    for (int r = 0; r < 16; ++r) {
      for (int col = 0; col < 8; ++col) {
        for (int k = 0; k < kDepthPerMma; ++k) D[r][col] = fma_rn(A[r][k], B[k][col], D[r][col]);
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      for (int q = 0; q < 4; ++q) acc[l][nb][q] = D[(l >> 2) + 8 * (q / 2)][2 * (l % 4) + (q & 1)];
    }
  }
};
#endif

// ---------------------------------------------------------------------------------------------------------
// Building blocks (each called by every thread of a phase with its index `tid`).

// store(i, load(i)) for i = tid, tid + kThreads, ... < count, kLoadsInFlight loads issued before any store.
template <typename T, class Load, class Store>
FASTSHAP_FN void staged_copy(int tid, int count, Load&& load, Store&& store) {
  for (int base = tid; base < count; base += kLoadsInFlight * kThreads) {
    T v[kLoadsInFlight];
    FASTSHAP_UNROLL
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int i = base + u * kThreads;
      v[u] = i < count ? load(i) : T(0);
    }
    FASTSHAP_UNROLL
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int i = base + u * kThreads;
      if (i < count) store(i, v[u]);
    }
  }
}

template <typename T>
struct Gemm {
  int rows;            // output rows; must equal kMicro * (kThreads / tx)
  int tx;              // threads along the output columns
  int64_t cols;        // output columns
  int64_t depth;       // summed terms
  const T* w;          // w[k * w_stride + j]
  int64_t w_stride;
  T* out;              // out[r * out_stride + k]
  int64_t out_stride;
  T* xs;               // staging, rows x xs_stride (xs_stride >= kDepth<T>, a multiple of kVec)
  int xs_stride;
  T* ws;               // staging, kMicro * tx x ws_stride
  int ws_stride;
  // Two stages of asynchronous staging, or null: each holds an A tile (rows x xs_stride T, A's raw input
  // values at the start of each row) and then a weight tile (kMicro * tx x ws_stride T).
  unsigned char* pipe = nullptr;
};

// out[r][k] = sum_{j < depth} A(r, j) * w[k][j] (r < rows, k < cols): the A operand (a_load) and the weights
// go through shared memory kDepth<T> columns at a time (zero-padded past `depth`); each output is accumulated
// with one fma per term in increasing j, read back from `out` between steps, so the result does not depend
// on the tiling. Thread (tx_i, ty_i) owns rows ty_i + a * ty and columns cb + tx_i + b * tx (a, b < kMicro).
// An A operand whose rows can be read 16 bytes at a time: row r's columns [j, j + V) are at
// base + r * row_stride + j for r < rows (rows past it are zeros); base is 16-byte aligned and row_stride
// a multiple of V. base == nullptr: no such layout, the operand is staged element by element.
template <typename In>
struct VectorRows {
  static constexpr int V = 16 / static_cast<int>(sizeof(In));
  const In* base = nullptr;
  int64_t row_stride = 0;
  int rows = 0;
};

// Rows of features as VectorRows when their layout allows it (contiguous columns, aligned rows).
template <typename In>
FASTSHAP_FN VectorRows<In> vector_rows(const In* base, int64_t row_stride, int64_t col_stride, int rows) {
  constexpr int V = VectorRows<In>::V;
  const bool ok = col_stride == 1 && row_stride % V == 0 && reinterpret_cast<uintptr_t>(base) % 16 == 0;
  return ok ? VectorRows<In>{base, row_stride, rows} : VectorRows<In>{};
}

// out[0..V) = p[0..V) with one 16-byte load (p 16-byte aligned).
template <typename In>
FASTSHAP_FN void load16(const In* p, In* out) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(out) = __ldg(reinterpret_cast<const uint4*>(p));
#else
  check_aligned16(p);
  check_aligned16(out);
  std::memcpy(out, p, 16);
#endif
}

// dst[0..16) = src[0..16), both 16-byte aligned, as one 16-byte load and store.
FASTSHAP_FN void copy16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#else
  check_aligned16(dst);
  check_aligned16(src);
  std::memcpy(dst, src, 16);
#endif
}

// 16 bytes from global `src` to shared `dst` without a round trip through registers (cp.async, sm_80+):
// the copy lands while the thread goes on, and is complete after wait_copies. `valid` false writes zeros.
// The CPU emulation lands it at that wait (EmulatedCopies).
FASTSHAP_FN void copy_async16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
#elif defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(dst) = valid ? __ldg(reinterpret_cast<const uint4*>(src)) : make_uint4(0, 0, 0, 0);
#elif !defined(__CUDACC__)
  emulated_copies->issue(dst, src, valid);
#endif
}
// Closes the group of this thread's copies issued since the last commit.
FASTSHAP_FN void commit_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDACC__)
  emulated_copies->commit();
#endif
}
// Waits until at most `Pending` of this thread's committed groups are still in flight.
template <int Pending>
FASTSHAP_FN void wait_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#elif !defined(__CUDACC__)
  emulated_copies->wait(Pending);
#endif
}

// Vector i of a tile of `rows` rows and Depth columns of `a`: its row and its 16-byte column.
template <int Depth, typename In>
struct TileVectors {
  static constexpr int V = VectorRows<In>::V;
  static constexpr int per_row = Depth / V;
  static_assert(Depth % V == 0, "a staging step must hold whole vectors");
  int rows;
  FASTSHAP_FN int count() const { return rows * per_row; }
};

// Thread tid's share of columns d0 .. d0 + Depth of `a` (rows past a.rows: zeros) copied asynchronously
// to dst, whose rows are row_bytes apart; vector i goes to thread i % kThreads, as in convert_tile.
template <int Depth, typename In>
FASTSHAP_FN void copy_tile_async(int tid, const VectorRows<In>& a, int64_t d0, int rows, unsigned char* dst,
                                 int64_t row_bytes) {
  const TileVectors<Depth, In> tv{rows};
  FASTSHAP_NO_UNROLL
  for (int i = tid; i < tv.count(); i += kThreads) {
    const int r = i / tv.per_row, c = i % tv.per_row;
    const bool valid = r < a.rows;
    const In* src = a.base + (valid ? r * a.row_stride + d0 + c * tv.V : 0);
    copy_async16(dst + r * row_bytes + c * 16, src, valid);
  }
}

// The same thread's vectors of an asynchronously copied tile of In values (rows row_bytes apart), widened
// into xs (rows xs_stride T apart). Only the thread that copied a vector reads it: no barrier between.
template <typename T, typename In>
FASTSHAP_FN void convert_tile(int tid, const unsigned char* src, int64_t row_bytes, int rows, T* xs, int xs_stride) {
  const TileVectors<kDepth<T>, In> tv{rows};
  FASTSHAP_NO_UNROLL
  for (int i = tid; i < tv.count(); i += kThreads) {
    const int r = i / tv.per_row, c = i % tv.per_row;
    alignas(16) In v[TileVectors<kDepth<T>, In>::V];
    copy16(v, src + r * row_bytes + c * 16);
    T* dst = xs + r * xs_stride + c * tv.V;
    FASTSHAP_UNROLL
    for (int e = 0; e < tv.V; ++e) dst[e] = static_cast<T>(v[e]);
  }
}

// xs[r][c] = A[r][d0 + c] for c < kDepth<T> (a full step: every column exists), V columns per load and a few
// loads in flight per thread before any store. Same values as the element-wise staging.
template <typename T, typename In>
FASTSHAP_FN void stage_vector_rows(int tid, const VectorRows<In>& a, int64_t d0, int rows, T* xs, int xs_stride) {
  constexpr int V = VectorRows<In>::V;
  constexpr int per_row = kDepth<T> / V;
  static_assert(kDepth<T> % V == 0, "a staging step must hold whole vectors");
  constexpr int kInFlight = 4;
  const int total = rows * per_row;
  for (int base = tid; base < total; base += kInFlight * kThreads) {
    alignas(16) In v[kInFlight][V];
    FASTSHAP_UNROLL
    for (int u = 0; u < kInFlight; ++u) {
      const int i = base + u * kThreads;
      const int r = i / per_row;
      if (i < total && r < a.rows) {
        load16(a.base + r * a.row_stride + d0 + (i % per_row) * V, v[u]);
      } else {
        FASTSHAP_UNROLL
        for (int e = 0; e < V; ++e) v[u][e] = In(0);
      }
    }
    FASTSHAP_UNROLL
    for (int u = 0; u < kInFlight; ++u) {
      const int i = base + u * kThreads;
      if (i >= total) break;
      T* dst = xs + (i / per_row) * xs_stride + (i % per_row) * V;
      FASTSHAP_UNROLL
      for (int e = 0; e < V; ++e) dst[e] = static_cast<T>(v[u][e]);
    }
  }
}

template <typename T, class Exec, class ALoad, typename In = T>
FASTSHAP_FN void gemm(Exec& ex, const Gemm<T>& g, ALoad&& a_load, const VectorRows<In>& a_vec = VectorRows<In>{}) {
  constexpr int td = kDepth<T>;
  constexpr bool same_type = std::is_same<In, T>::value;  // In == T: the FMAs read an A stage as it landed
  const int ty = kThreads / g.tx;      // threads along the rows
  const int kc = kMicro * g.tx;        // output columns per pass
  const VectorRows<T> w_vec = vector_rows(g.w, g.w_stride, 1, 0);  // rows are set per column pass
  const VectorRows<T> w_first{w_vec.base, g.w_stride, static_cast<int>(std::min<int64_t>(kc, g.cols))};

  // Pipelined staging: during step k the block copies step k + 1's A tile and first weight pass (cp.async,
  // two stages), so that the loads' latency overlaps step k's FMAs. Only steps whose kDepth<T> columns all
  // exist, of operands laid out in aligned 16-byte rows, go this way; the others are staged as they come.
  const int64_t full_steps = g.depth / td;
  const bool pipe_a = g.pipe != nullptr && a_vec.base != nullptr;
  const bool pipe_w = g.pipe != nullptr && w_vec.base != nullptr;
  const int64_t a_row_bytes = int64_t{g.xs_stride} * static_cast<int64_t>(sizeof(T));
  const int64_t w_row_bytes = int64_t{g.ws_stride} * static_cast<int64_t>(sizeof(T));
  const int64_t a_bytes = g.rows * a_row_bytes;
  const int64_t stage_bytes = a_bytes + kc * w_row_bytes;
  auto async_a = [&](int64_t step) { return pipe_a && step < full_steps; };
  auto async_w = [&](int64_t step) { return pipe_w && step < full_steps; };
  auto stage_of = [&](int64_t step) { return g.pipe + (step & 1) * stage_bytes; };
  auto issue = [&](int tid, int64_t step) {  // one commit group per step and thread
    if (async_a(step)) copy_tile_async<td>(tid, a_vec, step * td, g.rows, stage_of(step), a_row_bytes);
    if (async_w(step)) copy_tile_async<td>(tid, w_first, step * td, kc, stage_of(step) + a_bytes, w_row_bytes);
    commit_copies();
  };

  // Weight rows cb .. cb + kc (past g.cols: zeros), columns d0 .. d0 + td, into ws.
  auto stage_weights = [&](int tid, int64_t d0, int jn, int64_t cb) {
    if (w_vec.base != nullptr && jn == td) {  // 16 bytes a load
      const VectorRows<T> rows{w_vec.base + cb * g.w_stride, g.w_stride,
                               static_cast<int>(std::min<int64_t>(kc, g.cols - cb))};
      stage_vector_rows(tid, rows, d0, kc, g.ws, g.ws_stride);
      return;
    }
    staged_copy<T>(
        tid, kc * td,
        [&](int i) {
          const int64_t k = cb + i / td;
          const int j = i % td;
          return k < g.cols && j < jn ? g.w[k * g.w_stride + d0 + j] : T(0);
        },
        [&](int i, T v) { g.ws[(i / td) * g.ws_stride + i % td] = v; });
  };

  int64_t step = 0;
  for (int64_t d0 = 0; d0 == 0 || d0 < g.depth; d0 += td, ++step) {
    const int jn = static_cast<int>(std::min<int64_t>(td, g.depth - d0));  // 0 only when depth == 0
    const int jv = (jn + kVec - 1) / kVec * kVec;                          // terms read (zeros past jn)
    const bool a_landed = async_a(step), w_landed = async_w(step);
    ex.each([&](int tid) {
      if (g.pipe != nullptr) {
        if (step == 0 && (async_a(0) || async_w(0))) issue(tid, 0);
        if (async_a(step + 1) || async_w(step + 1)) {
          issue(tid, step + 1);
          wait_copies<1>();  // this step's group has landed, the next one is in flight
        } else {
          wait_copies<0>();
        }
      }
      if (a_landed) {
        if (!same_type) convert_tile<T, In>(tid, stage_of(step), a_row_bytes, g.rows, g.xs, g.xs_stride);
      } else if (a_vec.base != nullptr && jn == td) {
        stage_vector_rows(tid, a_vec, d0, g.rows, g.xs, g.xs_stride);
      } else {
        staged_copy<T>(
            tid, g.rows * td,
            [&](int i) {
              const int j = i % td;
              return j < jn ? a_load(i / td, d0 + j) : T(0);
            },
            [&](int i, T v) { g.xs[(i / td) * g.xs_stride + i % td] = v; });
      }
    });
    const T* xa = a_landed && same_type ? reinterpret_cast<const T*>(stage_of(step)) : g.xs;
    for (int64_t cb = 0; cb < g.cols; cb += kc) {
      const bool w_async = cb == 0 && w_landed;
      if (!w_async) ex.each([&](int tid) { stage_weights(tid, d0, jn, cb); });
      const T* wa = w_async ? reinterpret_cast<const T*>(stage_of(step) + a_bytes) : g.ws;
      ex.each([&](int tid) {
        const int tx_i = tid % g.tx, ty_i = tid / g.tx;
        T acc[kMicro][kMicro];
        FASTSHAP_UNROLL
        for (int a = 0; a < kMicro; ++a) {
          const int r = ty_i + a * ty;
          FASTSHAP_UNROLL
          for (int b = 0; b < kMicro; ++b) {
            const int64_t k = cb + tx_i + b * g.tx;
            acc[a][b] = (d0 == 0 || r >= g.rows || k >= g.cols) ? T(0) : g.out[r * g.out_stride + k];
          }
        }
        FASTSHAP_NO_UNROLL  // one step's operands live at a time: unrolling hoists loads and spills registers
        for (int j = 0; j < jv; j += kVec) {
          T av[kMicro][kVec];
          FASTSHAP_UNROLL
          for (int a = 0; a < kMicro; ++a) load_vec(xa + (ty_i + a * ty) * g.xs_stride + j, av[a]);
          FASTSHAP_UNROLL
          for (int b = 0; b < kMicro; ++b) {
            T bv[kVec];
            load_vec(wa + (tx_i + b * g.tx) * g.ws_stride + j, bv);
            FASTSHAP_UNROLL
            for (int v = 0; v < kVec; ++v) {
              FASTSHAP_UNROLL
              for (int a = 0; a < kMicro; ++a) acc[a][b] = fma_rn(av[a][v], bv[v], acc[a][b]);
            }
          }
        }
        FASTSHAP_UNROLL
        for (int a = 0; a < kMicro; ++a) {
          const int r = ty_i + a * ty;
          FASTSHAP_UNROLL
          for (int b = 0; b < kMicro; ++b) {
            const int64_t k = cb + tx_i + b * g.tx;
            if (r < g.rows && k < g.cols) g.out[r * g.out_stride + k] = acc[a][b];
          }
        }
      });
    }
  }
}

// The first layer on tensor cores, for fp16/bf16/fp32 features and weights of the same type: for every
// source of a tile, P[src][r][k] = sum_{j < d_src} x_src[r][j] * w[k][off_src + j] with fp32 sums in the
// MMA's order (so the CPU kernel's bits only where every product and partial sum is exact). kMmaDepth<In>
// columns (128 bytes) a step go through a ring of plan.mma_stages shared-memory stages: cp.async for full
// steps of operands laid out in aligned 16-byte rows, element by element otherwise, zero-padded past the
// batch, past K (to kpad) and past d_src. Each warp keeps its output tiles' accumulators in registers over
// a source's steps and writes them to P after the last.
//
// The steps of all sources of all the block's tiles form one sequence, whose copies run stages - 1 steps
// ahead of the step computed: across source boundaries, and into the next tile during this tile's
// coalition phases. MmaPipe carries the sequence from one tile to the next.
struct MmaStep {
  int64_t tile = -1;  // -1: past the block's last step
  int src = 0;
  int64_t step = 0;
};

struct MmaPipe {
  int64_t position = 0;  // steps computed so far by this block: position % stages is the current stage
  int64_t issued = 0;    // steps whose copies have been issued (one commit group each, maybe empty)
  MmaStep next_issue;    // the step to issue next
};

// Source `src` of tile `tile`: where its operands are and how they are staged.
template <typename In>
struct MmaSource {
  VectorRows<In> a_vec;  // the features' rows when they can be copied 16 bytes at a time (else base null)
  VectorRows<In> w_vec;  // the same for the weight slice
  const In* x;
  int64_t row_stride, col_stride;
  int count;             // samples of the tile
  const In* w;           // w[k * D + j]: the weight slice's first column
  int64_t depth, full_steps, steps;

  FASTSHAP_FN bool async_a(int64_t step) const { return a_vec.base != nullptr && step < full_steps; }
  FASTSHAP_FN bool async_w(int64_t step) const { return w_vec.base != nullptr && step < full_steps; }
};

template <typename In>
FASTSHAP_FN int64_t mma_steps(int64_t depth) {
  return std::max<int64_t>(1, (depth + kMmaDepth<In> - 1) / kMmaDepth<In>);
}

template <typename In>
FASTSHAP_FN MmaSource<In> mma_source(const Params<float>& p, int tb, int64_t tile, int src) {
  const Source& so = p.src[src];
  const int64_t t0 = tile * tb;
  MmaSource<In> m;
  m.x = static_cast<const In*>(so.data) + t0 * so.row_stride;
  m.row_stride = so.row_stride;
  m.col_stride = so.col_stride;
  m.count = static_cast<int>(std::min<int64_t>(tb, p.batch - t0));
  m.w = static_cast<const In*>(p.weight1_in) + so.col_offset;
  m.a_vec = vector_rows(m.x, so.row_stride, so.col_stride, m.count);
  m.w_vec = vector_rows(m.w, p.D, 1, static_cast<int>(p.K));
  m.depth = so.depth;
  m.full_steps = so.depth / kMmaDepth<In>;
  m.steps = mma_steps<In>(so.depth);
  return m;
}

template <typename In, class Exec>
FASTSHAP_FN void first_layer_mma(Exec& ex, const Params<float>& p, unsigned char* smem, float* P, int64_t tile,
                                 int64_t grid, MmaPipe& pipe) {
  constexpr int td = kMmaDepth<In>;
  constexpr int ld = kMmaLd<In>;
  const Plan& pl = p.plan;
  const int tb = pl.tb;
  const int stages = pl.mma_stages;  // 2 or kMaxMmaStages
  const int row_tiles = tb / kMmaTile;
  const int tiles = row_tiles * (pl.kpad / kMmaTile);  // at most kWarps * kMmaTiles (make_plan)
  const int64_t a_bytes = int64_t{tb} * kMmaRowBytes;
  const int64_t stage_bytes = a_bytes + int64_t{pl.kpad} * kMmaRowBytes;
  auto stage_of = [&](int64_t position) { return smem + pl.off_mma + (position % stages) * stage_bytes; };
  // The step after s in the block's sequence: the next of its source, the next source's first, the next tile's.
  auto advance = [&](MmaStep s) {
    if (s.step + 1 < mma_steps<In>(p.src[s.src].depth)) return MmaStep{s.tile, s.src, s.step + 1};
    if (s.src + 1 < p.n_sources) return MmaStep{s.tile, s.src + 1, 0};
    if (s.tile + grid < pl.num_tiles) return MmaStep{s.tile + grid, 0, 0};
    return MmaStep{};
  };
  auto issue = [&](int tid, const MmaStep& s, unsigned char* stage) {  // one commit group, maybe empty
    const MmaSource<In> m = mma_source<In>(p, tb, s.tile, s.src);
    if (m.async_a(s.step)) copy_tile_async<td>(tid, m.a_vec, s.step * td, tb, stage, kMmaRowBytes);
    if (m.async_w(s.step)) copy_tile_async<td>(tid, m.w_vec, s.step * td, pl.kpad, stage + a_bytes, kMmaRowBytes);
    commit_copies();
  };
  if (pipe.position == 0 && pipe.issued == 0) pipe.next_issue = MmaStep{tile, 0, 0};  // the block's first tile
  // Output tile t = warp + kWarps * i (i < kMmaTiles): rows (t % row_tiles) * 16, columns (t / row_tiles) * 16.
  typename Exec::template Mma<In> acc;

  for (int src = 0; src < p.n_sources; ++src) {
    const MmaSource<In> cur = mma_source<In>(p, tb, tile, src);
    float* out = P + static_cast<int64_t>(src) * tb * pl.p_stride;
    for (int64_t step = 0; step < cur.steps; ++step, ++pipe.position) {
      // The steps to issue now: up to stages - 1 ahead of this one (and this one, at the block's start).
      // (Unrolled, constant indices: the array stays in registers.)
      MmaStep todo[kMaxMmaStages];
      int count = 0;
      FASTSHAP_UNROLL
      for (int c = 0; c < kMaxMmaStages; ++c) {
        if (pipe.next_issue.tile >= 0 && pipe.issued < pipe.position + stages) {
          todo[c] = pipe.next_issue;
          pipe.next_issue = advance(pipe.next_issue);
          ++pipe.issued;
          count = c + 1;
        }
      }
      const int64_t first = pipe.issued - count;                         // sequence index of todo[0]
      const int pending = static_cast<int>(pipe.issued - pipe.position - 1);  // groups that may stay in flight
      const int64_t d0 = step * td;
      const int64_t jn = std::min<int64_t>(td, cur.depth - d0);  // columns that exist in this step
      unsigned char* stage = stage_of(pipe.position);
      In* a_stage = reinterpret_cast<In*>(stage);
      In* w_stage = reinterpret_cast<In*>(stage + a_bytes);
      ex.each([&](int tid) {
        if (step == 0) {
          FASTSHAP_UNROLL
          for (int i = 0; i < kMmaTiles; ++i) acc.zero(tid, i);
        }
        FASTSHAP_UNROLL
        for (int c = 0; c < kMaxMmaStages; ++c) {
          if (c < count) issue(tid, todo[c], stage_of(first + c));
        }
        if (pending <= 0) {  // this step's group has landed; the later ones may still be in flight
          wait_copies<0>();
        } else if (pending == 1) {
          wait_copies<1>();
        } else {
          wait_copies<kMaxMmaStages - 1>();
        }
        if (!cur.async_a(step)) {
          for (int i = tid; i < tb * td; i += kThreads) {
            const int r = i / td, j = i % td;
            a_stage[r * ld + j] =
                r < cur.count && j < jn ? cur.x[r * cur.row_stride + (d0 + j) * cur.col_stride] : In(0);
          }
        }
        if (!cur.async_w(step)) {
          for (int i = tid; i < pl.kpad * td; i += kThreads) {
            const int k = i / td, j = i % td;
            w_stage[k * ld + j] = k < p.K && j < jn ? cur.w[k * p.D + d0 + j] : In(0);
          }
        }
      });
      const bool last = step + 1 == cur.steps;
      ex.each([&](int tid) {
        const int warp = tid / 32;
        FASTSHAP_UNROLL
        for (int i = 0; i < kMmaTiles; ++i) {
          const int t = warp + kWarps * i;
          if (t >= tiles) continue;
          const int r0 = (t % row_tiles) * kMmaTile, k0 = (t / row_tiles) * kMmaTile;
          acc.step(tid, i, a_stage + r0 * ld, w_stage + k0 * ld);
          if (last) {  // registers to P, which no thread reads before a later phase
            acc.store(tid, i, [&](int r, int k, float v) {
              if (k0 + k < p.K) out[(r0 + r) * pl.p_stride + k0 + k] = v;
            });
          }
        }
      });
    }
  }
}

// v(S) from score(c), c < C (see fastshap/reference.py); NaN when any score(c) is NaN or Inf (the sample's phi
// row then comes out NaN). Labels outside [0, C) are not evaluated: their rows are NaN (run_block).
template <typename T, class Score>
FASTSHAP_FN double coalition_value(Score&& score, int64_t C, int64_t y, int size, int benefit, bool mean_probability,
                                   int n) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  if (y < 0 || y >= C) return 0.0;
  if (benefit == kProbability) {
    if (mean_probability) {
      for (int64_t c = 0; c < C; ++c) {
        if (!is_finite(score(c))) return kNaN;
      }
      return static_cast<double>(score(y)) / static_cast<double>(n);
    }
    const T first = score(0);
    bool finite = is_finite(first);
    double top = static_cast<double>(first);
    for (int64_t c = 1; c < C; ++c) {
      const T v = score(c);
      finite &= is_finite(v);
      top = static_cast<double>(v) > top ? static_cast<double>(v) : top;
    }
    if (!finite) return kNaN;
    double total = 0.0;
    for (int64_t c = 0; c < C; ++c) total += ::exp(static_cast<double>(score(c)) - top);
    return ::exp(static_cast<double>(score(y)) - top) / total;
  }
  // First maximal index (all scores finite when it counts).
  T best = score(0);
  bool finite = is_finite(best);
  int64_t arg = 0;
  for (int64_t c = 1; c < C; ++c) {
    const T v = score(c);
    finite &= is_finite(v);
    if (v > best) {
      best = v;
      arg = c;
    }
  }
  if (!finite) return kNaN;
  if (arg != y) return 0.0;
  return benefit == kPaper ? static_cast<double>(size) : 1.0;
}

// ---------------------------------------------------------------------------------------------------------
// The block program. `block` / `grid`: this block's index and the number of blocks (tiles are dealt out
// grid-stride). `smem`: plan.smem_bytes bytes, 16-byte aligned.

// N = p.n, the number of modalities, as a compile-time constant: the loops over modalities and the coalition
// index arithmetic (g >> n, masks) get constant bounds, and the per-row pointers to the modalities' partial
// products stay in registers (ptxas for sm_90: no spills for n <= 10 and n = 15, 16, where n known only at
// run time spilled 148 bytes a thread).
//
// TensorCores: the program of the plans with plan.mma (the first layer on tensor cores; fp16, bf16, fp32). A
// separate instantiation, so that its registers do not weigh on the other plans' program.
template <typename In, typename T, int N, bool TensorCores, class Exec>
FASTSHAP_FN void run_block(Exec& ex, const Params<T>& p, unsigned char* smem, int64_t block, int64_t grid) {
  static_assert(N >= 1 && N <= kMaxN, "1 <= n <= kMaxN modalities");
  static_assert(!TensorCores || (kMmaInput<In> && std::is_same<T, float>::value), "tensor cores: fp16, bf16, fp32");
  const Plan& pl = p.plan;
  constexpr int n = N;
  const int tb = pl.tb;
  const int64_t K = p.K, C = p.C;
  const uint32_t all = (1u << n) - 1u;
  const bool mlp = p.head == kMlp;
  const bool per_sample = p.n_sources == 2 * n;

  double* num = reinterpret_cast<double*>(smem + pl.off_num);    // (tb, n) Shapley numerators
  double* vals = reinterpret_cast<double*>(smem + pl.off_vals);  // (rows) coalition values of a chunk
  T* xs = reinterpret_cast<T*>(smem + pl.off_xs);
  T* ws = reinterpret_cast<T*>(smem + pl.off_ws);
  T* scratch = p.scratch == nullptr ? nullptr : p.scratch + block * pl.scratch_per_block;
  T* P = pl.p_shared ? reinterpret_cast<T*>(smem + pl.off_p) : scratch + pl.g_p;  // (n_sources, tb, p_stride)
  T* Hs = nullptr;  // (rows, h_stride) hidden activations of a chunk (MLP)
  T* Ls = nullptr;  // (rows, l_stride) logits before bias2 (MLP)
  if (mlp) {
    Hs = pl.hl_shared ? reinterpret_cast<T*>(smem + pl.off_h) : scratch + pl.g_h;
    Ls = pl.hl_shared ? reinterpret_cast<T*>(smem + pl.off_l) : scratch + pl.g_l;
  }

  const T* start = p.start;
  const T* absent = p.absent;
  const T* bias2 = p.bias2;
  if (pl.consts_shared) {
    T* s_start = reinterpret_cast<T*>(smem + pl.off_start);
    T* s_absent = reinterpret_cast<T*>(smem + pl.off_absent);
    T* s_bias2 = reinterpret_cast<T*>(smem + pl.off_b2);
    const int64_t absent_count = p.absent_rows * K;
    ex.each([&](int tid) {
      for (int64_t i = tid; i < K; i += kThreads) s_start[i] = p.start[i];
      for (int64_t i = tid; i < absent_count; i += kThreads) s_absent[i] = p.absent[i];
      if (mlp) {
        for (int64_t i = tid; i < C; i += kThreads) s_bias2[i] = p.bias2[i];
      }
    });
    start = s_start;
    absent = s_absent;
    if (mlp) bias2 = s_bias2;
  }

  // The row that modality i contributes to coalition `mask` of tile sample s.
  auto row_of = [&](int i, int s, uint32_t mask) -> const T* {
    if ((mask >> i) & 1u) return P + (static_cast<int64_t>(i) * tb + s) * pl.p_stride;
    if (per_sample) return P + (static_cast<int64_t>(n + i) * tb + s) * pl.p_stride;
    return absent + i * p.absent_stride;
  };

  [[maybe_unused]] MmaPipe mma_pipe;  // the tensor-core first layer's pipeline, run on from tile to tile
  for (int64_t tile = block; tile < pl.num_tiles; tile += grid) {
    const int64_t tile0 = tile * tb;
    const int count = static_cast<int>(std::min<int64_t>(tb, p.batch - tile0));  // >= 1

    // 1. Partial products of every source (rows of samples past the batch are zeros).
    if constexpr (TensorCores) first_layer_mma<In>(ex, p, smem, P, tile, grid, mma_pipe);
    for (int src = 0; src < p.n_sources && !TensorCores; ++src) {
      const Source& so = p.src[src];
      const In* x = static_cast<const In*>(so.data) + tile0 * so.row_stride;
      T* out = P + static_cast<int64_t>(src) * tb * pl.p_stride;
      const Gemm<T> g{tb, pl.tx1, K, so.depth, p.weight1 + so.col_offset, p.D,
                      out, pl.p_stride, xs, pl.xs_stride, ws,
                      pl.ws_stride, pl.pipe ? smem + pl.off_pipe : nullptr};
      gemm(
          ex, g,
          [&](int r, int64_t j) -> T {
            return r < count ? static_cast<T>(x[r * so.row_stride + j * so.col_stride]) : T(0);
          },
          vector_rows(x, so.row_stride, so.col_stride, count));
    }

    // 2. Count rows with NaN/Inf per modality; clear the numerators.
    ex.each([&](int tid) {
      const int prows = p.n_sources * count;
      for (int i = tid; i < prows; i += kThreads) {
        const int src = i / count, s = i % count;
        const T* row = P + (static_cast<int64_t>(src) * tb + s) * pl.p_stride;
        bool finite = true;
        for (int64_t k = 0; k < K; ++k) finite &= is_finite(row[k]);
        if (!finite) Exec::add(p.stats + 2 * n + src % n, 1.0);
      }
      for (int i = tid; i < tb * n; i += kThreads) num[i] = 0.0;
    });

    // Decision fusion: each classifier's softmax(row + bias[i]), in place.
    if (p.head == kDecision) {
      ex.each([&](int tid) {
        const int prows = p.n_sources * count;
        for (int i = tid; i < prows; i += kThreads) {
          const int src = i / count, s = i % count;
          T* row = P + (static_cast<int64_t>(src) * tb + s) * pl.p_stride;
          const T* bias = p.dec_bias + static_cast<int64_t>(src % n) * K;
          T top = row[0] + bias[0];
          for (int64_t k = 1; k < K; ++k) {
            const T v = row[k] + bias[k];
            top = v > top ? v : top;
          }
          T total = T(0);
          for (int64_t k = 0; k < K; ++k) {
            const T e = exp_rn((row[k] + bias[k]) - top);
            row[k] = e;
            total += e;
          }
          for (int64_t k = 0; k < K; ++k) row[k] = div_rn(row[k], total);
        }
      });
    }

    // 3-4. Coalitions, pl.rows (sample, coalition) rows at a time.
    const int64_t total_rows = static_cast<int64_t>(count) << n;
    for (int64_t g0 = 0; g0 < total_rows; g0 += pl.rows) {
      const int reff = static_cast<int>(std::min<int64_t>(pl.rows, total_rows - g0));
      if (mlp) {
        const int64_t H = K;
        ex.each([&](int tid) {
          const int64_t elems = static_cast<int64_t>(pl.rows) * H;
          for (int64_t i = tid; i < elems; i += kThreads) {
            const int rl = static_cast<int>(i / H);
            const int64_t h = i % H;
            T z = T(0);
            if (rl < reff) {
              const int64_t g = g0 + rl;
              const int s = static_cast<int>(g >> n);
              const uint32_t mask = static_cast<uint32_t>(g) & all;
              T x = start[h];
              for (int m = 0; m < n; ++m) x = x + row_of(m, s, mask)[h];
              // ReLU, except that a NaN/Inf pre-activation goes on as NaN: the logits, v(S) and the phi row
              // come out NaN instead of the ReLU hiding it.
              z = !is_finite(x) ? std::numeric_limits<T>::quiet_NaN() : (x > T(0) ? x : T(0));
            }
            Hs[rl * pl.h_stride + h] = z;
          }
        });
        const Gemm<T> g{pl.rows, pl.tx2, C, H, p.weight2, H, Ls, pl.l_stride, xs, pl.xs_stride, ws, pl.ws_stride};
        gemm(ex, g, [&](int r, int64_t j) -> T { return Hs[r * pl.h_stride + j]; });
      }
      ex.each([&](int tid) {
        for (int rl = tid; rl < reff; rl += kThreads) {
          const int64_t g = g0 + rl;
          const int s = static_cast<int>(g >> n);
          const uint32_t mask = static_cast<uint32_t>(g) & all;
          double v = 0.0;
          if (p.benefit != kPaper || mask != 0) {  // v(empty) = 0 for the paper benefit
            const int size = popcount(mask);
            const int64_t y = p.labels[(tile0 + s) * p.label_stride];
            if (mlp) {
              const T* logits = Ls + static_cast<int64_t>(rl) * pl.l_stride;
              v = coalition_value<T>([&](int64_t c) { return logits[c] + bias2[c]; }, C, y, size, p.benefit, false, n);
            } else {
              const T* sel[N];
              FASTSHAP_UNROLL
              for (int m = 0; m < N; ++m) sel[m] = row_of(m, s, mask);
              auto score = [&](int64_t c) {
                T x = start[c];
                FASTSHAP_UNROLL
                for (int m = 0; m < N; ++m) x = x + sel[m][c];
                return x;
              };
              v = coalition_value<T>(score, C, y, size, p.benefit, p.head == kDecision, n);
            }
          }
          vals[rl] = v;
        }
      });
      ex.each([&](int tid) {
        const int64_t s_lo = g0 >> n, s_hi = (g0 + reff - 1) >> n;
        const int pairs = static_cast<int>(s_hi - s_lo + 1) * n;
        for (int i = tid; i < pairs; i += kThreads) {
          const int64_t s = s_lo + i / n;
          const int m = i % n;
          const int64_t begin = std::max<int64_t>(g0, s << n), end = std::min<int64_t>(g0 + reff, (s + 1) << n);
          double acc = num[s * n + m];
          for (int64_t g = begin; g < end; ++g) {
            const double v = vals[g - g0];
            if (v == 0.0) continue;
            const uint32_t mask = static_cast<uint32_t>(g) & all;
            const int size = popcount(mask);
            acc = ((mask >> m) & 1u) ? mul_add_rn(acc, v, p.coef_in[size]) : mul_add_rn(acc, -v, p.coef_out[size]);
          }
          num[s * n + m] = acc;
        }
      });
    }

    // phi of pair i = (sample, modality) of the tile. A label outside [0, C) gives a NaN row; so does a NaN
    // v(S) (non-finite scores). Stats row 3 counts the NaN rows, as in the other backends.
    auto label_ok = [&](int s) {
      const int64_t y = p.labels[(tile0 + s) * p.label_stride];
      return y >= 0 && y < p.C;
    };
    auto phi_of = [&](int i) {
      return label_ok(i / n) ? static_cast<float>(num[i] / p.n_factorial) : std::numeric_limits<float>::quiet_NaN();
    };
    ex.each([&](int tid) {
      for (int i = tid; i < count * n; i += kThreads) p.phi[tile0 * n + i] = phi_of(i);
    });
    // 5. The tile's share of the batch stats: one thread per modality (sum of phi, count of phi < 1), one
    //    for the NaN rows; one float64 atomic each per tile.
    ex.each([&](int tid) {
      if (tid < n) {
        double total = 0.0, below_one = 0.0;
        for (int s = 0; s < count; ++s) {
          const float v = phi_of(s * n + tid);
          total += static_cast<double>(v);
          below_one += v < 1.0f ? 1.0 : 0.0;
        }
        Exec::add(p.stats + tid, total);
        Exec::add(p.stats + n + tid, below_one);
      } else if (tid == kMaxN) {
        double bad = 0.0;
        for (int s = 0; s < count; ++s) {
          bool nan_row = !label_ok(s);
          for (int m = 0; m < n; ++m) nan_row |= is_nan(phi_of(s * n + m));
          bad += nan_row ? 1.0 : 0.0;
        }
        if (bad > 0.0) Exec::add(p.stats + 3 * n, bad);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host side: the plan.

struct Shape {
  int head;
  int n;
  int n_sources;
  int64_t K, C;
  int elem;         // bytes per element of the compute type
  int absent_rows;  // rows of the shared absent table
  int64_t batch;
  bool mma = false;  // fp16/bf16/fp32 features and weights of the same type, tensor cores allowed (sm_80+)
};

struct Limits {
  int64_t soft_budget;    // shared memory a block should use (leaves room for a second block per SM)
  int64_t hard_budget;    // shared memory a block may use
  int64_t fallback_grid;  // blocks when buffers live in global scratch (bounds its size), and for the
                          // tensor-core plans (two per SM on a GPU)
  int64_t max_grid;
  bool pipeline = true;   // plans may stage the first layer asynchronously (FASTSHAP_CUDA_PIPELINE=0: never)
  bool tensor_cores = false;  // plans may run the first layer on tensor cores (FASTSHAP_CUDA_TENSOR_CORES=1)
};

inline int64_t align16(int64_t x) { return (x + 15) & ~int64_t{15}; }

inline int mma_kpad(int64_t K) { return static_cast<int>((K + kMmaTile - 1) / kMmaTile * kMmaTile); }
// Whether a warp's output tiles of the tensor-core first layer fit its kMmaTiles accumulators.
inline bool mma_fits(int tb, int64_t K) {
  return K <= kWarps * kMmaTiles * kMmaTile && int64_t{tb / kMmaTile} * (mma_kpad(K) / kMmaTile) <= kWarps * kMmaTiles;
}

inline Plan layout(const Shape& sh, int tb, int rows, bool p_shared, bool hl_shared, bool consts_shared,
                   bool pipe = false, int mma_stages = 0) {
  const bool mma = mma_stages > 0;
  const bool mlp = sh.head == kMlp;
  const int64_t e = sh.elem;
  Plan pl;
  pl.tb = tb;
  pl.td = e == 8 ? 16 : 32;
  pl.rows = rows;
  pl.tx1 = kMicro * kThreads / tb;
  pl.tx2 = mlp ? kMicro * kThreads / rows : pl.tx1;
  pl.p_stride = sh.K | 1;
  pl.h_stride = mlp ? (sh.K | 1) : 0;
  pl.l_stride = mlp ? (sh.C | 1) : 0;
  pl.xs_stride = pl.td + kVec;
  pl.ws_stride = pl.td + kVec;
  const int xs_rows = mlp ? std::max(tb, rows) : tb;
  const int ws_rows = kMicro * std::max(pl.tx1, pl.tx2);
  pl.p_shared = p_shared;
  pl.hl_shared = mlp && hl_shared;
  pl.consts_shared = consts_shared;
  pl.pipe = pipe && !mma;
  pl.mma = mma;
  pl.kpad = mma ? mma_kpad(sh.K) : 0;
  pl.mma_stages = mma_stages;

  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    const int64_t offset = at;
    at = align16(at + bytes);
    return offset;
  };

  int64_t g = 0;
  auto take_global = [&](int64_t elems) {
    const int64_t offset = g;
    g += (elems + 3) & ~int64_t{3};  // every slice 16-byte aligned, for 4- and 8-byte elements
    return offset;
  };
  pl.off_num = take(int64_t{tb} * sh.n * 8);
  pl.off_vals = take(int64_t{rows} * 8);
  // The FMA GEMMs' staging: the first layer's unless it runs on tensor cores, the MLP's second layer's.
  const bool fma_staging = !mma || mlp;
  pl.off_xs = take(fma_staging ? int64_t{xs_rows} * pl.xs_stride * e : 0);
  pl.off_ws = take(fma_staging ? int64_t{ws_rows} * pl.ws_stride * e : 0);
  if (pl.pipe) pl.off_pipe = take(2 * (int64_t{tb} * pl.xs_stride + int64_t{kMicro} * pl.tx1 * pl.ws_stride) * e);
  if (mma) pl.off_mma = take(mma_stages * int64_t{tb + pl.kpad} * kMmaRowBytes);  // first_layer_mma's stages
  if (consts_shared) {
    pl.off_start = take(sh.K * e);
    pl.off_absent = take(sh.absent_rows * sh.K * e);
    pl.off_b2 = take(mlp ? sh.C * e : 0);
  }
  const int64_t p_elems = int64_t{sh.n_sources} * tb * pl.p_stride;
  if (p_shared) {
    pl.off_p = take(p_elems * e);
  } else {
    pl.g_p = take_global(p_elems);
  }
  if (mlp) {
    const int64_t h_elems = int64_t{rows} * pl.h_stride, l_elems = int64_t{rows} * pl.l_stride;
    if (pl.hl_shared) {
      pl.off_h = take(h_elems * e);
      pl.off_l = take(l_elems * e);
    } else {
      pl.g_h = take_global(h_elems);
      pl.g_l = take_global(l_elems);
    }
  }
  pl.smem_bytes = at;
  pl.scratch_per_block = g;
  pl.num_tiles = (sh.batch + tb - 1) / tb;
  return pl;
}

// The largest tile whose buffers all fit in shared memory (soft budget first, then the hard one), with the
// pipelined staging if it fits too; else
// partial products in global scratch, then the MLP's hidden/logit chunks too, then the constants. The last
// layout needs under 48 KB of shared memory, which every CUDA device has.
inline Plan make_plan(const Shape& sh, const Limits& lim) {
  const bool mlp = sh.head == kMlp;
  const int kTiles[] = {128, 64, 32, 16};
  const int kRows[] = {128, 64, 32, 16};
  auto chunk_rows = [&](int tb) { return static_cast<int>(std::min<int64_t>(1024, int64_t{tb} << sh.n)); };
  auto done = [&](Plan pl, int64_t max_grid) {
    pl.grid = std::max<int64_t>(1, std::min(pl.num_tiles, max_grid));
    return pl;
  };
  const bool mma = sh.mma && lim.tensor_cores;
  for (const int64_t budget : {lim.soft_budget, lim.hard_budget}) {
    // The tensor-core first layer first (a smaller tile than the FMA plans' is worth it), then the others.
    for (const int tb : kTiles) {
      if (!mma || !mma_fits(tb, sh.K)) continue;
      for (const int stages : {kMaxMmaStages, 2}) {
        for (const int rows : kRows) {
          if (!mlp && rows != kRows[0]) break;
          const Plan pl = layout(sh, tb, mlp ? rows : chunk_rows(tb), true, true, true, false, stages);
          // A block per SM slot that runs several tiles: its tensor-core pipeline copies the next tile's
          // first steps while this tile's coalitions are computed.
          // fallback_grid is two blocks per SM: one where this plan leaves room for only one, so that every
          // block is resident (a second wave would start without the prefetch the pipeline relies on).
          if (pl.smem_bytes <= budget)
            return done(pl, pl.smem_bytes <= lim.soft_budget ? lim.fallback_grid
                                                             : std::max<int64_t>(1, lim.fallback_grid / 2));
        }
      }
    }
    for (const int tb : kTiles) {
      for (const bool pipe : {true, false}) {
        if (pipe && !lim.pipeline) continue;
        if (mlp) {
          for (const int rows : kRows) {
            const Plan pl = layout(sh, tb, rows, true, true, true, pipe);
            if (pl.smem_bytes <= budget) return done(pl, lim.max_grid);
          }
        } else {
          const Plan pl = layout(sh, tb, chunk_rows(tb), true, true, true, pipe);
          if (pl.smem_bytes <= budget) return done(pl, lim.max_grid);
        }
      }
    }
  }
  const int tb = 32;
  for (const bool consts : {true, false}) {
    if (mlp) {
      for (const int rows : kRows) {
        const Plan pl = layout(sh, tb, rows, false, true, consts);
        if (pl.smem_bytes <= lim.hard_budget) return done(pl, lim.fallback_grid);
      }
      const Plan pl = layout(sh, tb, 64, false, false, consts);
      if (pl.smem_bytes <= lim.hard_budget) return done(pl, lim.fallback_grid);
    } else {
      const Plan pl = layout(sh, tb, chunk_rows(tb), false, false, consts);
      if (pl.smem_bytes <= lim.hard_budget) return done(pl, lim.fallback_grid);
    }
  }
  return done(layout(sh, tb, mlp ? 64 : chunk_rows(tb), false, false, false), lim.fallback_grid);
}

}  // namespace tile
}  // namespace fastshap
