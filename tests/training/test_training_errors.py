"""Bad input to the trainer's command lines ends in one clear error line and a non-zero exit, never a
traceback, a crash or silently lost work: python -m fastshap_train, fastshap_train.compare and
fastshap_train.preprocess."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from fastshap_train.cli import build_parser, main
from fastshap_train.compare import main as compare_main
from fastshap_train.config import ConfigError, options, resolve_config
from fastshap_train.outputs import read_metrics
from fastshap_train.preprocess.__main__ import main as preprocess_main

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")


# ------------------------------------------------------------------------------------------------------
# 1, 9: fastshap_train.compare checks its lists before the first run


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "synthetic", "--methods", "concat,concat"], "'concat' more than once"),
        (["--dataset", "synthetic", "--dataset", "synthetic"], "'synthetic' more than once"),
        (
            ["--dataset", "uci-mfeat", "--views", "fou,mor", "--views", "fou, mor"],
            "'fou,mor' more than once",
        ),
        (["--dataset", "nope"], "unknown dataset(s) nope"),
        (["--dataset", "uci-mfeat", "--views", "fou,xyz"], "unknown view 'xyz'"),
        (["--dataset", "synthetic", "--views", "a,b"], "dataset synthetic has no views"),
        (["--dataset", "synthetic", "--set", "lr=-1"], "lr = -1.0 must be > 0"),
        (["--dataset", "synthetic", "--set", "no_such_option=1"], "unknown option 'no_such_option'"),
        (["--dataset", "synthetic", "--set", "seed=3"], "compare sets seed itself"),
        (["--dataset", "uci-mfeat", "--metric", "best"], "has no validation split (--set val_ratio=0.1"),
        (["--dataset", "synthetic", "--metric", "best", "--set", "select=none"], "--set select=none"),
        (["--dataset", "synthetic", "--set", "val_ratio=0.2"], "has an official validation split"),
        (["--dataset", "synthetic", "--jobs", "0"], "--jobs must be in [1, "),
        (["--dataset", "synthetic", "--jobs", str(4 * (os.cpu_count() or 1) + 1)], "at most 4 x the"),
    ],
)
def test_compare_rejects_repeats_and_bad_lists_before_running(args, message, tmp_path, fails, compare_tiny_argv):
    out = tmp_path / "cmp"
    methods = [] if "--methods" in args else ["--methods", "concat"]
    err = fails(compare_main, [*args, *methods, *compare_tiny_argv, "--out", str(out)], code=2)
    assert message in err
    assert not out.exists()  # nothing ran


def test_compare_refuses_to_overwrite_a_comparison_without_overwrite(tmp_path, fails, compare_tiny_argv):
    out = tmp_path / "cmp"
    args = ["--dataset", "synthetic", "--methods", "concat", *compare_tiny_argv, "--out", str(out)]
    assert compare_main(args) == 0
    before = (out / "runs.csv").read_text()
    err = fails(compare_main, args)
    assert "already holds a comparison" in err and "--overwrite" in err
    assert (out / "runs.csv").read_text() == before
    assert compare_main([*args, "--overwrite"]) == 0
    assert "ok" in (out / "runs.csv").read_text()


def test_compare_metric_best_reports_the_test_accuracy_at_the_best_validation_epoch(tmp_path, compare_tiny_argv):
    out = tmp_path / "cmp"
    assert (
        compare_main(
            ["--dataset", "synthetic", "--methods", "concat", *compare_tiny_argv, "--metric", "best", "--out", str(out)]
        )
        == 0
    )
    (row,) = list(csv.DictReader(open(out / "runs.csv")))
    results = json.loads(next((out / "runs").rglob("results.json")).read_text())
    assert float(row["test_acc_at_best"]) == results["test_acc_at_best"] is not None
    assert f"{100 * results['test_acc_at_best']:.2f}" in (out / "table.md").read_text()


def test_compare_metric_best_names_missing_validation_files(tmp_path):
    from fastshap_train.data import _fixtures as fx

    layout = fx.write_ks(tmp_path / "ks", per_class=1)  # train and test lists only: no val_1fps_path.txt
    out = tmp_path / "cmp"
    code = compare_main(
        [
            "--dataset",
            "ks",
            "--methods",
            "concat",
            "--seeds",
            "1",
            "--set",
            "epochs=1",
            "--set",
            f"data_root={layout.root}",
            "--set",
            "batch_size=2",
            "--metric",
            "best",
            "--out",
            str(out),
        ]
    )
    assert code == 1
    (row,) = list(csv.DictReader(open(out / "runs.csv")))
    assert row["status"] == "error" and "val_1fps_path.txt" in row["message"]


def test_compare_out_that_is_a_file(tmp_path, fails, compare_tiny_argv):
    (tmp_path / "f").write_text("x")
    for out, message in (
        (tmp_path / "f", "is a file, not a directory"),
        (tmp_path / "f" / "sub", "cannot create the directory"),
    ):
        err = fails(
            compare_main, ["--dataset", "synthetic", "--methods", "concat", *compare_tiny_argv, "--out", str(out)]
        )
        assert f"--out {out}" in err and message in err


# ------------------------------------------------------------------------------------------------------
# 2: an --out that holds a run is not silently overwritten


def test_rerun_into_a_run_needs_resume_or_overwrite(tmp_path, capsys, fails, train_cli):
    out = tmp_path / "run"
    assert train_cli(["--method", "sample-level", "--epochs", "2", "--out", str(out)]) == 0
    last = (out / "last.pt").read_bytes()
    err = fails(train_cli, ["--method", "sample-level", "--epochs", "1", "--out", str(out)])
    assert "already holds a run" in err and "--resume auto" in err and "--overwrite" in err
    assert (out / "last.pt").read_bytes() == last and len(read_metrics(out / "metrics.csv")) == 2

    err = fails(train_cli, ["--epochs", "3", "--resume", "auto", "--overwrite", "--out", str(out)])
    assert "pass only one of them" in err

    (out / "notes.txt").write_text("mine")  # not the run's: --overwrite leaves it
    assert train_cli(["--method", "sample-level", "--epochs", "1", "--overwrite", "--out", str(out)]) == 0
    assert len(read_metrics(out / "metrics.csv")) == 1
    assert sorted(p.name for p in (out / "phi").iterdir()) == ["epoch_000.npz"]  # epoch 1's table is gone
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert (out / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    assert train_cli(["--method", "sample-level", "--epochs", "2", "--resume", "auto", "--out", str(out)]) == 0


def test_overwrite_flag_is_documented(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite start over in an --out that already holds a run" in text  # the help text itself


# ------------------------------------------------------------------------------------------------------
# 3, 6, 7: option values checked up front


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "inf"], "lr expects a finite number"),
        (["--lr", "nan"], "lr expects a finite number"),
        (["--weight-decay", "inf"], "weight_decay expects a finite number"),
        (["--momentum=-inf"], "momentum expects a finite number"),
        (["--syn-strength", "1,inf"], "syn_strength expects a finite number"),
        (["--threads", "100000"], "threads = 100000 must be in [0,"),
        (["--threads", "20000"], "at most 4 x the"),
        (["--workers", "100000"], "workers = 100000 must be in [0,"),
        (["--workers", "20000"], "at most 4 x the"),
        (["--workers", "-1"], "workers = -1 must be in [0,"),
        (["--device", "tpu"], "'tpu' is not a device"),
        (["--device", ""], "'' is not a device"),
        (["--device", "meta"], "'meta' is not a device"),
        (["--device", "cuda:abc"], "'cuda:abc' is not a device"),
        (["--seed", "99999999999999999999999"], "must be in [0, 2^63 - 1]"),
        (["--seed", "-1"], "must be in [0, 2^63 - 1]"),
        (["--syn-seed", str(2**64)], "syn_seed = 18446744073709551616 must be in"),
    ],
)
def test_bad_option_values_are_rejected_up_front(args, message, tmp_path, fails, train_cli):
    err = fails(train_cli, [*args, "--out", str(tmp_path / "o")], code=2)
    assert message in err
    assert not (tmp_path / "o").exists()


def test_largest_seeds_run(tmp_path, train_cli):
    big = str(2**63 - 1)
    assert (
        train_cli(
            ["--epochs", "1", "--seed", big, "--syn-seed", big, "--split-seed", big, "--out", str(tmp_path / "o")]
        )
        == 0
    )


@no_cuda
@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cuda"], "no CUDA device is available"),
        (["--device", "cuda:1"], "no CUDA device is available"),
        (["--backend", "cuda"], "backend 'cuda' cannot run"),
    ],
)
def test_no_gpu_is_an_error_line(args, message, tmp_path, fails, train_cli):
    err = fails(train_cli, ["--epochs", "1", "--method", "sample-level", *args, "--out", str(tmp_path / "o")])
    assert message in err


def test_out_that_is_a_file(tmp_path, fails, train_cli):
    (tmp_path / "f").write_text("x")
    err = fails(train_cli, ["--epochs", "1", "--out", str(tmp_path / "f")])
    assert str(tmp_path / "f") in err and "is a file, not a directory" in err
    err = fails(train_cli, ["--epochs", "1", "--out", str(tmp_path / "f" / "sub")])
    assert str(tmp_path / "f" / "sub") in err and "cannot create the directory" in err


def test_binary_config_file(tmp_path, fails, train_cli):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81 not text")
    err = fails(train_cli, ["--config", str(path), "--out", str(tmp_path / "o")], code=2)
    assert str(path) in err and "is not UTF-8 text" in err


def test_gb_holdout_that_leaves_nothing_to_train(tmp_path, fails, train_cli):
    err = fails(train_cli, ["--method", "g-blending", "--gb-holdout", "0.99", "--out", str(tmp_path / "o")])
    assert "--gb-holdout 0.99 holds out all" in err


@pytest.mark.parametrize("args", [["--syn-classes", str(10**14)], ["--head", "mlp", "--head-hidden", str(10**14)]])
def test_allocation_failure_is_an_error_line(args, tmp_path, fails, train_cli):
    # 10^14 rows: petabytes, more than any address space, so the allocation fails at once everywhere.
    err = fails(train_cli, ["--epochs", "1", *args, "--out", str(tmp_path / "o")])
    assert "error: out of memory" in err and "lower the sizes" in err


def test_diverged_run_stops_at_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path, fails, train_cli):
    out = tmp_path / "o"
    # lr 1e30: epoch 0's one step leaves huge finite weights, epoch 1's step makes them NaN.
    err = fails(
        train_cli,
        ["--epochs", "3", "--optimizer", "sgd", "--lr", "1e30", "--valuation", "none", "--out", str(out)],
    )
    assert err.count("\n") == 1
    assert "epoch 1: the model diverged" in err and "NaN or Inf" in err
    assert str(out / "last.pt") in err and "(after epoch 0) is kept" in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert len(read_metrics(out / "metrics.csv")) == 1


def test_diverged_valuation_names_the_epoch(tmp_path, fails, train_cli):
    # The huge weights of epoch 0 overflow the features the valuation sees: fastshap's deferred checks.
    err = fails(
        train_cli,
        [
            "--epochs",
            "2",
            "--method",
            "sample-level",
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert err.count("\n") == 1
    assert "epoch 0: the model diverged" in err and "value checks failed" in err
    assert "NaN or Inf" in err and "no checkpoint was written" in err


# ------------------------------------------------------------------------------------------------------
# 4: fastshap_train.preprocess


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "0"], "--frames: must be > 0"),
        (["--frames", "-5"], "--frames: must be > 0"),
        (["--jobs", "0"], "--jobs: must be > 0"),
        (["--jobs", "-1"], "--jobs: must be > 0"),
        (["--jobs", str(4 * (os.cpu_count() or 1) + 1)], "--jobs: must be at most"),
        (["--frames", str(2**20 + 1)], "--frames: must be at most 1048576"),
    ],
)
def test_preprocess_counts_must_be_positive(args, message, tmp_path, fails):
    import numpy as np
    from scipy.io import wavfile

    wav = tmp_path / "x.wav"  # a real input: only the option is wrong
    wavfile.write(wav, 16000, (np.sin(np.arange(16000) / 10) * 8000).astype(np.int16))
    err = fails(preprocess_main, ["logmel", str(wav), "--out", str(tmp_path / "d"), *args], code=2)
    assert message in err
    assert not (tmp_path / "d").exists()


def test_preprocess_out_that_is_a_file(tmp_path, fails):
    (tmp_path / "f").write_text("x")
    err = fails(preprocess_main, ["logmel", str(tmp_path / "x.wav"), "--out", str(tmp_path / "f")], code=2)
    assert "is a file, not a directory" in err
    err = fails(preprocess_main, ["logmel", str(tmp_path / "x.wav"), "--out", str(tmp_path / "f" / "d")], code=2)
    assert "cannot create the directory" in err


# ------------------------------------------------------------------------------------------------------
# 5: config files: a misspelt method section, the encoders mapping


def test_unknown_method_section_in_a_config_file(tmp_path, fails, train_cli):
    path = tmp_path / "c.yaml"
    path.write_text("methods:\n  sample-levle: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"unknown method 'sample-levle'.*did you mean sample-level\?"):
        resolve_config({"dataset": "synthetic"}, [path])
    err = fails(train_cli, ["--config", str(path), "--out", str(tmp_path / "o")], code=2)
    assert "unknown method 'sample-levle'" in err


@pytest.mark.parametrize(
    "encoders, code, message",
    [
        ("{view0: {kind: mlp, bogus: 1}}", 2, "unknown key 'bogus' for kind 'mlp'"),
        ("{view0: {kind: nope}}", 2, "unknown encoder kind 'nope'"),
        ("{view0: 3}", 2, "must be an encoder kind or a mapping"),
        ("{view0: {hidden: -3}}", 2, "encoders.view0.hidden = -3 must be"),
        ("{view0: {dropout: 1.5}}", 2, "encoders.view0.dropout = 1.5 must be"),
        ("{view7: mlp}", 1, "unknown modality 'view7'"),
        ("{view0: {channels: 2}}", 1, "unknown key 'channels' for kind 'mlp'"),
    ],
)
def test_bad_encoders_mapping(encoders, code, message, tmp_path, fails, train_cli):
    path = tmp_path / "c.yaml"
    path.write_text(f"encoders: {encoders}\n")
    err = fails(train_cli, ["--epochs", "1", "--config", str(path), "--out", str(tmp_path / "o")], code=code)
    assert message in err


def test_missing_dataset_configs_are_an_error_not_other_defaults(monkeypatch, tmp_path):
    # An install that left out fastshap_train/configs would otherwise train uci-mfeat with the generic defaults.
    import fastshap_train.config as config

    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path / "configs")
    with pytest.raises(ConfigError, match="the trainer's dataset configs are missing"):
        resolve_config({"dataset": "uci-mfeat"}, [])


def test_good_encoders_mapping_applies(tmp_path):
    from fastshap_train.engine import Trainer
    from fastshap_train.testing import tiny_config

    t = Trainer(tiny_config(tmp_path, encoders={"view0": {"hidden": 8, "out_dim": 4}, "view1": "mlp"}))
    assert t.core.encoders["view0"].out_dim == 4 and t.core.encoders["view0"].net[0].out_features == 8
    t.close()


# ------------------------------------------------------------------------------------------------------
# 8: resuming on other data


def test_resume_on_other_data_is_refused(tmp_path, fails, train_cli):
    out = tmp_path / "run"
    assert train_cli(["--epochs", "1", "--method", "sample-level", "--out", str(out)]) == 0
    for samples in ("16", "64"):
        err = fails(
            train_cli,
            [
                "--epochs",
                "2",
                "--method",
                "sample-level",
                "--syn-samples",
                samples,
                "--resume",
                "auto",
                "--out",
                str(out),
            ],
        )
        assert "was trained on other data" in err
        assert f"syn_samples 32 in the checkpoint, {samples} here" in err  # the difference, named
        assert f"train samples 32 in the checkpoint, {samples} here" in err
    err = fails(train_cli, ["--epochs", "2", "--dataset", "uci-mfeat", "--resume", "auto", "--out", str(out)])
    assert "dataset synthetic in the checkpoint, uci-mfeat here" in err
    # a checkpoint written before the data identity was saved: its config still tells
    state = torch.load(out / "last.pt", weights_only=True)
    del state["data"]
    torch.save(state, out / "last.pt")
    err = fails(train_cli, ["--epochs", "2", "--syn-samples", "16", "--resume", "auto", "--out", str(out)])
    assert "syn_samples 32 in the checkpoint, 16 here" in err


# ------------------------------------------------------------------------------------------------------
# 10, 11: the help says where defaults come from; no reference to a document that is not shipped


def test_help_defaults_say_when_the_dataset_config_sets_them():
    from fastshap_train.config import dataset_config_keys

    helps = {a.dest: " ".join(a.help.split()) for a in build_parser()._actions if a.help}
    per_dataset = dataset_config_keys()
    assert {"epochs", "optimizer", "lr", "batch_size"} <= per_dataset
    for name, opt in options().items():
        if not opt.cli:
            continue
        if name in per_dataset:
            assert "(default: the dataset's config, else " in helps[name], name
        else:
            assert "the dataset's config" not in helps[name], name
    assert helps["epochs"].endswith("(default: the dataset's config, else 60)")
    assert helps["optimizer"].endswith("(default: the dataset's config, else sgd)")
    assert helps["seed"].endswith("(default: 0)")
    # what the help claims is what a run gets: uci-mfeat (the default dataset) sets 30 epochs and Adam
    cfg = resolve_config({})
    assert (cfg.dataset, cfg.epochs, cfg.optimizer) == ("uci-mfeat", 30, "adam")


def test_no_reference_to_the_unshipped_spec():
    root = Path(__file__).resolve().parents[2] / "fastshap_train"
    hits = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*"))
        if p.suffix in (".py", ".yaml")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "SPEC" in line
    ]
    assert not hits, hits


# ------------------------------------------------------------------------------------------------------
# 12: --views for a dataset that has none is refused by python -m fastshap_train as by fastshap_train.compare


def test_views_for_a_dataset_without_views(tmp_path, fails, train_cli):
    err = fails(train_cli, ["--views", "fou,mor", "--out", str(tmp_path / "o")], code=2)
    assert [line for line in err.splitlines() if "error:" in line] == [err.splitlines()[-1]]  # one error line
    assert "dataset synthetic has no views" in err and "command line" in err  # what and where
    assert not (tmp_path / "o").exists()
    path = tmp_path / "c.yaml"  # where the views come from is named
    path.write_text("views: [fou]\n")
    with pytest.raises(ConfigError) as exc:
        resolve_config({"dataset": "synthetic"}, [path])
    assert str(path) in str(exc.value) and "has no views" in str(exc.value)
    assert resolve_config({"dataset": "uci-mfeat", "views": "fou"}).views == ["fou"]  # multi-view: accepted


# ------------------------------------------------------------------------------------------------------
# 13: --fs module:function is resolved with the configuration, before the run starts


@pytest.mark.parametrize(
    "fs, message",
    [
        ("no_such_fs_module:f", "no module named 'no_such_fs_module'"),
        ("no_such_fs_module.sub:f", "no module named 'no_such_fs_module'"),
        ("os:no_such_function", "has no function 'no_such_function'"),
        ("os:sep", "is not callable"),
        ("fs_raises:f", "RuntimeError: boom"),
        ("fs_needs_dep:f", "No module named 'no_such_dependency'"),
    ],
)
def test_bad_fs_callable_is_rejected_up_front(fs, message, tmp_path, monkeypatch, fails, train_cli):
    (tmp_path / "fs_raises.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "fs_needs_dep.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = fails(train_cli, ["--method", "sample-level", "--fs", fs, "--out", str(tmp_path / "o")], code=2)
    assert message in err and [line for line in err.splitlines() if "error:" in line] == [err.splitlines()[-1]]
    assert not (tmp_path / "o").exists()  # nothing ran


def test_good_fs_callable_runs(tmp_path, monkeypatch, train_cli):
    (tmp_path / "my_fs.py").write_text("def f(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (
        train_cli(
            [
                "--method",
                "sample-level",
                "--fs",
                "my_fs:f",
                "--warmup",
                "0",
                "--epochs",
                "2",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert read_metrics(tmp_path / "o" / "metrics.csv")[1]["resampled"] > 0


# ------------------------------------------------------------------------------------------------------
# 14: compare's --seeds is bounded


@pytest.mark.parametrize("seeds", ["0", "1001", str(10**12)])
def test_compare_seeds_out_of_range(seeds, tmp_path, fails):
    out = tmp_path / "cmp"
    err = fails(
        compare_main,
        ["--dataset", "synthetic", "--methods", "concat", "--seeds", seeds, "--out", str(out)],
        code=2,
    )
    assert "--seeds must be in [1, 1000]" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------
# 15: summaries, results.json and plots name uci-mfeat's views as the user does (fou, mor), not view0, view5


def test_run_summary_uses_the_view_names(tmp_path, capsys, monkeypatch):
    import json

    import fastshap_train.plots as plots

    out = tmp_path / "o"
    assert (
        main(
            [
                "--dataset",
                "uci-mfeat",
                "--views",
                "fou,mor",
                "--epochs",
                "1",
                "--threads",
                "1",
                "--no-progress",
                "--no-tensorboard",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    phi_line = next(line for line in text.splitlines() if line.startswith("final mean phi: "))
    assert phi_line.startswith("final mean phi: fou +") and ", mor +" in phi_line and "view" not in phi_line
    results = json.loads((out / "results.json").read_text())
    # the modality keys stay (phi tables, checkpoints, encoders: use them); names map them
    assert results["modalities"] == ["view0", "view5"] and set(results["final_phi_mean"]) == {"view0", "view5"}
    assert results["modality_names"] == {"view0": "fou", "view5": "mor"}
    row = read_metrics(out / "metrics.csv")[0]  # metrics.csv names them as the summary does
    assert row["phi_mean_fou"] == results["final_phi_mean"]["view0"] and "phi_mean_view0" not in row
    seen = {}
    monkeypatch.setattr(plots, "run_plots", lambda *args: seen.setdefault("labels", args[4]) and [])
    plots.main([str(out)])  # a redraw labels the views as the run did
    assert seen["labels"] == {"view0": "fou", "view5": "mor"}


# ------------------------------------------------------------------------------------------------------
# 6: a missing package of the `train` extra is named, with the install command


@pytest.mark.parametrize(
    "command, argv, blocked",
    [
        ("fastshap_train.cli", ["--dataset", "synthetic", "--print-config"], "yaml"),
        ("fastshap_train.preprocess.__main__", ["logmel", "missing.wav", "--out", "OUT"], "scipy"),
        ("fastshap_train.compare", ["--dataset", "nope", "--out", "OUT"], "numpy"),
    ],
)
def test_missing_train_package_is_one_error_line(command, argv, blocked, tmp_path):
    import subprocess
    import sys

    # None in sys.modules makes `import <blocked>` fail as if the package were not installed.
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        f"from {command} import main\nsys.exit(main({[a.replace('OUT', str(tmp_path / 'o')) for a in argv]!r}))"
    )
    if blocked == "numpy":  # torch itself imports numpy when it is there: block it after torch is loaded
        code = "import torch\n" + code
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "the trainer needs the package" in run.stderr and f"(import {blocked!r} failed)" in run.stderr
    assert "pip install" in run.stderr and "fastshap-modality[train]" in run.stderr  # the install command


def test_other_missing_modules_are_not_reworded():
    from fastshap_train.dependencies import reports_missing_packages

    @reports_missing_packages("prog")
    def main():
        import fastshap_no_such_module  # noqa: F401

    with pytest.raises(ModuleNotFoundError, match="fastshap_no_such_module"):
        main()
