// The plan of a launch (host code): tile sizes, where each buffer lives (shared memory, or a per-block slice of
// a global scratch tensor when a tile of them does not fit), and whether the first layer takes the cp.async
// pipeline or tensor cores, from the problem's shape and the device's shared-memory budgets.
#pragma once

#include "tile_common.cuh"
#include "tile_mma_fragments.cuh"

namespace fastshap {
namespace tile {

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
