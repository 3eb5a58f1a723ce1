"""The paper's datasets on tiny copies of their real layouts (fastshap_train/data/_fixtures.py): items, shapes,
dtypes, labels, splits, missing / corrupt files, the AVE model and its per-segment valuation, and one
short training epoch of each through the CLI."""

import json
import math
import pickle
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastshap
from fastshap_train.cli import main
from fastshap_train.data import _fixtures as fx
from fastshap_train.data import build_dataset
from fastshap_train.data._media import IMAGENET_MEAN, IMAGENET_STD, frame_positions
from fastshap_train.data.base import DataFileError
from fastshap_train.outputs import read_metrics

SMALL = dict(image_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/training/conftest.py


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Every layout, written once, read-only for the tests that use it."""
    base = tmp_path_factory.mktemp("layouts")
    return {name: writer(base / name) for name, writer in fx.WRITERS.items()}


def unnormalise(x):
    return x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def eval_frame(path, size=32):
    """The eval transform, computed independently: resize to size x size, [0, 1], ImageNet-normalised."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


# ------------------------------------------------------------------------------------------------------
# frame sampling


@pytest.mark.parametrize(
    "count, k, middles",
    [(9, 3, [1, 4, 7]), (10, 3, [1, 4, 7]), (5, 3, [0, 1, 3]), (2, 3, [0, 0, 1]), (1, 3, [0, 0, 0]), (12, 1, [5])],
)
def test_frame_positions_one_per_part(count, k, middles):
    assert frame_positions(count, k, train=False) == middles
    g = torch.Generator().manual_seed(0)
    seen = [set() for _ in range(k)]
    for _ in range(200):
        for i, p in enumerate(frame_positions(count, k, train=True, generator=g)):
            lo = min(math.floor(i * count / k), count - 1)
            hi = min(max(lo + 1, math.floor((i + 1) * count / k)), count)
            assert lo <= p < hi, (i, p, lo, hi)
            seen[i].add(p)
    for i in range(k):  # training draws cover the whole part
        lo = min(math.floor(i * count / k), count - 1)
        hi = min(max(lo + 1, math.floor((i + 1) * count / k)), count)
        assert seen[i] == set(range(lo, hi))


# ------------------------------------------------------------------------------------------------------
# Kinetics-Sounds


def test_ks_items_labels_and_splits(roots, monkeypatch):
    layout = roots["ks"]
    train = build_dataset("ks", layout.root, "train", augment=True, audio_frames=64, **SMALL)
    test = build_dataset("ks", layout.root, "test", **SMALL)
    assert train.num_classes == 31 and train.modalities == ("audio", "visual")
    assert train.ids == [s for s, _ in layout.samples["train"]]
    assert train.labels.tolist() == [y for _, y in layout.samples["train"]]
    assert test.labels.tolist() == [y for _, y in layout.samples["test"]]

    item = train[1]
    assert item["audio"].shape == (1, 64, 128) and item["audio"].dtype == torch.float32
    assert item["visual"].shape == (3, 3, 32, 32) and item["visual"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["label"].shape == () and int(item["index"]) == 1
    raw = np.load(layout.root / "audio" / "train" / f"{train.ids[1]}.npy")  # (40, 128): padded to 64
    assert torch.equal(item["audio"][0, :40], torch.from_numpy(raw))
    assert torch.all(item["audio"][0, 40:] == float(raw.min()))
    pixels = unnormalise(item["visual"])
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5

    # Default: 1024 frames (the paper's), cropped from longer arrays.
    assert test[0]["audio"].shape == (1, 1024, 128)
    short = build_dataset("ks", layout.root, "test", audio_frames=16, **SMALL)
    raw = np.load(layout.root / "audio" / "test" / f"{short.ids[0]}.npy")
    assert torch.equal(short[0]["audio"][0], torch.from_numpy(raw[:16]))

    # Testing takes the middle frame of each third (5 frames: 1, 2, 4), training a random one of it.
    import fastshap_train.data._media as media

    opened = []
    real = media.load_image

    def spy(path, mode="RGB"):
        opened.append(Path(path).name)
        return real(path, mode)

    monkeypatch.setattr(media, "load_image", spy)
    visual = test[0]["visual"]
    assert opened == ["frame_00001.jpg", "frame_00002.jpg", "frame_00004.jpg"]
    folder = layout.root / "visual" / "test" / test.ids[0]
    for j, name in enumerate(opened):
        assert torch.allclose(visual[j], eval_frame(folder / name), atol=0.05)
    assert torch.equal(test[0]["visual"], visual)  # evaluation is deterministic
    parts = [{"frame_00001.jpg"}, {"frame_00002.jpg", "frame_00003.jpg"}, {"frame_00004.jpg", "frame_00005.jpg"}]
    for _ in range(10):
        opened.clear()
        train[0]
        assert all(name in part for name, part in zip(opened, parts)), opened

    with pytest.raises(DataFileError, match="val_1fps_path.txt"):
        build_dataset("ks", layout.root, "val")


def test_ks_reads_the_authors_tree_through_path_options(tmp_path):
    layout = fx.write_ks(tmp_path / "src", per_class=1)
    root = tmp_path / "authors"
    (root / "ks_audio").mkdir(parents=True)
    (root / "ks_visual").mkdir()
    for split in ("train", "test"):
        (layout.root / f"{split}_1fps_path.txt").rename(root / "ks_audio" / f"{split}_1fps_path.txt")
        (layout.root / "audio" / split).rename(root / "ks_audio" / split)
        (layout.root / "visual" / split).rename(root / "ks_visual" / split)
    ds = build_dataset(
        "ks",
        root,
        "train",
        ks_list="ks_audio/{split}_1fps_path.txt",
        ks_audio_dir="ks_audio/{split}",
        ks_visual_dir="ks_visual/{split}",
        **SMALL,
    )
    assert len(ds) == 2 and ds[1]["visual"].shape == (3, 3, 32, 32)


# ------------------------------------------------------------------------------------------------------
# MM-Debiased


def test_mm_debiased_subsets_and_class_names(roots):
    from fastshap_train.data.mm_debiased import CLASSES

    layout = roots["mm-debiased"]
    for split in ("train", "val", "test"):
        ds = build_dataset("mm-debiased", layout.root, split, audio_frames=20, **SMALL)
        assert ds.num_classes == 10 and len(ds) == len(layout.samples[split])
        assert ds.ids == [s for s, _ in layout.samples[split]]
        assert ds.labels.tolist() == [y for _, y in layout.samples[split]]
        assert {CLASSES[y] for y in ds.labels.tolist()} == {"bowling", "singing"}
    item = ds[2]
    raw = np.load(layout.root / "audio" / f"{ds.ids[2]}.npy")  # (257, 30), cropped to 20 time frames
    assert item["audio"].shape == (1, 257, 20) and torch.equal(item["audio"][0], torch.from_numpy(raw[:, :20]))
    assert item["visual"].shape == (3, 3, 32, 32)
    assert build_dataset("mm-debiased", layout.root, "test", **SMALL)[0]["audio"].shape == (1, 257, 1003)


def test_mm_debiased_rejects_unknown_class(tmp_path):
    layout = fx.write_mm_debiased(tmp_path, per_class=1)
    data = json.loads((layout.root / "MM-Debiased.json").read_text())
    data[next(iter(data))]["label"] = "juggling"
    (layout.root / "MM-Debiased.json").write_text(json.dumps(data))
    with pytest.raises(DataFileError, match=r"MM-Debiased\.json.*'juggling'"):
        build_dataset("mm-debiased", layout.root, "train")


# ------------------------------------------------------------------------------------------------------
# UCF-101


def test_ucf101_rgb_flow_and_rgb_difference(roots):
    layout = roots["ucf101"]
    two = build_dataset("ucf101", layout.root, "train", **SMALL)
    assert two.modalities == ("visual", "flow") and two.num_classes == 3
    assert two.ids == [v for v, _ in layout.samples["train"]]
    assert two.labels.tolist() == [y for _, y in layout.samples["train"]]
    three = build_dataset("ucf101-three", layout.root, "test", **SMALL)
    assert three.modalities == ("visual", "flow", "rgb_diff")
    assert three.labels.tolist() == [y for _, y in layout.samples["test"]]  # test labels from the class folder

    item = three[2]
    assert item["visual"].shape == (3, 3, 32, 32) and item["flow"].shape == (3, 2, 32, 32)
    assert item["rgb_diff"].shape == (3, 3, 32, 32)
    assert all(item[m].dtype == torch.float32 for m in three.modalities)
    # 5 RGB frames: positions 0, 1, 3; differences (1 - 0), (2 - 1), (4 - 3) of the normalised frames.
    rgb = layout.root / "rgb" / three.ids[2]
    assert torch.allclose(item["rgb_diff"][0], item["visual"][1] - item["visual"][0], atol=1e-6)
    expected = eval_frame(rgb / "frame_00005.jpg") - eval_frame(rgb / "frame_00004.jpg")
    assert torch.allclose(item["rgb_diff"][2], expected, atol=0.1)
    # Flow: 4 frames, positions scaled from the RGB clip: 0, 1 (round 0.75), 2 (round 2.25); [u, v] stacked.
    u = Image.open(layout.root / "flow_u" / three.ids[2] / "frame_00002.jpg").resize((32, 32), Image.BILINEAR)
    u = np.asarray(u)
    expected_u = (torch.from_numpy(u.astype(np.float32) / 255) - 0.5) / 0.226
    assert torch.allclose(item["flow"][1, 0], expected_u, atol=0.1)
    assert not torch.allclose(item["flow"][1, 0], item["flow"][1, 1], atol=0.1)  # u and v differ
    train_item = build_dataset("ucf101-three", layout.root, "train", augment=True, **SMALL)[0]
    assert train_item["flow"].shape == (3, 2, 32, 32) and train_item["rgb_diff"].shape == (3, 3, 32, 32)


def test_ucf101_label_must_match_class_folder(tmp_path):
    layout = fx.write_ucf101(tmp_path, train_per_class=1)
    path = layout.root / "trainlist01.txt"
    path.write_text(path.read_text().replace("v_Archery_g08_c01.avi 2", "v_Archery_g08_c01.avi 3"))
    with pytest.raises(DataFileError, match=r"trainlist01\.txt: line 2: label '3' disagrees"):
        build_dataset("ucf101", layout.root, "train")


# ------------------------------------------------------------------------------------------------------
# MELD


def test_meld_text_audio_visual(roots):
    from fastshap_train.data.meld import EMOTIONS
    from fastshap_train.models.encoders import load_tokenizer

    layout = roots["meld"]
    train = build_dataset("meld", layout.root, "train", meld_text_len=24, **SMALL)
    val = build_dataset("meld", layout.root, "val", meld_text_len=24, **SMALL)  # MELD's dev files
    assert train.modalities == ("text", "audio", "visual") and train.num_classes == 7
    assert train.labels.tolist() == [y for _, y in layout.samples["train"]] == list(range(7))
    item = train[3]
    assert item["text"].shape == (3, 24) and item["text"].dtype == torch.int64
    assert item["audio"].shape == (1, 512, 128) and item["visual"].shape == (3, 3, 32, 32)
    ids, mask = item["text"][0], item["text"][1]
    decoded = load_tokenizer().decode(ids[mask == 1], skip_special_tokens=True)
    assert fx.MELD_WORDS[EMOTIONS[3]] in decoded and "said 0" in decoded
    # Clip numbers restart in every split: the same name is a different clip in train and dev.
    assert train.ids[0] == val.ids[0] == "dia0_utt0"
    assert not torch.equal(train[0]["audio"], val[0]["audio"])


def test_meld_weighted_f1():
    from fastshap_train.metrics import weighted_f1

    # class 0: F1 2/3 (support 2), class 1: 2/3 (support 1), class 2: 1 (support 1); class 3 absent.
    assert weighted_f1([0, 1, 1, 2], [0, 0, 1, 2], num_classes=4) == pytest.approx(0.5 * 2 / 3 + 0.25 * 2 / 3 + 0.25)
    assert weighted_f1([3, 3], [0, 1], num_classes=4) == 0.0


def test_meld_csv_errors_name_the_file(tmp_path):
    layout = fx.write_meld(tmp_path, emotions=("joy", "anger"))
    path = layout.root / "train_sent_emo.csv"
    path.write_text(path.read_text().replace(",joy,", ",glee,"))
    with pytest.raises(DataFileError, match=r"train_sent_emo\.csv: line 2: emotion 'glee'"):
        build_dataset("meld", layout.root, "train")
    path.write_text("Sr No.,Utterance,Speaker\n1,hi,Joey\n")
    with pytest.raises(DataFileError, match=r"train_sent_emo\.csv: lacks the column\(s\) Emotion, Dialogue_ID"):
        build_dataset("meld", layout.root, "train")


# ------------------------------------------------------------------------------------------------------
# CMU-MOSI


def test_mosi_labels_features_and_splits(roots):
    layout = roots["mosi"]
    train = build_dataset("mosi", layout.root, "train")
    val = build_dataset("mosi", layout.root, "val")  # the pickle's "valid" entry
    assert len(train) == 8 and len(val) == 4 and train.num_classes == 2
    sentiment = layout.extra["train"]
    assert train.labels.tolist() == [int(s >= 0) for s in sentiment]
    assert train.labels[0] == 1 and sentiment[0] == 0  # neutral counts as positive
    assert train.labels[1] == 0 and sentiment[1] < 0
    item = train[0]
    assert item["text"].shape == (3, 50) and item["text"].dtype == torch.int64
    assert item["text"][0, 0] == 101 and item["text"][1].sum() > 2
    assert item["audio"].shape == (50, 5) and item["visual"].shape == (50, 20)
    assert train.nonfinite == 1 and torch.isfinite(train.features["audio"]).all()
    assert torch.allclose(train.features["visual"].mean((0, 1)), torch.zeros(20), atol=1e-5)
    assert train.encoder_spec("audio") == {"kind": "mlp", "in_dim": 250}
    dropped = build_dataset("mosi", layout.root, "train", mosi_drop_neutral=True)
    assert len(dropped) == 7 and dropped.labels.tolist() == train.labels.tolist()[1:]


def test_mosi_bad_pickle_names_the_file(tmp_path):
    (tmp_path / "aligned_50.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(DataFileError, match=r"aligned_50\.pkl: is not a readable pickle"):
        build_dataset("mosi", tmp_path, "train")
    with open(tmp_path / "aligned_50.pkl", "wb") as fh:
        pickle.dump({"train": {"audio": np.zeros((2, 50, 5))}}, fh)
    with pytest.raises(DataFileError, match="has no 'text_bert'"):
        build_dataset("mosi", tmp_path, "train")


# ------------------------------------------------------------------------------------------------------
# Caltech101-20


def test_caltech_views_split_and_both_mat_formats(tmp_path):
    from fastshap_train.data.caltech import WIDTHS

    v5 = fx.write_caltech(tmp_path / "v5", per_class=5)
    v73 = fx.write_caltech(tmp_path / "v73", per_class=5, v73=True)
    a = build_dataset("caltech101-20", v5.root, "train", views=["hog", "1", "view4"], test_ratio=0.2)
    b = build_dataset("caltech101-20", v73.root, "train", views=["hog", "1", "view4"], test_ratio=0.2)
    assert a.modalities == ("view3", "view1", "view4") and a.num_classes == 20
    for m in a.modalities:
        assert torch.equal(a._x[m], b._x[m])
        assert a[0][m].shape == (WIDTHS[int(m[4:])],) and a[0][m].dtype == torch.float32
        assert torch.allclose(a._x[m].mean(0), torch.zeros(a._x[m].shape[1]), atol=1e-5)  # standardised on train
    test = build_dataset("caltech101-20", v5.root, "test", views=["hog", "wm"], test_ratio=0.2)
    assert len(a) == 80 and len(test) == 20
    assert sorted(test.labels.tolist()) == list(range(20))  # stratified: one of each class's five
    assert set(a.source_rows.tolist()).isdisjoint(test.source_rows.tolist())
    # Y is 1-based in the file, 0-based in the dataset.
    assert torch.equal(test.labels, torch.from_numpy(v5.extra["labels"][test.source_rows.numpy()]))
    other = build_dataset("caltech101-20", v5.root, "test", views=["hog", "wm"], test_ratio=0.2, split_seed=1)
    assert not torch.equal(other.source_rows, test.source_rows)
    assert len(build_dataset("caltech101-20", v5.root, "train", test_ratio=0.2).modalities) == 6
    with pytest.raises(ValueError, match="choose 2 to 6 views"):
        build_dataset("caltech101-20", v5.root, "train", views=["hog"])
    (tmp_path / "v5" / "Caltech101-20.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(DataFileError, match=r"Caltech101-20\.mat: is not a readable \.mat file"):
        build_dataset("caltech101-20", v5.root, "train")


# ------------------------------------------------------------------------------------------------------
# AVE: data, model, per-segment valuation


def test_ave_items_segment_labels_and_workers(roots):
    layout = roots["ave"]
    train = build_dataset("ave", layout.root, "train")
    test = build_dataset("ave", layout.root, "test")
    assert train.num_classes == 29 and len(train) == 6 and len(test) == 3 and train.segments == 10
    item = test[1]
    row = layout.samples["test"][1][0]
    assert item["audio"].shape == (10, 8) and item["visual"].shape == (10, 2, 2, 16)
    assert item["label"].shape == (10,) and item["label"].dtype == torch.int64
    assert item["label"].tolist() == layout.extra["labels"][row].tolist()
    assert torch.equal(item["visual"], torch.from_numpy(layout.extra["visual"][row]))
    assert torch.equal(item["audio"], torch.from_numpy(layout.extra["audio"][row]))
    assert train.encoder_spec("visual") == {"kind": "segments", "shape": [10, 2, 2, 16]}
    # h5py handles do not cross processes: a worker opens its own.
    loader = torch.utils.data.DataLoader(test, batch_size=2, num_workers=1)
    batch = next(iter(loader))
    assert batch["label"].shape == (2, 10) and torch.equal(batch["visual"][1], item["visual"])


def test_ave_file_errors(tmp_path):
    import h5py

    layout = fx.write_ave(tmp_path)
    with h5py.File(layout.root / "labels.h5", "r+") as f:
        f["avadataset"][0, 0, 0] = 1.0  # segment 0 of video 0: two classes
        f["avadataset"][0, 0, 28] = 1.0
    with pytest.raises(DataFileError, match=r"labels\.h5: segment labels must be one-hot"):
        build_dataset("ave", layout.root, "train")
    (layout.root / "val_order.h5").unlink()
    with pytest.raises(DataFileError, match=r"val_order\.h5: does not exist.*AVE folder"):
        build_dataset("ave", layout.root, "val")


def brute_force_phi(head, feats, labels):
    """Per-segment paper benefit, enumerated: v(S) = |S| * fraction of correct segments; exact fractions."""
    n, b = len(feats), labels.shape[0]
    value = {}
    with torch.no_grad():
        for size in range(n + 1):
            for S in combinations(range(n), size):
                logits = head([f if i in S else torch.zeros_like(f) for i, f in enumerate(feats)]).double()
                correct = (logits.argmax(-1) == labels).sum(1).tolist()
                value[S] = [Fraction(size * c, labels.shape[1]) for c in correct]
    phi = [[Fraction(0)] * n for _ in range(b)]
    for i in range(n):
        for size in range(n):
            for S in combinations([j for j in range(n) if j != i], size):
                w = Fraction(math.factorial(size) * math.factorial(n - size - 1), math.factorial(n))
                with_i = tuple(sorted(S + (i,)))
                for s in range(b):
                    phi[s][i] += w * (value[with_i][s] - value[S][s])
    return torch.tensor([[float(p) for p in row] for row in phi], dtype=torch.float64)


def test_ave_model_and_per_segment_valuation_match_brute_force():
    from fastshap_train.models.ave import AVEHead, SegmentInput, segment_accuracy, segment_loss

    torch.manual_seed(0)
    head = AVEHead(segments=10, audio_dim=8, regions=4, visual_dim=16, num_classes=5, hidden=6, attention_dim=12)
    audio, visual = torch.randn(7, 10, 8), torch.randn(7, 10, 2, 2, 16)
    enc_a, enc_v = SegmentInput((10, 8)), SegmentInput((10, 2, 2, 16))
    feats = [enc_a(audio), enc_v(visual)]
    assert feats[1].shape == (7, 640) and head.dims == [80, 640]
    logits = head(feats)
    assert logits.shape == (7, 10, 5)
    attended, weights = head.attention(audio, visual.flatten(2, 3))
    assert torch.allclose(weights.sum(-1), torch.ones(7, 10), atol=1e-6)
    assert torch.allclose(attended, torch.einsum("btr,btrd->btd", weights, visual.flatten(2, 3)), atol=1e-6)

    labels = logits.argmax(-1)
    labels[:, ::3] = (labels[:, ::3] + 1) % 5  # some segments wrong
    head.eval()
    phi = fastshap.modality_shapley(feats, head, labels)
    expected = brute_force_phi(head, feats, labels)
    assert phi.shape == (7, 2) and torch.allclose(phi.double(), expected, atol=1e-6)
    full = 2 * (logits.argmax(-1) == labels).double().mean(1)  # efficiency: sum phi = v(N)
    assert torch.allclose(phi.double().sum(1), full, atol=1e-6)
    assert len({round(float(p), 4) for p in phi.flatten()}) > 2  # fractional values, not just {0, .5, 1, 1.5}

    # The loss trains: a few Adam steps on fixed data lower it and raise the segment accuracy.
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    target = torch.randint(0, 5, (7, 10))
    with torch.no_grad():
        first = float(segment_loss(head(feats), target))
    for _ in range(40):
        opt.zero_grad()
        segment_loss(head(feats), target).backward()
        opt.step()
    with torch.no_grad():
        assert float(segment_loss(head(feats), target)) < 0.5 * first
        assert segment_accuracy(head(feats), target) > 0.6


# ------------------------------------------------------------------------------------------------------
# missing and corrupt files, wrong roots


def test_missing_file_is_named_and_skip_bad_counts_it(tmp_path):
    layout = fx.write_ks(tmp_path)
    missing = layout.root / "audio" / "train" / f"{layout.samples['train'][1][0]}.npy"
    missing.unlink()
    with pytest.raises(DataFileError) as err:
        build_dataset("ks", layout.root, "train", **SMALL)
    assert err.value.filename == str(missing) and "--skip-bad" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 of 4 samples"):
        ds = build_dataset("ks", layout.root, "train", skip_bad=True, **SMALL)
    assert len(ds) == 3 and ds.skipped[0][0] == layout.samples["train"][1][0] and str(missing) in ds.skipped[0][1]
    assert ds.labels.tolist() == [0, 1, 1]


def test_corrupt_files_are_named_at_load_or_by_the_full_check(tmp_path):
    layout = fx.write_mm_debiased(tmp_path)
    sample = layout.samples["train"][0][0]
    frame = layout.root / "visual" / sample / "frame_00002.jpg"
    frame.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    ds = build_dataset("mm-debiased", layout.root, "train", **SMALL)  # existence check passes
    with pytest.raises(DataFileError) as err:
        ds[0]
    assert err.value.filename == str(frame) and "not a readable image" in str(err.value)
    with pytest.raises(DataFileError, match="not a readable image"):
        build_dataset("mm-debiased", layout.root, "train", data_check="full", **SMALL)
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        ds = build_dataset("mm-debiased", layout.root, "train", data_check="full", skip_bad=True, **SMALL)
    assert sample not in ds.ids and len(ds) == 3
    spec = layout.root / "audio" / f"{layout.samples['test'][0][0]}.npy"
    spec.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataFileError, match=r"\.npy: is not a readable \.npy array"):
        build_dataset("mm-debiased", layout.root, "test", **SMALL)[0]
    np.save(spec, np.zeros((128, 10), dtype=np.float32))
    with pytest.raises(DataFileError, match=r"expected 257 values along axis 0, got shape \(128, 10\)"):
        build_dataset("mm-debiased", layout.root, "test", **SMALL)[0]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("ks", "train_1fps_path.txt"),
        ("mm-debiased", "MM-Debiased.json"),
        ("ucf101", "classInd.txt"),
        ("ucf101-three", "classInd.txt"),
        ("meld", "train_sent_emo.csv"),
        ("mosi", "aligned_50.pkl"),
        ("caltech101-20", "Caltech101-20.mat"),
        ("ave", "visual_feature.h5"),
    ],
)
def test_wrong_root_says_what_it_expected(tmp_path, name, expected):
    with pytest.raises(DataFileError) as err:
        build_dataset(name, tmp_path, "train")
    assert expected in str(err.value) and "--data-root" in str(err.value)
    with pytest.raises(DataFileError, match="--data-root"):
        build_dataset(name, None, "train")
    with pytest.raises(DataFileError, match="is not a directory"):
        build_dataset(name, tmp_path / "nowhere", "train")


# ------------------------------------------------------------------------------------------------------
# one short epoch of each through the CLI

CLI_CASES = {
    "ks": ["--audio-frames", "32"],
    "mm-debiased": ["--audio-frames", "32"],
    "ucf101": [],
    "ucf101-three": [],
    "meld": ["--audio-frames", "16", "--meld-text-len", "12"],
    "mosi": [],
    "caltech101-20": ["--views", "gabor,wm,gist", "--test-ratio", "0.25"],
    "ave": ["--method", "sample-level", "--warmup", "0", "--ave-hidden", "8", "--ave-attention-dim", "16"],
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_one_epoch_through_the_cli(roots, tmp_path, name):
    root = roots["ucf101" if name == "ucf101-three" else name].root
    out = tmp_path / "run"
    code = main(
        [
            "--dataset",
            name,
            "--data-root",
            str(root),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--threads",
            "1",
            "--no-progress",
            "--no-tensorboard",
            "--no-plots",
            "--no-checkpoint",
            *CLI_CASES[name],
        ]
    )
    assert code == 0
    rows = read_metrics(out / "metrics.csv")
    results = json.loads((out / "results.json").read_text())
    ds = build_dataset(
        name,
        root,
        "train",
        **({"views": ["gabor", "wm", "gist"], "test_ratio": 0.25} if name == "caltech101-20" else {}),
    )
    assert len(rows) == 1 and results["modalities"] == list(ds.modalities)
    assert 0.0 <= rows[0]["test_acc"] <= 1.0 and math.isfinite(rows[0]["train_loss"])
    assert rows[0]["valued"] == len(ds)
    phi = np.load(out / "phi" / "epoch_000.npz")["phi"]
    n = len(ds.modalities)
    assert phi.shape == (len(ds), n) and np.all(phi >= -(n - 1) / 2 - 1e-6) and np.all(phi <= (n + 1) / 2 + 1e-6)
    if name == "ave":  # per-segment benefit: multiples of 1 / (2 x 10 segments); the plan re-sampled
        assert np.allclose(phi * 20, np.round(phi * 20), atol=1e-4)
        assert sum(v for k, v in rows[0].items() if k.startswith("copies_")) > 0


def test_engine_f1_from_its_confusion_matrix_matches_the_direct_count():
    from fastshap_train.metrics import confusion_update, weighted_f1, weighted_f1_from_confusion

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 40, 6, generator=g)  # per-segment outputs: (B, T, C) with (B, T) labels
    labels = torch.randint(0, 6, (3, 40), generator=g)
    confusion = torch.zeros(6, 6, dtype=torch.float64)
    for b in range(3):  # batch by batch, as the engine adds them
        confusion_update(confusion, logits[b : b + 1], labels[b : b + 1])
    assert confusion.sum() == labels.numel()
    # An independent count: per class, F1 = 2 tp / (predicted + support), weighted by support.
    pred, true = logits.argmax(-1).flatten().tolist(), labels.flatten().tolist()
    expected = 0.0
    for c in range(6):
        tp = sum(p == c and t == c for p, t in zip(pred, true))
        predicted, support = pred.count(c), true.count(c)
        if support:
            expected += 2 * tp / (predicted + support) * support / len(true)
    assert weighted_f1_from_confusion(confusion) == pytest.approx(expected)
    assert weighted_f1(logits.argmax(-1), labels, 6) == pytest.approx(expected)
