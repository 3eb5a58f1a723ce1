// The fused kernels for fp16 features whose first layer runs on tensor cores (plan.mma), one per modality
// count, in a translation unit of their own.
#include "shapley_kernel.cuh"

namespace fastshap {
namespace tile {
template void launch_tile_kernels<c10::Half, float, true>(const Params<float>&, int, cudaStream_t);
}  // namespace tile
}  // namespace fastshap
