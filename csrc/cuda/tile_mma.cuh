// The first layer on tensor cores: ldmatrix + mma.sync (fp16/bf16 m16n8k16, fp32 as 3xTF32 on m16n8k8) over
// cp.async stages, for features and head weights of one dtype on sm_80 and later. DeviceExec::Mma holds a
// warp's accumulators on the GPU; the CPU emulation runs HostExec::Mma (emulation/warp_model.h) instead.
//
// Ran on a GPU: no. Off by default (kCudaTensorCoresByDefault, FASTSHAP_CUDA_TENSOR_CORES: switches.h); tested
// in the CPU emulation only, where the warp model checks the fragment layouts and the pipeline's waits.
#pragma once

#include "tile_mma_fragments.cuh"
#include "tile_staging.cuh"

#if !defined(__CUDACC__)
#include "emulation/warp_model.h"
#endif

namespace fastshap {
namespace tile {

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
#endif

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

}  // namespace tile
}  // namespace fastshap
