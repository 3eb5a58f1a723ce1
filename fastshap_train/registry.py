"""The trainer's tables: options, datasets, encoder kinds and methods, and the decorators that fill them.

A leaf module: it imports nothing of the package, so that ``config.py``, ``data/``, ``models/`` and
``methods/`` (and a user's plug-in module, loaded by ``python -m fastshap_train --import MODULE``) all
register into it without an import cycle. Each table holds one concept (STYLE.md, practice 12):

* options: :class:`Option` declared with :func:`register_options` (the core ones in ``config.py``, a
  dataset's or method's next to its code); they become command-line flags and YAML keys;
* datasets: :func:`register_dataset` on a builder ``build(root, split, augment=False, **options)``;
* encoder kinds: :func:`register_encoder` on a factory ``factory(spec: dict, cfg) -> nn.Module``;
* methods: :func:`register_method` on a class with the trainer's hooks (a ``fastshap_train.methods.Method``
  subclass).

Registrations are checked when they happen, so a plug-in's mistake stops the command before anything
runs: a name already taken, a builder or factory that is not callable or does not take the parameters
the trainer passes, a method class without a hook. :class:`RegistrationError` says which and by whom.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class RegistrationError(ValueError):
    """A registration the tables refuse; the message names the thing registered and what is wrong."""


# ---------------------------------------------------------------------------------------------------------
# options

#: Value kinds an option may take. Lists are comma-separated on the command line.
KINDS = ("int", "float", "str", "bool", "str_list", "int_list", "float_list", "dict", "path")

#: Names the command line keeps for its own flags (--config, --import, ...): an option cannot take them.
RESERVED_OPTION_NAMES = frozenset(
    {"config", "print_config", "list_datasets", "list_methods", "overwrite", "import", "imports", "help"}
)


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    kind: str = ""  # inferred from the default when empty
    choices: tuple | None = None
    group: str = "general"
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    cli: bool = True  # False: YAML / API only (e.g. nested dicts)
    metavar: str | None = None

    def resolved_kind(self) -> str:
        if self.kind:
            return self.kind
        d = self.default
        if isinstance(d, bool):
            return "bool"
        if isinstance(d, int):
            return "int"
        if isinstance(d, float):
            return "float"
        if isinstance(d, dict):
            return "dict"
        if isinstance(d, (list, tuple)):
            return "str_list"
        return "str"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_OPTIONS: dict = {}
_GROUP_TITLES: dict = {}


def register_options(group: str, options: Iterable[Option], title: str | None = None) -> None:
    """Declare options (a dataset's or method's) under `group`. Names are global: one declared by another
    group is refused."""
    options = list(options)
    for opt in options:
        if not isinstance(opt, Option):
            raise RegistrationError(f"options of {group}: expected Option(name, default, help, ...), got {opt!r}")
        if not (isinstance(opt.name, str) and opt.name.isidentifier()):
            raise RegistrationError(f"options of {group}: option name {opt.name!r} is not an identifier")
        if opt.name in RESERVED_OPTION_NAMES:
            raise RegistrationError(f"options of {group}: option name {opt.name!r} is a flag of the command line")
        kind = opt.resolved_kind()
        if kind not in KINDS:
            raise RegistrationError(f"option {opt.name}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        if opt.check is not None and not callable(opt.check):
            raise RegistrationError(f"option {opt.name}: check must be callable, got {opt.check!r}")
        if opt.name in _OPTIONS and _OPTIONS[opt.name].group != group:
            raise RegistrationError(f"option {opt.name!r} is already declared by {_OPTIONS[opt.name].group}")
    if title:
        _GROUP_TITLES[group] = title
    for opt in options:
        _OPTIONS[opt.name] = Option(**{**opt.__dict__, "group": group, "kind": opt.resolved_kind()})


def options() -> dict:
    """Every declared option by name (the packages that declare theirs must have been imported:
    ``fastshap_train.config`` imports the built-in ones)."""
    return dict(_OPTIONS)


def group_title(group: str) -> str:
    return _GROUP_TITLES.get(group, group)


#: Seeds feed torch.manual_seed (at most 2^64 - 1), numpy (non-negative) and DistributedSampler, which adds
#: the epoch: [0, 2^63 - 1] fits them all with room to spare.
MAX_SEED = 2**63 - 1


def seed_check(x):
    return None if 0 <= x <= MAX_SEED else "must be in [0, 2^63 - 1]"


# ---------------------------------------------------------------------------------------------------------
# shared checks of what is registered


def _check_name(what: str, name) -> None:
    if not (isinstance(name, str) and name.strip() and name == name.strip()):
        raise RegistrationError(f"a {what} name must be a non-empty string without surrounding spaces, got {name!r}")


def _origin(obj) -> str:
    return getattr(obj, "__module__", None) or "?"


def _check_callable(what: str, obj) -> None:
    if not callable(obj):
        raise RegistrationError(f"{what} must be callable, got {type(obj).__name__} {obj!r}")


def _missing_parameters(fn, names: Sequence[str]) -> list:
    """The parameters of `names` that `fn` cannot take by keyword (none when it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n in names if n not in params or params[n].kind not in keyword]


# ---------------------------------------------------------------------------------------------------------
# datasets


@dataclass
class DatasetEntry:
    name: str
    builder: Callable
    options: tuple = ()  # option names the builder takes (its own and shared ones it uses)
    help: str = ""
    splits: tuple = ("train", "test")
    check: Callable | None = None  # check(options) raises DataOptionError, without reading any data
    val_when: Callable | None = None  # val_when(options): whether "val" in splits exists with these options
    module: str = ""  # the module that registered it


_DATASETS: dict = {}
SPLITS = ("train", "test", "val")


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
    """Decorator registering a dataset builder ``build(root, split, augment=False, **options)``, its own
    options and the shared ones it `uses` (``views``, ``split_seed``, ``test_ratio``, ``val_ratio``).

    `check(options)`, when given, raises DataOptionError for options the dataset cannot take, cheaply (no
    data read), so that a batch of runs can be checked before it starts. `val_when(options)`: whether a
    "val" split exists with those options (default: it does when "val" is among `splits`)."""
    _check_name("dataset", name)
    if name in _DATASETS:
        raise RegistrationError(f"dataset {name!r} is already registered by {_DATASETS[name].module}")
    splits = tuple(splits)
    if not {"train", "test"} <= set(splits) <= set(SPLITS):
        raise RegistrationError(f"dataset {name!r}: splits must hold train and test (and maybe val), got {splits}")
    for what, fn in (("check", check), ("val_when", val_when)):
        if fn is not None:
            _check_callable(f"dataset {name!r}: {what}", fn)

    def deco(builder):
        _check_callable(f"dataset {name!r}: the builder", builder)
        names = tuple(uses) + tuple(o.name for o in options if isinstance(o, Option))
        missing = _missing_parameters(builder, ("root", "split", "augment", *names))
        if missing:
            raise RegistrationError(
                f"dataset {name!r}: its builder {getattr(builder, '__qualname__', builder)} does not take "
                f"the parameter(s) {', '.join(missing)} (it is called as build(root, split, augment, **options))"
            )
        if name in _DATASETS:  # registered meanwhile (the decorator applied twice)
            raise RegistrationError(f"dataset {name!r} is already registered by {_DATASETS[name].module}")
        if options:
            register_options(f"data:{name}", options, title=f"dataset {name}")
        _DATASETS[name] = DatasetEntry(name, builder, names, help, splits, check, val_when, _origin(builder))
        return builder

    return deco


def dataset_names() -> list:
    return sorted(_DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(dataset_names())}")
    return _DATASETS[name]


# ---------------------------------------------------------------------------------------------------------
# encoder kinds

ENCODERS: dict = {}
#: kind -> {spec key: check(value) -> error message or None}: the keys its factory reads, so that a
#: misspelt key in the ``encoders`` option is an error instead of being silently ignored.
ENCODER_KEYS: dict = {}
_ENCODER_ORIGINS: dict = {}


def register_encoder(kind: str, keys: Mapping | None = None):
    """Register ``factory(spec, cfg) -> nn.Module`` (with an integer ``out_dim``) for `kind`; `keys` maps
    the spec keys it reads (besides ``kind``) to a check of their value (None: any keys are accepted)."""
    _check_name("encoder kind", kind)
    if kind in ENCODERS:
        raise RegistrationError(f"encoder kind {kind!r} is already registered by {_ENCODER_ORIGINS[kind]}")
    if keys is not None:
        if not isinstance(keys, Mapping):
            raise RegistrationError(f"encoder kind {kind!r}: keys must map spec keys to checks, got {keys!r}")
        for key, check in keys.items():
            _check_callable(f"encoder kind {kind!r}: the check of key {key!r}", check)

    def deco(factory):
        _check_callable(f"encoder kind {kind!r}: the factory", factory)
        try:
            inspect.signature(factory).bind(None, None)
        except TypeError:
            raise RegistrationError(
                f"encoder kind {kind!r}: its factory {getattr(factory, '__qualname__', factory)} must take (spec, cfg)"
            ) from None
        except ValueError:  # no signature to check
            pass
        if kind in ENCODERS:
            raise RegistrationError(f"encoder kind {kind!r} is already registered by {_ENCODER_ORIGINS[kind]}")
        ENCODERS[kind] = factory
        _ENCODER_ORIGINS[kind] = _origin(factory)
        if keys is not None:
            ENCODER_KEYS[kind] = dict(keys)
        return factory

    return deco


def encoder_kinds() -> list:
    return sorted(ENCODERS)


def check_encoder_spec(where: str, spec) -> str | None:
    """What is wrong with an encoder spec or override (a message naming `where`), or None.

    `spec` is a kind name or a mapping of spec keys; without ``kind`` (an override of the dataset's
    default kind) its keys are checked against every kind's, the full spec again when the model is built."""
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict):
        return f"{where} must be an encoder kind or a mapping such as {{kind: mlp, hidden: 256}}, got {spec!r}"
    kind = spec.get("kind")
    if kind is not None and kind not in ENCODERS:
        return f"{where}: unknown encoder kind {kind!r}; available: {', '.join(encoder_kinds())}"
    if kind is not None and kind not in ENCODER_KEYS:
        return None  # a kind registered without its keys: nothing to check
    kinds = [kind] if kind is not None else list(ENCODER_KEYS)
    valid = {}
    for k in kinds:
        valid.update(ENCODER_KEYS[k])
    for key, value in spec.items():
        if key == "kind":
            continue
        if key not in valid:
            what = f"kind {kind!r}" if kind is not None else "any encoder kind"
            return f"{where}: unknown key {key!r} for {what}; valid keys: {', '.join(['kind', *sorted(valid)])}"
        problem = valid[key](value)
        if problem:
            return f"{where}.{key} = {value!r} {problem}"
    return None


# ---------------------------------------------------------------------------------------------------------
# methods

_METHODS: dict = {}

#: What the trainer calls or reads on a method class (fastshap_train.methods.Method defines them all).
METHOD_HOOKS = (
    "check_config",
    "build_model",
    "setup",
    "valuation_head",
    "train_indices",
    "first_plan",
    "on_batch",
    "loss",
    "after_backward",
    "valuation_indices",
    "next_plan",
    "epoch_metrics",
    "state_dict",
    "load_state_dict",
)
METHOD_ATTRIBUTES = ("head", "needs_valuation", "skips_parameters", "removes_from_originals", "help")


def register_method(name: str):
    """Class decorator registering a method (a ``fastshap_train.methods.Method`` subclass) under `name`."""
    _check_name("method", name)
    if name in _METHODS:
        raise RegistrationError(f"method {name!r} is already registered by {_origin(_METHODS[name])}")

    def deco(cls):
        if not isinstance(cls, type):
            raise RegistrationError(f"method {name!r} must be a class (a Method subclass), got {cls!r}")
        missing = [h for h in METHOD_HOOKS if not callable(getattr(cls, h, None))]
        missing += [a for a in METHOD_ATTRIBUTES if not hasattr(cls, a)]
        if missing:
            raise RegistrationError(
                f"method {name!r}: class {cls.__qualname__} lacks {', '.join(missing)} "
                "(subclass fastshap_train.methods.Method, which defines every hook)"
            )
        if not isinstance(cls.help, str):
            raise RegistrationError(f"method {name!r}: help must be a string, got {cls.help!r}")
        if name in _METHODS:
            raise RegistrationError(f"method {name!r} is already registered by {_origin(_METHODS[name])}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def method_names() -> list:
    return sorted(_METHODS)


def method_class(name: str) -> type:
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    return _METHODS[name]
