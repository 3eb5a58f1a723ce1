// The fused kernels for fp64 features, one per modality count, in a translation unit of their own.
#include "shapley_kernel.cuh"

namespace fastshap {
namespace tile {
template void launch_tile_kernels<double, double, false>(const Params<double>&, int, cudaStream_t);
}  // namespace tile
}  // namespace fastshap
