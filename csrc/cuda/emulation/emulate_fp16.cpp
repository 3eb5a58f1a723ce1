// The emulated block programs for fp16 features, one per modality count (tests only).
#define FASTSHAP_EMULATE_DEFINITION
#include "shapley_emulate.h"

namespace fastshap {
namespace tile {
template void emulate_blocks<c10::Half, float>(const Params<float>&, unsigned char*);
}  // namespace tile
}  // namespace fastshap
