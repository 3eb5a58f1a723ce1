"""``mm-debiased``: the authors' MM-Debiased set (audio + visual, 10 classes; supp. section 3).

Layout under ``--data-root`` (paths overridable)::

    MM-Debiased.json           --mmd-json: the authors' file, id -> {"subset": training | validation |
                               testing, "label": class name}; train / val / test read those subsets
    audio/<id>.npy             --mmd-audio-dir: spectrogram (257, frames): window 512, overlap 353, log
                               (``python -m fastshap_train.preprocess spectrogram`` writes them)
    visual/<id>/frame_<k>.jpg  --mmd-visual-dir: frames at 1 fps

Class indices follow :data:`CLASSES` (the ten names sorted alphabetically), whatever subset is present, so
labels mean the same thing in every split. Items: ``audio`` (1, 257, 1003) float32 (time padded or
cropped to ``--audio-frames``, default 1003), ``visual`` (3, 3, 224, 224) as for ``ks``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fastshap_train.data._media import (
    MEDIA_OPTIONS,
    MediaDataset,
    fit_length,
    load_array,
    require_file,
    require_root,
)
from fastshap_train.data.base import DataFileError
from fastshap_train.registry import Option, register_dataset

CLASSES = (
    "bowling",
    "cleaning floor",
    "lawn mowing",
    "motorcycling",
    "playing cello",
    "playing flute",
    "playing piano",
    "singing",
    "whistling",
    "writing on blackboard",
)
SUBSETS = {"train": "training", "val": "validation", "test": "testing"}
FREQ_BINS = 257
AUDIO_FRAMES = 1003

EXPECTED = "MM-Debiased.json, audio/<id>.npy spectrograms (257 x frames) and visual/<id>/frame_<k>.jpg frames"

OPTIONS = [
    Option("mmd_json", "MM-Debiased.json", "MM-Debiased annotation file, relative to --data-root"),
    Option("mmd_audio_dir", "audio", "MM-Debiased folder of <id>.npy spectrograms"),
    Option("mmd_visual_dir", "visual", "MM-Debiased folder of <id>/frame_<k>.jpg frame folders"),
]


def read_annotations(path: Path, subset: str) -> list:
    """[(id, label index)] of one subset, in file order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataFileError(path, f"is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise DataFileError(path, "expected a JSON object mapping sample ids to {subset, label}")
    out = []
    for sample, entry in data.items():
        if not isinstance(entry, dict) or "subset" not in entry or "label" not in entry:
            raise DataFileError(path, f'entry {sample!r}: expected {{"subset": ..., "label": ...}}, got {entry!r}')
        if entry["subset"] not in SUBSETS.values():
            raise DataFileError(
                path, f"entry {sample!r}: subset {entry['subset']!r} is not one of {', '.join(SUBSETS.values())}"
            )
        if entry["label"] not in CLASSES:
            raise DataFileError(
                path, f"entry {sample!r}: label {entry['label']!r} is not one of the 10 classes ({', '.join(CLASSES)})"
            )
        if entry["subset"] == subset:
            out.append((str(sample), CLASSES.index(entry["label"])))
    return out


class MMDebiased(MediaDataset):
    name = "mm-debiased"
    modalities = ("audio", "visual")
    num_classes = len(CLASSES)

    def __init__(
        self,
        root,
        split="train",
        augment=False,
        image_size=224,
        num_frames=3,
        audio_frames=0,
        skip_bad=False,
        data_check="exists",
        mmd_json=OPTIONS[0].default,
        mmd_audio_dir=OPTIONS[1].default,
        mmd_visual_dir=OPTIONS[2].default,
    ):
        super().__init__(split, augment, image_size, num_frames)
        base = require_root(root, "MM-Debiased", EXPECTED)
        self.audio_frames = int(audio_frames) or AUDIO_FRAMES
        annotations = require_file(base / mmd_json, "MM-Debiased", EXPECTED)
        self.audio_dir, self.visual_dir = base / mmd_audio_dir, base / mmd_visual_dir
        self._require_dirs((self.audio_dir, self.visual_dir), "MM-Debiased", EXPECTED)

        def verify(check, sample):
            check.array(self.audio_dir / f"{sample}.npy", ndim=2, width=FREQ_BINS, width_axis=0)
            return check.frames(self.visual_dir / sample)

        self._scan(read_annotations(annotations, SUBSETS[split]), verify, skip_bad, data_check)

    def __getitem__(self, i):
        i = int(i)
        sample = self.ids[i]
        spec = load_array(self.audio_dir / f"{sample}.npy", ndim=2, width=FREQ_BINS, width_axis=0)
        audio = torch.from_numpy(np.ascontiguousarray(fit_length(spec, self.audio_frames, axis=1))).unsqueeze(0)
        visual, _ = self._frames(self.visual_dir / sample, self.frame_names[i])
        return self._item(i, {"audio": audio, "visual": visual})

    def encoder_spec(self, modality):
        return {"kind": modality}

    def display_name(self, modality):
        return {
            "audio": f"audio (spectrogram {FREQ_BINS} x {self.audio_frames})",
            "visual": f"visual ({self.num_frames} frames)",
        }[modality]


@register_dataset(
    "mm-debiased",
    options=OPTIONS,
    uses=MEDIA_OPTIONS,
    help="MM-Debiased (the authors' set), audio spectrogram + visual frames, 10 classes",
    splits=("train", "test", "val"),
)
def build(root, split, augment=False, **options):
    return MMDebiased(root, split, augment, **options)
