// The emulated block programs for fp32 features, one per modality count (tests only).
#define FASTSHAP_EMULATE_DEFINITION
#include "shapley_emulate.h"

namespace fastshap {
namespace tile {
template void emulate_blocks<float, float>(const Params<float>&, unsigned char*);
}  // namespace tile
}  // namespace fastshap
