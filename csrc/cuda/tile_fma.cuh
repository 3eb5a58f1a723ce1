// The block program's GEMM on CUDA-core FMAs: the first layer (unless it runs on tensor cores, tile_mma.cuh)
// and the MLP head's second layer. Each function is called by every thread of a phase with its index `tid`.
//
// Ran on a GPU: yes, with its element-by-element staging (staged_copy) and n a run-time parameter, on an H100
// on 2026-11-27. Since then not run: the 16-byte and pipelined staging it takes where the operands' layout
// allows (tile_staging.cuh).
#pragma once

#include "tile_common.cuh"
#include "tile_staging.cuh"

namespace fastshap {
namespace tile {

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

}  // namespace tile
}  // namespace fastshap
