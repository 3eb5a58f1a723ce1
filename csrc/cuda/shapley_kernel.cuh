// The fused CUDA kernel: the block program of shapley_tile.cuh compiled for one input type and one modality
// count, and its launch. Included only by the kernels_<type>.cu files, which instantiate it.
#pragma once

#include "shapley_launch.h"
#include "shapley_tile.cuh"

#include <c10/cuda/CUDAException.h>

#include <atomic>
#include <mutex>

namespace fastshap {
namespace tile {

// Kernel parameters are passed by value; 4 KB is the limit on every supported architecture.
static_assert(sizeof(Params<double>) <= 4096 && sizeof(Params<float>) <= 4096, "kernel parameters too large");

// At least two blocks per multiprocessor (at most 128 registers a thread): the plan's soft shared-memory
// budget is half of a multiprocessor's for that, and a second block is what keeps loads in flight while
// the first one syncs. Left free, ptxas took 200-250 registers for some n (one block per SM).
template <typename In, typename T, int N, bool TensorCores>
__global__ void __launch_bounds__(kThreads, 2) shapley_kernel(const Params<T> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  DeviceExec ex;
  run_block<In, T, N, TensorCores>(ex, p, smem, static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(gridDim.x));
}

// Raises the kernel's dynamic shared-memory limit to `smem` bytes on `device` (the current device), asking
// the driver only when a larger amount than before is needed (the call costs host time on every launch
// otherwise, and must stay out of CUDA-graph captures after warm-up). The limit only ever grows: threads
// that miss the fast path take a lock, so that one asking for less cannot lower the limit under another's
// launch.
template <typename In, typename T, int N, bool TensorCores>
void allow_shared_memory(int device, int64_t smem) {
  static std::atomic<int64_t> allowed[kMaxDevices];
  static std::mutex raising;
  const bool known = device < kMaxDevices;
  if (known && allowed[device].load(std::memory_order_acquire) >= smem) return;
  std::lock_guard<std::mutex> lock(raising);
  if (known && allowed[device].load(std::memory_order_relaxed) >= smem) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(&shapley_kernel<In, T, N, TensorCores>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  if (known) allowed[device].store(smem, std::memory_order_release);
}

template <typename In, typename T, bool TensorCores>
void launch_tile_kernels(const Params<T>& p, int device, cudaStream_t stream) {
  const int64_t smem = p.plan.smem_bytes;
  with_modality_count(p.n, [&](auto count) {
    constexpr int N = decltype(count)::value;
    if (smem > kDefaultSharedMemory) allow_shared_memory<In, T, N, TensorCores>(device, smem);
    shapley_kernel<In, T, N, TensorCores>
        <<<static_cast<unsigned int>(p.plan.grid), kThreads, static_cast<size_t>(smem), stream>>>(p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace tile
}  // namespace fastshap
