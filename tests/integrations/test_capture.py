"""fastshap.capture_features: a head's inputs recorded during the model's own forward, valued on the fused
path; the op never records its coalition batches; a head that hooks send to the slow path warns once."""

import warnings

import pytest
import torch
from torch import nn

import fastshap
from fastshap import heads


class _Model(nn.Module):
    def __init__(self, head, concat):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.v, self.head, self.concat = nn.Linear(6, 4), nn.Linear(5, 3), head, concat

    def forward(self, xa, xv):
        feats = [torch.relu(self.a(xa)), torch.relu(self.v(xv))]
        return self.head(torch.cat(feats, 1) if self.concat else feats), feats


def _batch(b=24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 6, generator=g), torch.randn(b, 5, generator=g), torch.randint(0, 5, (b,), generator=g)


@pytest.mark.parametrize(
    "make_head,concat,dims",
    [
        (lambda: nn.Linear(7, 5), True, [4, 3]),  # concatenated input, split by dims
        (lambda: heads.ConcatLinear([4, 3], 5), False, None),  # list input, dims from the head
        (lambda: heads.ConcatMLP([4, 3], 8, 5), False, None),
    ],
)
def test_captured_features_are_the_forwards_and_keep_the_fused_path(make_head, concat, dims):
    xa, xv, y = _batch()
    model = _Model(make_head(), concat)
    capture = fastshap.capture_features(model.head, dims=dims)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs as a callable" warning for the capture's own hook
        logits, feats = model(xa, xv)
        logits.sum().backward()  # the model trains as usual: the hook changes nothing
        assert [f.shape for f in capture.features] == [(24, 4), (24, 3)]
        assert all(torch.equal(c, f.detach()) for c, f in zip(capture.features, feats))
        assert not any(c.requires_grad for c in capture.features)
        phi = capture.value(y, backend="cpp")  # an explicit kernel backend refuses a head it must call
    capture.remove()
    assert not model.head._forward_pre_hooks
    assert torch.equal(phi, fastshap.modality_shapley([f.detach() for f in feats], model.head, y))


class _OwnForward(heads.ConcatMLP):
    """A head the op must run as a callable (a forward of its own): its coalition batches pass the hook."""

    def forward(self, features):
        return self.fc2(torch.nn.functional.gelu(self.fc1(torch.cat(list(features), -1))))


def test_the_op_never_records_its_own_coalition_batches():
    xa, xv, y = _batch()
    model = _Model(_OwnForward([4, 3], 8, 5), concat=False)
    capture = fastshap.capture_features(model.head)
    _, feats = model(xa, xv)
    seen = []
    model.head.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].shape[0]))
    phi = capture.value(y)  # the callable path: the head runs on the coalitions
    assert seen and sum(seen) >= 24 * 3  # it did run, on the coalitions
    assert all(torch.equal(c, f.detach()) for c, f in zip(capture.features, feats))  # still the model's batch
    assert torch.equal(phi, fastshap.modality_shapley([f.detach() for f in feats], model.head, y))


def test_a_plain_pre_hook_head_runs_as_a_callable_and_warns_once():
    xa, xv, y = _batch()
    model = _Model(nn.Linear(7, 5), concat=True)
    grabbed = []
    model.head.register_forward_pre_hook(lambda m, args: grabbed.append(args[0]))
    _, feats = model(xa, xv)
    feats = [f.detach() for f in feats]
    with pytest.warns(UserWarning, match="capture_features"):
        fastshap.modality_shapley(feats, model.head, y)
    assert len(grabbed) > 1 and grabbed[-1].shape[0] != 24  # what the issue saw: the hook got coalition batches
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastshap.modality_shapley(feats, model.head, y)  # once per head type and reason
    with pytest.raises(fastshap.BackendError, match="has forward hooks"):
        fastshap.modality_shapley(feats, model.head, y, backend="cpp")


def test_capture_errors():
    with pytest.raises(TypeError, match="head module"):
        fastshap.capture_features(lambda xs: xs)
    xa, xv, _ = _batch()
    model = _Model(nn.Linear(7, 5), concat=True)
    capture = fastshap.capture_features(model.head)
    with pytest.raises(RuntimeError, match="not run a forward"):
        _ = capture.features
    model(xa, xv)
    with pytest.raises(ValueError, match="pass dims"):
        _ = capture.features
    capture.remove()
    with fastshap.capture_features(model.head, dims=[5, 3]) as wrong:
        model(xa, xv)
        with pytest.raises(ValueError, match="cannot split"):
            _ = wrong.features
    assert not model.head._forward_pre_hooks
