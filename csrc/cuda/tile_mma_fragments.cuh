// The geometry of the tensor-core first layer (tile_mma.cuh): its constants and where each lane's data sits in
// ldmatrix and mma fragments. Shared by the device code, the plan (tile_plan.h) and the CPU emulation's warp
// model (emulation/warp_model.h), which computes from these formulas what each lane's registers hold, so that
// the emulation tests them.
//
// Ran on a GPU: no (off by default: kCudaTensorCoresByDefault, switches.h).
#pragma once

#include "tile_common.cuh"

namespace fastshap {
namespace tile {

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

}  // namespace tile
}  // namespace fastshap
