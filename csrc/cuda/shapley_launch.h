// The launch of the fused CUDA kernel for one input type, declared here and defined in shapley_kernel.cuh.
// Each input type's kernels (one per modality count, 1..kMaxN) are compiled in their own translation unit,
// kernels_<type>.cu, and the tensor-core programs of fp16, bf16 and fp32 in kernels_<type>_tc.cu, so that
// a parallel build compiles the 7 x 16 kernels on several cores at once.
#pragma once

#include "tile_common.cuh"
#include "tile_mma_fragments.cuh"

#include <cuda_runtime_api.h>

namespace fastshap {
namespace tile {

// Dynamic shared memory a kernel may use without opting in.
constexpr int64_t kDefaultSharedMemory = 48 * 1024;

// Devices past this index are asked for their attributes on every call instead of once.
constexpr int kMaxDevices = 64;

// Launches shapley_kernel<In, T, p.n, TensorCores> on `stream` of the current device `device` (p.plan fixes
// the grid and the dynamic shared memory) and checks the launch. Defined in shapley_kernel.cuh, instantiated
// in kernels_<type>.cu (and kernels_<type>_tc.cu for the tensor-core programs of fp16, bf16, fp32).
template <typename In, typename T, bool TensorCores>
void launch_tile_kernels(const Params<T>& p, int device, cudaStream_t stream);

// The program p.plan asks for.
template <typename In, typename T>
void launch_tile_kernel(const Params<T>& p, int device, cudaStream_t stream) {
  if constexpr (kMmaInput<In> && std::is_same<T, float>::value) {
    if (p.plan.mma) return launch_tile_kernels<In, T, true>(p, device, stream);
  }
  launch_tile_kernels<In, T, false>(p, device, stream);
}

}  // namespace tile
}  // namespace fastshap
