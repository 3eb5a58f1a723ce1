"""Tiny copies of each dataset's on-disk layout, in the real file formats, for tests and demos.

Each ``write_<dataset>(root, ...)`` writes a few samples per class (tiny frames, short spectrograms,
small feature arrays) and returns a :class:`Layout` with what it wrote, so a test can check a loader
against it. The content carries a weak class signal (frame colour, spectrogram band, feature offset) so a
short training run has something to learn, but nothing here tries to look like the real data.

    python -m fastshap_train.data._fixtures DIR     # writes every layout under DIR/<dataset>
"""

from __future__ import annotations

import csv
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")


@dataclass
class Layout:
    root: Path
    samples: dict = field(default_factory=dict)  # split -> [(sample id, label)] in list order
    num_classes: int = 0
    extra: dict = field(default_factory=dict)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_frames(
    folder: Path,
    count: int,
    label: int,
    size: int,
    rng,
    start: int = 1,
    gray: bool = False,
    pattern: str = "frame_0000{k}.jpg",
) -> None:
    """`count` JPEG frames named by `pattern` (k from `start`), coloured by `label` plus noise."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    base = np.array([(37 * label) % 256, (91 * label + 60) % 256, (53 * label + 120) % 256], dtype=np.float64)
    for k in range(start, start + count):
        noise = rng.normal(0, 20, (size, size, 3))
        pixels = np.clip(base + noise + 4 * k, 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels[..., 0] if gray else pixels, mode="L" if gray else "RGB")
        img.save(folder / pattern.format(k=k), quality=90)


def write_spectrogram(path: Path, shape, label: int, rng, band_axis: int = 1) -> None:
    """A float32 log-spectrum-like array with a brighter band that depends on `label`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = rng.normal(-4.0, 1.0, shape).astype(np.float32)
    width = shape[band_axis]
    lo = (label * 7) % max(1, width - 4)
    index = [slice(None)] * len(shape)
    index[band_axis] = slice(lo, lo + 4)
    x[tuple(index)] += 3.0
    np.save(path, x)


# --------------------------------------------------------------------------------------------------------
# Kinetics-Sounds


def write_ks(root, classes=(0, 1), per_class=2, frames=5, size=24, audio_frames=40, splits=SPLITS, seed=0) -> Layout:
    """{split}_1fps_path.txt + audio/{split}/<id>.npy (T, 128) + visual/{split}/<id>/frame_0000<k>.jpg."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    layout = Layout(root, num_classes=31)
    for split in splits:
        rows = []
        for label in classes:
            for j in range(per_class):
                sample = f"ks{split}{label:02d}{j}_000010_000020"
                rows.append((sample, label))
                write_spectrogram(root / "audio" / split / f"{sample}.npy", (audio_frames, 128), label, rng)
                write_frames(root / "visual" / split / sample, frames, label, size, rng)
        lines = [f"/data/kinetics/{split}/{s} {frames} {y}" for s, y in rows]
        (root / f"{split}_1fps_path.txt").write_text("\n".join(lines) + "\n")
        layout.samples[split] = rows
    return layout


# --------------------------------------------------------------------------------------------------------
# MM-Debiased


def write_mm_debiased(
    root, classes=("bowling", "singing"), per_class=2, frames=4, size=24, audio_frames=30, seed=1
) -> Layout:
    """MM-Debiased.json (id -> {subset, label}) + audio/<id>.npy (257, T) + visual/<id>/frame_0000<k>.jpg."""
    from fastshap_train.data.mm_debiased import CLASSES, SUBSETS

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    layout = Layout(root, num_classes=len(CLASSES))
    annotations = {}
    for split, subset in SUBSETS.items():
        rows = []
        for name in classes:
            label = CLASSES.index(name)
            for j in range(per_class):
                sample = f"{split[:2]}{label}x{j}_000123_000133"
                annotations[sample] = {"subset": subset, "label": name}
                rows.append((sample, label))
                write_spectrogram(root / "audio" / f"{sample}.npy", (257, audio_frames), label, rng, band_axis=0)
                write_frames(root / "visual" / sample, frames, label, size, rng)
        layout.samples[split] = rows
    # Interleave the subsets like the authors' file does (its order is not grouped by subset).
    keys = sorted(annotations, key=lambda k: (k[2:], k[:2]))
    (root / "MM-Debiased.json").write_text(json.dumps({k: annotations[k] for k in keys}))
    return layout


# --------------------------------------------------------------------------------------------------------
# UCF-101


def write_ucf101(
    root,
    classes=("ApplyEyeMakeup", "Archery", "Basketball"),
    train_per_class=2,
    test_per_class=1,
    frames=5,
    size=24,
    split=1,
    seed=2,
) -> Layout:
    """classInd.txt, trainlist0<s>.txt, testlist0<s>.txt, rgb/<video>/ and flow_u|flow_v/<video>/ frames.

    Flow folders hold one frame fewer than the RGB ones (flow between consecutive frames).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    layout = Layout(root, num_classes=len(classes))
    (root / "classInd.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))
    for kind, count, group0 in (("train", train_per_class, 8), ("test", test_per_class, 1)):
        rows, lines = [], []
        for label, name in enumerate(classes):
            for j in range(count):
                video = f"v_{name}_g{group0 + j:02d}_c01"
                rows.append((video, label))
                entry = f"{name}/{video}.avi"
                lines.append(f"{entry} {label + 1}" if kind == "train" else entry)
                write_frames(root / "rgb" / video, frames, label, size, rng)
                write_frames(root / "flow_u" / video, frames - 1, label, size, rng, gray=True)
                write_frames(root / "flow_v" / video, frames - 1, label + 3, size, rng, gray=True)
        (root / f"{kind}list0{split}.txt").write_text("\r\n".join(lines) + "\r\n")  # the official files use CRLF
        layout.samples[kind] = rows
    return layout


# --------------------------------------------------------------------------------------------------------
# MELD

MELD_COLUMNS = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]
MELD_WORDS = {
    "anger": "furious angry",
    "disgust": "gross yuck",
    "fear": "scared afraid",
    "joy": "great happy",
    "neutral": "okay fine",
    "sadness": "sad sorry",
    "surprise": "wow really",
}


def write_meld(root, emotions=None, per_class=1, frames=3, size=24, audio_frames=20, seed=3) -> Layout:
    """{train,dev,test}_sent_emo.csv + audio/<split>/dia<D>_utt<U>.npy + visual/<split>/dia<D>_utt<U>/ frames."""
    from fastshap_train.data.meld import EMOTIONS, SPLITS

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    emotions = tuple(emotions or EMOTIONS)
    layout = Layout(root, num_classes=len(EMOTIONS))
    for split, name in SPLITS.items():
        rows = []
        with open(root / f"{name}_sent_emo.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(MELD_COLUMNS)
            number = 0
            for emotion in emotions:
                label = EMOTIONS.index(emotion)
                for j in range(per_class):
                    dia, utt = label, j  # numbers restart in every split, as in MELD
                    text = f"{MELD_WORDS[emotion]}, that\u2019s what I said {j}"
                    writer.writerow(
                        [number + 1, text, "Joey", emotion, "neutral", dia, utt, 1, 1, "00:00:01,000", "00:00:03,000"]
                    )
                    number += 1
                    clip = f"dia{dia}_utt{utt}"
                    rows.append((clip, label))
                    write_spectrogram(root / "audio" / name / f"{clip}.npy", (audio_frames, 128), label, rng)
                    write_frames(root / "visual" / name / clip, frames, label, size, rng)
        layout.samples[split] = rows
    return layout


# --------------------------------------------------------------------------------------------------------
# CMU-MOSI


def write_mosi(root, sizes=None, length=50, seed=4) -> Layout:
    """aligned_50.pkl with train / valid / test dicts of text_bert, audio (with -inf), vision, labels."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    sizes = dict(sizes or {"train": 8, "valid": 4, "test": 4})
    data, layout = {}, Layout(root, num_classes=2)
    for key, n in sizes.items():
        labels = np.round(rng.uniform(-3, 3, n), 1).astype(np.float32)
        labels[0] = 0.0  # a neutral sample: positive under the default rule
        if n > 1:
            labels[1] = -0.2
        ids = np.zeros((n, 3, length))
        for i in range(n):
            words = 3 + i % 5
            ids[i, 0, : words + 2] = [101, *rng.integers(1000, 5000, words), 102]
            ids[i, 1, : words + 2] = 1
        audio = rng.normal(0, 1, (n, length, 5)) + labels[:, None, None]
        audio[0, 3, 1] = -np.inf  # the processed COVAREP features hold -inf entries
        vision = rng.normal(0, 1, (n, length, 20)) - labels[:, None, None]
        data[key] = {
            "id": [f"vid{i}$_$0" for i in range(n)],
            "raw_text": [f"text {i}" for i in range(n)],
            "text_bert": ids,
            "audio": audio.astype(np.float32),
            "vision": vision.astype(np.float32),
            "regression_labels": labels.reshape(n, 1),
            "classification_labels": (labels >= 0).astype(np.int64),
        }
        layout.samples[{"valid": "val"}.get(key, key)] = [(f"vid{i}", int(labels[i] >= 0)) for i in range(n)]
        layout.extra[key] = labels
    with open(root / "aligned_50.pkl", "wb") as fh:
        pickle.dump(data, fh)
    return layout


# --------------------------------------------------------------------------------------------------------
# Caltech101-20


def write_caltech(root, per_class=4, classes=20, v73=False, seed=5) -> Layout:
    """Caltech101-20.mat: X (1 x 6 cell of N x d_v), Y (N x 1, 1-based); MATLAB v5, or v7.3 (HDF5)."""
    from fastshap_train.data.caltech import WIDTHS

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    views = [rng.normal(0, 1, (labels.size, d)) + 0.5 * labels[:, None] * (k % 2 * 2 - 1) for k, d in enumerate(WIDTHS)]
    path = root / "Caltech101-20.mat"
    if v73:
        _write_mat73(path, views, labels + 1)
    else:
        from scipy.io import savemat

        cells = np.empty((1, len(views)), dtype=object)
        for k, x in enumerate(views):
            cells[0, k] = x
        savemat(path, {"X": cells, "Y": (labels + 1).reshape(-1, 1).astype(np.float64)})
    layout = Layout(root, num_classes=20)
    layout.extra.update(views=views, labels=labels)
    return layout


def _write_mat73(path: Path, views, labels) -> None:
    """A MATLAB v7.3 file: a 512-byte MAT header, then HDF5 with arrays stored transposed (d x N)."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        ref_array = np.empty((len(views), 1), dtype=h5py.ref_dtype)
        for k, x in enumerate(views):
            ref_array[k, 0] = refs.create_dataset(f"v{k}", data=x.T).ref
        f.create_dataset("X", data=ref_array, dtype=h5py.ref_dtype)
        f.create_dataset("Y", data=labels.reshape(1, -1).astype(np.float64))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(512, b"\x00"))


# --------------------------------------------------------------------------------------------------------
# AVE


def write_ave(
    root, videos=10, segments=10, grid=2, visual_dim=16, audio_dim=8, classes=29, orders=None, seed=6
) -> Layout:
    """visual_feature.h5 (N, T, g, g, Dv), audio_feature.h5 (N, T, Da), labels.h5 (N, T, C) one-hot under
    'avadataset'; {train,val,test}_order.h5 under 'order'. Real files: g = 7, Dv = 512, Da = 128, C = 29."""
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    event = rng.integers(0, classes - 1, videos)  # each video has one event class, the rest is background
    labels = np.full((videos, segments), classes - 1)
    for i in range(videos):
        start = int(rng.integers(0, segments // 2))
        labels[i, start : start + segments // 2] = event[i]
    onehot = np.eye(classes, dtype=np.float32)[labels]
    audio = rng.normal(0, 1, (videos, segments, audio_dim)).astype(np.float32)
    audio[..., 0] += labels / classes
    visual = rng.normal(0, 1, (videos, segments, grid, grid, visual_dim)).astype(np.float32)
    visual[..., 0] += (labels / classes)[..., None, None]
    for name, arr in (("visual_feature.h5", visual), ("audio_feature.h5", audio), ("labels.h5", onehot)):
        with h5py.File(root / name, "w") as f:
            f.create_dataset("avadataset", data=arr)
    orders = orders or {"train": list(range(videos - 4)), "val": [videos - 4], "test": list(range(videos - 3, videos))}
    layout = Layout(root, num_classes=classes)
    for split, idx in orders.items():
        with h5py.File(root / f"{split}_order.h5", "w") as f:
            f.create_dataset("order", data=np.asarray(idx, dtype=np.int64))
        layout.samples[split] = [(int(i), labels[i].tolist()) for i in idx]
    layout.extra.update(labels=labels, audio=audio, visual=visual)
    return layout


WRITERS = {
    "ks": write_ks,
    "mm-debiased": write_mm_debiased,
    "ucf101": write_ucf101,
    "meld": write_meld,
    "mosi": write_mosi,
    "caltech101-20": write_caltech,
    "ave": write_ave,
}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fastshap_train.data._fixtures DIR", file=sys.stderr)
        return 2
    for name, writer in WRITERS.items():
        layout = writer(Path(args[0]) / name)
        print(f"{name}: {layout.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
