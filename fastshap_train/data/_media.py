"""Shared pieces of the video / audio datasets (ks, mm-debiased, ucf101, meld): options, frame sampling,
frame transforms, spectrogram loading and the missing-file policy.

Frames. A video's frames are the ``.jpg`` files of its folder whose name ends in a number, ordered by
that number (so the authors' ``'frame_0000' + str(k)`` naming, ``frame_00001.jpg`` .. ``frame_000010.jpg``,
zero-padded names and TV-L1 tools' ``flow_x_00001.jpg`` all sort correctly). ``--num-frames K`` frames
are taken, one per equal part of the clip: a random frame of the part when training (``augment``), the
part's middle frame otherwise. A clip with fewer than K frames repeats frames.

Transforms (ImageNet statistics). Training: one random resized crop (scale 0.08-1, ratio 3/4-4/3, the
torchvision defaults the authors used) and one horizontal flip decision per *sample*, applied to every
frame and every visual stream of it (RGB, flow, RGB difference stay aligned; the authors drew them per
frame), then resize to ``--image-size``. Evaluation: resize to ``image-size x image-size``.

Spectrograms (``.npy``, 2-D float) are padded or cropped along their time axis to a fixed length: the
first frames are kept, and padding repeats the array's minimum (the quietest value of a log spectrum).

Missing and corrupt files. When a dataset is built, every file a sample needs is checked for existence
(``--data-check exists``, the default) or also decoded (``--data-check full``, slow). A problem raises
:class:`DataFileError` naming the file, unless ``--skip-bad``: then the sample is dropped, counted in
``dataset.skipped`` (``[(sample id, message)]``) and one warning gives the count. A file that becomes
unreadable after the check raises :class:`DataFileError` when its sample is loaded.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fastshap_train.data.base import DataFileError, MultimodalDataset
from fastshap_train.registry import Option, register_options

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

register_options(
    "data:media",
    [
        Option(
            "image_size",
            224,
            "side of the square video frames fed to the encoders",
            check=lambda x: None if x >= 16 else "must be >= 16",
        ),
        Option(
            "num_frames",
            3,
            "frames sampled per video, one per equal part of the clip (random within the "
            "part when training, its middle otherwise)",
            check=lambda x: None if x >= 1 else "must be >= 1",
        ),
        Option(
            "audio_frames",
            0,
            "time frames of an audio spectrogram after padding / cropping (0: the "
            "dataset's default: ks 1024, mm-debiased 1003, meld 512)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "skip_bad",
            False,
            "drop samples whose files are missing or unreadable (counted and reported) "
            "instead of stopping with an error naming the file",
        ),
        Option(
            "data_check",
            "exists",
            "checks when the dataset is built: exists (every file a sample needs is "
            "there) or full (every file is also decoded; slow)",
            choices=("exists", "full"),
        ),
    ],
    title="video and audio datasets (ks, mm-debiased, ucf101, ucf101-three, meld)",
)

MEDIA_OPTIONS = ("image_size", "num_frames", "audio_frames", "skip_bad", "data_check")

_FRAME_RE = re.compile(r"^[^.]*?(\d+)\.jpe?g$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------
# roots and files


def require_root(root, dataset: str, expected: str) -> Path:
    """`root` as a Path, or an error that says what the dataset's folder must hold."""
    if root is None:
        raise DataFileError(
            "--data-root", f"{dataset} has no default location: pass --data-root DIR, a folder holding {expected}"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataFileError(path, f"is not a directory: --data-root must be the {dataset} folder holding {expected}")
    return path


def require_file(path: Path, dataset: str, expected: str) -> Path:
    if not path.is_file():
        raise DataFileError(path, f"does not exist: --data-root must be the {dataset} folder holding {expected}")
    return path


def list_frames(folder: Path) -> list:
    """The ``<name><k>.jpg`` frames of `folder`, ordered by k (DataFileError when there is none)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        raise DataFileError(folder, "does not exist (expected a folder of frame_<k>.jpg frames)") from None
    except OSError as exc:
        raise DataFileError(folder, f"cannot be listed: {exc}") from None
    frames = sorted((int(m.group(1)), n) for n in names if (m := _FRAME_RE.match(n)))
    if not frames:
        raise DataFileError(folder, "holds no frame_<k>.jpg frames (no .jpg whose name ends in a number)")
    return [n for _, n in frames]


def load_image(path: Path, mode: str = "RGB"):
    """A PIL image in `mode` ("RGB" or "L"); DataFileError naming the file when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert(mode)  # convert() decodes fully: truncated files fail here, not later
    except FileNotFoundError:
        raise DataFileError(path, "does not exist") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DataFileError(path, f"is not a readable image: {exc}") from None


def load_array(path: Path, ndim: int = 2, width: int | None = None, width_axis: int = -1) -> np.ndarray:
    """A float32 array from a ``.npy`` file, checked: `ndim` dimensions, `width` along `width_axis`, finite."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(path, "does not exist") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataFileError(path, f"is not a readable .npy array: {exc}") from None
    if x.ndim != ndim or not np.issubdtype(x.dtype, np.number):
        raise DataFileError(path, f"expected a {ndim}-D numeric array, got shape {x.shape} of {x.dtype}")
    if width is not None and x.shape[width_axis] != width:
        raise DataFileError(path, f"expected {width} values along axis {width_axis}, got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataFileError(path, "holds NaN or Inf values")
    return x


def fit_length(x: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Crop `x` to its first `length` entries along `axis`, or pad with its minimum to that length."""
    n = x.shape[axis]
    if n >= length:
        return np.take(x, np.arange(length), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - n)
    fill = float(x.min()) if x.size else 0.0
    return np.pad(x, pad, mode="constant", constant_values=fill)


class SampleCheck:
    """Runs per-sample file checks at build time: raise at the first problem, or (skip_bad) drop and count."""

    def __init__(self, dataset: str, split: str, skip_bad: bool, full: bool):
        self.dataset, self.split = dataset, split
        self.skip_bad, self.full = bool(skip_bad), bool(full)
        self.skipped: list = []

    def keep(self, sample_id: str, check: Callable[[], None]) -> bool:
        try:
            check()
            return True
        except DataFileError as exc:
            if not self.skip_bad:
                raise DataFileError(
                    exc.filename, exc.problem + f" (sample {sample_id!r}; --skip-bad drops such samples)"
                ) from None
            self.skipped.append((sample_id, str(exc)))
            return False

    def report(self, kept: int) -> None:
        if kept == 0:
            first = f"; first problem: {self.skipped[0][1]}" if self.skipped else ""
            raise DataFileError("--data-root", f"{self.dataset} {self.split}: no usable sample{first}")
        if self.skipped:
            warnings.warn(
                f"{self.dataset} {self.split}: skipped {len(self.skipped)} of {len(self.skipped) + kept} samples "
                f"with missing or unreadable files (first: {self.skipped[0][1]})",
                stacklevel=3,
            )

    def frames(self, folder: Path) -> list:
        names = list_frames(folder)
        if self.full:
            for n in names:
                load_image(folder / n)
        return names

    def array(self, path: Path, **kw) -> None:
        if self.full:
            load_array(path, **kw)
        elif not path.is_file():
            raise DataFileError(path, "does not exist")


# --------------------------------------------------------------------------------------------------------
# frame positions and transforms


def frame_positions(count: int, k: int, train: bool, generator: torch.Generator | None = None) -> list:
    """k frame indices in [0, count): one per equal part, random in it (train) or its middle (eval)."""
    if count < 1:
        raise ValueError("a clip needs at least one frame")
    out = []
    for i in range(k):
        lo = math.floor(i * count / k)
        hi = max(lo + 1, math.floor((i + 1) * count / k))  # [lo, hi); at least one frame when count < k
        lo, hi = min(lo, count - 1), min(hi, count)
        if train and hi - lo > 1:
            out.append(lo + int(torch.randint(hi - lo, (1,), generator=generator)))
        else:
            out.append((lo + hi - 1) // 2)
    return out


class FrameTransform:
    """One sample's spatial transform: the same crop and flip for every frame and stream of the sample."""

    def __init__(self, size: int, train: bool, first_image, generator: torch.Generator | None = None):
        self.size = int(size)
        self.train = bool(train)
        self.box = None  # (top, left, height, width) as fractions of the image
        self.flip = False
        if self.train:
            from torchvision.transforms import RandomResizedCrop

            w, h = first_image.size
            top, left, ch, cw = RandomResizedCrop.get_params(first_image, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
            self.box = (top / h, left / w, ch / h, cw / w)
            self.flip = bool(torch.rand((), generator=generator) < 0.5)

    def __call__(self, image) -> torch.Tensor:
        """PIL image -> (C, size, size) float tensor in [0, 1] (not normalised)."""
        import torchvision.transforms.functional as TF

        if self.box is not None:
            w, h = image.size
            t, l, ch, cw = self.box
            top, left = int(round(t * h)), int(round(l * w))
            image = TF.resized_crop(
                image,
                top,
                left,
                max(1, int(round(ch * h))),
                max(1, int(round(cw * w))),
                [self.size, self.size],
                antialias=True,
            )
        else:
            image = TF.resize(image, [self.size, self.size], antialias=True)
        if self.flip:
            image = TF.hflip(image)
        return TF.to_tensor(image)


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def load_clip(
    folder: Path,
    names: Sequence[str],
    positions: Sequence[int],
    transform: FrameTransform | None,
    size: int,
    train: bool,
) -> tuple:
    """(frames (K, 3, S, S) in [0, 1], the transform used): the frames at `positions` of a folder."""
    images = [load_image(folder / names[p]) for p in positions]
    if transform is None:
        transform = FrameTransform(size, train, images[0])
    return torch.stack([transform(img) for img in images]), transform


class MediaDataset(MultimodalDataset):
    """Shared parts of the frame / spectrogram datasets: labels, length, skipped samples, item assembly."""

    def __init__(self, split: str, augment: bool, image_size: int, num_frames: int):
        self.split = split
        self.augment = bool(augment)
        self.image_size = int(image_size)
        self.num_frames = int(num_frames)
        self.skipped: list = []
        self._labels = torch.zeros(0, dtype=torch.long)

    def __len__(self):
        return int(self._labels.numel())

    @property
    def labels(self):
        return self._labels

    def _require_dirs(self, folders, title: str, expected: str) -> None:
        for folder in folders:
            if not folder.is_dir():
                raise DataFileError(
                    folder, f"is not a directory: --data-root must be the {title} folder holding {expected}"
                )

    def _scan(self, entries, verify, skip_bad: bool, data_check: str) -> list:
        """Keeps the entries ``(sample id, label, *extra)`` whose files pass ``verify(check, sample id)``,
        which returns the sample's frame names; sets ids, frame_names, labels and skipped, and returns the
        kept entries' extras. Raises at the first bad sample, or with skip_bad drops and counts them."""
        check = SampleCheck(self.name, self.split, skip_bad, data_check == "full")
        self.ids, self.frame_names, labels, extras = [], [], [], []
        for sample, label, *extra in entries:
            found = []
            if check.keep(sample, lambda: found.append(verify(check, sample))):
                self.ids.append(sample)
                self.frame_names.append(found[0])
                labels.append(label)
                extras.append(extra)
        check.report(len(self.ids))
        self.skipped = check.skipped
        self._labels = torch.tensor(labels, dtype=torch.long)
        return extras

    def _item(self, i: int, tensors: dict) -> dict:
        tensors["label"] = self._labels[i]
        tensors["index"] = torch.tensor(i, dtype=torch.long)
        return tensors

    def _frames(self, folder: Path, names: Sequence[str], transform=None) -> tuple:
        """(K, 3, S, S) normalised frames of one clip, and the sample's transform."""
        positions = frame_positions(len(names), self.num_frames, self.augment)
        clip, transform = load_clip(folder, names, positions, transform, self.image_size, self.augment)
        return normalize_rgb(clip), transform
