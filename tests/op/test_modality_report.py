"""fastshap.report from the API: the per-sample results against the head's own forward, the tables against
hand-computed figures, ties, the files, and clear errors."""

from __future__ import annotations

import ast
import csv
import math
import sys

import pytest
import torch
from cases import make_head

import fastshap
from fastshap import report as report_module
from fastshap.report import ModalityReport, modality_report, top_modality


def _inputs(n=3, batch=120, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = [3 + i for i in range(n)]
    head = make_head("concat", dims, classes, g)
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    with torch.no_grad():
        labels = head(feats).argmax(-1)
    noise = torch.rand(batch, generator=g) < 0.3
    labels = torch.where(noise, torch.randint(0, classes, (batch,), generator=g), labels)
    return feats, head, labels


def _alone_correct(head, feats, labels):
    """(B, n) whether the head with only modality i (the others zeroed) predicts the label."""
    with torch.no_grad():
        cols = []
        for i in range(len(feats)):
            kept = [f if j == i else torch.zeros_like(f) for j, f in enumerate(feats)]
            cols.append(head(kept).argmax(-1) == labels)
    return torch.stack(cols, 1)


def test_top_modality_names_ties():
    phi = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.5], [float("nan"), 1.0], [-0.5, -0.5]])
    assert top_modality(phi).tolist() == [-1, 0, 1, -1, -1]
    assert phi[:1].argmax(1).tolist() == [0]  # what argmax would have said for the tie


@pytest.mark.parametrize("benefit", fastshap.BENEFITS)
def test_per_sample_results_are_the_heads_own(benefit):
    feats, head, labels = _inputs()
    rep = modality_report(feats, head, labels, benefit=benefit, names=["a", "b", "c"])
    assert torch.equal(rep.phi, fastshap.modality_shapley(feats, head, labels, benefit=benefit))
    assert torch.equal(rep.interactions, fastshap.modality_interactions(feats, head, labels, benefit=benefit))
    # correctness, whatever the benefit (the probability benefit's values do not carry it)
    assert torch.equal(rep.alone_correct, _alone_correct(head, feats, labels))
    with torch.no_grad():
        assert torch.equal(rep.full_correct, head(feats).argmax(-1) == labels)


def test_tables_against_hand_computed_figures():
    phi = torch.tensor([[1.5, -0.5], [0.5, 0.5], [1.0, 1.0], [0.0, 0.0], [0.5, 1.5]])
    inter = torch.zeros(5, 2, 2)
    inter[:, 0, 0], inter[:, 1, 1] = phi[:, 0], phi[:, 1]
    inter[:, 0, 1] = inter[:, 1, 0] = torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0])
    alone = torch.tensor([[True, False], [False, False], [True, True], [False, False], [False, True]])
    full = torch.tensor([True, True, True, False, True])
    labels = torch.tensor([0, 1, 0, 1, 2])
    rep = ModalityReport(("a", "v"), labels, phi, inter, alone, full, class_names=("x", "y", "z"))
    a, v = rep.per_modality()
    assert a["mean_phi"] == pytest.approx(0.7) and v["mean_phi"] == pytest.approx(0.5)
    assert a["share_phi_below_1"] == pytest.approx(0.6) and v["share_phi_below_1"] == pytest.approx(0.6)
    assert a["accuracy_alone"] == pytest.approx(0.4) and v["accuracy_alone"] == pytest.approx(0.4)
    assert a["mean_interaction"] == pytest.approx(-0.2) == v["mean_interaction"]
    assert a["most_valued_share"] == pytest.approx(0.2) and v["most_valued_share"] == pytest.approx(0.2)
    # right through one modality only: sample 0 (a), sample 4 (v); sample 2 has both, sample 1 neither
    assert (a["right_only_through"], v["right_only_through"]) == (1, 1)
    assert rep.summary()["most_valued_tie_share"] == pytest.approx(0.6)
    by_class = {r["name"]: r for r in rep.per_class()}
    assert set(by_class) == {"x", "y", "z"}
    assert by_class["x"]["samples"] == 2 and by_class["x"]["mean_phi_a"] == pytest.approx(1.25)
    assert by_class["y"]["accuracy"] == pytest.approx(0.5)
    assert by_class["z"]["accuracy_alone_v"] == 1.0 and by_class["z"]["accuracy_alone_a"] == 0.0
    assert [(r["sample"], r["modality"]) for r in rep.single_modality_correct()] == [(0, "a"), (4, "v")]
    reliant = [r for r in rep.most_reliant(k=2) if r["modality"] == "a"]
    assert [r["sample"] for r in reliant] == [0, 1]  # margins 2.0, then 0.0 (sample 1 before 2 and 3)
    assert reliant[0]["margin"] == 2.0
    truth = ModalityReport(("a", "v"), labels, phi, inter, alone, full, informative=torch.tensor([0, 0, 1, 1, 1]))
    rows = {r["informative"]: r for r in truth.ground_truth()}
    assert rows["a"]["top_is_informative"] == 0.5 and rows["a"]["tie"] == 0.5
    assert rows["v"]["top_is_informative"] == pytest.approx(1 / 3) and rows["v"]["tie"] == pytest.approx(2 / 3)
    assert rows["all"]["top_is_informative"] == pytest.approx(0.4) and rows["all"]["informative_among_untied"] == 1


def test_write_gives_tables_markdown_and_figures(tmp_path):
    feats, head, labels = _inputs(n=3)
    rep = modality_report(feats, head, labels, names=["audio", "visual", "text"], sample_ids=torch.arange(120) + 1000)
    written = rep.write(tmp_path)
    assert set(written) == {
        "per_modality.csv",
        "per_class.csv",
        "per_sample.csv",
        "most_reliant.csv",
        "single_modality_correct.csv",
        "interactions.csv",
        "modalities.png",
        "classes.png",
        "interactions.png",
        "report.md",
    }
    with open(tmp_path / "per_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["sample"] == "1000" and len(rows) == 120
    assert {"I_audio_visual", "I_audio_text", "I_visual_text", "most_valued"} <= set(rows[0])
    assert float(rows[5]["phi_text"]) == rep.phi[5, 2].item()
    text = (tmp_path / "report.md").read_text()
    assert "| audio |" in text and "![interactions](interactions.png)" in text
    for name in ("modalities.png", "classes.png", "interactions.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size < 200_000


def test_tables_without_figures_need_no_matplotlib(tmp_path, monkeypatch):
    # fastshap itself needs only torch: no module-level import of matplotlib in fastshap.report
    tree = ast.parse(open(report_module.__file__).read())
    top = [a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names]
    top += [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert not any(name.startswith("matplotlib") for name in top)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    feats, head, labels = _inputs(n=2, batch=8)
    rep = modality_report(feats, head, labels)
    rep.write(tmp_path, figures=False)
    assert (tmp_path / "report.md").is_file() and not (tmp_path / "modalities.png").exists()
    with pytest.raises(ImportError, match="figures=False"):
        rep.write(tmp_path)


def test_chunked_valuation_gives_the_same_report(monkeypatch):
    feats, head, labels = _inputs(n=2, batch=50)
    whole = modality_report(feats, head, labels)
    monkeypatch.setattr(report_module, "_CHUNK_BYTES", 7 * 4 * 4)  # 7 samples per chunk
    chunked = modality_report(feats, head, labels)
    for name in ("phi", "interactions", "alone_correct", "full_correct"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name


def test_per_sample_baselines_follow_their_chunk(monkeypatch):
    feats, head, labels = _inputs(n=2, batch=30)
    base = [torch.randn(30, f.shape[1]) for f in feats]
    monkeypatch.setattr(report_module, "_CHUNK_BYTES", 4 * 4 * 4)
    rep = modality_report(feats, head, labels, baselines=base)
    assert torch.equal(rep.phi, fastshap.modality_shapley(feats, head, labels, baselines=base))


def test_single_modality_and_empty_reports(tmp_path):
    feats, head, labels = _inputs(n=1, batch=20)
    rep = modality_report(feats, head, labels)
    row = rep.per_modality()[0]
    assert math.isnan(row["mean_interaction"]) and row["modality"] == "m0"
    assert "interactions.png" not in rep.write(tmp_path)
    empty = modality_report([f[:0] for f in _inputs()[0]], _inputs()[1], labels[:0])
    assert empty.samples == 0 and math.isnan(empty.per_modality()[0]["mean_phi"])
    assert "samples: 0" in empty.markdown()


def test_bad_report_arguments_raise_clear_errors():
    feats, head, labels = _inputs(n=2, batch=10)
    with pytest.raises(ValueError, match="one label per sample"):
        modality_report(feats, head, labels.view(10, 1))
    with pytest.raises(ValueError, match="3 names given for 2 modalities"):
        modality_report(feats, head, labels, names=["a", "b", "c"])
    with pytest.raises(ValueError, match="distinct"):
        modality_report(feats, head, labels, names=["a", "a"])
    with pytest.raises(TypeError, match="names must be a list"):
        modality_report(feats, head, labels, names="ab")
    with pytest.raises(ValueError, match=r"modality indices in \[0, 2\)"):
        modality_report(feats, head, labels, informative=torch.full((10,), 2))
    with pytest.raises(ValueError, match=r"sample_ids must be \(10,\)"):
        modality_report(feats, head, labels, sample_ids=torch.arange(9))
    with pytest.raises(TypeError, match="features must be a list"):
        modality_report(feats[0], head, labels)
    with pytest.raises(ValueError, match="unknown benefit"):
        modality_report(feats, head, labels, benefit="gain")
