"""Datasets: ``build_dataset(name, root, split, **options)`` over the dataset table of
:mod:`fastshap_train.registry`.

An item is a dict: one tensor per modality (keys ``audio``, ``visual``, ``flow``, ``rgb_diff``, ``text``,
``view0``..``view5``, ...), ``label`` (int64 scalar, or ``(T,)`` for per-segment tasks) and ``index``
(int64 position in the split). Datasets subclass :class:`MultimodalDataset`, which also says which
encoder suits each modality.

A new dataset is one new file in this package, or a module of the user's loaded with ``python -m
fastshap_train --import MODULE`` (see ``examples/trainer_plugin.py``)::

    from fastshap_train.registry import Option, register_dataset

    @register_dataset("my-data", options=[Option("my_flag", 1, "what it does")], help="one line")
    def build(root, split, augment=False, my_flag=1):
        return MyDataset(...)

The builder receives ``root`` (None: the dataset's default), ``split`` ("train" | "test" | "val"),
``augment`` (training transforms) and its declared options (from the config).
"""

from __future__ import annotations

import importlib
import numbers
import pkgutil

from fastshap_train.data.base import (  # noqa: F401  (re-exported: the dataset interface)
    DataFileError,
    DataOptionError,
    MultimodalDataset,
    Plan,
    PlanDataset,
    keep_bits,
)
from fastshap_train.registry import (  # noqa: F401  (re-exported: the dataset table)
    DatasetEntry,
    Option,
    RegistrationError,
    dataset_entry,
    dataset_names,
    register_dataset,
    register_options,
    seed_check,
)
from fastshap_train.registry import options as declared_options

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
    known = declared_options()
    unknown = set(options) - set(entry.options)
    if unknown:
        raise TypeError(
            f"dataset {name!r} takes options {', '.join(entry.options) or '(none)'}, not {', '.join(sorted(unknown))}"
        )
    undeclared = [k for k in entry.options if k not in known]
    if undeclared:  # `uses` is checked here: the core options it may name are declared after the datasets
        raise RegistrationError(
            f"dataset {name!r} (registered by {entry.module}) uses undeclared option(s) {', '.join(undeclared)}"
        )
    kwargs = {k: known[k].default for k in entry.options}
    kwargs.update(options)
    dataset = entry.builder(root=root, split=split, augment=augment, **kwargs)
    problem = _dataset_problem(dataset)
    if problem:
        raise RegistrationError(f"dataset {name!r} (registered by {entry.module}): its builder returned {problem}")
    return dataset


def _dataset_problem(dataset) -> str | None:
    """What the trainer needs of a built split and `dataset` lacks (a plug-in's builder), or None."""
    if not isinstance(dataset, MultimodalDataset):
        return f"a {type(dataset).__name__}, not a fastshap_train.data.MultimodalDataset"
    missing = []
    modalities = dataset.modalities
    if not modalities or not all(isinstance(m, str) for m in modalities) or len(set(modalities)) != len(modalities):
        missing.append("modalities (distinct names)")
    classes = dataset.num_classes
    if isinstance(classes, bool) or not isinstance(classes, numbers.Integral) or classes < 2:
        missing.append("num_classes (an integer >= 2)")
    if type(dataset).encoder_spec is MultimodalDataset.encoder_spec:  # the base's raises NotImplementedError
        missing.append("encoder_spec()")
    return f"a {type(dataset).__name__} without {', '.join(missing)}" if missing else None


def dataset_options(cfg, name: str | None = None) -> dict:
    """The options of dataset `name` (default cfg.dataset) taken from a Config."""
    entry = dataset_entry(name or cfg.dataset)
    return {k: cfg[k] for k in entry.options}


def multi_view_datasets() -> list:
    """The datasets that take the shared ``views`` option."""
    return [name for name in dataset_names() if "views" in dataset_entry(name).options]


def views_problem(name: str, views) -> str | None:
    """Why `views` cannot go with dataset `name` (views given to a dataset that has none), else None.

    Checked with the configuration (:func:`fastshap_train.config.validate`), so that ``python -m fastshap_train`` and
    ``python -m fastshap_train.compare`` refuse it alike instead of silently ignoring the views."""
    if not views or name not in dataset_names() or "views" in dataset_entry(name).options:
        return None
    return f"dataset {name} has no views (--views is for the multi-view datasets: {', '.join(multi_view_datasets())})"


def val_ratio_problem(name: str, val_ratio) -> str | None:
    """Why --val-ratio cannot go with dataset `name` (it has an official validation split, or no seeded split
    to carve one from), else None: checked with the configuration, as the views are."""
    if not val_ratio or name not in dataset_names() or "val_ratio" in dataset_entry(name).options:
        return None
    carved = [n for n in dataset_names() if "val_ratio" in dataset_entry(n).options]
    what = "has an official validation split" if "val" in dataset_entry(name).splits else "has no validation split"
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
