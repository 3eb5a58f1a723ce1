"""The loop and its outputs: CLI, config layering, files left in --out, exact resume, clear errors."""

import json
import math

import numpy as np
import pytest
import torch

from fastshap_train.cli import main
from fastshap_train.config import ConfigError, RunError, resolve_config
from fastshap_train.engine import Trainer, train
from fastshap_train.outputs import CheckpointError, read_metrics
from fastshap_train.testing import QUIET, tiny_config

TIMING = {"train_s", "valuation_s", "epoch_s", "eval_s"}


def cli(*args):
    return main([*args, "--no-progress", "--no-tensorboard", "--threads", "1"])


# ------------------------------------------------------------------------------------------------------
# CLI and configuration


def test_cli_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "--dataset",
                "synthetic",
                "--method",
                "sample-level",
                "--epochs",
                "2",
                "--warmup",
                "1",
                "--syn-samples",
                "48",
                "--syn-test-samples",
                "16",
                "--batch-size",
                "16",
                "--threads",
                "1",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
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
    # best: picked on the validation split (synthetic has one), never the test split
    best = max(range(len(rows)), key=lambda e: (rows[e]["val_acc"], -e))
    assert results["selection"] == "val" and results["best_epoch"] == best
    assert results["best_val_acc"] == rows[best]["val_acc"] and results["test_acc_at_best"] == rows[best]["test_acc"]
    assert results["final_test_f1"] == rows[-1]["test_f1"] and 0.0 <= rows[-1]["test_f1"] <= 1.0
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert torch.load(out / "best.pt", weights_only=True)["best"]["epoch"] == best
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
    assert cfg.warmup == 1  # from fastshap_train/configs/synthetic.yaml
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
    for flag in (
        "--method",
        "--valuation {epoch,online,none}",
        "--removal {feature,input}",
        "--part-ratio",
        "--fs",
        "--resume",
        "--views",
    ):
        assert flag in text
    assert main(["--list-methods"]) == 0
    listed = capsys.readouterr().out
    for name in (
        "concat",
        "decision-fusion",
        "sample-level",
        "modality-level",
        "fixed-rate-low",
        "fixed-rate-high",
        "modality-drop",
        "data-mask",
    ):
        assert name in listed


# ------------------------------------------------------------------------------------------------------
# exact resume


# Dropout and augmentation noise draw from the global RNG, so a resume that restored it wrongly would show.
RESUME_OPTS = dict(method="sample-level", warmup=1, mlp_dropout=0.2, syn_samples=48, syn_augment_noise=0.3)


def assert_same_run(a, b, epochs, skip_test_row=()):
    """Runs in folders a and b: equal metrics.csv (timings aside; the test columns of `skip_test_row`'s
    epochs aside), every phi table, and the models and bests of last.pt and best.pt."""
    ma, mb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert len(ma) == len(mb) == epochs
    for e, (ra, rb) in enumerate(zip(ma, mb)):
        skip = TIMING | (
            {f"{s}_{m}" for s in ("test", "val") for m in ("loss", "acc", "f1")} if e in skip_test_row else set()
        )

        def kept(row):  # NaN (an epoch without a test pass) compares equal to NaN here
            return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items() if k not in skip}

        assert kept(ra) == kept(rb), e
    for e in range(epochs):
        pa = np.load(a / "phi" / f"epoch_{e:03d}.npz")["phi"]
        pb = np.load(b / "phi" / f"epoch_{e:03d}.npz")["phi"]
        assert np.array_equal(pa, pb, equal_nan=True), e
    for name in ("last.pt", "best.pt"):
        sa, sb = (torch.load(d / name, weights_only=True) for d in (a, b))
        assert sa["epoch"] == sb["epoch"] and sa["best"] == sb["best"], name
        assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"]), name
    assert not list(b.glob(".*.tmp*")) and not list(b.glob("phi/.*.tmp*"))


@pytest.mark.parametrize("valuation", ["epoch", "online"])
def test_resume_equals_an_uninterrupted_run(tmp_path, valuation):
    opts = dict(RESUME_OPTS, valuation=valuation)
    train(tiny_config(tmp_path / "a", epochs=4, **opts))
    train(tiny_config(tmp_path / "b", epochs=2, **opts))
    train(tiny_config(tmp_path / "b", epochs=4, resume="auto", **opts))
    assert_same_run(tmp_path / "a", tmp_path / "b", 4)
    assert read_metrics(tmp_path / "a" / "metrics.csv")[2]["resampled"] > 0  # the resumed epochs re-sampled


def test_resume_after_a_test_pass_the_straight_run_skipped(tmp_path):
    # --eval-every 2: the short run tests after its last epoch (0), the straight one does not. That test
    # pass must not move the RNG the checkpoint saves (a DataLoader draws a seed from it unless given a
    # generator), or the resumed epochs' dropout and noise would differ.
    opts = dict(RESUME_OPTS, eval_every=2)
    train(tiny_config(tmp_path / "a", epochs=4, **opts))
    train(tiny_config(tmp_path / "b", epochs=1, **opts))
    assert not math.isnan(read_metrics(tmp_path / "b" / "metrics.csv")[0]["test_acc"])
    train(tiny_config(tmp_path / "b", epochs=4, resume="auto", **opts))
    assert_same_run(tmp_path / "a", tmp_path / "b", 4, skip_test_row=(0,))


def _run_selecting(out, **opts):
    results = train(tiny_config(out, epochs=3, **opts))
    return results, read_metrics(out / "metrics.csv")


def test_best_epoch_is_chosen_on_the_validation_split_never_the_test_split(tmp_path, monkeypatch):
    from fastshap_train.engine import Trainer as T

    # Make the two splits disagree: the validation accuracy falls epoch by epoch, the test accuracy rises.
    def evaluate(self, dataset=None, split="test"):
        acc = {"val": 0.9 - 0.1 * self.epoch, "test": 0.5 + 0.1 * self.epoch}[split]
        return {f"{split}_loss": 1.0, f"{split}_acc": acc, f"{split}_f1": acc}

    monkeypatch.setattr(T, "evaluate", evaluate)
    results, rows = _run_selecting(tmp_path / "a")
    assert [r["val_acc"] for r in rows] == pytest.approx([0.9, 0.8, 0.7])
    assert results["best_epoch"] == 0 and results["test_acc_at_best"] == pytest.approx(0.5)
    assert results["final_test_acc"] == pytest.approx(0.7)
    assert torch.load(tmp_path / "a" / "best.pt", weights_only=True)["epoch"] == 1  # saved after epoch 0


def test_without_a_validation_split_there_is_no_model_selection(tmp_path, mfeat_root):
    (tmp_path / "data").mkdir()
    root = mfeat_root(tmp_path / "data")
    base = dict(dataset="uci-mfeat", data_root=str(root), views="fou,mor", epochs=2, **QUIET)
    results = train(resolve_config({**base, "out": str(tmp_path / "none")}))
    assert results["selection"] == "none" and results["best_epoch"] == -1 and results["test_acc_at_best"] is None
    assert (tmp_path / "none" / "last.pt").exists() and not (tmp_path / "none" / "best.pt").exists()
    assert "val_acc" not in read_metrics(tmp_path / "none" / "metrics.csv")[0]
    with pytest.raises(RunError, match="has no validation split"):
        Trainer(resolve_config({**base, "out": str(tmp_path / "v"), "select": "val"}))
    # --val-ratio carves a stratified validation split out of the training split; the test split stays
    results = train(resolve_config({**base, "out": str(tmp_path / "r"), "val_ratio": 0.25}))
    assert results["selection"] == "val" and results["best_epoch"] >= 0
    from fastshap_train.data import build_dataset

    opts = dict(views=["fou", "mor"], val_ratio=0.25)
    train_rows, val_rows, test_rows = (
        build_dataset("uci-mfeat", str(root), s, **opts).source_rows for s in ("train", "val", "test")
    )
    plain_test = build_dataset("uci-mfeat", str(root), "test", views=["fou", "mor"]).source_rows
    assert torch.equal(test_rows, plain_test)
    assert len(set(train_rows.tolist()) | set(val_rows.tolist()) | set(test_rows.tolist())) == 2000
    assert len(val_rows) == 400 and not set(val_rows.tolist()) & set(train_rows.tolist())


def test_a_checkpoint_that_chose_its_best_on_the_test_split_keeps_no_best(tmp_path):
    train(tiny_config(tmp_path, epochs=1))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["best"] = {"test_acc": 0.99, "epoch": 0}  # the format before validation-based selection
    torch.save(state, tmp_path / "last.pt")
    with pytest.warns(UserWarning, match="chosen on the test split .* renamed to best-by-test.pt"):
        t = Trainer(tiny_config(tmp_path, epochs=2, resume="auto"))
    assert t.best["epoch"] == -1
    assert (tmp_path / "best-by-test.pt").exists() and not (tmp_path / "best.pt").exists()
    t.close()


def _falling_validation(monkeypatch):
    """Validation accuracy falls epoch by epoch while the test accuracy rises: the splits disagree."""

    def evaluate(self, dataset=None, split="test"):
        acc = {"val": 0.9 - 0.1 * self.epoch, "test": 0.5 + 0.1 * self.epoch}[split]
        return {f"{split}_loss": 1.0, f"{split}_acc": acc, f"{split}_f1": acc}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_a_resumed_run_picks_the_best_epoch_of_the_uninterrupted_run(tmp_path, monkeypatch):
    # --eval-every 2: the short run also evaluates after its last epoch (0), which the uninterrupted run
    # does not; that extra evaluation must not compete for the best epoch.
    _falling_validation(monkeypatch)
    a = train(tiny_config(tmp_path / "a", epochs=4, eval_every=2))
    train(tiny_config(tmp_path / "b", epochs=1, eval_every=2))
    b = train(tiny_config(tmp_path / "b", epochs=4, eval_every=2, resume="auto"))
    assert a["best_epoch"] == b["best_epoch"] == 1
    assert a["test_acc_at_best"] == b["test_acc_at_best"] == pytest.approx(0.6)


def test_resuming_without_selection_reports_no_best(tmp_path):
    train(tiny_config(tmp_path, epochs=1))
    results = train(tiny_config(tmp_path, epochs=2, resume="auto", select="none"))
    assert results["selection"] == "none" and results["best_epoch"] == -1 and results["best_val_acc"] is None


def test_resuming_into_another_out_brings_the_matching_best_checkpoint(tmp_path, monkeypatch):
    _falling_validation(monkeypatch)  # epoch 0 stays the best
    train(tiny_config(tmp_path / "a", epochs=2))
    results = train(tiny_config(tmp_path / "b", epochs=3, resume=str(tmp_path / "a" / "last.pt")))
    assert results["best_epoch"] == 0
    assert (tmp_path / "b" / "best.pt").read_bytes() == (tmp_path / "a" / "best.pt").read_bytes()


@pytest.mark.parametrize(
    "ratios, message",
    [
        (dict(val_ratio=0.001), "leaves the validation split empty"),
        (dict(val_ratio=0.99, test_ratio=0.9), "without training rows"),
    ],
)
def test_split_ratios_that_empty_a_split_are_refused(tmp_path, ratios, message, mfeat_root):
    from fastshap_train.data.base import DataOptionError

    (tmp_path / "data").mkdir()
    root = mfeat_root(tmp_path / "data")
    with pytest.raises(DataOptionError, match=message):
        Trainer(
            resolve_config(
                dict(
                    dataset="uci-mfeat",
                    data_root=str(root),
                    views="fou,mor",
                    out=str(tmp_path / "o"),
                    **ratios,
                    **QUIET,
                )
            )
        )


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so nothing catches it)."""


def _kill_at(monkeypatch, target, name, when):
    """Make `target.name` raise Killed on the call where when(*args) is true, instead of running."""
    original = getattr(target, name)

    def call(*args, **kwargs):
        if when(*args):
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, call)


def _epoch_of(state) -> int:
    return state["epoch"] - 1  # a checkpoint's "epoch" is the next one to train


@pytest.mark.parametrize("kill", ["before last.pt, epoch 0", "after last.pt, epoch 1", "between last.pt and best.pt"])
def test_a_run_killed_while_writing_resumes_to_the_same_outputs(tmp_path, monkeypatch, kill):
    import fastshap_train.engine as engine
    from fastshap_train.outputs import RunOutputs

    train(tiny_config(tmp_path / "a", epochs=4, **RESUME_OPTS))
    best_epoch = json.loads((tmp_path / "a" / "results.json").read_text())["best_epoch"]
    assert best_epoch >= 1  # so that "between last.pt and best.pt" happens after epoch 0
    with monkeypatch.context() as m:
        if kill == "before last.pt, epoch 0":  # leaves config.yaml only
            _kill_at(m, engine, "save_checkpoint", lambda path, state: path.name == "last.pt")
        elif kill == "after last.pt, epoch 1":  # epoch 1's metrics row, phi table (and TB) not written
            _kill_at(m, RunOutputs, "write_metrics", lambda self, history: len(history) == 2)
        else:
            _kill_at(
                m,
                engine,
                "save_checkpoint",
                lambda path, state: path.name == "best.pt" and _epoch_of(state) == best_epoch,
            )
        with pytest.raises(Killed):
            train(tiny_config(tmp_path / "b", epochs=4, **RESUME_OPTS))
    if kill == "before last.pt, epoch 0":
        assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.yaml"]
        with pytest.warns(UserWarning, match="no checkpoint in .* yet, starting a new run"):
            train(tiny_config(tmp_path / "b", epochs=4, resume="auto", **RESUME_OPTS))
    else:
        train(tiny_config(tmp_path / "b", epochs=4, resume="auto", **RESUME_OPTS))
    assert_same_run(tmp_path / "a", tmp_path / "b", 4)


def test_resume_auto_without_a_checkpoint_keeps_a_finished_run(tmp_path):
    train(tiny_config(tmp_path, epochs=1, checkpoint=False))
    with pytest.raises(RunError, match="holds a run .* but no checkpoint to resume from"):
        Trainer(tiny_config(tmp_path, epochs=2, resume="auto"))
    assert (tmp_path / "metrics.csv").exists()


def test_leftover_temporary_files_are_removed_on_resume(tmp_path):
    train(tiny_config(tmp_path, epochs=1))
    for name in (".last.pt.tmp123", ".best.pt.tmp45", "phi/.epoch_000.npz.tmp6"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "notes.tmp1").write_text("the user's")
    train(tiny_config(tmp_path, epochs=2, resume="auto"))
    assert not list(tmp_path.glob(".*.tmp*")) and not list(tmp_path.glob("phi/.*.tmp*"))
    assert (tmp_path / "notes.tmp1").exists()


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


def test_missing_or_corrupt_data_file_names_the_file(tmp_path, capsys, mfeat_root):
    root = mfeat_root(tmp_path)
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
    import fastshap_train.outputs as outputs

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
