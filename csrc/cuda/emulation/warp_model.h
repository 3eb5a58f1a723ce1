// The CPU emulation's model of a warp's ldmatrix and mma (tests only; CPU builds only): HostExec::Mma, what
// the tensor-core first layer (tile_mma.cuh) runs in the emulation in place of DeviceExec::Mma.
#pragma once

#if defined(__CUDACC__)
#error "emulation/warp_model.h is the CPU emulation's: the CUDA build runs DeviceExec::Mma (tile_mma.cuh)"
#endif

#include "../tile_mma_fragments.cuh"
#include "host_exec.h"

#include <cstring>

namespace fastshap {
namespace tile {

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

}  // namespace tile
}  // namespace fastshap
