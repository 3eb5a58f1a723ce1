"""The trainer's methods: the re-sampling rules on known values, and each method end to end on synthetic
data with its mechanism checked against what the run recorded."""

import copy
import math

import numpy as np
import pytest
import torch

import fastshap
from fastshap_train import valuation as valuation_module
from fastshap_train.data.base import Plan, keep_bits
from fastshap_train.engine import Trainer
from fastshap_train.methods.enhance import mask_input, stronger_modalities
from fastshap_train.methods.resampling import copy_counts, draw_uniform, f_m, modality_level_rule
from fastshap_train.testing import tiny_config


def rows_of(plan: Plan, index: int, keep: int) -> int:
    return int(((plan.index == index) & (plan.keep == keep)).sum())


# ------------------------------------------------------------------------------------------------------
# the rules on known values


def test_linear_rule_is_the_authors_table_for_two_modalities():
    phi = torch.tensor([[1.5, 0.5], [0.5, 1.5], [1.0, 1.0], [0.0, 0.0], [-0.5, 0.5], [0.5, -0.5]])
    expected = torch.tensor([[0, 1], [1, 0], [0, 0], [2, 2], [3, 1], [1, 3]])
    assert torch.equal(copy_counts(phi, "linear", 2.0, cap=3), expected)


def test_concave_and_convex_bracket_the_linear_rule():
    phi = torch.tensor([[0.5, 0.0], [-0.5, 1.5]])  # x = 1 - phi = 0.5, 1.0, 1.5, -0.5
    lin = copy_counts(phi, "linear", 2.0, cap=None)
    cav = copy_counts(phi, "concave", 2.0, cap=None)
    vex = copy_counts(phi, "convex", 2.0, cap=None)
    # x_max = 1.5: concave 3 sqrt(x / 1.5), convex 3 (x / 1.5)^2, rounded half up
    assert cav.tolist() == [[2, 2], [3, 0]]
    assert lin.tolist() == [[1, 2], [3, 0]]
    assert vex.tolist() == [[0, 1], [3, 0]]
    assert bool((cav >= lin).all()) and bool((vex <= lin).all())


def test_rounding_and_cap_for_three_modalities():
    # n = 3: phi multiples of 1/6; 2(1 - phi): 5/3 -> 2, 1/3 -> 0, 3 -> 3 (cap 3), 4 -> capped
    phi = torch.tensor([[1 / 6, 5 / 6, 1.0], [-0.5, -1.0, 2.0]])
    assert copy_counts(phi, "linear", 2.0, cap=3).tolist() == [[2, 0, 0], [3, 3, 0]]
    assert copy_counts(phi, "linear", 2.0, cap=None).tolist() == [[2, 0, 0], [3, 4, 0]]


def test_half_rounds_up_and_nan_gives_no_copies():
    phi = torch.tensor([[0.75, math.nan]])  # 2 * 0.25 = 0.5 -> 1 (Python's round would give 0)
    assert copy_counts(phi, "linear", 2.0, cap=3).tolist() == [[1, 0]]


def test_custom_fs_callable():
    phi = torch.tensor([[0.5, 0.0]])
    assert copy_counts(phi, lambda x: 4 * x, cap=None).tolist() == [[2, 4]]
    assert copy_counts(phi, "torch:exp", cap=None).tolist() == [[2, 3]]  # e^0.5, e^1 rounded


def test_modality_level_rule_on_known_values():
    phi = torch.tensor([[1.5, 0.5], [1.0, 1.0], [0.5, 0.5], [1.5, -0.5]])  # means 1.125, 0.375
    rule = modality_level_rule(phi, "authors", "linear", 1.0)
    assert rule["weak"] == 1
    assert rule["d"] == pytest.approx(0.75)
    assert rule["x"] == pytest.approx(0.5)
    assert rule["p"] == pytest.approx(0.5)
    assert modality_level_rule(phi, "range", "tanh", 2.0)["p"] == pytest.approx(math.tanh(2 * 0.375))
    assert f_m(0.25, "power", 2.0) == pytest.approx(2 * 0.125)
    # n = 3: d = mean over the others of their gap to the weakest
    phi3 = torch.tensor([[1.0, 0.0, 0.5]])
    assert modality_level_rule(phi3)["weak"] == 1 and modality_level_rule(phi3)["d"] == pytest.approx(0.75)


def test_draw_uniform_is_without_replacement_up_to_the_pool():
    g = torch.Generator().manual_seed(0)
    pool = torch.arange(10, 20)
    once = draw_uniform(pool, 10, g)
    assert sorted(once.tolist()) == list(range(10, 20))
    twice = draw_uniform(pool, 13, g)
    assert len(twice) == 13 and len(set(twice[:10].tolist())) == 10


def test_stronger_modalities_rule():
    phi = torch.tensor([[1.5, 0.5], [1.0, 1.0], [0.0, 0.0], [1.5, 1.5], [0.5, 1.5], [2.0, -0.5]])
    expected = [[True, False], [False, False], [False, False], [False, False], [False, True], [True, False]]
    assert stronger_modalities(phi).tolist() == expected


def test_mask_input_layouts():
    g = torch.Generator().manual_seed(0)
    spec = torch.ones(4, 1, 20, 10)
    out = mask_input(spec, "audio", 0.2, g)
    zero = out[:, 0] == 0
    # one band of 4 time frames and one of 2 frequency bins per row
    assert all(int(zero[b].all(1).sum()) == 4 and int(zero[b].all(0).sum()) == 2 for b in range(4))
    frames = torch.ones(3, 2, 3, 16, 16)
    out = mask_input(frames, "visual", 0.5, g)
    assert torch.equal(out[:, 0], out[:, 1])  # same patches in every frame
    assert 0 < float((out == 0).float().mean()) < 1
    vec = torch.ones(8, 100)
    frac = float((mask_input(vec, "mlp", 0.25, g) == 0).float().mean())
    assert 0.1 < frac < 0.4
    text = torch.stack(
        [torch.arange(12).repeat(5, 1), torch.ones(5, 12, dtype=torch.long), torch.zeros(5, 12, dtype=torch.long)], 1
    )
    out = mask_input(text, "text", 0.5, g)
    assert torch.equal(out[:, 0], text[:, 0]) and bool((out[:, 1, 0] == 1).all()) and int((out[:, 1] == 0).sum()) > 0


# ------------------------------------------------------------------------------------------------------
# end to end: each method for a few steps, with its mechanism checked


def run(tmp_path, **overrides):
    trainer = Trainer(tiny_config(tmp_path, **overrides))
    trainer.fit()
    trainer.close()
    return trainer


def test_concat_trains_and_records_phi(tmp_path, phi_table):
    t = run(tmp_path, method="concat", epochs=2)
    assert isinstance(t.core.head, fastshap.heads.ConcatLinear)
    assert [r["resampled"] for r in t.history] == [0, 0]
    table = phi_table(tmp_path, 1)
    assert table.shape == (64, 2) and not np.isnan(table).any()
    # paper benefit, n = 2: values in {-0.5, 0, 0.5, 1, 1.5} and efficiency sum in {0, 2}
    assert set(np.unique(table)) <= {-0.5, 0.0, 0.5, 1.0, 1.5}
    assert set(np.unique(table.sum(1))) <= {0.0, 2.0}


def test_decision_fusion_uses_one_ce_per_modality(tmp_path):
    t = Trainer(tiny_config(tmp_path, method="decision-fusion", epochs=1))
    assert isinstance(t.core.head, fastshap.heads.DecisionFusion)
    batch = next(iter(t.train_loader(t.plan)))
    keep = keep_bits(batch["keep"], t.n)
    batch["keep_bits"] = keep
    out = t.core({m: batch[m] for m in t.modalities}, keep)
    expected = sum(
        torch.nn.functional.cross_entropy(z, batch["label"]) for z in t.core.head.per_modality_logits(out.features)
    )
    assert torch.allclose(t.method.loss(out, batch), expected)
    t.fit()
    t.close()
    assert np.isfinite(t.history[-1]["test_acc"])


def test_sample_level_copies_follow_the_phi_table(tmp_path, phi_table):
    t = run(tmp_path, method="sample-level", epochs=3, warmup=1)
    # epoch 0 trains on originals; epochs 1 and 2 on the plans built from the tables after epochs 0 and 1
    assert t.history[0]["resampled"] == 0
    for epoch in (0, 1):
        counts = copy_counts(torch.from_numpy(phi_table(tmp_path, epoch)), "linear", 2.0, 3)
        assert t.history[epoch + 1]["resampled"] == int(counts.sum())
        assert t.history[epoch + 1]["train_rows"] == 64 + int(counts.sum())
    # the final plan (for a 4th epoch) row by row against the last table
    counts = copy_counts(torch.from_numpy(phi_table(tmp_path, 2)), "linear", 2.0, 3)
    assert int(counts.sum()) > 0, "the test needs some weak samples"
    for j in range(64):
        assert rows_of(t.plan, j, 0b11) == 1
        for i in range(2):
            assert rows_of(t.plan, j, 1 << i) == int(counts[j, i])


def test_warmup_keeps_original_data(tmp_path):
    t = run(tmp_path, method="sample-level", epochs=3, warmup=3)
    assert [r["resampled"] for r in t.history] == [0, 0, 0]
    assert len(t.plan) > 64  # the plan after the last warmup epoch is re-sampled


def test_fixed_rate_counts_and_dynamic_column(tmp_path, phi_table):
    t = run(tmp_path, method="fixed-rate-high", epochs=2, warmup=1)
    phi = torch.from_numpy(phi_table(tmp_path, 0))
    assert t.history[1]["resampled"] == int((phi < 1).sum()) * 3
    dynamic = int(copy_counts(phi, "linear", 2.0, 3).sum())
    assert t.history[0]["resampled_dynamic"] == dynamic
    # epoch 0's row describes the plan epoch 1 trains
    assert t.history[0]["resampled_vs_dynamic"] == pytest.approx(t.history[1]["resampled"] / dynamic)


class OpSpy:
    """Counts fastshap.modality_shapley calls and the samples they valued."""

    def __init__(self, monkeypatch):
        self.calls, self.samples = 0, 0
        real = fastshap.modality_shapley

        def spy(features, head, labels, **kwargs):
            self.calls += 1
            self.samples += features[0].shape[0]
            self.baselines = kwargs.get("baselines")
            return real(features, head, labels, **kwargs)

        monkeypatch.setattr(valuation_module.fastshap, "modality_shapley", spy)


def test_modality_level_values_only_a_subset_drawn_without_replacement(tmp_path, monkeypatch, phi_table):
    spy = OpSpy(monkeypatch)
    t = Trainer(
        tiny_config(
            tmp_path, method="modality-level", epochs=2, warmup=1, part_ratio=0.25, syn_samples=80, fm_alpha=1.0
        )
    )
    t.fit()
    t.close()
    z = round(0.25 * 80)
    assert spy.samples == 2 * z  # one valuation pass per epoch, Z samples each
    for epoch in (0, 1):
        table = phi_table(tmp_path, epoch)
        valued = ~np.isnan(table).any(1)
        assert valued.sum() == z  # Z distinct samples: drawn without replacement
        assert t.history[epoch]["valued"] == z
    # the copies for epoch 1 come from the rule over Z's values after epoch 0
    rule = modality_level_rule(
        torch.from_numpy(phi_table(tmp_path, 0))[torch.from_numpy(~np.isnan(phi_table(tmp_path, 0)).any(1))]
    )
    assert t.history[0]["weak_modality"] == t.modality_names[rule["weak"]] == f"view{rule['weak']}"
    assert t.history[1]["resampled"] == int(rule["p"] * 80)
    copies = t.plan.keep != t.plan.full
    if copies.any():
        assert set(t.plan.keep[copies].tolist()) == {1 << t.modality_names.index(t.history[1]["weak_modality"])}


def test_online_valuation_calls_the_op_once_per_step_and_runs_no_pass(tmp_path, monkeypatch, phi_table):
    spy = OpSpy(monkeypatch)
    passes = []
    monkeypatch.setattr(valuation_module.Valuator, "run_pass", lambda self, idx: passes.append(idx))
    t = Trainer(tiny_config(tmp_path, method="sample-level", valuation="online", epochs=2, warmup=1))
    forwards = []
    for enc in t.core.encoders.values():
        enc.register_forward_hook(lambda mod, inp, out: forwards.append(inp[0].shape[0]))
    t.fit()
    t.close()
    steps = sum(math.ceil(r["train_rows"] / 16) for r in t.history)
    assert spy.calls == steps
    assert not passes
    # encoder forwards: the training steps and the test and validation passes (32 samples each), nothing else
    eval_batches = math.ceil(32 / 32)
    assert len(forwards) == t.n * (steps + 2 * 2 * eval_batches)
    assert sum(forwards) == t.n * (sum(r["train_rows"] for r in t.history) + 2 * 2 * 32)
    # every original sample was valued once per epoch and the next plan came from that table
    for epoch in (0, 1):
        assert not np.isnan(phi_table(tmp_path, epoch)).any()
    counts = copy_counts(torch.from_numpy(phi_table(tmp_path, 0)), "linear", 2.0, 3)
    assert t.history[1]["resampled"] == int(counts.sum())


def test_input_removal_passes_encoder_of_zero_as_baselines(tmp_path, monkeypatch):
    spy = OpSpy(monkeypatch)
    t = Trainer(tiny_config(tmp_path, method="sample-level", removal="input", epochs=1))
    t.fit()
    t.close()
    assert spy.baselines is not None
    t.core.eval()
    with torch.no_grad():
        for i, m in enumerate(t.modalities):
            expected = t.core.encoders[m](torch.zeros(1, *t.train_set[0][m].shape))[0]
            assert torch.allclose(spy.baselines[i], expected)
    # copies zero the removed modality's input: the model sees Enc(0) for it
    x = {m: torch.stack([t.train_set[j][m] for j in range(4)]) for m in t.modalities}
    keep = torch.tensor([[True, False]] * 4)
    out = t.core(x, keep)
    assert torch.allclose(out.raw_features[1], spy.baselines[1].expand(4, -1), atol=1e-6)


def test_feature_removal_zeroes_the_feature_slice(tmp_path):
    t = Trainer(tiny_config(tmp_path, method="sample-level", epochs=1))
    x = {m: torch.stack([t.train_set[j][m] for j in range(4)]) for m in t.modalities}
    out = t.core(x, torch.tensor([[False, True]] * 4))
    assert bool((out.features[0] == 0).all()) and bool((out.raw_features[0] != 0).any())
    assert torch.equal(out.features[1], out.raw_features[1])
    t.close()


def test_modality_drop_removes_the_stronger_modalities(tmp_path, phi_table):
    t = run(tmp_path, method="modality-drop", epochs=2, warmup=1, drop_prob=1.0)
    phi = torch.from_numpy(phi_table(tmp_path, 1))
    stronger = stronger_modalities(phi)
    assert len(t.plan) == 64  # no extra rows
    for j in range(64):
        expected = 0b11 & ~sum(1 << i for i in range(2) if stronger[j, i])
        assert int(t.plan.keep[t.plan.index == j]) == expected
    assert t.history[1]["resampled"] == int(stronger_modalities(torch.from_numpy(phi_table(tmp_path, 0))).any(1).sum())


def test_online_modality_drop_values_the_dropped_samples(tmp_path, phi_table):
    """With feature removal a dropped original's encoder outputs are the whole sample's: online valuation
    records it, so every sample is valued every epoch and can be dropped in consecutive epochs."""
    t = run(tmp_path, method="modality-drop", valuation="online", epochs=3, warmup=1, drop_prob=1.0)
    dropped = t.plan.keep != t.plan.full
    for epoch in (1, 2):
        assert not np.isnan(phi_table(tmp_path, epoch)).any()
        assert t.history[epoch]["valued"] == 64
    # the plan of epoch 3 follows epoch 2's table, samples dropped in epoch 2 included
    stronger = stronger_modalities(torch.from_numpy(phi_table(tmp_path, 2)))
    assert torch.equal(dropped, stronger.any(1)[t.plan.index])
    assert t.history[2]["resampled"] > 0


def test_online_modality_drop_records_each_row_from_its_raw_features(tmp_path, monkeypatch, phi_table):
    """The online table holds, for each sample, the value the op computed in the step that recorded it, from
    the encoder outputs of that step's forward: for a dropped original, the whole sample's features (not the
    zeroed ones its head saw), under the head of the moment (after the step's update)."""
    t = Trainer(tiny_config(tmp_path, method="modality-drop", valuation="online", epochs=3, warmup=1, drop_prob=1.0))
    encoded = {}  # each encoder's latest output, captured apart from the model's ModelOutput
    for m, enc in t.core.encoders.items():
        enc.register_forward_hook(lambda mod, inp, out, m=m: encoded.__setitem__(m, out.detach().clone()))
    op_calls = []
    real_op = fastshap.modality_shapley

    def op(features, head, labels, **kwargs):
        phi = real_op(features, head, labels, **kwargs)
        op_calls.append(([f.detach().clone() for f in features], labels.clone(), phi.detach().clone()))
        return phi

    monkeypatch.setattr(valuation_module.fastshap, "modality_shapley", op)
    steps = []
    real_update = valuation_module.Valuator.online_update

    def online_update(self, out, batch):
        head = copy.deepcopy(self.t.method.valuation_head())  # its parameters at the call
        before = len(op_calls)
        real_update(self, out, batch)
        assert len(op_calls) == before + 1, "one op call per step"
        features, labels, phi = op_calls[-1]
        steps.append(
            dict(
                epoch=self.t.epoch,
                head=head,
                encoded=[encoded[m] for m in self.t.modalities],
                seen=[f.detach().clone() for f in out.features],
                features=features,
                labels=labels,
                phi=phi,
                batch={k: batch[k].clone() for k in ("label", "index", "keep", "mask")},
            )
        )

    monkeypatch.setattr(valuation_module.Valuator, "online_update", online_update)
    t.fit()
    t.close()

    full = t.plan.full
    zeroed_differs = 0
    for epoch in range(3):
        expected = np.full((64, t.n), np.nan, dtype=np.float32)
        dropped_rows = 0
        calls = [s for s in steps if s["epoch"] == epoch]
        assert calls
        for s in calls:
            b = s["batch"]
            # the op got the step's encoder outputs and the batch's labels ...
            assert all(torch.equal(f, e) for f, e in zip(s["features"], s["encoded"]))
            assert torch.equal(s["labels"], b["label"])
            # ... and returned their values under the head of the moment
            phi = fastshap.modality_shapley(
                s["encoded"], s["head"], b["label"], benefit=t.cfg.benefit, backend="torch"
            ).float()
            assert torch.allclose(s["phi"].float(), phi, atol=1e-6)
            dropped = b["keep"] != full
            dropped_rows += int(dropped.sum())
            for i in range(t.n):
                gone = dropped & ((b["keep"] >> i) & 1 == 0)
                # the head saw the dropped modality zeroed; the op got the sample's own features for it
                assert bool((s["seen"][i][gone] == 0).all())
                assert bool((s["features"][i][gone] != 0).any(1).all())
            if dropped.any():  # the values the zeroed features would give: the test tells them apart
                zeroed = fastshap.modality_shapley(
                    s["seen"], s["head"], b["label"], benefit=t.cfg.benefit, backend="torch"
                ).float()
                zeroed_differs += int((zeroed[dropped] != phi[dropped]).any(1).sum())
            # originals (dropped ones included) are recorded at their sample's row; a later call overwrites
            original = b["mask"] == 0
            expected[b["index"][original].numpy()] = phi[original].numpy()
        if epoch > 0:
            assert dropped_rows > 0, "the test needs dropped samples"
        assert not np.isnan(expected).any()
        np.testing.assert_allclose(phi_table(tmp_path, epoch), expected, rtol=0, atol=1e-6)
    assert zeroed_differs > 0, "the zeroed features give the same values: the test could not tell them apart"


@pytest.mark.parametrize(
    "method,removal", [("data-mask", "feature"), ("data-mask", "input"), ("modality-drop", "input")]
)
def test_online_valuation_refused_where_altered_samples_cannot_be_valued(tmp_path, method, removal):
    from fastshap_train.config import ConfigError

    with pytest.raises(ConfigError, match="--valuation online cannot value a"):
        tiny_config(tmp_path, method=method, valuation="online", removal=removal)


@pytest.mark.parametrize("method", ["sample-level", "modality-level", "fixed-rate-high", "modality-drop", "data-mask"])
def test_resampling_methods_need_the_paper_benefit(tmp_path, method):
    from fastshap_train.config import ConfigError

    with pytest.raises(ConfigError, match="thresholds on the paper benefit's scale"):
        tiny_config(tmp_path, method=method, benefit="accuracy")
    tiny_config(tmp_path, method="concat", benefit="accuracy")  # valuation alone takes any benefit


def test_data_mask_masks_only_the_marked_rows(tmp_path, phi_table):
    t = run(tmp_path, method="data-mask", epochs=2, warmup=1, mask_prob=1.0, mask_ratio=0.5)
    phi = torch.from_numpy(phi_table(tmp_path, 1))
    stronger = stronger_modalities(phi)
    assert len(t.plan) == 64 and torch.equal(t.plan.keep, torch.full((64,), 3))
    for j in range(64):
        expected = sum(1 << i for i in range(2) if stronger[j, i])
        assert int(t.plan.mask[t.plan.index == j]) == expected
    batch = next(iter(t.train_loader(t.plan)))
    masked = t.method.on_batch(dict(batch))
    for i, m in enumerate(t.modalities):
        rows = (batch["mask"] >> i) & 1 == 1
        assert torch.equal(masked[m][~rows], batch[m][~rows])
        if rows.any():
            assert int((masked[m][rows] == 0).sum()) > 0


def test_three_modalities_and_mlp_head(tmp_path, phi_table):
    t = run(
        tmp_path,
        method="sample-level",
        head="mlp",
        syn_modalities="vector,vector,vector",
        syn_strength="1.5,1,0.5",
        syn_dominance="1,1,1",
        epochs=2,
    )
    table = phi_table(tmp_path, 1)
    assert table.shape == (64, 3) and not np.isnan(table).any()
    # n = 3: multiples of 1/6, efficiency sum = v(N) in {0, 3}
    assert np.allclose(np.round(table * 6), table * 6, atol=1e-5)
    assert set(np.unique(np.round(table.sum(1), 5))) <= {0.0, 3.0}
    assert isinstance(t.core.head, fastshap.heads.ConcatMLP)


@pytest.mark.parametrize(
    "values,n,bins_per_unit",
    [
        ([-0.5, 0.0, 0.5, 1.0, 1.5], 2, 2),  # paper benefit, n = 2: one bin per multiple of 1/2
        ([-1.0, -0.5, 0.0, 1.0], 2, 2),  # accuracy benefit: down to -1, outside the paper's range
        ([-0.83, 0.013, 0.377, 0.91], 2, None),  # probability benefit: continuous values
    ],
)
def test_phi_histogram_bins_hold_every_value(values, n, bins_per_unit):
    from fastshap_train.plots import phi_hist_edges

    phi = np.array([[v] * n for v in values])
    edges = phi_hist_edges(phi)
    counts, _ = np.histogram(phi[:, 0], bins=edges)
    assert counts.sum() == len(values)  # nothing falls outside the bins
    if bins_per_unit:
        assert np.allclose(np.diff(edges), 1 / bins_per_unit) and counts.max() == 1  # one value a bin
    else:
        assert len(edges) == 41
