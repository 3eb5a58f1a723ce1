"""Dataset registry: ``build_dataset(name, root, split, **options)``.

An item is a dict: one tensor per modality (keys ``audio``, ``visual``, ``flow``, ``rgb_diff``, ``text``,
``view0``..``view5``, ...), ``label`` (int64 scalar, or ``(T,)`` for per-segment tasks) and ``index``
(int64 position in the split). Datasets subclass :class:`MultimodalDataset`, which also says which
encoder suits each modality.

A new dataset is one new file in this package::

    @register_dataset("my-data", options=[Option("my_flag", 1, "what it does")], help="one line")
    def build(root, split, augment=False, my_flag=1):
        return MyDataset(...)

The builder receives ``root`` (None: the dataset's default), ``split`` ("train" | "test" | "val"),
``augment`` (training transforms) and its declared options (from the config).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fastshap_train.config import Option, register_options, seed_check
from fastshap_train.data.base import (  # noqa: F401
    DataFileError,
    DataOptionError,
    MultimodalDataset,
    Plan,
    PlanDataset,
    keep_bits,
)


@dataclass
class DatasetEntry:
    name: str
    builder: Callable
    options: tuple = ()  # option names the builder takes (its own and shared ones it uses)
    help: str = ""
    splits: tuple = ("train", "test")
    extra: dict = field(default_factory=dict)
    check: Callable | None = None  # check(options) raises DataOptionError, without reading any data
    val_when: Callable | None = None  # val_when(options): whether "val" in splits exists with these options


_DATASETS: dict = {}

# Options several datasets share (each lists the ones it takes in `uses`).
register_options(
    "data",
    [
        Option(
            "views",
            [],
            "feature views to use, by name or number, comma-separated (multi-view datasets; "
            "empty: the dataset's default)",
        ),
        Option(
            "split_seed", 0, "seed of the fixed train/test split of datasets without an official one", check=seed_check
        ),
        Option(
            "test_ratio",
            0.2,
            "test share of datasets without an official split",
            check=lambda x: None if 0 < x < 1 else "must be in (0, 1)",
        ),
        Option(
            "val_ratio",
            0.0,
            "validation share carved from the training split of datasets without an official "
            "one (stratified, seeded; 0: no validation split, so no model selection)",
            check=lambda x: None if 0 <= x < 1 else "must be in [0, 1)",
        ),
    ],
    title="data",
)


def register_dataset(
    name: str,
    *,
    options: Sequence[Option] = (),
    uses: Sequence[str] = (),
    help: str = "",
    splits=("train", "test"),
    check: Callable | None = None,
    val_when: Callable | None = None,
):
    """Decorator registering a dataset builder, its own options and the shared ones it `uses` (``views``,
    ``split_seed``, ``test_ratio``, ``val_ratio``). `check(options)`, when given, raises DataOptionError for
    options the dataset cannot take, cheaply (no data read), so that a batch of runs can be checked before it
    starts. `val_when(options)`: whether a "val" split exists with those options (default: it does when
    "val" is among `splits`)."""

    def deco(builder):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        if options:
            register_options(f"data:{name}", options, title=f"dataset {name}")
        names = tuple(uses) + tuple(o.name for o in options)
        _DATASETS[name] = DatasetEntry(name, builder, names, help, tuple(splits), check=check, val_when=val_when)
        return builder

    return deco


def dataset_names() -> list:
    return sorted(_DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(dataset_names())}")
    return _DATASETS[name]


def has_validation_split(name: str, options: dict) -> bool:
    """Whether dataset `name` has a "val" split with `options` (its official one, or one carved by
    ``--val-ratio``); its files may still be missing."""
    entry = dataset_entry(name)
    return "val" in entry.splits and (entry.val_when is None or bool(entry.val_when(options)))


def build_dataset(name: str, root: str | None, split: str, augment: bool = False, **options) -> MultimodalDataset:
    """Build split `split` of dataset `name`. Options not given take their declared defaults."""
    entry = dataset_entry(name)
    if split not in entry.splits:
        raise ValueError(f"dataset {name!r} has splits {', '.join(entry.splits)}, not {split!r}")
    from fastshap_train.config import options as all_options

    known = all_options()
    unknown = set(options) - set(entry.options)
    if unknown:
        raise TypeError(
            f"dataset {name!r} takes options {', '.join(entry.options) or '(none)'}, not {', '.join(sorted(unknown))}"
        )
    kwargs = {k: known[k].default for k in entry.options}
    kwargs.update(options)
    return entry.builder(root=root, split=split, augment=augment, **kwargs)


def dataset_options(cfg, name: str | None = None) -> dict:
    """The options of dataset `name` (default cfg.dataset) taken from a Config."""
    entry = dataset_entry(name or cfg.dataset)
    return {k: cfg[k] for k in entry.options}


def multi_view_datasets() -> list:
    """The datasets that take the shared ``views`` option."""
    return [name for name in dataset_names() if "views" in _DATASETS[name].options]


def views_problem(name: str, views) -> str | None:
    """Why `views` cannot go with dataset `name` (views given to a dataset that has none), else None.

    Checked with the configuration (:func:`fastshap_train.config.validate`), so that ``python -m fastshap_train`` and
    ``python -m fastshap_train.compare`` refuse it alike instead of silently ignoring the views."""
    if not views or name not in _DATASETS or "views" in _DATASETS[name].options:
        return None
    return f"dataset {name} has no views (--views is for the multi-view datasets: {', '.join(multi_view_datasets())})"


def val_ratio_problem(name: str, val_ratio) -> str | None:
    """Why --val-ratio cannot go with dataset `name` (it has an official validation split, or no seeded split
    to carve one from), else None: checked with the configuration, as the views are."""
    if not val_ratio or name not in _DATASETS or "val_ratio" in _DATASETS[name].options:
        return None
    carved = [n for n in dataset_names() if "val_ratio" in _DATASETS[n].options]
    what = "has an official validation split" if "val" in _DATASETS[name].splits else "has no validation split"
    return f"dataset {name} {what}; --val-ratio carves one for {', '.join(carved)} only"


def check_dataset_options(cfg) -> None:
    """Raise DataOptionError for dataset options of `cfg` its dataset cannot take, when it can tell without
    reading data (e.g. an unknown view); building the dataset checks the rest."""
    entry = dataset_entry(cfg.dataset)
    if entry.check is not None:
        entry.check(dataset_options(cfg))


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
