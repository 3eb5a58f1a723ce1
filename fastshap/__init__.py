"""fastshap: exact per-sample modality Shapley values for multimodal learning.

phi = fastshap.modality_shapley([audio_feat, visual_feat], head, labels)   # (B, 2) float32
"""

from fastshap import _extension, _ops, heads  # noqa: F401  (loads the compiled ops and their fake kernels, if built)
from fastshap.api import BENEFITS, MAX_MODALITIES, modality_shapley
from fastshap.backends import BackendError
from fastshap.checks import DeferredChecks

__version__ = "0.1.0"

__all__ = ["modality_shapley", "heads", "BackendError", "DeferredChecks", "BENEFITS", "MAX_MODALITIES", "__version__"]
