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
// code with HostExec (emulation/, tests only) runs the threads of a phase one after the other, in an
// order shuffled for every phase, lands asynchronous copies as late as the PTX ISA allows and models each
// warp's MMA registers: that is how the kernels' indexing, numerics, barriers, copy waits and fragment layouts
// are tested on machines without a GPU. Nothing a thread keeps in registers outlives its phase (except the
// tensor-core accumulators, which each warp keeps over a source's steps: HostExec::Mma keeps them per warp
// too); all other state between phases lives in shared or global memory. Asynchronous
// copies (cp.async, the first layer's pipelined staging) may still be in flight when their phase ends: the
// issuing thread waits for them in a later phase, and only it reads them before that phase's barrier.
//
// Where the buffers live (shared memory, or a per-block slice of a global scratch tensor when a tile of them
// does not fit) is decided on the host by make_plan() (tile_plan.h); the code reads them through plain
// pointers.
//
// The program's parts: tile_common.cuh (parameters, arithmetic, DeviceExec), tile_fma.cuh (the FMA first
// layer and the MLP's second layer), tile_staging.cuh (16-byte and cp.async staging), tile_mma.cuh (the
// tensor-core first layer), and here the coalition phases. docs/internals.md says which have run on a GPU.
//
// Ran on a GPU: the coalition phases, yes, on an H100 on 2026-11-27, with n a run-time parameter; since then
// n is a template parameter, NaN rows for labels outside [0, C) and the in-kernel batch stats were added,
// which have not run on a GPU.
#pragma once

#include "tile_common.cuh"
#include "tile_fma.cuh"
#include "tile_mma.cuh"

#include <limits>

namespace fastshap {
namespace tile {

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

}  // namespace tile
}  // namespace fastshap
