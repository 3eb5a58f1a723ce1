"""``ave``: audio-visual event localisation on AVE (Tian et al., ECCV 2018), 28 events + background.

``--data-root`` holds the released feature files (names overridable), each an HDF5 dataset under the
key ``avadataset`` (orders under ``order``)::

    visual_feature.h5   (N, 10, 7, 7, 512)  VGG-19 pool5 features of each 1-s segment
    audio_feature.h5    (N, 10, 128)        VGGish features of each segment
    labels.h5           (N, 10, 29)         one-hot segment labels (class 28: background)
    {train,val,test}_order.h5  (M,)         the indices of each split's videos

Items: ``audio`` (10, 128) float32, ``visual`` (10, 7, 7, 512) float32 (read lazily: the file is about
4 GB), ``label`` (10,) int64: one label per segment. The model is :mod:`fastshap_train.models.ave` (audio-
guided visual attention + BiLSTMs + per-segment classifier), built through the dataset's ``build_head``;
the metric is the accuracy over all segments. Valuation of a video uses ``v(S) = |S| x (fraction of its
segments predicted correctly)``, so phi keeps the paper benefit's range and sums to ``2 x accuracy``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fastshap_train.data._media import require_file, require_root
from fastshap_train.data.base import DataFileError, MultimodalDataset
from fastshap_train.models import ave as ave_model  # registers the "segments" encoder kind
from fastshap_train.registry import Option, register_dataset

KEY, ORDER_KEY = "avadataset", "order"
EXPECTED = (
    "visual_feature.h5, audio_feature.h5, labels.h5 (key 'avadataset') and {train,val,test}_order.h5 (key 'order')"
)

OPTIONS = [
    Option("ave_visual_file", "visual_feature.h5", "AVE visual features (N, T, 7, 7, 512), relative to --data-root"),
    Option("ave_audio_file", "audio_feature.h5", "AVE audio features (N, T, 128)"),
    Option("ave_labels_file", "labels.h5", "AVE one-hot segment labels (N, T, C)"),
    Option("ave_order_file", "{split}_order.h5", "AVE split order files ({split}: train, val, test)"),
]


def _dataset(path: Path, key: str):
    """(open h5py.File, its dataset `key`); DataFileError naming the file otherwise."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise DataFileError(path, "does not exist") from None
    except OSError as exc:
        raise DataFileError(path, f"is not a readable HDF5 file: {exc}") from None
    if key not in f or not isinstance(f[key], h5py.Dataset):
        names = ", ".join(f.keys())
        f.close()
        raise DataFileError(path, f"has no dataset {key!r} (has {names or 'nothing'})")
    return f, f[key]


def _read(path: Path, key: str, ndim: int) -> np.ndarray:
    f, ds = _dataset(path, key)
    with f:
        if ds.ndim != ndim:
            raise DataFileError(path, f"{key} must be {ndim}-D, got shape {ds.shape}")
        try:
            return ds[()]
        except OSError as exc:
            raise DataFileError(path, f"cannot be read: {exc}") from None


class AVE(MultimodalDataset):
    name = "ave"
    modalities = ("audio", "visual")

    def __init__(
        self,
        root,
        split="train",
        augment=False,
        ave_visual_file="visual_feature.h5",
        ave_audio_file="audio_feature.h5",
        ave_labels_file="labels.h5",
        ave_order_file="{split}_order.h5",
    ):
        self.augment = bool(augment)  # fixed features: nothing to augment
        base = require_root(root, "AVE", EXPECTED)
        paths = {
            name: require_file(base / file, "AVE", EXPECTED)
            for name, file in (
                ("visual", ave_visual_file),
                ("audio", ave_audio_file),
                ("labels", ave_labels_file),
                ("order", ave_order_file.format(split=split)),
            )
        }
        self.visual_path = paths["visual"]
        onehot = _read(paths["labels"], KEY, 3)
        n, t, c = onehot.shape
        if not (np.all((onehot == 0) | (onehot == 1)) and np.all(onehot.sum(-1) == 1)):
            raise DataFileError(paths["labels"], "segment labels must be one-hot (one 1 per segment)")
        audio = _read(paths["audio"], KEY, 3).astype(np.float32)
        if audio.shape[:2] != (n, t):
            raise DataFileError(paths["audio"], f"shape {audio.shape} does not match labels {onehot.shape} (N, T)")
        f, vis = _dataset(self.visual_path, KEY)
        with f:
            if vis.ndim < 4 or vis.shape[:2] != (n, t):
                raise DataFileError(
                    self.visual_path,
                    f"shape {vis.shape} does not match labels {onehot.shape}: expected (N, T, H, W, D)",
                )
            self.visual_shape = tuple(int(s) for s in vis.shape[1:])
        order = np.asarray(_read(paths["order"], ORDER_KEY, 1)).astype(np.int64)
        if order.size and (order.min() < 0 or order.max() >= n):
            raise DataFileError(paths["order"], f"indices must lie in 0..{n - 1}")
        self.order = order
        self.num_classes = int(c)
        self.audio = torch.from_numpy(audio[order])
        if not torch.isfinite(self.audio).all():
            raise DataFileError(paths["audio"], "holds NaN or Inf values")
        self.segment_labels = torch.from_numpy(onehot[order].argmax(-1)).long()  # (M, T)
        self._h5 = None
        self._pid = None

    def __len__(self):
        return int(self.order.size)

    def _visual(self, row: int) -> torch.Tensor:
        if self._h5 is None or self._pid != os.getpid():  # one handle per DataLoader worker process
            self._h5, _ = _dataset(self.visual_path, KEY)
            self._pid = os.getpid()
        try:
            x = self._h5[KEY][row]
        except OSError as exc:
            raise DataFileError(self.visual_path, f"row {row} cannot be read: {exc}") from None
        x = torch.from_numpy(np.asarray(x, dtype=np.float32))
        if not torch.isfinite(x).all():
            raise DataFileError(self.visual_path, f"row {row} holds NaN or Inf values")
        return x

    def __getitem__(self, i):
        i = int(i)
        return {
            "audio": self.audio[i],
            "visual": self._visual(int(self.order[i])),
            "label": self.segment_labels[i],
            "index": torch.tensor(i, dtype=torch.long),
        }

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, None  # h5py handles do not cross processes
        return state

    @property
    def segments(self) -> int:
        return int(self.segment_labels.shape[1])

    def encoder_spec(self, modality):
        shape = self.audio.shape[1:] if modality == "audio" else self.visual_shape
        return {"kind": "segments", "shape": [int(s) for s in shape]}

    def build_head(self, cfg, dims, kind="auto"):
        """The AVE network (attention + BiLSTMs + classifier) as the fusion head; see fastshap_train.models.ave."""
        head = ave_model.build_head(
            cfg, {"audio": tuple(self.audio.shape[1:]), "visual": self.visual_shape}, self.num_classes, kind
        )
        if list(dims) != head.dims:
            raise ValueError(f"ave: encoder widths {list(dims)} do not fit the AVE head {head.dims}")
        return head

    def display_name(self, modality):
        shape = tuple(self.audio.shape[1:]) if modality == "audio" else self.visual_shape
        return f"{modality} {shape} per video"


@register_dataset(
    "ave",
    options=OPTIONS,
    help="AVE audio-visual event localisation: per-segment labels (10 x 29), attention + BiLSTM model",
    splits=("train", "test", "val"),
)
def build(root, split, augment=False, **options):
    return AVE(root, split, augment, **options)
