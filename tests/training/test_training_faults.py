"""Trainer faults, each with its fix: a plan whose last batch would hold one row (batch norm), Ctrl-C, a
re-sampling method that never re-samples, progress output without a terminal, metrics.csv column names."""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

import fastshap_train.engine as engine
from fastshap_train.cli import build_parser, main, resume_command
from fastshap_train.config import RunError
from fastshap_train.data.base import Plan, PlanBatches
from fastshap_train.engine import Trainer, train
from fastshap_train.outputs import read_metrics
from fastshap_train.plots import main as plots_main
from fastshap_train.plots import phi_mean_column
from fastshap_train.testing import tiny_config

ROOT = Path(__file__).resolve().parents[2]
TIMING = {"train_s", "valuation_s", "epoch_s", "eval_s"}
# ResNet-18 encoders (batch norm) on 16 x 16 inputs: the layout of the run that died at epoch 26
BATCH_NORM_DATA = dict(syn_modalities="audio,visual", syn_size=16, syn_frames=1, batch_size=16)


# ------------------------------------------------------------------------------------------------------
# a last batch of one row


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 16])
def test_plan_batches_keep_every_row_and_never_end_in_one(batch):
    for rows in range(1, 60):
        sizes = PlanBatches(range(rows), batch).sizes()
        batches = list(PlanBatches(range(rows), batch))
        assert [len(b) for b in batches] == sizes and len(PlanBatches(range(rows), batch)) == len(sizes)
        assert [i for b in batches for i in b] == list(range(rows))  # every row, in the sampler's order
        assert all(size == batch for size in sizes[:-1])  # the others as configured
        if batch > 1 and rows > 1:
            assert sizes[-1] >= 2, (rows, batch, sizes)
        if rows % batch == 1 and rows > 1 and batch > 1:  # k * batch + 1: the tail joined the last batch
            assert sizes[-1] == batch + 1
        elif rows % batch:
            assert sizes[-1] == rows % batch  # any other tail stays as a plain DataLoader makes it


@pytest.mark.parametrize("rows", [33, 34, 35, 65])
def test_plan_batches_agree_across_ddp_ranks(rows):
    # DistributedSampler pads to the same count per rank: every rank merges alike and takes the same steps.
    per_rank = [
        PlanBatches(DistributedSampler(range(rows), num_replicas=2, rank=r, shuffle=True, seed=0), 8).sizes()
        for r in range(2)
    ]
    assert per_rank[0] == per_rank[1] and min(per_rank[0]) >= 2
    seen = {i for r in range(2) for b in PlanBatches(DistributedSampler(range(rows), 2, r, seed=0), 8) for i in b}
    assert seen == set(range(rows))  # no row dropped


def test_a_plan_of_k_batches_and_one_row_trains_batch_norm_encoders(tmp_path, one_thread):
    # 33 = 2 x 16 + 1 originals, then a re-sampled plan of 49 = 3 x 16 + 1 rows: both would end in a
    # one-row batch that batch norm rejects in train mode ("Expected more than 1 value per channel").
    t = Trainer(tiny_config(tmp_path, **BATCH_NORM_DATA, syn_samples=33, epochs=2, method="concat", valuation="none"))
    assert t.has_batch_norm
    assert [len(b["label"]) for b in t.train_loader(t.plan)] == [16, 17]
    t.plan = Plan.originals(torch.arange(33), 2).add_copies(torch.arange(16), 1)
    assert [len(b["label"]) for b in t.train_loader(t.plan)] == [16, 16, 17]
    t.fit()
    t.close()
    assert [row["train_rows"] for row in t.history] == [49, 33] and all(
        math.isfinite(r["train_loss"]) for r in t.history
    )


def test_batch_norm_with_one_row_per_batch_is_an_error_line(tmp_path, train_cli, fails, single_line):
    args = ["--syn-modalities", "audio,vector", "--syn-size", "16", "--batch-size", "1", "--out", str(tmp_path / "o")]
    line = single_line(fails(train_cli, [*args, "--epochs", "1"]))
    assert "batches of one row per process" in line and "batch-norm encoders" in line


# ------------------------------------------------------------------------------------------------------
# Ctrl-C


def _interrupt_at(monkeypatch, epoch):
    original = Trainer.train_epoch

    def train_epoch(self):
        if self.epoch == epoch:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def _kept(row):
    return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items() if k not in TIMING}


def test_ctrl_c_ends_with_the_resume_command_and_the_resumed_run_is_exact(
    tmp_path, monkeypatch, capsys, tiny_argv, single_line
):
    straight, out = tmp_path / "a", tmp_path / "b"
    common = ["--method", "sample-level", "--warmup", "1", "--epochs", "4", "--mlp-dropout", "0.2"]
    assert main([*tiny_argv, *common, "--out", str(straight)]) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 2)
        capsys.readouterr()
        assert main([*tiny_argv, *common, "--overwrite", "--out", str(out)]) == 130
    line = single_line(capsys.readouterr().err)
    assert line.startswith("python -m fastshap_train: interrupted in epoch 2; ")
    assert f"{out / 'last.pt'} holds the first 2 epoch(s)" in line
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2  # the last checkpoint, intact
    command = line.split("resume with: ", 1)[1]
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "fastshap_train"] and words[-2:] == ["--resume", "auto"]
    assert "--overwrite" not in words  # it would refuse to resume
    assert main(words[3:]) == 0  # the command as printed
    a, b = read_metrics(straight / "metrics.csv"), read_metrics(out / "metrics.csv")
    assert [_kept(r) for r in a] == [_kept(r) for r in b]


def test_ctrl_c_before_any_checkpoint_and_without_checkpoints(tmp_path, monkeypatch, capsys, train_cli, single_line):
    _interrupt_at(monkeypatch, 0)
    assert train_cli(["--epochs", "2", "--out", str(tmp_path / "a")]) == 130
    line = single_line(capsys.readouterr().err)
    assert "interrupted in epoch 0; no checkpoint was written yet; resume with: " in line and "--resume auto" in line
    assert train_cli(["--epochs", "2", "--no-checkpoint", "--out", str(tmp_path / "b")]) == 130
    line = single_line(capsys.readouterr().err)
    assert "nothing can be resumed" in line and "--overwrite" in line


def test_the_resume_command_replaces_resume_and_overwrite(tmp_path):
    parser = build_parser()
    out = tmp_path / "run"
    cfg = tiny_config(out)

    def command(*argv):
        return shlex.split(resume_command(cfg, list(argv), parser))[3:]

    # no checkpoint in --out yet: the checkpoint the run resumed from
    assert command("--resume", "/x/last.pt", "--out", str(out)) == ["--out", str(out), "--resume", "/x/last.pt"]
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    assert command("--resume=/x/last.pt", "--overw", "--out", str(out), "--epochs", "9") == [
        "--out",
        str(out),
        "--epochs",
        "9",
        "--resume",
        "auto",
    ]
    assert command("--resu", "auto", "--out", str(out)) == ["--out", str(out), "--resume", "auto"]
    assert command("--config", "my resume.yaml") == ["--config", "my resume.yaml", "--resume", "auto"]


def test_ctrl_c_in_a_real_process(tmp_path):
    # SIGINT to a running `python -m fastshap_train`: exit 130, one line, no traceback, the checkpoint whole.
    out = tmp_path / "o"
    args = [sys.executable, "-m", "fastshap_train", "--dataset", "synthetic", "--syn-samples", "2000"]
    args += ["--epochs", "1000", "--threads", "1", "--no-tensorboard", "--no-plots", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A shell's background job (nohup, `cmd &`) ignores SIGINT, and a Python started so never installs its
    # KeyboardInterrupt handler: give the child the default disposition, as a terminal's process has.
    proc = subprocess.Popen(
        [*args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "last.pt").exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint"
        time.sleep(0.5)  # into the next epoch
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    assert line.startswith("python -m fastshap_train: interrupted in epoch ") and line.endswith("--resume auto")
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] >= 1 and state["epoch"] == len(state["history"])
    assert not list(out.glob(".*.tmp*"))  # no temporary checkpoint left behind by the interrupted write


# ------------------------------------------------------------------------------------------------------
# a re-sampling method that never re-samples; progress without a terminal


def test_no_resampled_epoch_warns_once_and_logs_a_line_per_epoch(tmp_path):
    # no terminal (pipes): no progress bars, one line per epoch on stdout, the warning as one line on stderr
    args = [sys.executable, "-m", "fastshap_train", "--dataset", "synthetic", "--syn-samples", "32"]
    args += ["--method", "sample-level", "--epochs", "2", "--warmup", "2", "--threads", "1", "--device", "cpu"]
    args += ["--no-tensorboard", "--no-plots", "--out", str(tmp_path / "o")]
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    (warning,) = [line for line in run.stderr.splitlines() if line.strip()]
    assert warning.startswith("python -m fastshap_train: warning: sample-level never re-samples in 2 epoch(s)")
    assert "first re-sampled epoch is epoch 2 (--warmup 2)" in warning
    lines = [line for line in run.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 0/1", "epoch 1/1"]
    assert "train loss" in lines[0] and "test acc" in lines[0] and "mean phi view0 " in lines[0]


@pytest.mark.parametrize("epochs, warmup, warns", [(3, 3, True), (1, 0, True), (4, 3, False), (2, 0, False)])
def test_the_warning_says_when_no_epoch_is_resampled(tmp_path, epochs, warmup, warns):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        t = Trainer(tiny_config(tmp_path, method="modality-level", epochs=epochs, warmup=warmup))
        t.close()
    assert any("never re-samples" in str(w.message) for w in seen) == warns


def test_progress_bars_on_a_terminal_and_lines_elsewhere(tmp_path, monkeypatch, capsys, tiny_argv):
    progress = [a for a in tiny_argv if a != "--no-progress"]
    assert main([*progress, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert len([line for line in captured.out.splitlines() if line.startswith("epoch ")]) == 2
    assert "it/s" not in captured.err and "\r" not in captured.err  # no bar
    monkeypatch.setattr(engine, "interactive", lambda: True)  # stderr a terminal: the bars, as before
    assert main([*progress, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert not [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert "epoch 1 train" in captured.err  # tqdm's bar of epoch 1
    assert main([*tiny_argv, "--epochs", "1", "--out", str(tmp_path / "c")]) == 0  # --no-progress: neither
    captured = capsys.readouterr()
    assert not [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert "epoch 0 train" not in captured.err


# ------------------------------------------------------------------------------------------------------
# metrics.csv names the modalities as the summary does


def test_metrics_columns_use_the_modality_names(tmp_path, mfeat_root):
    (tmp_path / "data").mkdir()
    root = mfeat_root(tmp_path / "data", views=("fou", "mor", "kar"))
    cfg = tiny_config(
        tmp_path / "o",
        dataset="uci-mfeat",
        data_root=str(root),
        views="fou,mor,kar",
        method="modality-level",
        warmup=0,
        part_ratio=1.0,
        batch_size=64,
    )
    results = train(cfg)
    rows = read_metrics(tmp_path / "o" / "metrics.csv")
    names = ["fou", "mor", "kar"]
    assert [k for k in rows[0] if k.startswith("phi_mean_")] == [f"phi_mean_{n}" for n in names]
    means = [rows[0][f"phi_mean_{n}"] for n in names]
    # the weak modality is the first of the lowest mean phi (argmin's first index among ties), by name
    assert rows[0]["weak_modality"] == names[means.index(min(means))]
    assert results["final_phi_mean"]["view0"] == rows[-1]["phi_mean_fou"]


def test_plots_read_new_and_old_metrics_files(tmp_path, capsys):
    for layout, columns in (("new", ("fou", "mor")), ("old", ("view0", "view5"))):
        out = tmp_path / layout
        out.mkdir()
        header = "epoch,train_acc,test_acc," + ",".join(f"phi_mean_{c}" for c in columns)
        (out / "metrics.csv").write_text(f"{header}\n0,0.5,0.5,0.4,0.6\n1,0.6,0.6,0.3,0.7\n")
        results = {"modalities": ["view0", "view5"], "modality_names": {"view0": "fou", "view5": "mor"}}
        (out / "results.json").write_text(json.dumps(results))
        history = read_metrics(out / "metrics.csv")
        assert phi_mean_column(history, "view0", results["modality_names"]) == f"phi_mean_{columns[0]}"
        plots_main([str(out)])
        assert (out / "plots" / "phi_mean.png").stat().st_size > 1000, layout


def test_a_batch_norm_error_is_a_run_error_in_the_api(tmp_path, one_thread):
    with pytest.raises(RunError, match="batches of one row"):
        train(tiny_config(tmp_path, **{**BATCH_NORM_DATA, "batch_size": 1}, syn_samples=4, epochs=1, valuation="none"))
