"""Fixtures shared by the trainer's tests.

Small runs come from ``fastshap_train.testing.tiny_config`` (a package helper, because the benchmarks in
bench/ use it too and never import tests); the command-line helpers and data writers live here.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastshap_train import config, plugins, registry
from fastshap_train.cli import main as train_main

ROOT = Path(__file__).resolve().parents[2]

# A synthetic run of a second or two: 32 training samples, one batch per epoch (synthetic.yaml: batch 32).
TINY_ARGV = (
    "--dataset",
    "synthetic",
    "--syn-samples",
    "32",
    "--syn-test-samples",
    "16",
    "--threads",
    "1",
    "--no-progress",
    "--no-tensorboard",
    "--no-plots",
    "--device",
    "cpu",
)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest, and the machine may be shared (the CLI runs use --threads 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_argv():
    """The flags of a synthetic run of a second or two (python -m fastshap_train)."""
    return list(TINY_ARGV)


@pytest.fixture
def compare_tiny_argv():
    """The flags that make each run of python -m fastshap_train.compare a one-epoch tiny one."""
    return ["--seeds", "1", "--set", "epochs=1", "--set", "syn_samples=32", "--set", "syn_test_samples=16"]


@pytest.fixture
def train_cli(tiny_argv):
    """python -m fastshap_train with the tiny flags, then `args` (later flags win)."""
    return lambda args: train_main([*tiny_argv, *args])


@pytest.fixture
def fails(capsys):
    """fails(run, args, code=1): run a command line that must fail with exit `code`; its stderr, checked to
    hold no traceback."""

    def check(run, args, code=1) -> str:
        with pytest.raises(SystemExit) as exc:
            result = run(args)
            raise SystemExit(result)  # compare and preprocess return their status
        err = capsys.readouterr().err
        assert exc.value.code == code, err
        assert "Traceback" not in err
        return err

    return check


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def single_line():
    """single_line(err): the one line of `err` (asserted to be one)."""
    return one_error_line


@pytest.fixture
def mfeat_root():
    """mfeat_root(folder, views, rows): UCI multiple-features CSVs of random values in `folder`."""
    from fastshap_train.data.uci_mfeat import WIDTHS

    def write(folder, views=("fou", "mor"), rows=2000):
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(10), rows // 10)
        for v in views:
            x = rng.normal(size=(rows, WIDTHS[v]))
            table = np.column_stack([x, labels])
            header = ",".join(str(i) for i in range(WIDTHS[v])) + ",0"
            np.savetxt(folder / f"mfeat-{v}.csv", table, delimiter=",", header=header, comments="")
        return folder

    return write


@pytest.fixture
def phi_table():
    """phi_table(out, epoch): the (N, n) phi table a run saved after `epoch`."""
    return lambda out, epoch: np.load(out / "phi" / f"epoch_{epoch:03d}.npz")["phi"]


@pytest.fixture
def isolated_registry():
    """The registries, the loaded plug-ins and sys.modules as they were before the test: a plug-in
    imported in the test process registers nothing that outlives the test."""
    assert config.options() is not None  # the built-in tables are filled (importing config fills them)
    tables = [
        registry._OPTIONS,
        registry._GROUP_TITLES,
        registry._DATASETS,
        registry.ENCODERS,
        registry.ENCODER_KEYS,
        registry._ENCODER_ORIGINS,
        registry._METHODS,
    ]
    saved = [dict(t) for t in tables]
    loaded = list(plugins._LOADED)
    modules = set(sys.modules)
    path = list(sys.path)
    yield
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)
    plugins._LOADED[:] = loaded
    # the plug-in modules themselves (not what they imported from the environment or the package)
    ours = (sys.prefix, sys.base_prefix, str(ROOT / "fastshap"), str(ROOT / "fastshap_train"))
    for name in set(sys.modules) - modules:
        file = getattr(sys.modules[name], "__file__", None)
        if file and not str(Path(file).resolve()).startswith(ours):
            del sys.modules[name]
    sys.path[:] = path
