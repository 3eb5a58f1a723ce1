"""The baselines of the paper's tables (OGM-GE, G-Blending, Greedy, PMR, AGM): each mechanism on hand-made
inputs, then each method end to end on synthetic data with 2 and 3 modalities, checking that it acted."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastshap import heads
from fastshap_train.compare import main as compare_main
from fastshap_train.compare import markdown_table, summarise
from fastshap_train.engine import Trainer
from fastshap_train.methods._common import NotApplicable
from fastshap_train.methods.agm import agm_coefficients, discrepancy_ratios, shapley_outputs
from fastshap_train.methods.g_blending import blend_weights
from fastshap_train.methods.greedy import MMTM, CurationController, GreedyModel, utilisation_rate
from fastshap_train.methods.ogm_ge import modulate_gradients, ogm_coefficients
from fastshap_train.methods.pmr import class_means, pmr_coefficients, prototype_logits, update_prototypes
from fastshap_train.models import build_model
from fastshap_train.outputs import read_metrics
from fastshap_train.testing import tiny_config


def run(tmp_path, method, n=2, epochs=3, **overrides):
    """A tiny synthetic run where modality 0 dominates; returns (trainer, metrics rows)."""
    values = dict(
        syn_modalities=["vector"] * n,
        syn_strength=[3.0] + [1.0] * (n - 1),
        syn_dominance=[0.8] + [0.2 / (n - 1)] * (n - 1),
        valuation="none",
        checkpoint=False,
        epochs=epochs,
    )
    values.update(overrides)
    out = tmp_path / f"{method}-{n}"
    trainer = Trainer(tiny_config(out, method=method, **values))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer, read_metrics(out / "metrics.csv")


# ------------------------------------------------------------------------------------------------------
# OGM-GE


def test_ogm_coefficients_for_known_scores():
    k, rho = ogm_coefficients(torch.tensor([30.0, 10.0]), alpha=0.1)
    assert rho.tolist() == pytest.approx([3.0, 1 / 3])
    assert k.tolist() == pytest.approx([1 - math.tanh(0.3), 1.0])
    k, _ = ogm_coefficients(torch.tensor([30.0, 10.0]), alpha=0.1, form="shifted")
    assert k.tolist() == pytest.approx([1 - math.tanh(0.2), 1.0])
    # n = 3: rho_m is the mean over j != m of s_m / s_j
    k, rho = ogm_coefficients(torch.tensor([4.0, 2.0, 1.0]), alpha=0.5)
    assert rho.tolist() == pytest.approx([3.0, 1.25, 0.375])
    assert k.tolist() == pytest.approx([1 - math.tanh(1.5), 1 - math.tanh(0.625), 1.0])
    k, _ = ogm_coefficients(torch.tensor([5.0, 5.0]), alpha=0.8)
    assert k.tolist() == [1.0, 1.0]


def test_ogm_gradient_scaling_and_noise():
    torch.manual_seed(0)
    g = torch.randn(64, 32) * 3
    p = torch.nn.Parameter(torch.zeros(64, 32))
    p.grad = g.clone()
    modulate_gradients([p], 0.25, noise=False)
    assert torch.equal(p.grad, g * 0.25)
    # GE: + N(0, std(g)^2) with the std of the gradient before scaling, drawn from the given generator
    p.grad = g.clone()
    modulate_gradients([p], 0.25, noise=True, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(g.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(p.grad, g * 0.25 + eps * (g.std() + 1e-8), atol=1e-5)
    noise = p.grad - g * 0.25
    assert float(noise.std()) == pytest.approx(float(g.std()), rel=0.05)


def test_ogm_ge_damps_the_dominant_encoder_end_to_end(tmp_path):
    seen = []

    class Spy:
        """Record encoder gradients around the method's after_backward on the first steps."""

        def __init__(self, method):
            self.method, self.inner = method, method.after_backward

        def __call__(self, out, batch):
            core = self.method.trainer.core
            before = [core.encoders[m].net[0].weight.grad.clone() for m in core.modalities]
            self.inner(out, batch)
            after = [core.encoders[m].net[0].weight.grad.clone() for m in core.modalities]
            seen.append((self.method._k.clone(), before, after))

    values = dict(
        syn_modalities=["vector"] * 2,
        syn_strength=[3.0, 1.0],
        syn_dominance=[0.8, 0.2],
        valuation="none",
        checkpoint=False,
        epochs=2,
        ogm_ge=False,
        ogm_alpha=0.8,
    )
    trainer = Trainer(tiny_config(tmp_path / "spy", method="ogm-ge", **values))
    trainer.method.after_backward = Spy(trainer.method)
    trainer.fit()
    trainer.close()
    # Once modality 0 leads (it carries the signal), its gradient is scaled by k < 1, modality 1's is untouched.
    late = seen[-4:]
    for k, before, after in late:
        assert k[0] < 1 and k[1] == 1
        assert torch.allclose(after[0], before[0] * float(k[0]))
        assert torch.equal(after[1], before[1])
    for n in (2, 3):
        _, rows = run(tmp_path, "ogm-ge", n=n, ogm_alpha=0.8)
        last = rows[-1]
        assert last["ogm_coef_view0"] < 1 and last["ogm_damped_view0"] > 0
        assert all(last[f"ogm_coef_view{i}"] == 1 for i in range(1, n))
        assert last["ogm_modulated_steps"] == 4  # 64 samples / 16


def test_ogm_ge_respects_its_epoch_window(tmp_path):
    _, rows = run(tmp_path, "ogm-ge", ogm_start=1, ogm_end=1)
    assert [r["ogm_modulated_steps"] for r in rows] == [0, 4, 0]


# ------------------------------------------------------------------------------------------------------
# G-Blending


def test_blend_weights_for_known_loss_curves():
    # head A: G = 0.3, O = (0.8 - 0.5) - (1.1 - 1.0) = 0.2 -> 7.5; head B: G = 0.2, O = 0.6 -> 0.2 / 0.36;
    # head C overfits without generalising (G < 0) -> 0
    w = blend_weights([1.0, 1.0, 1.0], [1.1, 1.1, 1.1], [0.5, 0.2, 0.3], [0.8, 0.9, 1.2])
    raw = torch.tensor([7.5, 0.2 / 0.36, 0.0], dtype=torch.float64)
    assert torch.allclose(w, raw / raw.sum())
    assert float(w.sum()) == pytest.approx(1.0)
    # nothing generalised: uniform
    assert blend_weights([1.0, 1.0], [1.0, 1.0], [0.5, 0.5], [1.2, 1.1]).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("n", [2, 3])
def test_g_blending_end_to_end(tmp_path, n):
    trainer, rows = run(tmp_path, "g-blending", n=n, gb_super_epoch=1, gb_holdout=0.25)
    method = trainer.method
    # the held-out split comes from the training set and is never trained on; the test set is not used
    assert len(method.holdout) == 16
    assert int(method.holdout.max()) < len(trainer.train_set)
    assert not set(method.holdout.tolist()) & set(trainer.train_indices.tolist())
    assert not set(method.holdout.tolist()) & set(trainer.plan.index.tolist())
    assert len(trainer.train_indices) + len(method.holdout) == len(trainer.train_set)
    assert not set(method.train_probe.tolist()) & set(method.holdout.tolist())
    # estimated at the start of every epoch (super-epochs of 1); the weights left uniform and sum to 1
    assert [h["epoch"] for h in method.history] == [0, 1, 2]
    names = [f"view{i}" for i in range(n)] + ["fused"]
    for row in rows:
        weights = [row[f"gb_w_{k}"] for k in names]
        assert sum(weights) == pytest.approx(1.0)
    assert any(abs(w - 1 / (n + 1)) > 1e-3 for w in method.weights.tolist())
    assert [r["gb_estimated"] for r in rows] == [1, 1, 1]


def test_g_blending_joint_mode_and_separate_heads(tmp_path):
    trainer, rows = run(tmp_path, "g-blending", gb_super_epoch=1, gb_mode="joint", gb_heads="separate")
    assert hasattr(trainer.core, "gb_heads")
    assert rows[0]["gb_w_fused"] == pytest.approx(1 / 3)  # the first super-epoch has no estimate yet
    assert rows[1]["gb_w_fused"] != pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------------
# Greedy


def test_curation_switches_on_a_known_speed_gap():
    ctl = CurationController(epsilon=0.1, window=3)
    fast_bypass = ([(1.0, 1.0), (1.0, 1.0)], [(10.0, 1.0), (1.0, 1.0)])  # BDR_0 = 1, BDR_1 = 0
    ctl.update(False, *fast_bypass)  # locked: measured, no curation
    assert ctl.d == pytest.approx(1.0) and not ctl.curation
    ctl.update(True, *fast_bypass)
    assert ctl.curation and ctl.caring == 0
    for _ in range(3):  # the window: 3 curation steps (no speeds measured), then back to normal
        assert ctl.curation and not ctl.needs_speeds(True)
        ctl.update(True)
    assert not ctl.curation and ctl.needs_speeds(True)
    # the other direction, on fresh sums: caring for modality 1
    ctl = CurationController(epsilon=0.1, window=3)
    ctl.update(True, [(1.0, 1.0), (1.0, 1.0)], [(1.0, 1.0), (100.0, 1.0)])
    assert ctl.d == pytest.approx(-2.0) and ctl.curation and ctl.caring == 1
    # within tolerance: no curation
    ctl = CurationController(epsilon=0.5, window=3)
    ctl.update(True, [(1.0, 1.0), (1.0, 1.0)], [(2.0, 1.0), (1.0, 1.0)])  # d = log10(2) = 0.30
    assert not ctl.curation
    assert utilisation_rate(0.8, 0.6) == pytest.approx(0.25)


def _greedy_model(n=2, dim=6):
    from fastshap_train.data.synthetic import SyntheticMultimodal

    data = SyntheticMultimodal(kinds=["vector"] * n, samples=8, dim=dim, strength=[1.0] * n, dominance=[1.0] * n)
    cfg = tiny_config(
        "/tmp/unused",
        syn_modalities=["vector"] * n,
        syn_strength=[1.0] * n,
        syn_dominance=[1.0] * n,
        feature_dim=5,
        mlp_hidden=7,
    )
    return GreedyModel(build_model(cfg, data, "concat")), data


def test_mmtm_curation_cuts_the_cross_modal_flow():
    torch.manual_seed(0)
    model, _ = _greedy_model()
    assert model.mmtm_slots == [0, 1] and [m.fc_excite[1].out_features for m in model.mmtm] == [7, 5]
    x0, x1, x1b = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    model.train()
    for _ in range(3):  # running averages of the gates
        model.encode({"view0": x0, "view1": x1})
    assert int(model.mmtm[0].steps) == 3
    model.eval()
    a = model.encode({"view0": x0, "view1": x1})
    b = model.encode({"view0": x0, "view1": x1b})
    assert not torch.allclose(a[0], b[0])  # normally modality 0 sees modality 1 through the gates
    model.curation, model.caring = True, 0
    a = model.encode({"view0": x0, "view1": x1})
    b = model.encode({"view0": x0, "view1": x1b})
    assert torch.equal(a[0], b[0])  # caring for 0: its features depend on its own input only
    assert not torch.allclose(a[1], b[1])


def test_mmtm_squeezes_frames_and_space():
    block = MMTM(3, 4, ratio=2)
    h0 = torch.randn(2 * 5, 3, 4, 4)  # B = 2, T = 5 frames folded in the batch
    h1 = torch.randn(2, 4)
    g0, g1 = block(h0, h1, 2)
    assert g0.shape == h0.shape and g1.shape == h1.shape
    block.eval()
    q0, q1 = h0.view(2, 5, 3, 16).mean((1, 3)), h1
    e0, _ = block.gates(q0, q1)
    assert torch.allclose(g0, h0 * e0.repeat_interleave(5, 0).view(10, 3, 1, 1), atol=1e-6)


def test_greedy_end_to_end_and_not_applicable(tmp_path):
    trainer, rows = run(tmp_path, "greedy", greedy_start=0, greedy_epsilon=0.0, greedy_window=2)
    assert isinstance(trainer.core, GreedyModel)
    assert sum(r["greedy_curation_steps_view0"] + r["greedy_curation_steps_view1"] for r in rows) > 0
    for r in rows:
        for key in ("greedy_util_view1_given_view0", "greedy_util_view0_given_view1"):
            assert math.isfinite(r[key]) and r[key] <= 1
    with pytest.raises(NotApplicable, match="not applicable to 3 modalities"):
        run(tmp_path, "greedy", n=3)


# ------------------------------------------------------------------------------------------------------
# PMR


def test_prototypes_and_momentum():
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 2, 2])
    sums, counts = class_means(feats, labels, 3)
    first = update_prototypes(sums, counts, None, momentum=0.2)
    assert torch.equal(first, torch.tensor([[2.0, 1.0], [0.0, 0.0], [2.5, 4.5]]))
    sums2, counts2 = class_means(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1]), 3)
    second = update_prototypes(sums2, counts2, first, momentum=0.2)
    # class 0: 0.8 * new + 0.2 * old; class 1: first sighting still mixes with the old zeros; class 2: unseen, kept
    assert torch.allclose(second, torch.tensor([[0.4, 0.2], [0.8, 0.8], [2.5, 4.5]]))


def test_prototype_loss_and_coefficients():
    z = torch.tensor([[0.0, 0.0], [3.0, 5.0]])
    protos = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    logits = prototype_logits(z, protos)
    assert torch.allclose(logits, torch.tensor([[-5.0, -1.0], [-1.0, -5.0]]))
    y = torch.tensor([1, 0])
    first = torch.log_softmax(torch.tensor([-5.0, -1.0]), 0)[1]
    second = torch.log_softmax(torch.tensor([-1.0, -5.0]), 0)[0]
    expected = -(first + second) / 2
    assert float(F.cross_entropy(logits, y)) == pytest.approx(float(expected))
    assert pmr_coefficients(torch.tensor([5.0, 2.0, 1.0]), 0.5).tolist() == [0.0, 0.5, 0.5]
    assert pmr_coefficients(torch.tensor([4.0, 5.0]), 0.5, "ratio").tolist() == pytest.approx([0.125, 0.0])
    assert pmr_coefficients(torch.tensor([5.0, 1.0]), 0.5, "ratio").tolist() == [0.0, 0.5]  # clipped at 1
    assert pmr_coefficients(torch.tensor([3.0, 3.0]), 0.5).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("n", [2, 3])
def test_pmr_end_to_end(tmp_path, n):
    trainer, rows = run(tmp_path, "pmr", n=n)
    protos = trainer.method.prototypes
    assert len(protos) == n and all(p.shape == (4, 32) and torch.isfinite(p).all() for p in protos)
    last = rows[-1]
    assert last["pmr_beta_view0"] == 0 and last["pmr_proto_prob_view0"] > last["pmr_proto_prob_view1"]
    assert all(last[f"pmr_beta_view{i}"] == 1.0 and last[f"pmr_weak_steps_view{i}"] > 0 for i in range(1, n))


# ------------------------------------------------------------------------------------------------------
# AGM


def test_agm_shapley_outputs_reduce_to_partial_logits_for_a_linear_head():
    torch.manual_seed(0)
    head = heads.ConcatLinear([3, 4, 2], 5)
    feats = [torch.randn(6, 3), torch.randn(6, 4), torch.randn(6, 2)]
    fast = shapley_outputs(head, feats)
    general = shapley_outputs(lambda fs: head(fs), feats)  # a callable: the 2^n-coalition path
    for a, b in zip(fast, general):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(torch.stack(general).sum(0), head(feats), atol=1e-5)


def test_agm_shapley_outputs_match_the_authors_two_modality_formula():
    torch.manual_seed(1)
    head = heads.ConcatMLP([3, 4], 8, 5)
    a, v = torch.randn(6, 3), torch.randn(6, 4)
    za, zv = torch.zeros_like(a), torch.zeros_like(v)
    total, pad_visual, pad_audio = head([a, v]), head([a, zv]), head([za, v])
    u = shapley_outputs(head, [a, v])
    assert torch.allclose(u[0], 0.5 * (total - pad_audio + pad_visual), atol=1e-5)
    assert torch.allclose(u[1], 0.5 * (total - pad_visual + pad_audio), atol=1e-5)
    # with baselines instead of zeros
    base = [torch.randn(3), torch.randn(4)]
    u = shapley_outputs(head, [a, v], base)
    pa, pv = head([base[0].expand_as(a), v]), head([a, base[1].expand_as(v)])
    assert torch.allclose(u[0], 0.5 * (total - pa + pv), atol=1e-5)


def test_agm_coefficients_for_known_losses():
    kappa, r, r_hat = agm_coefficients(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.5]), alpha=0.3)
    assert r.tolist() == pytest.approx([math.e, 1 / math.e])  # exp(s_other - s_m) for n = 2
    assert r_hat.tolist() == pytest.approx([1.0, 1.0])
    assert kappa.tolist() == pytest.approx([math.exp(0.3 * (1 - math.e)), math.exp(0.3 * (1 - 1 / math.e))])
    # n = 3: exp(3/2 (mean - s_m)); the cap bounds the exponent
    assert discrepancy_ratios(torch.tensor([1.0, 2.0, 3.0])).tolist() == pytest.approx(
        [math.exp(1.5), 1.0, math.exp(-1.5)]
    )
    kappa, _, _ = agm_coefficients(torch.tensor([9.0, 0.0]), torch.tensor([0.0, 9.0]), alpha=1.0, cap=2.0)
    assert kappa[0] == pytest.approx(math.exp(2.0))


def test_agm_hooks_scale_each_modality_gradient():
    torch.manual_seed(2)
    head = heads.ConcatLinear([3, 4], 5)
    h = [torch.randn(6, 3, requires_grad=True), torch.randn(6, 4, requires_grad=True)]
    y = torch.randint(0, 5, (6,))
    F.cross_entropy(head(h), y).backward()
    plain = [x.grad.clone() for x in h]
    for x in h:
        x.grad = None
    u = shapley_outputs(head, h)
    for x, k in zip(u, (0.5, 2.0)):
        x.register_hook(lambda g, k=k: g * k)
    F.cross_entropy(torch.stack(u).sum(0), y).backward()
    assert torch.allclose(h[0].grad, 0.5 * plain[0], atol=1e-6)
    assert torch.allclose(h[1].grad, 2.0 * plain[1], atol=1e-6)


@pytest.mark.parametrize("n, zero_inputs", [(2, True), (3, True), (2, False)])
def test_agm_end_to_end(tmp_path, n, zero_inputs):
    trainer, rows = run(tmp_path, "agm", n=n, agm_alpha=1.0, agm_zero_inputs=zero_inputs)
    assert trainer.method.iteration == 12  # 3 epochs x 4 steps, every step counted
    assert torch.isfinite(trainer.method.running).all()
    coefs = [r[f"agm_coef_view{i}"] for r in rows for i in range(n)]
    assert all(c > 0 and math.isfinite(c) for c in coefs)
    assert any(abs(c - 1) > 1e-3 for c in coefs)
    assert rows[-1]["agm_mono_ce_view0"] < rows[-1]["agm_mono_ce_view1"]  # the informative modality


def test_agm_removes_a_modality_by_a_zero_input_through_its_encoder_every_step(tmp_path, monkeypatch):
    from fastshap_train.methods import agm

    seen = []
    original = agm.shapley_outputs

    def spy(head, features, baselines=None):
        seen.append(baselines)
        return original(head, features, baselines)

    monkeypatch.setattr(agm, "shapley_outputs", spy)
    trainer, _ = run(tmp_path, "agm", n=2)
    assert len(seen) == trainer.method.iteration == 12
    core, batch = trainer.core, next(iter(trainer.train_loader(trainer.plan)))
    for base, dim in zip(seen[-1], core.dims):
        assert base.requires_grad and base.shape == (16, dim)  # a batch of Enc_m(0), in the graph
    core.eval()  # the encoders' output for a zero input (the recorded ones ran in train mode)
    zero = core.encode({m: torch.zeros_like(batch[m]) for m in core.modalities})
    assert not torch.allclose(zero[0], torch.zeros_like(zero[0]))  # so not feature zeroing


# ------------------------------------------------------------------------------------------------------
# resume and the comparison tool


@pytest.mark.parametrize(
    "method,extra",
    [
        ("ogm-ge", {}),
        ("pmr", {}),
        ("agm", {}),
        ("greedy", {"greedy_start": 0}),
        ("g-blending", {"gb_super_epoch": 1, "gb_mode": "joint"}),
    ],
)
def test_resume_is_exact(tmp_path, method, extra):
    base = dict(valuation="none", checkpoint=True, **extra)
    full = Trainer(tiny_config(tmp_path / "full", method=method, epochs=2, **base))
    full.fit()
    full.close()
    half = Trainer(tiny_config(tmp_path / "half", method=method, epochs=1, **base))
    half.fit()
    half.close()
    resumed = Trainer(tiny_config(tmp_path / "half", method=method, epochs=2, resume="auto", **base))
    resumed.fit()
    resumed.close()
    a, b = read_metrics(tmp_path / "full" / "metrics.csv"), read_metrics(tmp_path / "half" / "metrics.csv")
    for key in ("train_loss", "test_acc", "test_loss"):
        assert a[-1][key] == b[-1][key]


def test_compare_table_layout():
    rows = [
        {"setting": "d (a+b)", "method": "concat", "seed": 0, "status": "ok", "final_test_acc": 0.5},
        {"setting": "d (a+b)", "method": "concat", "seed": 1, "status": "ok", "final_test_acc": 0.7},
        {"setting": "d (a+b)", "method": "greedy", "seed": 0, "status": "ok", "final_test_acc": 0.8},
        {"setting": "d (a+b+c)", "method": "greedy", "seed": 0, "status": "n/a", "final_test_acc": None},
        {"setting": "d (a+b+c)", "method": "concat", "seed": 0, "status": "ok", "final_test_acc": 0.9},
    ]
    summary = summarise(rows, "final")
    assert summary[("d (a+b)", "concat")]["mean"] == pytest.approx(0.6)
    assert summary[("d (a+b)", "concat")]["std"] == pytest.approx(math.sqrt(0.02))
    text = markdown_table(summary, ["d (a+b)", "d (a+b+c)"], ["concat", "greedy"], "final")
    lines = text.splitlines()
    assert lines[0] == "| Method | d (a+b) | d (a+b+c) |"
    assert lines[2] == "| Concatenation | 60.00 ± 14.14 | **90.00 ± 0.00** |"
    assert lines[3] == "| Greedy | **80.00 ± 0.00** | n/a |"


def test_compare_runs_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    code = compare_main(
        [
            "--dataset",
            "synthetic",
            "--methods",
            "concat,greedy",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--set",
            "syn_modalities=vector,vector,vector",
            "--set",
            "syn_strength=2,1,1",
            "--set",
            "syn_dominance=1,1,1",
            "--set",
            "syn_samples=64",
            "--set",
            "syn_test_samples=32",
            "--set",
            "epochs=1",
            "--set",
            "batch_size=16",
        ]
    )
    assert code == 0
    table = (out / "table.md").read_text().splitlines()
    assert table[2].startswith("| Concatenation | ") and "±" in table[2]
    assert table[3] == "| Greedy | n/a |"
    runs = (out / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 4 and (out / "table.png").stat().st_size > 0 and (out / "table.csv").exists()
