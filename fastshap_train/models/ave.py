"""The audio-visual event localisation model of Tian et al. (ECCV 2018), written from the paper's
description: audio-guided visual attention, one BiLSTM per modality, and a per-segment classifier.

Inputs per video of T one-second segments (the AVE features): audio ``a_t`` (T, Da) (VGGish, Da = 128)
and visual ``v_t`` (T, R, Dv) (VGG-19 pool5 regions, R = 7 x 7, Dv = 512).

* Attention (the paper's Eq. 1-2): ``x_t = w_f^T tanh(W_v U_v(v_t) + (W_a U_a(a_t)) 1^T)`` over the R
  regions, with ``U_v: Dv -> d`` and ``U_a: Da -> d`` linear + ReLU, ``W_v, W_a: d -> k`` (k = R) and
  ``w_f: k -> 1``; ``w_t = softmax(x_t)`` and the attended visual feature ``v_t^att = sum_r w_t^r v_t^r``.
* Temporal modelling: a BiLSTM (hidden h per direction) over the audio features, another over the
  attended visual features.
* Fusion and classification per segment: ``[h_t^a; h_t^v]`` (4h) -> Linear(4h, h) -> ReLU ->
  Linear(h, C): logits (B, T, C), C = 29 (28 events + background).
* Loss: per-segment softmax cross-entropy against the one-hot segment labels, averaged over segments
  (:func:`segment_loss`); the metric is the accuracy over all segments (:func:`segment_accuracy`).

In the multimodal framework the encoders are identities that flatten a modality's segments
(``"segments"`` kind, ``(B, T, ...) -> (B, T * prod(...))``) and the whole network above is the fusion
head (:class:`AVEHead`), a callable ``list of 2 (B, d_i) -> (B, T, C)``. Removing a modality therefore
zeroes its features before attention and the BiLSTMs (feature and input removal coincide), and
``fastshap.modality_shapley`` values a video with ``v(S) = |S| x (fraction of its T segments predicted
correctly)`` (the per-segment paper benefit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastshap_train.data.base import DataOptionError
from fastshap_train.models.encoders import register_encoder
from fastshap_train.registry import Option, register_options

register_options(
    "model:ave",
    [
        Option(
            "ave_hidden",
            128,
            "AVE model: hidden units per direction of each BiLSTM",
            check=lambda x: None if x > 0 else "must be > 0",
        ),
        Option(
            "ave_attention_dim",
            512,
            "AVE model: width d of the attention's audio / visual projections",
            check=lambda x: None if x > 0 else "must be > 0",
        ),
    ],
    title="AVE event-localisation model",
)


class SegmentInput(nn.Module):
    """The identity encoder of a per-segment feature modality: ``(B, T, ...) -> (B, T * prod(...))``."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.out_dim = int(math.prod(self.shape))

    def forward(self, x):
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"segment input expects (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return x.flatten(1).float()


def _shape(x):
    ok = isinstance(x, (list, tuple)) and x and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in x)
    return None if ok else "must be a list of positive integers"


@register_encoder("segments", {"shape": _shape})
def _segments(spec, cfg):
    return SegmentInput(spec["shape"])


class AVEHead(nn.Module):
    """Attention + BiLSTMs + per-segment classifier over the flattened audio and visual segment features.

    ``forward([audio (B, T*Da), visual (B, T*R*Dv)]) -> logits (B, T, C)``.
    """

    def __init__(
        self,
        segments: int,
        audio_dim: int,
        regions: int,
        visual_dim: int,
        num_classes: int,
        hidden: int = 128,
        attention_dim: int = 512,
    ):
        super().__init__()
        self.segments, self.audio_dim = int(segments), int(audio_dim)
        self.regions, self.visual_dim = int(regions), int(visual_dim)
        self.dims = [self.segments * self.audio_dim, self.segments * self.regions * self.visual_dim]
        self.num_classes = int(num_classes)
        self.u_audio = nn.Linear(self.audio_dim, attention_dim)
        self.u_visual = nn.Linear(self.visual_dim, attention_dim)
        self.w_audio = nn.Linear(attention_dim, self.regions, bias=False)
        self.w_visual = nn.Linear(attention_dim, self.regions, bias=False)
        self.w_f = nn.Linear(self.regions, 1)
        self.lstm_audio = nn.LSTM(self.audio_dim, hidden, batch_first=True, bidirectional=True)
        self.lstm_visual = nn.LSTM(self.visual_dim, hidden, batch_first=True, bidirectional=True)
        self.fc1 = nn.Linear(4 * hidden, hidden)
        self.fc2 = nn.Linear(hidden, self.num_classes)

    def attention(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple:
        """audio (B, T, Da), visual (B, T, R, Dv) -> (attended visual (B, T, Dv), weights (B, T, R))."""
        guide = self.w_audio(F.relu(self.u_audio(audio))).unsqueeze(2)  # (B, T, 1, k)
        content = self.w_visual(F.relu(self.u_visual(visual)))  # (B, T, R, k)
        scores = self.w_f(torch.tanh(content + guide)).squeeze(-1)  # (B, T, R)
        weights = scores.softmax(-1)
        return torch.einsum("btr,btrd->btd", weights, visual), weights

    def forward(self, features):
        audio, visual = features
        b = audio.shape[0]
        audio = audio.reshape(b, self.segments, self.audio_dim)
        visual = visual.reshape(b, self.segments, self.regions, self.visual_dim)
        attended, _ = self.attention(audio, visual)
        ha, _ = self.lstm_audio(audio)
        hv, _ = self.lstm_visual(attended)
        return self.fc2(F.relu(self.fc1(torch.cat([ha, hv], dim=-1))))


def segment_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean per-segment cross-entropy: logits (B, T, C), labels (B, T)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())


def segment_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of all segments whose argmax is the label."""
    return float((logits.argmax(-1) == labels).float().mean())


def _cfg(cfg, key, default):
    if cfg is None:
        return default
    try:
        value = cfg[key]
    except KeyError:
        return default
    return default if value is None else value


def build_head(cfg, shapes: dict, num_classes: int, kind: str = "auto") -> AVEHead:
    """The AVE head for feature shapes ``{"audio": (T, Da), "visual": (T, R..., Dv)}``."""
    if kind not in ("auto", "concat"):
        raise DataOptionError(
            f"ave: the AVE model fuses by attention and BiLSTMs; the {kind!r} head does not apply "
            f"(use a method with the default head)"
        )
    t, da = shapes["audio"]
    vt, *regions, dv = shapes["visual"]
    if vt != t:
        raise ValueError(f"ave: audio has {t} segments, visual {vt}")
    return AVEHead(
        t,
        da,
        math.prod(regions),
        dv,
        num_classes,
        int(_cfg(cfg, "ave_hidden", 128)),
        int(_cfg(cfg, "ave_attention_dim", 512)),
    )
