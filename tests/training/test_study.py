"""``python -m fastshap_train.study``: its sweep on a tiny setting end to end, its measures against direct
computations, its statistics against hand-worked numbers, and the synthetic generator's regime options."""

import csv
import math

import pytest
import torch
from scipy import stats

import fastshap
from fastshap_train import study
from fastshap_train.data import build_dataset
from fastshap_train.data.base import DataOptionError
from fastshap_train.engine import Trainer
from fastshap_train.testing import tiny_config

# A sweep of seconds: one synthetic setting, 2 arms x 2 seeds, 2 epochs of 64 samples.
TINY = [
    "dataset-informative",
    "--quick",
    "--seeds",
    "2",
    "--arms",
    "sample-level",  # concat is added: every comparison is against it
    "--jobs",
    "1",
    "--set",
    "epochs=2",
    "--set",
    "warmup=1",
    "--set",
    "syn_samples=64",
    "--set",
    "syn_test_samples=64",
]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------------------
# the command end to end


def test_quick_study_writes_its_tables(tmp_path, capsys):
    out = tmp_path / "study"
    assert study.main([*TINY, "--out", str(out)]) == 0
    for name in ("runs.csv", "summary.csv", "tables.md", "delta.png", "probes.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    runs = read_csv(out / "runs.csv")
    assert [(r["arm"], r["seed"]) for r in runs] == [
        ("concat", "0"),
        ("concat", "1"),
        ("sample-level", "0"),
        ("sample-level", "1"),
    ]
    assert all(r["status"] == "ok" for r in runs)
    for r in runs:
        for i in (0, 1):
            for key in ("probe_acc", "probe_signal_acc", "alone_acc"):
                assert 0 <= float(r[f"{key}_{i}"]) <= 1
            assert float(r[f"copy_loss_train_{i}"]) > 0
        # efficiency: phi_0 + phi_1 = mean v(N) = 2 x the fused training accuracy, so within [0, 2]
        assert 0 <= float(r["phi_0"]) + float(r["phi_1"]) <= 2
        assert float(r["phi_gap"]) == pytest.approx(float(r["phi_0"]) - float(r["phi_1"]), abs=1e-5)
        assert 0 <= float(r["phi_test_0"]) + float(r["phi_test_1"]) <= 2 and 0 <= float(r["probe_fused_acc"]) <= 1
        # modality 1 carries the label in every sample of this regime: no pure-noise copies to measure
        assert r["noise_copy_loss_train_1"] == "nan"
    ratio = {r["arm"]: float(r["rows_ratio"]) for r in runs}
    assert ratio["concat"] == 1.0 and ratio["sample-level"] > 1.0  # epoch 1 trained copies
    # each seed its own data, the arms the same data at a seed
    configs = {
        (r["arm"], r["seed"]): (out / "runs" / "dataset-informative" / r["arm"] / f"seed{r['seed']}") for r in runs
    }
    seeds = {key: _config_value(path / "config.yaml", "syn_seed") for key, path in configs.items()}
    assert seeds == {("concat", "0"): "0", ("concat", "1"): "1", ("sample-level", "0"): "0", ("sample-level", "1"): "1"}
    summary = {r["arm"]: r for r in read_csv(out / "summary.csv")}
    diffs = [float(runs[2 + s]["test_acc"]) - float(runs[s]["test_acc"]) for s in (0, 1)]
    assert float(summary["sample-level"]["vs_concat_mean"]) == pytest.approx(sum(diffs) / 2, abs=1e-6)
    assert "vs_concat_mean" not in summary["concat"] or summary["concat"]["vs_concat_mean"] == ""
    text = (out / "tables.md").read_text()
    assert "## Fused test accuracy (%)" in text and "## Difference from concat (points)" in text
    assert "### dataset-informative" in text and "Sample-level, f_s linear" in text
    assert "epochs=2" in text  # the --set overrides are part of the setting's description
    assert "4 runs" in capsys.readouterr().out


def _config_value(path, key):
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{key} not in {path}")


def test_existing_study_is_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    (out / "runs.csv").write_text("setting\n")
    assert study.main([*TINY, "--out", str(out)]) == 1
    assert "already holds a study" in capsys.readouterr().err
    assert (out / "runs.csv").read_text() == "setting\n"


@pytest.mark.parametrize(
    "argv,phrase",
    [
        (["no-such-setting"], "unknown setting or group 'no-such-setting'"),
        (["--arms", "concat,nope"], "unknown arm(s) nope"),
        (["--seeds", "1"], "--seeds must be in [2, 100]"),
        (["--set", "seed=3"], "the study sets seed itself"),
        (["--set", "syn_seed=3"], "the study sets syn_seed itself"),
        (["--set", "epochs"], "--set expects KEY=VALUE"),
        (["--jobs", "0"], "--jobs must be in [1, "),
        (["dataset-informative", "--set", "no_such_option=1"], "unknown option 'no_such_option'"),
        (
            ["mfeat-fou-mor", "--set", "syn_noise=2"],
            "--set syn_noise: not an option of dataset uci-mfeat",
        ),
        (["mfeat-fou-mor", "--set", "lr=-1"], "mfeat-fou-mor, concat: "),
    ],
)
def test_bad_arguments_are_refused_before_any_run(tmp_path, capsys, argv, phrase):
    with pytest.raises(SystemExit) as exc:
        study.main([*argv, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert phrase in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_list_names_every_setting_and_arm(capsys):
    assert study.main(["--list"]) == 0
    text = capsys.readouterr().out
    assert all(s.name in text for s in study.SETTINGS) and all(a.name in text for a in study.ARMS)


def test_plan_pairs_arms_by_seed_and_lengthens_the_control(tmp_path):
    setting = study.SETTING_BY_NAME["dataset-informative"]
    arms = [study.ARM_BY_NAME[a] for a in ("concat", "concat-1.5x", "sample-level-convex")]
    runs = study.plan_runs([setting], arms, 3, tmp_path, quick=False, overrides={}, overwrite=False)
    assert len(runs) == 9
    by = {(r["arm"], r["seed"]): r["overrides"] for r in runs}
    for seed in range(3):
        assert {by[(a.name, seed)]["syn_seed"] for a in arms} == {seed}
    assert by[("concat", 0)]["epochs"] == 15 and by[("concat-1.5x", 0)]["epochs"] == 22
    assert by[("sample-level-convex", 1)]["fs"] == "convex"
    mfeat = study.plan_runs([study.SETTING_BY_NAME["mfeat-fou-mor"]], arms[:1], 2, tmp_path, True, {}, False)
    assert [r["overrides"]["split_seed"] for r in mfeat] == [0, 1] and mfeat[0]["views"] == "fou,mor"
    assert mfeat[0]["overrides"]["epochs"] == 10  # --quick's shorter runs


def test_default_sweep_sizes():
    # the whole study: every setting and arm, 5 seeds; --quick: 3 settings, 5 arms, 3 seeds
    full, _ = study.select(study.parse_args([])[0], None)
    assert len(full) == len(study.SETTINGS) >= 10
    quick_args = study.parse_args(["--quick"])[0]
    settings, arms = study.select(quick_args, None)
    assert [s.name for s in settings] == ["dataset-informative", "dataset-noise", "mfeat-fou-mor"]
    assert [a.name for a in arms] == list(study.QUICK_ARMS) and quick_args.seeds == 3
    assert study.parse_args([])[0].seeds == 5


# ------------------------------------------------------------------------------------------------------
# statistics


def test_paired_comparison_by_hand():
    arm = {0: 0.80, 1: 0.90, 2: 0.70, 3: 0.75}
    base = {0: 0.70, 1: 0.80, 2: 0.70, 3: 0.70, 4: 0.99}  # seed 4 has no pair: left out
    c = study.paired_comparison(arm, base)
    diffs = [0.10, 0.10, 0.0, 0.05]
    mean = sum(diffs) / 4
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    half = 3.182446305284263 * std / 2  # t(0.975, 3) x std / sqrt(4)
    assert c["seeds"] == 4 and c["wins"] == 3 and c["losses"] == 0
    assert c["mean"] == pytest.approx(mean) and c["std"] == pytest.approx(std)
    assert (c["ci_low"], c["ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    t = mean / (std / 2)
    assert c["p_t"] == pytest.approx(2 * stats.t.sf(t, 3))
    assert 0 < c["p_wilcoxon"] <= 1


def test_paired_comparison_edge_cases():
    same = study.paired_comparison({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert same["mean"] == 0 and same["p_t"] == 1.0 and same["p_wilcoxon"] == 1.0
    shifted = study.paired_comparison({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.6})
    assert shifted["mean"] == pytest.approx(0.1) and shifted["p_t"] == 0.0  # no spread: a sure difference
    alone = study.paired_comparison({0: 0.6}, {0: 0.5, 1: 0.6})
    assert alone["seeds"] == 1 and math.isnan(alone["mean"]) and math.isnan(alone["p_t"])


# ------------------------------------------------------------------------------------------------------
# the measures


def test_linear_probe_separates_what_is_separable():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 4
    y = torch.randint(0, 4, (400,), generator=g)
    x = centres[y] + torch.randn(400, 8, generator=g)
    pred = study.linear_probe(x[:300], y[:300], x[300:], 4)
    assert float((pred == y[300:]).double().mean()) > 0.95
    noise = torch.randn(400, 8, generator=g)  # features that carry nothing: chance on held-out samples
    pred = study.linear_probe(noise[:300], y[:300], noise[300:], 4)
    assert float((pred == y[300:]).double().mean()) < 0.45


@pytest.mark.parametrize("removal", ["feature", "input"])
def test_measures_match_the_models_own_removal(tmp_path, removal):
    cfg = tiny_config(tmp_path, epochs=1, removal=removal, syn_dominance=[0.5, 0.5], syn_weak=0.0, checkpoint=False)
    trainer = Trainer(cfg)
    try:
        trainer.fit()
        out = study.diagnostics(trainer)
        core = trainer.core
        core.eval()
        test = trainer.test_set
        batch = {m: torch.stack([test[j][m] for j in range(len(test))]) for m in trainer.modalities}
        labels = torch.stack([test[j]["label"] for j in range(len(test))])
        informative = test.informative
        with torch.no_grad():
            for i in range(trainer.n):
                keep = torch.zeros(len(test), trainer.n, dtype=torch.bool)
                keep[:, i] = True
                logits = core(batch, keep).logits  # the model removes the others as in training
                acc = float((logits.argmax(-1) == labels).double().mean())
                assert out[f"alone_acc_{i}"] == pytest.approx(acc, abs=1e-9)
                loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                assert out[f"copy_loss_test_{i}"] == pytest.approx(float(loss.mean()), rel=1e-5)
                noise = informative != i  # syn_weak 0: pure noise wherever it is not the informative one
                assert out[f"noise_copy_loss_test_{i}"] == pytest.approx(float(loss[noise].mean()), rel=1e-5)
        values = trainer.valuator.run_pass(trainer.train_indices)
        assert out["phi_0"] == pytest.approx(float(values.phi[:, 0].double().mean()), abs=1e-6)
        with torch.no_grad():
            phi = fastshap.modality_shapley(
                core.encode(batch), core.head, labels, baselines=trainer.valuator.compute_baselines()
            )
        for i in range(trainer.n):
            assert out[f"phi_test_{i}"] == pytest.approx(float(phi[:, i].double().mean()), abs=1e-6)
        assert out["phi_gap_test"] == pytest.approx(out["phi_test_0"] - out["phi_test_1"], abs=1e-9)
        assert 0 <= out["probe_fused_acc"] <= 1
    finally:
        trainer.close()


# ------------------------------------------------------------------------------------------------------
# the synthetic regimes the study needs


def test_weak_by_modality_makes_one_modality_carry_the_label_everywhere():
    data = build_dataset(
        "synthetic",
        None,
        "train",
        syn_samples=100,
        syn_noise=0.0,
        syn_dominance=[0.6, 0.4],
        syn_strength=[2.0, 0.5],
        syn_weak_by_modality=[0.0, 1.0],
    )
    for j in range(100):
        item, y = data[j], int(data.labels[j])
        inf = int(data.informative[j])
        # modality 1: its full signal in every sample; modality 0: its signal only where it is informative
        assert torch.allclose(item["view1"], 0.5 * data.prototypes["view1"][y])
        expected0 = 2.0 * data.prototypes["view0"][y] if inf == 0 else torch.zeros_like(item["view0"])
        assert torch.allclose(item["view0"], expected0)
    assert 0.45 < float((data.informative == 0).float().mean()) < 0.75


def test_regime_options_default_to_the_old_behaviour():
    base = build_dataset("synthetic", None, "train", syn_samples=20, syn_weak=0.3, syn_dim=12)
    same = build_dataset(
        "synthetic", None, "train", syn_samples=20, syn_weak_by_modality=[0.3, 0.3], syn_dims=[12, 12], syn_weak=0.9
    )
    for j in range(20):
        for m in base.modalities:
            assert torch.equal(base[j][m], same[j][m])


def test_dims_give_each_vector_modality_its_width():
    data = build_dataset("synthetic", None, "test", syn_samples=5, syn_dims=[3, 40])
    assert data[0]["view0"].shape == (3,) and data[0]["view1"].shape == (40,)
    assert data.encoder_spec("view1") == {"kind": "mlp", "in_dim": 40}


@pytest.mark.parametrize(
    "options,phrase",
    [
        ({"syn_weak_by_modality": [0.5]}, "--syn-weak-by-modality needs one value per modality (2), got 1"),
        ({"syn_dims": [4, 4, 4]}, "--syn-dims needs one value per modality (2), got 3"),
    ],
)
def test_regime_options_check_their_length(options, phrase):
    with pytest.raises(DataOptionError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        build_dataset("synthetic", None, "train", syn_samples=5, **options)


def test_reuse_trains_only_what_is_missing(tmp_path, capsys):
    out = tmp_path / "study"
    assert study.main([*TINY, "--out", str(out)]) == 0
    first = read_csv(out / "runs.csv")
    capsys.readouterr()
    # the same sweep plus an arm: the 4 finished runs are read back, the 2 new ones trained
    extended = [*TINY, "--arms", "sample-level,unimodal-1", "--out", str(out)]
    assert study.main(extended) == 1  # refused without --reuse or --overwrite
    assert "--reuse keeps its finished runs" in capsys.readouterr().err
    assert study.main([*extended, "--reuse"]) == 0
    log = capsys.readouterr().out
    assert log.count("(reused)") == 4 and "6 runs" in log
    second = read_csv(out / "runs.csv")
    assert [r for r in second if r["arm"] != "unimodal-1"] == first
    assert sorted(r["arm"] for r in second).count("unimodal-1") == 2
    # other options are another run: nothing is reused
    assert study.main([*extended, "--set", "lr=0.002", "--reuse"]) == 0
    assert "(reused)" not in capsys.readouterr().out


def test_unimodal_reference_trains_one_modality_and_stays_out_of_the_comparisons(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", method="unimodal", unimodal_modality=1, checkpoint=False))
    try:
        assert trainer.plan.keep.tolist() == [2] * 64  # every row keeps modality 1 only
        assert trainer.method.next_plan(0, None).keep.tolist() == [2] * 64
    finally:
        trainer.close()
    out = tmp_path / "study"
    assert study.main([*TINY, "--arms", "unimodal-1", "--out", str(out)]) == 0
    text = (out / "tables.md").read_text()
    accuracy = text.split("## Fused test accuracy")[1].split("## Diagnostics")[0]
    assert "Modality 1 alone" not in accuracy and "Modality 1 alone (reference)" in text
    summary = {r["arm"]: r for r in read_csv(out / "summary.csv")}
    assert summary["unimodal-1"].get("vs_concat_mean", "") == ""
    runs = [r for r in read_csv(out / "runs.csv") if r["arm"] == "unimodal-1"]
    assert len(runs) == 2 and all(r["status"] == "ok" and float(r["rows_ratio"]) == 1.0 for r in runs)
