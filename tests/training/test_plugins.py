"""Plug-ins: ``--import MODULE`` brings a user's datasets, encoder kinds and methods (examples/trainer_plugin.py),
by dotted name or by file path, to python -m fastshap_train and fastshap_train.compare; a wrong plug-in ends
the command with one line naming the module and the cause (exit 2)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastshap_train import plugins
from fastshap_train.cli import main
from fastshap_train.compare import main as compare_main
from fastshap_train.outputs import read_metrics

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "trainer_plugin.py"
# A toy-sensors run of a few seconds; 65 = 4 x 16 + 1 training samples, so every plan of the first epoch
# ends in a batch of one row, which the example's batch-norm encoder could not take.
TOY = [
    "--dataset",
    "toy-sensors",
    "--toy-samples",
    "65",
    "--batch-size",
    "16",
    "--optimizer",
    "adam",
    "--lr",
    "0.01",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--no-tensorboard",
    "--no-plots",
]


def run_module(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # the package, as installed; the plug-in comes from --import alone
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_the_example_plugin_trains_by_dotted_name(tmp_path):
    out = tmp_path / "toy"
    args = ["--import", "examples.trainer_plugin", *TOY, "--method", "sample-level", "--epochs", "2", "--warmup", "1"]
    run = run_module(["fastshap_train", *args, "--out", str(out)], cwd=ROOT)  # python -m: the repository root
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["train_rows"] == 65 and rows[1]["resampled"] > 0  # the plug-in's data re-sampled
    assert {"phi_mean_accel", "phi_mean_stats", "copies_accel", "copies_stats"} <= set(rows[0])
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "toy-sensors" and results["modalities"] == ["accel", "stats"]
    model = torch.load(out / "last.pt", weights_only=True)["model"]
    assert "encoders.accel.net.1.running_mean" in model  # the plug-in's conv1d encoder, batch norm and all
    # no terminal: one log line per epoch on stdout
    assert [line.split(":")[0] for line in run.stdout.splitlines() if line.startswith("epoch ")] == [
        "epoch 0/1",
        "epoch 1/1",
    ]


def test_the_example_plugin_by_file_path_with_its_method_and_options(tmp_path):
    out = tmp_path / "toy"
    # run from elsewhere: a dotted name would not be found, a path is
    args = ["--import", str(EXAMPLE), *TOY, "--method", "smoothed", "--smoothing", "0.2", "--epochs", "1"]
    run = run_module(["fastshap_train", *args, "--out", str(out)], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    config = (out / "config.yaml").read_text()
    assert "method: smoothed" in config and "smoothing: 0.2" in config and "toy_samples: 65" in config
    assert len(read_metrics(out / "metrics.csv")) == 1


def test_compare_runs_plugin_methods_in_worker_processes(tmp_path):
    out = tmp_path / "cmp"
    args = [
        "fastshap_train.compare",
        "--import",
        str(EXAMPLE),
        "--dataset",
        "toy-sensors",
        "--methods",
        "smoothed,concat",
        "--seeds",
        "1",
        "--jobs",
        "2",  # spawned workers: they import the plug-in again
        "--set",
        "epochs=1",
        "--set",
        "toy_samples=32",
        "--out",
        str(out),
    ]
    run = run_module(args, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["method"], r["status"]) for r in rows] == [("smoothed", "ok"), ("concat", "ok")]


def test_plugin_listing_and_help_in_process(tmp_path, capsys, isolated_registry):
    assert main(["--import", str(EXAMPLE), "--list-datasets", "--list-methods"]) == 0
    listed = capsys.readouterr().out
    assert "toy-sensors" in listed and "smoothed" in listed and "synthetic" in listed
    assert plugins.loaded() == [str(EXAMPLE)]
    # loaded once: the dotted name of the same file does not run it (and register it) again
    assert main(["--import", "examples.trainer_plugin", "--import", str(EXAMPLE), "--list-methods"]) == 0
    with pytest.raises(SystemExit):
        main(["--import", str(EXAMPLE), "--help"])
    text = capsys.readouterr().out
    assert "--toy-samples" in text and "--smoothing" in text and "--import MODULE" in text
    assert text.index("--epochs") < text.index("--toy-samples")  # the trainer's own options come first


BAD_PLUGINS = {
    "name-taken": (
        "from fastshap_train.registry import register_dataset\n"
        "@register_dataset('synthetic')\n"
        "def build(root, split, augment=False):\n"
        "    return None\n",
        "(line 2): dataset 'synthetic' is already registered by fastshap_train.data.synthetic",
    ),
    "not-callable": (
        "from fastshap_train.registry import register_encoder\nregister_encoder('plugin-kind')(42)\n",
        "the factory must be callable",
    ),
    "builder-parameters": (
        "from fastshap_train.registry import register_dataset\n"
        "register_dataset('plugin-data')(lambda root, split: None)\n",
        "does not take the parameter(s) augment",
    ),
    "method-attributes": (
        "from fastshap_train.registry import register_method\n"
        "@register_method('plugin-method')\n"
        "class Loose:\n"
        "    def loss(self, out, batch):\n"
        "        return 0\n",
        "class Loose lacks check_config",
    ),
    "option-taken": (
        "from fastshap_train.registry import Option, register_options\n"
        "register_options('mine', [Option('lr', 0.5, 'my learning rate')])\n",
        "option 'lr' is already declared by optim",
    ),
    "raises": ("x = 1\nraise RuntimeError('boom')\n", "importing it failed (line 2): RuntimeError: boom"),
    "needs-dependency": (
        "import no_such_dependency_of_a_plugin\n",
        "ModuleNotFoundError: No module named 'no_such_dependency_of_a_plugin'",
    ),
    "syntax": ("def f(:\n", "importing it failed: SyntaxError"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_a_wrong_plugin_is_one_error_line(case, tmp_path, fails, single_line, isolated_registry):
    source, phrase = BAD_PLUGINS[case]
    path = tmp_path / f"plugin_{case.replace('-', '_')}.py"
    path.write_text(source)
    err = fails(main, ["--import", str(path), "--dataset", "synthetic", "--out", str(tmp_path / "o")], code=2)
    line = single_line(err)
    assert line.startswith(f"python -m fastshap_train: error: --import {path}")  # names the module
    assert phrase in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "spec, phrase",
    [
        ("no_such_plugin_module", "no module named 'no_such_plugin_module' on the Python path"),
        ("no_such_package.sub", "no module named 'no_such_package'"),
        ("missing/plugin.py", "no such file"),
    ],
)
def test_a_plugin_that_is_not_there(spec, phrase, tmp_path, fails, single_line, isolated_registry):
    err = fails(main, ["--import", spec, "--out", str(tmp_path / "o")], code=2)
    assert phrase in single_line(err) and f"--import {spec}" in err


def test_compare_reports_a_wrong_plugin_as_a_usage_error(tmp_path, fails, isolated_registry):
    path = tmp_path / "plugin_for_compare.py"
    path.write_text("raise ValueError('not today')\n")
    err = fails(compare_main, ["--import", str(path), "--dataset", "synthetic", "--out", str(tmp_path / "c")], code=2)
    assert "importing it failed (line 1): ValueError: not today" in err.splitlines()[-1]  # after the usage line


@pytest.mark.parametrize(
    "body, phrase",
    [
        ("return [1, 2]", "its builder returned a list, not a fastshap_train.data.MultimodalDataset"),
        ("return Bare()", "without modalities (distinct names), num_classes (an integer >= 2), encoder_spec()"),
    ],
)
def test_a_plugin_builder_returning_no_dataset(body, phrase, tmp_path, fails, single_line, isolated_registry):
    path = tmp_path / "plugin_bad_builder.py"
    path.write_text(
        "from fastshap_train.data import MultimodalDataset\n"
        "from fastshap_train.registry import register_dataset\n"
        "class Bare(MultimodalDataset):\n"
        "    pass\n"
        "@register_dataset('bad-builder')\n"
        "def build(root, split, augment=False):\n"
        f"    {body}\n"
    )
    err = fails(main, ["--import", str(path), "--dataset", "bad-builder", "--out", str(tmp_path / "o")], code=2)
    line = single_line(err)
    assert "dataset 'bad-builder' (registered by plugin_bad_builder)" in line and phrase in line


def test_a_plugin_encoder_without_out_dim(tmp_path, fails, single_line, isolated_registry, tiny_argv):
    path = tmp_path / "plugin_bad_encoder.py"
    path.write_text(
        "from torch import nn\n"
        "from fastshap_train.registry import register_encoder\n"
        "@register_encoder('no-width')\n"
        "def make(spec, cfg):\n"
        "    return nn.Linear(16, 4)\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text("encoders: {view0: {kind: no-width}}\n")
    args = ["--import", str(path), *tiny_argv, "--config", str(config), "--epochs", "1", "--out", str(tmp_path / "o")]
    line = single_line(fails(main, args, code=2))
    assert "encoder kind 'no-width' (registered by plugin_bad_encoder)" in line and "integer out_dim" in line
