// The CPU emulation of the CUDA kernels (tests only; see shapley_emulate.cpp): every block of a launch run
// on the CPU, one thread of a phase after the other (HostExec, host_exec.h). Declared here, defined below for the files that
// instantiate it: emulate_<type>.cpp, one per input type, so that the tests' build of the emulation (4 x 16
// block programs) runs on several cores.
#pragma once

#include "../shapley_tile.cuh"
#include "host_exec.h"
#include "warp_model.h"

namespace fastshap {
namespace tile {

// Runs every block of the launch p (p.plan.grid of them) with `smem` as their shared memory.
template <typename In, typename T>
void emulate_blocks(const Params<T>& p, unsigned char* smem);

#ifdef FASTSHAP_EMULATE_DEFINITION
template <typename In, typename T>
void emulate_blocks(const Params<T>& p, unsigned char* smem) {
  HostExec ex;
  with_modality_count(p.n, [&](auto count) {
    constexpr int N = decltype(count)::value;
    for (int64_t block = 0; block < p.plan.grid; ++block) {
      ex.begin_block();
      if constexpr (kMmaInput<In> && std::is_same<T, float>::value) {
        if (p.plan.mma) {
          run_block<In, T, N, true>(ex, p, smem, block, p.plan.grid);
          continue;
        }
      }
      run_block<In, T, N, false>(ex, p, smem, block, p.plan.grid);
    }
  });
}
#endif

}  // namespace tile
}  // namespace fastshap
