"""Plug-in modules: ``--import MODULE`` imports a module of the user's before the command line is read.

The module's ``register_dataset`` / ``register_encoder`` / ``register_method`` / ``register_options`` calls
(:mod:`fastshap_train.registry`) then work by name: ``--dataset``, ``--method``, the ``encoders`` option
and the plug-in's own flags, as for the built-in ones. See ``examples/trainer_plugin.py``.

MODULE is either

* a dotted module name on the Python path (``--import examples.trainer_plugin``); ``python -m`` puts the
  current directory first on the path, and the ``fastshap-train`` script looks there too when the module
  is not found elsewhere; or
* a path to a ``.py`` file (``--import examples/trainer_plugin.py``), imported as a module named after
  the file (``trainer_plugin``), so a file whose name another imported module already has is refused.

A module that cannot be imported, or whose registrations the tables refuse, ends the command with one
line naming the module, the line and the cause (:class:`PluginError`, exit 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path

from fastshap_train.registry import RegistrationError

#: The modules loaded so far, as given (file paths made absolute): processes started later (DDP ranks,
#: compare's parallel runs) load the same ones.
_LOADED: list = []


class PluginError(ValueError):
    """A plug-in module cannot be imported or registers something wrong; the message is one line that
    names the module and the cause."""


def loaded() -> list:
    return list(_LOADED)


def is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or (os.sep != "/" and os.sep in spec)


def load(specs) -> list:
    """Import each module of `specs` not loaded yet (dotted names or ``.py`` paths); return the modules."""
    modules = []
    for spec in specs:
        spec = str(spec).strip()
        key = str(Path(spec).resolve()) if is_path(spec) else spec
        if not spec:
            raise PluginError("--import: empty module name")
        modules.append(_load_file(spec, Path(key)) if is_path(spec) else _load_module(spec))
        if key not in _LOADED:
            _LOADED.append(key)
    return modules


def _load_module(name: str):
    if name in sys.modules:
        return sys.modules[name]
    same = _loaded_from(_module_file(name))
    if same is not None:  # the file, loaded already by its path: running it again would register twice
        return same
    try:
        return _import(name)
    except ModuleNotFoundError as exc:
        if not _is_the_module(exc, name):
            raise _failed(name, exc, _module_file(name)) from None
        # The console script's path lacks the current directory that `python -m` puts first.
        cwd = os.getcwd()
        if cwd not in map(os.path.abspath, sys.path):
            sys.path.append(cwd)
            try:
                return _import(name)
            except ModuleNotFoundError as again:
                if not _is_the_module(again, name):
                    raise _failed(name, again, _module_file(name)) from None
            except BaseException as again:  # noqa: BLE001 - as below
                if isinstance(again, (KeyboardInterrupt, SystemExit)):
                    raise
                raise _failed(name, again, _module_file(name)) from None
        raise PluginError(
            f"--import {name}: no module named {exc.name!r} on the Python path (give a module name such as "
            "examples.trainer_plugin, run from the folder that holds it, or the path to a .py file)"
        ) from None
    except BaseException as exc:  # noqa: BLE001 - the user's module may raise anything while it runs
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _failed(name, exc, _module_file(name)) from None


def _import(name: str):
    return importlib.import_module(name)


def _is_the_module(exc: ModuleNotFoundError, name: str) -> bool:
    """Whether `exc` says `name` itself (or a package above it) is missing, not a module it imports."""
    return exc.name is not None and (name == exc.name or name.startswith(exc.name + "."))


def _module_file(name: str) -> str | None:
    """The file of module `name` (which failed to import), to find its line in the traceback."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def _load_file(spec: str, path: Path):
    if not path.is_file():
        raise PluginError(f"--import {spec}: no such file")
    if path.suffix != ".py":
        raise PluginError(f"--import {spec}: not a .py file")
    same = _loaded_from(str(path))
    if same is not None:  # loaded already (by this path or by its module name)
        return same
    name = path.stem
    other = sys.modules.get(name)
    if other is not None:
        raise PluginError(
            f"--import {spec}: a module named {name!r} is already imported (from "
            f"{getattr(other, '__file__', None) or 'a built-in'}): rename the file"
        )
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before it runs, as an import does (dataclasses and pickling look it up)
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - the user's module may raise anything while it runs
        del sys.modules[name]
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _failed(spec, exc, str(path)) from None
    return module


def _loaded_from(filename: str | None):
    """The imported module whose file is `filename`, if any."""
    if filename is None or not filename.endswith(".py"):
        return None
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and _same_file(file, filename):
            return module
    return None


def _failed(spec: str, exc: BaseException, filename: str | None) -> PluginError:
    """One line: the module, where in it, and the cause."""
    where = ""
    if filename is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if _same_file(f.filename, filename)]
        if frames:
            where = f" (line {frames[-1].lineno})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, RegistrationError):
        return PluginError(f"--import {spec}{where}: {text}")
    return PluginError(f"--import {spec}: importing it failed{where}: {type(exc).__name__}: {text}".rstrip(": "))


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
