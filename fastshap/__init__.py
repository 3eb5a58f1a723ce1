"""fastshap: exact per-sample modality Shapley values for multimodal learning.

phi = fastshap.modality_shapley([audio_feat, visual_feat], head, labels)   # (B, 2) float32
"""

from fastshap import _extension, _ops, heads, resampling  # noqa: F401  (_extension, _ops: the compiled ops, fake kernels)
from fastshap.api import BENEFITS, MAX_MODALITIES, modality_shapley
from fastshap.backends import BackendError
from fastshap.capture import FeatureCapture, capture_features
from fastshap.checks import DeferredChecks
from fastshap.coalitions import coalition_values, modality_interactions

__version__ = "0.1.0"

__all__ = ["modality_shapley", "heads", "BackendError", "DeferredChecks", "BENEFITS", "MAX_MODALITIES", "__version__"]
__all__ += ["capture_features", "FeatureCapture", "resampling"]
__all__ += ["coalition_values", "modality_interactions"]
