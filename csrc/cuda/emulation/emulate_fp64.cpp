// The emulated block programs for fp64 features, one per modality count (tests only).
#define FASTSHAP_EMULATE_DEFINITION
#include "shapley_emulate.h"

namespace fastshap {
namespace tile {
template void emulate_blocks<double, double>(const Params<double>&, unsigned char*);
}  // namespace tile
}  // namespace fastshap
