"""``python -m fastshap_train.report`` and ``fastshap_train.load_run`` on tiny runs (a couple of epochs).

The report's numbers are checked against what the run's own model computes (its forward on each
coalition, written out here), not against the report's code; the synthetic dataset's ground-truth share
against its `informative` attribute.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import fastshap
import fastshap_train
from fastshap_train.engine import train
from fastshap_train.outputs import CheckpointError
from fastshap_train.report import load_run, main
from fastshap_train.testing import tiny_config


def _read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """Three vector modalities, modality 0 the informative one for most samples; 3 epochs."""
    out = tmp_path_factory.mktemp("synthetic") / "run"
    cfg = tiny_config(
        out,
        epochs=3,
        syn_samples=192,
        syn_test_samples=96,
        syn_modalities=["vector", "vector", "vector"],
        syn_strength=[2.0, 1.5, 1.0],
        syn_dominance=[0.6, 0.3, 0.1],
    )
    train(cfg)
    return out


def _mfeat_root(path, rows=2000):
    """A small copy of the UCI multiple-features layout (mfeat-<view>.csv: a header of column numbers, one
    sample per row, the label last) whose views carry the class with noise, the Fourier view more."""
    from fastshap_train.data.uci_mfeat import WIDTHS

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), rows // 10)
    for view, signal in (("fou", 1.5), ("mor", 0.7)):
        prototypes = rng.normal(size=(10, WIDTHS[view]))
        x = signal * prototypes[labels] + rng.normal(size=(rows, WIDTHS[view]))
        header = ",".join(str(i) for i in range(WIDTHS[view])) + ",0"
        np.savetxt(path / f"mfeat-{view}.csv", np.column_stack([x, labels]), delimiter=",", header=header, comments="")
    return path


@pytest.fixture(scope="module")
def mfeat_run(tmp_path_factory):
    root = _mfeat_root(tmp_path_factory.mktemp("mfeat-data"))
    out = tmp_path_factory.mktemp("mfeat") / "run"
    cfg = tiny_config(out, dataset="uci-mfeat", data_root=str(root), views=["fou", "mor"], epochs=2, batch_size=32)
    train(cfg)
    return out


def _coalition_predictions(run, features):
    """(B, 2^n) predicted class of every coalition, from the run's head forward on zeroed features."""
    n = len(features)
    out = []
    with torch.no_grad():
        for mask in range(1 << n):
            kept = [f if (mask >> i) & 1 else torch.zeros_like(f) for i, f in enumerate(features)]
            out.append(run.model.head(kept).argmax(-1))
    return torch.stack(out, 1)


def test_report_of_a_synthetic_run(synthetic_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(synthetic_run), "--out", str(out)]) == 0
    assert "report of 96 samples (test)" in capsys.readouterr().out
    for name in ("report.md", "per_modality.csv", "per_class.csv", "per_sample.csv", "most_reliant.csv",
                 "single_modality_correct.csv", "interactions.csv", "ground_truth.csv", "modalities.png",
                 "classes.png", "interactions.png"):  # fmt: skip
        assert (out / name).is_file(), name
    run = load_run(synthetic_run)
    assert run.checkpoint.name == "best.pt"  # the synthetic run has a validation split
    features, labels, index = run.encode("test")
    phi = fastshap.modality_shapley(features, run.head, labels)
    predictions = _coalition_predictions(run, features)
    rows = _read(out / "per_sample.csv")
    assert len(rows) == 96 and [int(r["sample"]) for r in rows] == index.tolist()
    names = ["view0", "view1", "view2"]
    got = torch.tensor([[float(r[f"phi_{m}"]) for m in names] for r in rows])
    assert torch.equal(got, phi)
    for i, m in enumerate(names):  # the coalition {i}: bit i
        assert [int(r[f"alone_correct_{m}"]) for r in rows] == (predictions[:, 1 << i] == labels).long().tolist()
    assert [int(r["correct"]) for r in rows] == (predictions[:, 7] == labels).long().tolist()

    per_modality = {r["modality"]: r for r in _read(out / "per_modality.csv")}
    for i, m in enumerate(names):
        assert math.isclose(float(per_modality[m]["mean_phi"]), float(phi[:, i].double().mean()), rel_tol=1e-12)
        assert math.isclose(float(per_modality[m]["share_phi_below_1"]), float((phi[:, i] < 1).double().mean()))
        alone = (predictions[:, 1 << i] == labels).double().mean()
        assert math.isclose(float(per_modality[m]["accuracy_alone"]), float(alone))

    # the ground truth: the dataset's informative modality of each test sample
    informative = run.datasets["test"].informative[index]
    top = phi.max(1, keepdim=True).values
    unique = (phi == top).sum(1) == 1
    hit = unique & (phi.argmax(1) == informative)
    truth = {r["informative"]: r for r in _read(out / "ground_truth.csv")}
    assert int(truth["all"]["samples"]) == 96
    assert math.isclose(float(truth["all"]["top_is_informative"]), float(hit.double().mean()))
    assert math.isclose(float(truth["all"]["tie"]), float((~unique).double().mean()))
    for i, m in enumerate(names):
        mine = informative == i
        assert int(truth[m]["samples"]) == int(mine.sum())
        share = float(truth[m]["top_is_informative"]) + float(truth[m]["tie"]) + float(truth[m]["top_is_other"])
        assert math.isclose(share, 1.0) or int(truth[m]["samples"]) == 0

    text = (out / "report.md").read_text()
    assert "| modality | mean phi | phi < 1 | accuracy alone | mean interaction |" in text
    assert "## Most valued modality against the ground truth" in text
    assert "![classes](classes.png)" in text


def test_report_of_a_uci_mfeat_run(mfeat_run, tmp_path):
    out = tmp_path / "report"
    assert main([str(mfeat_run), "--checkpoint", "last", "--split", "train", "--out", str(out)]) == 0
    per_modality = _read(out / "per_modality.csv")
    assert [r["modality"] for r in per_modality] == ["fou", "mor"]  # the views' names, not view0 / view5
    assert not (out / "ground_truth.csv").exists()  # no ground truth for real data
    run = load_run(mfeat_run, "last")
    features, labels, _ = run.encode("train")
    rows = _read(out / "per_sample.csv")
    assert len(rows) == len(run.datasets["train"]) == labels.shape[0]
    interactions = fastshap.modality_interactions(features, run.head, labels)
    got = torch.tensor([float(r["I_fou_mor"]) for r in rows])
    assert torch.equal(got, interactions[:, 0, 1])
    per_class = _read(out / "per_class.csv")
    assert sum(int(r["samples"]) for r in per_class) == labels.shape[0]
    for r in per_class:
        mine = labels == int(r["class"])
        assert math.isclose(float(r["mean_phi_mor"]), float(interactions[mine, 1, 1].double().mean()), rel_tol=1e-9)
    assert (out / "classes.png").stat().st_size < 200_000


def test_load_run_gives_the_checkpoint_model_config_and_datasets(synthetic_run):
    assert fastshap_train.load_run is load_run
    run = load_run(synthetic_run, "last", device="cpu")
    state = torch.load(synthetic_run / "last.pt", map_location="cpu", weights_only=True)
    assert not run.model.training
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    assert run.config.dataset == "synthetic" and run.config.epochs == 3
    assert set(run.datasets) >= {"train", "test"} and len(run.datasets["test"]) == 96
    assert run.epochs == 3 and run.checkpoint.name == "last.pt"
    assert run.head is run.model.head
    assert run.baselines() is None  # feature removal
    # eval mode: encoding twice gives the same features
    first, labels, index = run.encode("test", batch_size=17)
    again, _, _ = run.encode("test", batch_size=96)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(first, again))
    assert index.tolist() == list(range(96))


def test_report_errors_name_the_problem(synthetic_run, mfeat_run, tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 1
    assert "run directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err
    # uci-mfeat without --val-ratio: no validation split, so no best.pt and no val split
    assert main([str(mfeat_run), "--checkpoint", "best"]) == 1
    assert "has no best.pt" in capsys.readouterr().err
    assert main([str(mfeat_run), "--split", "val", "--out", str(tmp_path / "r")]) == 1
    assert "no 'val' split" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(synthetic_run, str(tmp_path / "other.pt"))
    with pytest.raises(SystemExit):
        main([str(synthetic_run), "--split", "dev"])
