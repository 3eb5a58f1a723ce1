"""Per-modality encoders and the multimodal model that exposes their features to the fusion head.

``build_model(cfg, dataset, head)`` builds one encoder per modality from the dataset's
``encoder_spec(modality)`` (overridable by the ``encoders`` option) and a fusion head from
:mod:`fastshap.heads`. The model's forward returns the logits and the per-modality features, which is
what valuation (``fastshap.modality_shapley``) and feature-level methods (OGM-GE, PMR, AGM) need.
"""

from __future__ import annotations

from fastshap_train.models.encoders import ENCODERS, build_encoder, register_encoder  # noqa: F401
from fastshap_train.models.multimodal import ModelOutput, MultimodalModel, build_head, build_model  # noqa: F401
