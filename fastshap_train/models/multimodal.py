"""The multimodal model: one encoder per modality, a fastshap fusion head, and modality removal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from fastshap import heads
from fastshap_train.data.base import DataOptionError
from fastshap_train.models.encoders import build_encoder, check_encoder_spec


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, C) (or (B, T, C) for per-segment tasks)
    features: list  # n tensors (B, d_i): what the head saw (removed modalities zeroed for feature removal)
    raw_features: list  # n tensors (B, d_i): encoder outputs before feature removal


def build_head(kind: str, dims: Sequence[int], num_classes: int, hidden: int = 256) -> nn.Module:
    if kind == "concat":
        return heads.ConcatLinear(dims, num_classes)
    if kind == "decision":
        return heads.DecisionFusion(dims, num_classes)
    if kind == "mlp":
        return heads.ConcatMLP(dims, hidden, num_classes)
    raise ValueError(f"unknown head {kind!r}; choose concat, decision or mlp")


class MultimodalModel(nn.Module):
    """Encoders (an nn.ModuleDict keyed by modality) + a head over the list of their features.

    ``forward(inputs, keep)``: `inputs` maps modality -> batch tensor; `keep` (B, n) bool marks the
    modalities each row keeps (None: all). A removed modality is handled per ``removal``: ``"feature"``
    zeroes its feature slice before the head, ``"input"`` feeds its encoder a zero input.
    """

    def __init__(
        self, modalities: Sequence[str], encoders: Mapping[str, nn.Module], head: nn.Module, removal: str = "feature"
    ):
        super().__init__()
        if removal not in ("feature", "input"):
            raise ValueError(f"removal must be 'feature' or 'input', got {removal!r}")
        self.modalities = tuple(modalities)
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.head = head
        self.removal = removal
        self.dims = [int(encoders[m].out_dim) for m in self.modalities]

    @property
    def n(self) -> int:
        return len(self.modalities)

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> list:
        """n feature tensors (B, d_i), in modality order."""
        return [self.encoders[m](inputs[m]) for m in self.modalities]

    def forward(self, inputs: Mapping[str, torch.Tensor], keep: torch.Tensor | None = None) -> ModelOutput:
        if keep is not None and self.removal == "input":
            inputs = {
                m: inputs[m] * keep[:, i].view(-1, *([1] * (inputs[m].dim() - 1))).to(inputs[m].dtype)
                for i, m in enumerate(self.modalities)
            }
        raw = self.encode(inputs)
        feats = raw
        if keep is not None and self.removal == "feature":
            feats = [f * keep[:, i : i + 1].to(f.dtype) for i, f in enumerate(raw)]
        return ModelOutput(self.head(feats), feats, raw)

    @torch.no_grad()
    def removed_features(self, zero_inputs: Mapping[str, torch.Tensor]) -> list:
        """Baselines b_i = Enc_i(zero input), n tensors (d_i,): what an input-removed modality looks like.

        `zero_inputs` holds one sample's zero input per modality (no batch dimension). Call in eval mode.
        """
        batch = {m: zero_inputs[m].unsqueeze(0) for m in self.modalities}
        return [f[0].float() for f in self.encode(batch)]


def build_model(cfg, dataset, head: str, removal: str | None = None) -> MultimodalModel:
    """Encoders from ``dataset.encoder_spec`` (overridden by ``cfg.encoders[modality]``) and a head."""
    overrides = dict(cfg["encoders"] or {}) if cfg is not None else {}
    unknown = set(overrides) - set(dataset.modalities)
    if unknown:
        # The modalities are known only now (the config check cannot tell): a user error, not a traceback.
        raise DataOptionError(
            f"encoders: unknown modality {', '.join(sorted(map(repr, unknown)))}; this dataset's "
            f"modalities: {', '.join(dataset.modalities)}"
        )
    encoders, kinds = {}, {}
    for m in dataset.modalities:
        spec = dict(dataset.encoder_spec(m))
        if m in overrides:
            extra = overrides[m]
            problem = check_encoder_spec(f"encoders.{m}", extra)
            if problem is None and isinstance(extra, dict) and "kind" not in extra:
                # Without a kind the override keeps the dataset's: its keys must suit that kind.
                problem = check_encoder_spec(f"encoders.{m}", {**extra, "kind": spec["kind"]})
            if problem:
                raise DataOptionError(problem)
            spec.update({"kind": extra} if isinstance(extra, str) else extra)
        encoders[m] = build_encoder(spec, cfg)
        kinds[m] = spec["kind"]
    dims = [encoders[m].out_dim for m in dataset.modalities]
    hidden = cfg["head_hidden"] if cfg is not None else 256
    custom = getattr(dataset, "build_head", None)  # datasets with their own fusion network (AVE)
    fusion = custom(cfg, dims, head) if custom is not None else build_head(head, dims, dataset.num_classes, hidden)
    model = MultimodalModel(dataset.modalities, encoders, fusion, removal or (cfg["removal"] if cfg else "feature"))
    model.encoder_kinds = kinds  # for input transforms that depend on the layout (data mask)
    return model
