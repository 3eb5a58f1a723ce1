"""``ks``: Kinetics-Sounds (audio + visual, 31 classes) in the layout of the authors' preprocessing.

Layout under ``--data-root`` (each path overridable, ``{split}`` is train / test / val)::

    {split}_1fps_path.txt            --ks-list: one sample per line, whitespace-separated; the first token
                                     ends in the sample id (anything up to its last '/' is ignored), the
                                     last token is the integer label in [0, 31); val is optional
    audio/{split}/<id>.npy           --ks-audio-dir: log-mel spectrogram (frames, 128): 128 mel bins, 25 ms
                                     Hamming window, 10 ms hop (``python -m fastshap_train.preprocess logmel``)
    visual/{split}/<id>/frame_<k>.jpg  --ks-visual-dir: frames at 1 fps

The authors' own tree reads with ``ks_list: ks_audio/{split}_1fps_path.txt``, ``ks_audio_dir:
ks_audio/{split}``, ``ks_visual_dir: ks_visual/{split}``.

Items: ``audio`` (1, 1024, 128) float32 (time padded or cropped to ``--audio-frames``, default 1024),
``visual`` (3, 3, 224, 224) float32: ``--num-frames`` frames, one per third of the clip (random within
the third when training, the middle one otherwise), ImageNet-normalised, ``--image-size`` pixels. The
authors silently dropped list entries without an audio file; here a missing file is an error naming it,
and ``--skip-bad`` drops such samples and counts them (``dataset.skipped``).
"""

from __future__ import annotations

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

NUM_CLASSES = 31
MEL_BINS = 128
AUDIO_FRAMES = 1024

EXPECTED = (
    "{split}_1fps_path.txt lists, audio/{split}/<id>.npy log-mel arrays and visual/{split}/<id>/frame_<k>.jpg frames"
)

OPTIONS = [
    Option("ks_list", "{split}_1fps_path.txt", "Kinetics-Sounds list file, relative to --data-root"),
    Option("ks_audio_dir", "audio/{split}", "Kinetics-Sounds folder of <id>.npy log-mel arrays"),
    Option("ks_visual_dir", "visual/{split}", "Kinetics-Sounds folder of <id>/frame_<k>.jpg frame folders"),
]


def read_list(path: Path, num_classes: int = NUM_CLASSES) -> list:
    """[(sample id, label)] from a ``*_1fps_path.txt`` list."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataFileError(path, f"cannot be read: {exc}") from None
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise DataFileError(path, f"line {number}: expected '<path or id> ... <label>', got {line.strip()!r}")
        sample = tokens[0].rstrip("/").rsplit("/", 1)[-1]
        try:
            label = int(tokens[-1])
        except ValueError:
            raise DataFileError(path, f"line {number}: the last token {tokens[-1]!r} is not an integer label") from None
        if not 0 <= label < num_classes:
            raise DataFileError(path, f"line {number}: label {label} is outside 0..{num_classes - 1}")
        out.append((sample, label))
    return out


class KineticsSounds(MediaDataset):
    name = "ks"
    modalities = ("audio", "visual")
    num_classes = NUM_CLASSES

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
        ks_list=OPTIONS[0].default,
        ks_audio_dir=OPTIONS[1].default,
        ks_visual_dir=OPTIONS[2].default,
    ):
        super().__init__(split, augment, image_size, num_frames)
        base = require_root(root, "Kinetics-Sounds", EXPECTED)
        self.audio_frames = int(audio_frames) or AUDIO_FRAMES
        list_path = require_file(base / ks_list.format(split=split), "Kinetics-Sounds", EXPECTED)
        self.audio_dir = base / ks_audio_dir.format(split=split)
        self.visual_dir = base / ks_visual_dir.format(split=split)
        self._require_dirs((self.audio_dir, self.visual_dir), "Kinetics-Sounds", EXPECTED)

        def verify(check, sample):
            check.array(self.audio_dir / f"{sample}.npy", ndim=2, width=MEL_BINS)
            return check.frames(self.visual_dir / sample)

        self._scan(read_list(list_path), verify, skip_bad, data_check)

    def __getitem__(self, i):
        i = int(i)
        sample = self.ids[i]
        spec = load_array(self.audio_dir / f"{sample}.npy", ndim=2, width=MEL_BINS)
        audio = torch.from_numpy(np.ascontiguousarray(fit_length(spec, self.audio_frames, axis=0))).unsqueeze(0)
        visual, _ = self._frames(self.visual_dir / sample, self.frame_names[i])
        return self._item(i, {"audio": audio, "visual": visual})

    def encoder_spec(self, modality):
        return {"kind": modality}  # ResNet-18: 1-channel spectrogram / frames folded into the batch

    def display_name(self, modality):
        return {
            "audio": f"audio (log-mel {self.audio_frames} x {MEL_BINS})",
            "visual": f"visual ({self.num_frames} frames)",
        }[modality]


@register_dataset(
    "ks",
    options=OPTIONS,
    uses=MEDIA_OPTIONS,
    help="Kinetics-Sounds, audio (log-mel) + visual (3 frames), 31 classes; --data-root: the authors' layout",
    splits=("train", "test", "val"),
)
def build(root, split, augment=False, **options):
    return KineticsSounds(root, split, augment, **options)
