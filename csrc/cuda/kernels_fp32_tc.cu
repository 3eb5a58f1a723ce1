// The fused kernels for fp32 features whose first layer runs on tensor cores (plan.mma, 3xTF32), one per
// modality count, in a translation unit of their own.
#include "shapley_kernel.cuh"

namespace fastshap {
namespace tile {
template void launch_tile_kernels<float, float, true>(const Params<float>&, int, cudaStream_t);
}  // namespace tile
}  // namespace fastshap
