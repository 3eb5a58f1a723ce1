"""The trainer's import graph: every module imports, no import cycle (function-level imports included), and
fastshap never imports fastshap_train.

The graph is read from the source with ast, so an import hidden inside a function counts like one at the top
of a file: a cycle dodged by importing late is still a cycle. Edges:

* ``import a.b`` and ``from a.b import x`` are edges to ``a.b`` (to ``a.b.x`` when ``x`` is a submodule);
* a package ``__init__`` that imports its submodules by ``importlib.import_module(<computed name>)`` (the
  registries' import-all) has an edge to each of its submodules;
* a package being imported before its submodules is Python's doing, not an edge.
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def module_files(package: str) -> dict:
    """{dotted module name: (path, is_package)} of every module of `package`."""
    base = ROOT / package
    out = {}
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def imports_of(module: str, path: Path, is_package: bool, modules: dict) -> set:
    """The modules of `modules` that `module` imports anywhere in its source."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()

    def add(name: str, names=()):
        targets = [f"{name}.{n}" for n in names if f"{name}.{n}" in modules]
        if targets:
            found.update(targets)
            if len(targets) == len(names):
                return  # only submodules were imported from `name`
        while name and name not in modules:  # `import a.b.c` of a non-module c: its module
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in TOP_LEVEL:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                name = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] in TOP_LEVEL:
                add(name, [alias.name for alias in node.names])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant):
                add(arg.value)
            elif is_package:  # the import-all of a registry package: every submodule
                found.update(m for m in modules if m.rpartition(".")[0] == module)
    found.discard(module)
    return found


TOP_LEVEL = ("fastshap_train", "fastshap")


def find_cycle(graph: dict) -> list | None:
    """One cycle of `graph` ({node: set of nodes}) as a list of nodes, or None."""
    state = {}  # node -> 1 on the current path, 2 done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def trainer_graph() -> dict:
    modules = module_files("fastshap_train")
    return {m: {t for t in imports_of(m, p, pkg, modules) if t in modules} for m, (p, pkg) in modules.items()}


def test_the_graph_reader_sees_what_it_must():
    # The reader itself: a function-level import is an edge, `from pkg import sub` is an edge to the
    # submodule, and the registries' import-all reaches every submodule of its package.
    graph = trainer_graph()
    assert "fastshap_train.engine" in graph["fastshap_train.launch"]  # launch builds trainers
    assert "fastshap_train.outputs" in graph["fastshap_train.plots"]  # imported inside main()
    assert "fastshap_train.distributed" in graph["fastshap_train.valuation"]  # from fastshap_train import distributed
    assert "fastshap_train.data.synthetic" in graph["fastshap_train.data"]  # import-all
    assert "fastshap_train.methods.resampling" in graph["fastshap_train.methods"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_trainer():
    graph = trainer_graph()
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_registry_and_errors_are_leaves():
    # Everything registers into them, so they import nothing of the package.
    graph = trainer_graph()
    assert graph["fastshap_train.registry"] == set()
    assert graph["fastshap_train.errors"] == set()


def test_the_valuation_imports_only_the_collective_helpers():
    graph = trainer_graph()
    assert "fastshap_train.launch" not in graph["fastshap_train.valuation"]
    assert graph["fastshap_train.distributed"] <= {"fastshap_train.errors"}


@pytest.mark.parametrize("module", sorted(module_files("fastshap_train")))
def test_every_trainer_module_imports(module):
    importlib.import_module(module)


def test_fastshap_never_imports_the_trainer():
    modules = module_files("fastshap")
    for module, (path, is_package) in modules.items():
        found = {m for m in imports_of(module, path, is_package, modules | module_files("fastshap_train"))}
        assert not {m for m in found if m.split(".")[0] == "fastshap_train"}, module
    # and at run time, in a fresh interpreter: importing all of fastshap loads nothing of the trainer
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'fastshap_train')\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
