"""``caltech101-20``: the multi-view Caltech101-20 set (2,386 images of 20 classes, 6 feature views).

``--data-root`` holds ``Caltech101-20.mat`` (``--caltech-file``), the file multi-view clustering and
classification papers share: ``X`` a cell array of 6 view matrices (N x d_v), ``Y`` the labels (N x 1;
1-based MATLAB labels are shifted to 0-based: a ``Y`` whose smallest value is 1 is taken as 1-based).
Both MATLAB formats are read: v5 through ``scipy.io.loadmat``, v7.3 (HDF5) through h5py (its arrays
are stored transposed, d_v x N).

Views (modality keys ``view<k>``, k the number below, whatever subset ``--views`` picks; 2 to 6 views by
name or number, default all six)::

    0 gabor     Gabor features (48)
    1 wm        wavelet moments (40)
    2 centrist  CENTRIST (254)
    3 hog       HOG (1984)
    4 gist      GIST (512)
    5 lbp       LBP (928)

There is no official split: a seeded stratified one (``--split-seed``, ``--test-ratio``), as for
uci-mfeat. Features are standardised with the training split's mean and std; each view gets an MLP encoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from fastshap_train.data._media import require_file, require_root
from fastshap_train.data.base import DataFileError, DataOptionError, FeatureViews
from fastshap_train.data.uci_mfeat import split_rows
from fastshap_train.registry import Option, register_dataset

VIEWS = ("gabor", "wm", "centrist", "hog", "gist", "lbp")
WIDTHS = (48, 40, 254, 1984, 512, 928)
DESCRIPTIONS = ("Gabor", "wavelet moments", "CENTRIST", "HOG", "GIST", "LBP")
NUM_CLASSES = 20
EXPECTED = "Caltech101-20.mat (a cell array X of 6 N x d view matrices and labels Y)"

OPTIONS = [Option("caltech_file", "Caltech101-20.mat", "Caltech101-20 .mat file, relative to --data-root")]


def parse_views(views: Sequence) -> list:
    """Names or numbers (0-5, view<k>) -> view numbers in the given order; default all six."""
    if not views:
        return list(range(len(VIEWS)))
    out = []
    for v in views:
        key = str(v).strip().lower()
        if key.startswith("view"):
            key = key[4:]
        if key.isdigit() and int(key) < len(VIEWS):
            number = int(key)
        elif key in VIEWS:
            number = VIEWS.index(key)
        else:
            raise DataOptionError(f"caltech101-20: unknown view {v!r}; views are {', '.join(VIEWS)} (or 0-5)")
        if number in out:
            raise DataOptionError(f"caltech101-20: view {VIEWS[number]!r} is listed twice")
        out.append(number)
    if not 2 <= len(out) <= len(VIEWS):
        raise DataOptionError(f"caltech101-20: choose 2 to 6 views, got {len(out)}")
    return out


def _from_v5(path: Path) -> tuple:
    from scipy.io import loadmat

    mat = loadmat(str(path))
    if "X" not in mat or "Y" not in mat:
        raise DataFileError(path, f"has no X / Y variables (has {', '.join(k for k in mat if not k.startswith('__'))})")
    cells = mat["X"]
    if cells.dtype != object:
        raise DataFileError(path, f"X must be a cell array of view matrices, got a {cells.dtype} array {cells.shape}")
    views = [np.asarray(c, dtype=np.float64) for c in cells.ravel()]
    return views, np.asarray(mat["Y"]).ravel()


def _from_v73(path: Path) -> tuple:
    import h5py

    with h5py.File(path, "r") as f:
        if "X" not in f or "Y" not in f:
            raise DataFileError(path, f"has no X / Y datasets (has {', '.join(f)})")
        refs = f["X"][()].ravel()
        views = [np.asarray(f[r][()], dtype=np.float64).T for r in refs]  # MATLAB stores d x N
        labels = np.asarray(f["Y"][()]).ravel()
    return views, labels


@lru_cache(maxsize=2)
def _read(path_str: str, mtime: float) -> tuple:
    """(list of (N, d_v) float64 views, (N,) int64 0-based labels)."""
    del mtime
    import h5py

    path = Path(path_str)
    try:
        # MATLAB v7.3 files are HDF5 (after a 512-byte MAT header); older ones are scipy's v5 format.
        views, labels = _from_v73(path) if h5py.is_hdf5(path) else _from_v5(path)
    except DataFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - scipy / h5py raise many kinds for a damaged file
        raise DataFileError(path, f"is not a readable .mat file: {type(exc).__name__}: {exc}") from None
    if len(views) != len(VIEWS):
        raise DataFileError(path, f"X holds {len(views)} views, expected {len(VIEWS)}")
    n = labels.shape[0]
    for k, x in enumerate(views):
        if x.ndim != 2 or x.shape[0] != n:
            raise DataFileError(path, f"view {k} ({VIEWS[k]}) has shape {x.shape}; expected {n} rows like Y")
        if not np.isfinite(x).all():
            raise DataFileError(path, f"view {k} ({VIEWS[k]}) holds NaN or Inf values")
    if not np.all(labels == np.round(labels)):
        raise DataFileError(path, "Y must hold integer labels")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() >= 1:
        labels = labels - 1
    if labels.size == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataFileError(path, f"Y must hold labels 1..{NUM_CLASSES} (or 0..{NUM_CLASSES - 1})")
    return views, labels


class Caltech101_20(FeatureViews):
    name = "caltech101-20"
    num_classes = NUM_CLASSES

    def __init__(
        self,
        root,
        split="train",
        augment=False,
        views=(),
        split_seed=0,
        test_ratio=0.2,
        caltech_file="Caltech101-20.mat",
        val_ratio=0.0,
    ):
        self.augment = bool(augment)
        self.views = parse_views(views)
        base = require_root(root, "Caltech101-20", EXPECTED)
        path = require_file(base / caltech_file, "Caltech101-20", EXPECTED)
        feats, labels = _read(str(path), os.path.getmtime(path))
        train_idx, rows = split_rows(self.name, labels, split, test_ratio, val_ratio, split_seed)
        self._load_views({k: feats[k] for k in self.views}, labels, train_idx, rows, (f"view{k}" for k in self.views))

    def display_name(self, modality):
        k = int(modality[4:])
        return f"{modality} ({VIEWS[k]}, {DESCRIPTIONS[k]}, {self._x[modality].shape[1]})"

    def short_name(self, modality):
        return VIEWS[int(modality[4:])]


@register_dataset(
    "caltech101-20",
    options=OPTIONS,
    uses=("views", "split_seed", "test_ratio", "val_ratio"),
    check=lambda options: parse_views(options["views"]),
    help="Caltech101-20 multi-view features (.mat), 2-6 views, 20 classes, seeded stratified split",
    splits=("train", "test", "val"),
    val_when=lambda options: options.get("val_ratio", 0) > 0,
)
def build(
    root, split, augment=False, views=(), split_seed=0, test_ratio=0.2, val_ratio=0.0, caltech_file="Caltech101-20.mat"
):
    return Caltech101_20(root, split, augment, views, split_seed, test_ratio, caltech_file, val_ratio)
