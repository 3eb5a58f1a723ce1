"""fastshap.resampling as a user calls it: plans on known values, the dataset and keep rows, the valuation
pass (also across two processes), and the errors for bad arguments."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fastshap
from fastshap.resampling import (
    Plan,
    ResampledDataset,
    apply_keep,
    copy_counts,
    draw_subset,
    fixed_rate_plan,
    modality_level_plan,
    modality_level_rule,
    sample_level_plan,
    value_dataset,
    weak_modality,
)

# ------------------------------------------------------------------------------------------------------
# plans on known values


def test_sample_level_default_is_the_authors_rule_for_two_modalities():
    # phi 0.5 / 0 / -0.5 -> 1 / 2 / 3 copies keeping that modality only; phi >= 1 none; NaN (not valued) none
    phi = torch.tensor([[1.5, 0.5], [1.0, 1.0], [0.0, 1.0], [-0.5, 1.5], [math.nan, math.nan]])
    plan = sample_level_plan(phi)
    assert plan.index.tolist() == [0, 1, 2, 3, 4] + [2, 2, 3, 3, 3] + [0]
    keep = [[True, True]] * 5 + [[True, False]] * 5 + [[False, True]]
    assert plan.keep.tolist() == keep
    assert plan.copies_per_modality() == [5, 1] and plan.num_copies == 6 and len(plan) == 11
    assert plan.info["copies"] == [5, 1]


def test_sample_level_rules_cap_and_custom_fs():
    phi = torch.tensor([[-1.0, 0.5, 2.0]])  # n = 3: x = 2, 0.5, -1; x_max = 2
    assert copy_counts(phi, cap=None).tolist() == [[4, 1, 0]]
    assert copy_counts(phi, cap=3).tolist() == [[3, 1, 0]]
    assert copy_counts(phi, "concave", cap=None).tolist() == [[4, 2, 0]]  # 4 sqrt(0.25) = 2
    assert copy_counts(phi, "convex", cap=None).tolist() == [[4, 0, 0]]  # 4 * 0.0625 = 0.25 -> 0
    plan = sample_level_plan(phi, lambda x: 1.5 * x, cap=None)  # 3, 0.75 -> 1, none for phi >= 1
    assert plan.copies_per_modality() == [3, 1, 0]


def test_fixed_rate_plan_ignores_how_weak():
    phi = torch.tensor([[0.9, 1.1], [-0.5, 1.5], [1.0, 0.0]])
    plan = fixed_rate_plan(phi, copies=3)
    assert plan.copies_per_modality() == [6, 3]
    assert plan.index[3:].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_modality_level_plan_draws_int_p_n_copies_of_the_weak_modality():
    phi = torch.tensor([[1.5, 0.5], [1.0, 1.0], [0.5, 0.5], [1.5, -0.5]])  # means 1.125, 0.375: d = 0.75
    rule = modality_level_rule(phi)
    assert rule.weak == 1 and rule.d == pytest.approx(0.75) and rule.p == pytest.approx(0.5)  # 2/3 d
    plan = modality_level_plan(phi, 30, generator=torch.Generator().manual_seed(3))
    assert len(plan) == 30 + 15 and plan.copies_per_modality() == [0, 15]
    copies = plan.index[30:]
    assert len(set(copies.tolist())) == 15  # without replacement while p <= 1
    again = modality_level_plan(phi, 30, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.index, plan.index)  # the caller's generator decides the draw
    # NaN rows (samples outside Z) are ignored: the same rule from phi of the whole set
    padded = torch.cat([phi, torch.full((6, 2), math.nan)])
    assert (
        modality_level_plan(padded, 30, generator=torch.Generator().manual_seed(3)).index.tolist()
        == plan.index.tolist()
    )
    assert len(modality_level_plan(torch.full((4, 2), math.nan), 30)) == 30  # nothing valued: the originals
    tanh = modality_level_plan(phi, 100, fm="tanh", alpha=2.0, norm="range")  # x = 0.75 / 2
    assert tanh.copies_per_modality()[1] == int(math.tanh(2 * 0.375) * 100)


def test_draw_subset_size_and_distinct():
    z = draw_subset(50, 0.2, torch.Generator().manual_seed(0))
    assert len(z) == 10 and len(set(z.tolist())) == 10 and int(z.max()) < 50
    assert len(draw_subset(torch.arange(100, 103), 0.01)) == 1  # at least one


def test_weak_modality_is_tie_aware():
    phi = torch.tensor([[1.0, 1.0], [0.5, 1.5], [1.5, 0.5], [0.0, 0.0], [math.nan, 0.5], [1.0, 0.0, 0.0][:2]])
    assert weak_modality(phi).tolist() == [-1, 0, 1, -1, -1, 1]
    three = torch.tensor([[0.5, 0.5, 2.0], [1.0, 0.0, 2.0]])
    assert weak_modality(three).tolist() == [-1, 1]
    assert phi.argmin(1)[0].item() == 0  # what the argmin would have said for the tie


def test_plan_checks_and_copies():
    plan = Plan.originals(3, 2).with_copies(torch.tensor([2, 0]), torch.tensor([1, 0]))
    assert plan.index.tolist() == [0, 1, 2, 2, 0] and plan.keep[3:].tolist() == [[False, True], [True, False]]
    with pytest.raises(TypeError, match="Plan.keep"):
        Plan(torch.arange(3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="3 indices but 2 keep rows"):
        Plan(torch.arange(3), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside"):
        Plan.originals(3, 2).with_copies(torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="unknown f_s"):
        sample_level_plan(torch.zeros(2, 2), "cubic")
    with pytest.raises(ValueError, match="one count per value"):
        copy_counts(torch.zeros(2, 2), lambda x: x[:, :1].repeat(1, 3))
    with pytest.raises(ValueError, match="NaN or unbounded"):
        copy_counts(torch.zeros(2, 2), lambda x: x * math.inf, cap=None)
    with pytest.raises(ValueError, match="unknown f_m"):
        modality_level_plan(torch.zeros(2, 2), 5, fm="cubic")
    with pytest.raises(ValueError, match="norm"):
        modality_level_plan(torch.zeros(2, 2), 5, norm="wide")
    with pytest.raises(TypeError, match="floating point"):
        sample_level_plan(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(K, n\)"):
        sample_level_plan(torch.zeros(4))


# ------------------------------------------------------------------------------------------------------
# keep rows and the dataset


def test_apply_keep_zeroes_or_replaces_removed_rows_and_keeps_gradients():
    a = torch.randn(4, 3, requires_grad=True)
    v = torch.randn(4, 2, requires_grad=True)
    keep = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    out_a, out_v = apply_keep([a, v], keep)
    assert torch.equal(out_a[[0, 1, 3]], a[[0, 1, 3]]) and bool((out_a[2] == 0).all())
    assert torch.equal(out_v[[0, 2]], v[[0, 2]]) and bool((out_v[[1, 3]] == 0).all())
    (out_a.sum() + out_v.sum()).backward()
    assert a.grad[:, 0].tolist() == [1, 1, 0, 1] and v.grad[:, 0].tolist() == [1, 0, 1, 0]
    # baselines: one per sample shape (features or zero inputs of an image modality) or per batch
    images = torch.rand(4, 3, 8, 8)
    blank = torch.full((3, 8, 8), 0.5)
    _, out = apply_keep([a.detach(), images], keep, baselines=[torch.ones(3), blank])
    assert torch.equal(out[1], blank) and torch.equal(out[3], blank) and torch.equal(out[2], images[2])
    out_a, _ = apply_keep([a.detach(), images], keep, baselines=[torch.arange(12.0).view(4, 3), blank])
    assert out_a[2].tolist() == [6.0, 7.0, 8.0]
    with pytest.raises(ValueError, match="2 modality columns for 3"):
        apply_keep([a, v, v], keep)
    with pytest.raises(ValueError, match="shaped like one sample"):
        apply_keep([a, v], keep, baselines=[torch.ones(2), torch.ones(2)])
    with pytest.raises(ValueError, match="B = 4 rows"):
        apply_keep([a[:3], v], keep)


class _DictItems(Dataset):
    def __init__(self, n):
        self.x = torch.arange(n * 2.0).view(n, 2)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": i}


def test_resampled_dataset_items_of_every_kind_and_plan_swaps():
    plan = sample_level_plan(torch.tensor([[0.5, 1.5], [1.5, 1.5], [1.0, 0.0]]))  # copies: 0 keeps 0; 2 keeps 1 x2
    tuples = ResampledDataset(TensorDataset(torch.arange(3.0), torch.arange(3)), plan)
    (x, y), keep = tuples[3]
    assert x.item() == 0 and keep.tolist() == [True, False]
    batches = list(DataLoader(tuples, batch_size=6))
    (xs, ys), keeps = batches[0]
    assert xs.tolist() == [0, 1, 2, 0, 2, 2] and keeps.shape == (6, 2) and keeps.dtype == torch.bool
    dicts = ResampledDataset(_DictItems(3), plan, keep_key="keep")
    item = dicts[5]
    assert item["label"] == 2 and item["keep"].tolist() == [False, True]
    tensors = ResampledDataset(torch.arange(30.0).view(3, 10), num_modalities=2)  # a tensor is a dataset too
    loader = DataLoader(tensors, batch_size=4)
    assert [len(b[0]) for b in loader] == [3]
    tensors.set_plan(plan)  # a loader built before the swap sees the new rows
    assert [len(b[0]) for b in loader] == [4, 2]
    with pytest.raises(ValueError, match="sample 5"):
        tensors.set_plan(Plan.originals(6, 2))
    with pytest.raises(ValueError, match="3 modalities"):
        tensors.set_plan(Plan.originals(3, 3))
    with pytest.raises(TypeError, match="dict items"):
        ResampledDataset(TensorDataset(torch.arange(3.0)), plan, keep_key="keep")[0]
    with pytest.raises(ValueError, match="either a plan or num_modalities"):
        ResampledDataset(_DictItems(3))


# ------------------------------------------------------------------------------------------------------
# the valuation pass


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5))
        self.v = nn.Linear(3, 8)
        self.head = nn.Linear(16, 4)

    def features(self, batch):
        xa, xv, _ = batch
        return [self.a(xa), self.v(xv)]


def _data(n=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g), torch.randint(0, 4, (n,), generator=g)
    )


def test_value_dataset_is_the_op_on_every_sample_in_order_in_eval_mode():
    data, net = _data(), _Net()
    net.train()
    phi = value_dataset(data, lambda b: (net.features(b), b[2]), net.head, model=net, batch_size=16)
    assert net.training  # mode restored
    net.eval()
    xa, xv, y = data.tensors
    with torch.no_grad():
        expected = fastshap.modality_shapley(net.features((xa, xv, y)), net.head, y)
    assert phi.shape == (70, 2) and torch.equal(phi, expected)  # dropout off: the eval-mode values
    z = torch.tensor([5, 1, 60])
    part = value_dataset(data, lambda b: (net.features(b), b[2]), net.head, model=net, indices=z)
    assert torch.equal(part[z], expected[z]) and int(part.isnan().all(1).sum()) == 67
    with pytest.raises(ValueError, match=r"\[0, 70\)"):
        value_dataset(data, lambda b: (net.features(b), b[2]), net.head, indices=[70])


def _ddp_worker(rank, world, port, out):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data, net = _data(53), _Net()
        z = torch.tensor([3, 50, 7, 8, 9, 30, 31])
        full = value_dataset(data, lambda b: (net.features(b), b[2]), net.head, model=net, batch_size=8)
        part = value_dataset(data, lambda b: (net.features(b), b[2]), net.head, model=net, indices=z)
        torch.save({"full": full, "part": part}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_value_dataset_gathers_every_ranks_share(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    data, net = _data(53), _Net()
    local = value_dataset(data, lambda b: (net.features(b), b[2]), net.head, model=net)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["full"], local)  # every rank holds the whole table
        z = [3, 50, 7, 8, 9, 30, 31]
        assert torch.equal(got["part"][z], local[z]) and int(got["part"].isnan().all(1).sum()) == 53 - 7
