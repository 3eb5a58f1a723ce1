// The first layer's staging of whole 16-byte vectors: synchronous 16-byte loads of rows laid out for them
// (VectorRows), and asynchronous copies (cp.async, sm_80 and later) into shared-memory stages, which the FMA
// first layer's pipeline (tile_fma.cuh) and the tensor-core first layer (tile_mma.cuh) use. In CPU builds
// the copies go through the emulation's model (emulation/host_exec.h): they land at the wait that covers them.
//
// Ran on a GPU: no. The pipeline can be switched off at run time (FASTSHAP_CUDA_PIPELINE=0, switches.h);
// the 16-byte loads cannot (a layout that allows them always takes them).
#pragma once

#include "tile_common.cuh"

#if !defined(__CUDACC__)
#include "emulation/host_exec.h"
#endif

namespace fastshap {
namespace tile {

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

}  // namespace tile
}  // namespace fastshap
