"""The loop and its outputs: CLI, config layering, files left in --out, exact resume, clear errors."""

import json
import math

import numpy as np
import pytest
import torch

from training.cli import main
from training.config import ConfigError, resolve_config
from training.engine import Trainer, train
from training.outputs import CheckpointError, read_metrics
from training.testing import QUIET, tiny_config

TIMING = {"train_s", "valuation_s", "epoch_s", "eval_s"}


def cli(*args):
    return main([*args, "--no-progress", "--no-tensorboard", "--threads", "1"])


# ------------------------------------------------------------------------------------------------------
# CLI and configuration


def test_cli_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    assert main(["--dataset", "synthetic", "--method", "sample-level", "--epochs", "2", "--warmup", "1",
                 "--syn-samples", "48", "--syn-test-samples", "16", "--batch-size", "16", "--threads", "1",
                 "--no-progress", "--out", str(out)]) == 0
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("train_loss", "test_acc", "phi_mean_view0", "phi_mean_view1", "resampled", "valuation_s", "epoch_s"):
        assert key in rows[0] and not (isinstance(rows[0][key], float) and math.isnan(rows[0][key]))
    assert rows[0]["resampled"] == 0 and rows[1]["resampled"] > 0
    phi = np.load(out / "phi" / "epoch_001.npz")
    assert phi["phi"].shape == (48, 2) and phi["valued"].all() and list(phi["modalities"]) == ["view0", "view1"]
    assert abs(float(np.mean(phi["phi"][:, 0])) - rows[1]["phi_mean_view0"]) < 1e-6
    for name in ("phi_mean.png", "phi_hist.png", "accuracy.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    results = json.loads((out / "results.json").read_text())
    assert results["final_test_acc"] == rows[-1]["test_acc"]
    assert results["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert results["final_test_f1"] == rows[-1]["test_f1"] and 0.0 <= rows[-1]["test_f1"] <= 1.0
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert not list(out.glob(".*.tmp*")), "temporary checkpoint files left behind"
    cfg = resolve_config({}, [out / "config.yaml"])  # the resolved config runs again as a config file
    assert cfg.method == "sample-level" and cfg.syn_samples == 48


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "bogus"], "unknown method 'bogus'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--epochs", "zero"], "epochs expects an integer"),
        (["--lr", "-1"], "lr = -1.0 must be > 0"),
        (["--valuation", "sometimes"], "invalid choice: 'sometimes'"),
        (["--part-ratio", "1.5"], "part_ratio = 1.5 must be in (0, 1]"),
        (["--fs", "wiggly"], "fs = 'wiggly' must be one of linear, concave, convex"),
        (["--method", "sample-level", "--valuation", "none"], "needs valuation"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_cli_rejects_bad_flags_with_a_clear_message(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "uci-mfeat", "--views", "fou,xyz"], "uci-mfeat: unknown view 'xyz'"),
        (["--dataset", "uci-mfeat", "--views", "fou,fou"], "uci-mfeat: view 'fou' is listed twice"),
    ],
)
def test_cli_rejects_bad_dataset_options_with_a_clear_message(args, message, tmp_path, capsys):
    """Options that only the dataset can judge (checked when it is built) end the run with an error line,
    not a traceback."""
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path), "--epochs", "1"])
    assert exc.value.code == 1
    assert message in capsys.readouterr().err


def test_config_layers_and_bad_yaml(tmp_path):
    good = tmp_path / "a.yaml"
    good.write_text("dataset: synthetic\nepochs: 7\nlr: 0.5\nmethods:\n  sample-level: {lr: 0.25}\n")
    cfg = resolve_config({"epochs": "3"}, [good])
    assert (cfg.epochs, cfg.lr, cfg.source("epochs")) == (3, 0.5, "command line")
    assert cfg.warmup == 1  # from training/configs/synthetic.yaml
    assert resolve_config({"method": "sample-level"}, [good]).lr == 0.25  # the methods: section
    typo = tmp_path / "b.yaml"
    typo.write_text("dataset: synthetic\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: unknown option 'learning_rate'"):
        resolve_config({}, [typo])
    broken = tmp_path / "c.yaml"
    broken.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"c\.yaml is not valid YAML"):
        resolve_config({}, [broken])
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config({}, [tmp_path / "missing.yaml"])


def test_help_lists_methods_and_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--method", "--valuation {epoch,online,none}", "--removal {feature,input}", "--part-ratio",
                 "--fs", "--resume", "--views"):
        assert flag in text
    assert main(["--list-methods"]) == 0
    listed = capsys.readouterr().out
    for name in ("concat", "decision-fusion", "sample-level", "modality-level", "fixed-rate-low",
                 "fixed-rate-high", "modality-drop", "data-mask"):
        assert name in listed


# ------------------------------------------------------------------------------------------------------
# exact resume


@pytest.mark.parametrize("valuation", ["epoch", "online"])
def test_resume_equals_an_uninterrupted_run(tmp_path, valuation):
    opts = dict(method="sample-level", valuation=valuation, warmup=1, mlp_dropout=0.2, syn_samples=48,
                syn_augment_noise=0.3)
    train(tiny_config(tmp_path / "a", epochs=4, **opts))
    train(tiny_config(tmp_path / "b", epochs=2, **opts))
    train(tiny_config(tmp_path / "b", epochs=4, resume="auto", **opts))
    a = read_metrics(tmp_path / "a" / "metrics.csv")
    b = read_metrics(tmp_path / "b" / "metrics.csv")
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}
    assert a[2]["resampled"] > 0  # the resumed epochs did re-sample
    for e in range(4):
        pa = np.load(tmp_path / "a" / "phi" / f"epoch_{e:03d}.npz")["phi"]
        pb = np.load(tmp_path / "b" / "phi" / f"epoch_{e:03d}.npz")["phi"]
        assert np.array_equal(pa, pb)
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------------
# errors that name the file


def test_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match=str(bad)):
        Trainer(tiny_config(tmp_path, resume=str(bad)))
    with pytest.raises(SystemExit) as exc:
        cli("--dataset", "synthetic", "--out", str(tmp_path), "--resume", str(bad))
    assert exc.value.code == 1 and str(bad) in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(tiny_config(tmp_path, resume=str(tmp_path / "none.pt")))
    # a readable torch file that is not ours
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a fastshap training checkpoint"):
        Trainer(tiny_config(tmp_path, resume=str(other)))


def _mfeat_root(tmp_path, views=("fou", "mor"), rows=2000):
    from training.data.uci_mfeat import WIDTHS

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), rows // 10)
    for v in views:
        x = rng.normal(size=(rows, WIDTHS[v]))
        table = np.column_stack([x, labels])
        header = ",".join(str(i) for i in range(WIDTHS[v])) + ",0"
        np.savetxt(tmp_path / f"mfeat-{v}.csv", table, delimiter=",", header=header, comments="")
    return tmp_path


def test_missing_or_corrupt_data_file_names_the_file(tmp_path, capsys):
    root = _mfeat_root(tmp_path)
    base = dict(dataset="uci-mfeat", data_root=str(root), out=str(tmp_path / "o"), epochs=1, **QUIET)
    with pytest.raises(OSError, match=r"mfeat-kar\.csv"):
        Trainer(resolve_config({**base, "views": "fou,kar"}))
    with pytest.raises(SystemExit) as exc:
        cli("--dataset", "uci-mfeat", "--data-root", str(root), "--views", "fou,kar", "--out", str(tmp_path / "o"))
    assert exc.value.code == 1 and "mfeat-kar.csv" in capsys.readouterr().err
    (root / "mfeat-mor.csv").write_text("0,1,2\n1,2,oops\n")
    with pytest.raises(OSError, match=r"mfeat-mor\.csv.*cannot be read"):
        Trainer(resolve_config({**base, "views": "fou,mor"}))


def test_checkpoint_files_are_replaced_atomically(tmp_path, monkeypatch):
    import training.outputs as outputs

    t = Trainer(tiny_config(tmp_path, epochs=1))
    t.fit()
    before = (tmp_path / "last.pt").read_bytes()

    def crash(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs.torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        outputs.save_checkpoint(tmp_path / "last.pt", t.state_dict())
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp*"))
    t.close()
