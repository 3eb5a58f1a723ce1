"""What a user would run instead of fastshap, written honestly, and the checks that it computes the same values.

Every alternative takes the same inputs as ``fastshap.modality_shapley``: n feature tensors ``(B, d_i)``, a
head over their concatenation (``nn.Linear(sum d_i, C)`` or ``fastshap.heads.ConcatMLP``) and labels
``(B,)``; a removed modality's features are zeros (fastshap's default). The benchmarks assert each one's
values against fastshap on the very inputs they time (:func:`compare`), so every figure compares the same
quantity:

* :func:`plain_forward`: one head forward over the concatenated features, ``torch.cat`` included, as the
  user's model runs it. The yardstick: the cost of a prediction, not of a valuation.
* :func:`decomposed_torch`: what a torch user who knows the head starts with a linear layer writes: the n
  per-modality GEMMs once, every coalition's logits (MLP: hidden pre-activations) as a sum of them (one
  einsum), the empty coalition skipped (worth 0 under the paper benefit), then argmax and the Shapley
  weights. The same algorithm as fastshap's, in plain torch ops: the strongest alternative here.
* :func:`naive_batched`: all non-empty masked copies of the batch stacked into one head forward, then
  argmax, benefit and the Shapley weights in torch. The obvious vectorised approach for any head.
* :func:`authors_loop`: the authors' released valuation (n = 2): three batched head forwards (full, audio
  dropped, visual dropped) and a per-sample Python loop of numpy argmaxes.
* :func:`balancemm_loop`: BalanceMM's per-sample Shapley: one batched forward per coalition, then Python
  loops over samples, modalities and coalitions with the factorial weights.
* :func:`captum_shapley`: Captum's exact ``ShapleyValues`` with one feature group per modality on the
  concatenated input. Captum attributes a scalar per sample, and the paper's benefit ``|S| 1[correct]`` is
  not a function of the perturbed input alone, so it runs with ``v(S) = 1[correct]`` and is compared with
  fastshap's ``benefit="accuracy"`` (both evaluate ``v(empty)`` on all-zero features).

Only the head is evaluated, never encoders: that is the part every method shares, and the only part
fastshap changes.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from torch import Tensor, nn

from fastshap import reference
from fastshap.heads import ConcatMLP


@dataclass
class Case:
    """Inputs of one benchmark case."""

    features: list  # n tensors (B, d)
    head: nn.Module  # nn.Linear(n * d, C) or ConcatMLP
    labels: Tensor  # (B,) int64

    @property
    def n(self) -> int:
        return len(self.features)

    @property
    def batch(self) -> int:
        return self.features[0].shape[0]

    def rows(self, count: int) -> Case:
        """The first `count` samples (for the slow alternatives)."""
        return Case([f[:count] for f in self.features], self.head, self.labels[:count])


def make_case(
    n: int,
    batch: int,
    dim: int = 512,
    classes: int = 31,
    *,
    hidden: int | None = None,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    seed: int = 0,
) -> Case:
    """Seeded inputs: non-negative features (as pooled ResNet features are), a random head, and labels that
    equal the full model's prediction for 60 % of samples (random otherwise), so that the Shapley values
    spread over all their possible values instead of being mostly zero."""
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, dim, generator=gen).relu_() for _ in range(n)]
    if hidden is None:
        head = nn.Linear(n * dim, classes)
        layers = [head]
    else:
        head = ConcatMLP([dim] * n, hidden, classes)
        layers = [head.fc1, head.fc2]
    with torch.no_grad():
        for layer in layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.uniform_(-bound, bound, generator=gen)
        predicted = concat_forward(head, torch.cat(feats, 1)).argmax(1)
    labels = torch.where(
        torch.rand(batch, generator=gen) < 0.6, predicted, torch.randint(classes, (batch,), generator=gen)
    )
    head = head.to(device=device, dtype=dtype).eval()
    return Case([f.to(device=device, dtype=dtype) for f in feats], head, labels.to(device))


def concat_forward(head: nn.Module, x: Tensor) -> Tensor:
    """The head applied to already concatenated features x (rows, sum d_i) -> (rows, C) logits."""
    if isinstance(head, ConcatMLP):
        return head.fc2(torch.relu(head.fc1(x)))
    return head(x)


# --- the yardstick and a cost breakdown ----------------------------------------------------------------


def plain_forward(features: Sequence[Tensor], head: nn.Module) -> Tensor:
    """One prediction of the batch: torch.cat + the head, as the user's model computes it."""
    return concat_forward(head, torch.cat(list(features), dim=1))


def partial_products(features: Sequence[Tensor], weight: Tensor) -> Tensor:
    """The n per-modality GEMMs h_i @ W_i^T into (n, B, K): the first stage of fastshap's cpp backend, timed
    alone to split its cost into GEMMs and coalition walk. The reference's own function, which runs the same
    GEMMs as cpp (output columns padded to fastshap.reference.gemm_width on the CPU)."""
    return reference._partial_products(features, weight, reference.compute_dtype(features[0].dtype))


# --- naive batched masked evaluation ---------------------------------------------------------------------


@functools.cache
def coalition_masks(n: int, device=None) -> Tensor:
    """(2^n, n) bool: row m is the coalition whose bit i says whether modality i is present. Made once per n
    and device (a copy from host memory on every call would synchronise with the GPU)."""
    m = torch.arange(1 << n, device=device).unsqueeze(1)
    return (m >> torch.arange(n, device=device)) & 1 == 1


@functools.cache
def shapley_numerators(n: int, device=None) -> Tensor:
    """(2^n, n) float64 integers k_i(S): (|S|-1)!(n-|S|)! if i in S, else -|S|!(n-|S|-1)!; phi = v @ k / n!.
    Made once per n and device (a user would keep the table too)."""
    masks = coalition_masks(n)
    out = torch.empty(1 << n, n, dtype=torch.float64)
    for m in range(1 << n):
        s = int(masks[m].sum())
        for i in range(n):
            if masks[m, i]:
                out[m, i] = math.factorial(s - 1) * math.factorial(n - s)
            else:
                out[m, i] = -math.factorial(s) * math.factorial(n - s - 1)
    return out.to(device)


def _coalition_values(correct: Tensor, masks: Tensor, benefit: str) -> Tensor:
    """(k, B) correctness of coalitions `masks` (k, n) -> (k, B) float64 values v(S)."""
    if benefit == "paper":
        return correct.double() * masks.sum(1, keepdim=True).double()
    if benefit == "accuracy":
        return correct.double()
    raise ValueError(f"benefit {benefit!r} is not implemented here")


def _first_coalition(benefit: str) -> int:
    """The paper benefit gives the empty coalition 0: no need to evaluate it."""
    return 1 if benefit == "paper" else 0


@functools.cache
def _keep_columns(dims: tuple, first: int, device, dtype) -> Tensor:
    """(k, sum dims): 1 in the columns of the modalities each coalition (from `first` on) keeps."""
    masks = coalition_masks(len(dims))[first:]
    return masks.repeat_interleave(torch.tensor(dims), dim=1).to(device, dtype)


def naive_batched(features: Sequence[Tensor], head: nn.Module, labels: Tensor, benefit: str = "paper") -> Tensor:
    """The masked copies of the batch (all 2^n coalitions, the empty one only where it has a value) in one
    head forward; (B, n) float32 Shapley values."""
    n = len(features)
    x = torch.cat(list(features), dim=1)  # (B, D)
    batch, width = x.shape
    first = _first_coalition(benefit)
    masks = coalition_masks(n, x.device)[first:]
    keep = _keep_columns(tuple(f.shape[1] for f in features), first, x.device, x.dtype)  # (k, D)
    stacked = (x.unsqueeze(0) * keep.unsqueeze(1)).reshape(-1, width)  # (k * B, D)
    logits = concat_forward(head, stacked).view(len(masks), batch, -1)
    values = _coalition_values(logits.argmax(-1) == labels.unsqueeze(0), masks, benefit)
    return (values.t() @ shapley_numerators(n, x.device)[first:] / math.factorial(n)).float()


def decomposed_torch(features: Sequence[Tensor], head: nn.Module, labels: Tensor, benefit: str = "paper") -> Tensor:
    """fastshap's algorithm in plain torch, as a user who knows the head's first layer is linear writes it:
    logits(S) = b + sum_{i in S} W_i h_i (the MLP: its hidden pre-activations, then ReLU and the second
    layer per coalition). The per-modality GEMMs run in the features' dtype with fp32 results (16-bit
    features on a GPU: the GEMM's fp32 accumulator kept), the coalition sums in fp32. (B, n) float32."""
    n = len(features)
    first = head if isinstance(head, nn.Linear) else head.fc1
    weight, bias = first.weight, first.bias
    parts, offset = [], 0
    for f in features:
        w = weight[:, offset : offset + f.shape[1]].t()
        if f.is_cuda and f.dtype in (torch.float16, torch.bfloat16):
            parts.append(torch.mm(f, w, out_dtype=torch.float32))
        else:
            parts.append(f.float() @ w.float())
        offset += f.shape[1]
    partials = torch.stack(parts)  # (n, B, K)
    start = _first_coalition(benefit)
    masks = coalition_masks(n, partials.device)[start:]
    scores = torch.einsum("mi,ibk->mbk", masks.float(), partials) + bias.float()  # (k, B, K)
    if isinstance(head, ConcatMLP):
        scores = torch.relu(scores) @ head.fc2.weight.float().t() + head.fc2.bias.float()
    values = _coalition_values(scores.argmax(-1) == labels.unsqueeze(0), masks, benefit)
    return (values.t() @ shapley_numerators(n, partials.device)[start:] / math.factorial(n)).float()


# --- the authors' released per-sample loop (n = 2) --------------------------------------------------------


def authors_loop(features: Sequence[Tensor], head: nn.Module, labels: Tensor) -> dict:
    """The authors' valuation (code/sample_level.py, execute_modulation, with models.py's exec_drop):
    three batched head forwards, softmax, then per sample numpy argmaxes and the n = 2 Shapley formula.
    Returns {sample index: (contrib_a, contrib_v)} as their code stores it. Labels stay on the CPU, as in
    their code."""
    a, v = features
    softmax = nn.Softmax(dim=1)
    out = head(torch.cat((a, v), 1))
    out_v = head(torch.cat((torch.zeros_like(a), v), 1))  # exec_drop(a, v, drop="audio")
    out_a = head(torch.cat((a, torch.zeros_like(v)), 1))  # exec_drop(a, v, drop="visual")

    prediction = softmax(out)
    pred_v = softmax(out_v)
    pred_a = softmax(out_a)

    contribution = {}
    label = labels
    for i, _item in enumerate(label):
        all_ = prediction[i].cpu().data.numpy()
        index_all = np.argmax(all_)
        v_ = pred_v[i].cpu().data.numpy()
        index_v = np.argmax(v_)
        a_ = pred_a[i].cpu().data.numpy()
        index_a = np.argmax(a_)

        value_all = 0.0
        value_a = 0.0
        value_v = 0.0
        if index_all == label[i]:
            value_all = 2.0
        if index_v == label[i]:
            value_v = 1.0
        if index_a == label[i]:
            value_a = 1.0

        contrib_a = (value_a + value_all - value_v) / 2.0
        contrib_v = (value_v + value_all - value_a) / 2.0
        contribution[i] = (contrib_a, contrib_v)
    return contribution


def authors_to_phi(contribution: dict) -> Tensor:
    return torch.tensor([contribution[i] for i in range(len(contribution))], dtype=torch.float32)


# --- BalanceMM's per-subset forward with per-sample loops -------------------------------------------------


def _all_combinations(items: list) -> list:
    out = []
    for r in range(len(items) + 1):
        out.extend(list(c) for c in combinations(items, r))
    return out


def balancemm_loop(features: Sequence[Tensor], head: nn.Module, labels: Tensor) -> dict:
    """BalanceMM's per-sample Shapley (balancemm/evaluation/modalitys.py, Calculate_Shapley_Sample): one
    batched forward per non-empty coalition caching each sample's correctness, then for every sample,
    modality and coalition without it a weighted marginal contribution. Two deliberate differences, so it
    computes what fastshap computes: the paper benefit |S| 1[correct] (theirs is 1[correct]) and a cache
    local to the call (theirs is never reset between batches, a defect). Returns {modality: {sample: phi}}."""
    modalitys = list(range(len(features)))
    n = len(modalitys)
    shapley = {modality: {} for modality in modalitys}
    res_cache = {}
    batch_size = len(labels)
    for combo in _all_combinations(modalitys):
        identifier = tuple(sorted(combo))
        if not combo:
            res_cache[identifier] = torch.zeros(batch_size, dtype=torch.bool)
        else:
            masked = [f if i in combo else torch.zeros_like(f) for i, f in enumerate(features)]
            prediction = head(torch.cat(masked, 1)).argmax(1)
            res_cache[identifier] = prediction == labels

    for i in range(batch_size):
        for modality in modalitys:
            shapley_value = 0.0
            temp_modalitys = [m for m in modalitys if m != modality]
            for combo in _all_combinations(temp_modalitys):
                s_size = len(combo)
                v_combo = res_cache[tuple(sorted(combo))][i]
                add_combo = sorted(combo + [modality])
                v_add = res_cache[tuple(add_combo)][i]
                weight = (math.factorial(s_size) * math.factorial(n - s_size - 1)) / math.factorial(n)
                marginal_contribution = (s_size + 1) * float(v_add) - s_size * float(v_combo)
                shapley_value += weight * marginal_contribution
            shapley[modality][i] = shapley_value
    return shapley


def balancemm_to_phi(shapley: dict) -> Tensor:
    modalities = sorted(shapley)
    batch = len(shapley[modalities[0]])
    return torch.tensor([[shapley[m][i] for m in modalities] for i in range(batch)], dtype=torch.float32)


# --- Captum ----------------------------------------------------------------------------------------------


def captum_shapley(
    features: Sequence[Tensor], head: nn.Module, labels: Tensor, perturbations_per_eval: int | None = None
) -> Tensor:
    """Captum's exact ShapleyValues (all n! permutations, n forwards each) with one feature group per
    modality, zero baselines, v(S) = 1[argmax == y]. The n prefixes of a permutation go through the head in
    one batched forward (perturbations_per_eval = n), Captum's fastest setting. (B, n) float32."""
    from captum.attr import ShapleyValues

    n = len(features)
    x = torch.cat(list(features), dim=1)
    groups = torch.cat(
        [torch.full((f.shape[1],), i, dtype=torch.long, device=x.device) for i, f in enumerate(features)]
    )

    def correct(inputs: Tensor, y: Tensor) -> Tensor:
        return (concat_forward(head, inputs).argmax(-1) == y).to(inputs.dtype)

    attr = ShapleyValues(correct).attribute(
        x,
        baselines=0.0,
        feature_mask=groups.unsqueeze(0),
        additional_forward_args=(labels,),
        perturbations_per_eval=perturbations_per_eval or n,
    )
    # Every column of a group carries the group's value: read one column per modality.
    first_columns = torch.tensor([0] + [f.shape[1] for f in features[:-1]], device=x.device).cumsum(0)
    return attr[:, first_columns].float()


# --- checks ----------------------------------------------------------------------------------------------


def near_tie_samples(
    features: Sequence[Tensor], head: nn.Module, labels: Tensor, tol: float = 1e-5, include_empty: bool = False
) -> Tensor:
    """(B,) bool on the CPU: samples whose correctness could flip with rounding, i.e. where, in some coalition,
    the label's logit is within `tol` of the best other class (float64, the head evaluated on every
    coalition). Summation order decides argmax there, so two correct implementations may disagree on them;
    everywhere else they must agree exactly. The empty coalition only matters when v(empty) is evaluated
    (benefits other than "paper")."""
    head64 = copy.deepcopy(head).double()
    x = torch.cat([f.double() for f in features], dim=1)
    n = len(features)
    masks = coalition_masks(n)
    dims = torch.tensor([f.shape[1] for f in features])
    y = labels.view(-1, 1)
    near = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for m in range(0 if include_empty else 1, 1 << n):
            keep = masks[m].repeat_interleave(dims).to(x.device, torch.float64)
            logits = concat_forward(head64, x * keep)
            own = logits.gather(1, y).squeeze(1)
            best_other = logits.scatter(1, y, float("-inf")).amax(1)
            near |= (own - best_other).abs() < tol
    return near.cpu()


def compare(phi: Tensor, reference: Tensor, near_tie: Tensor, atol: float = 0.0) -> dict:
    """Disagreements of phi with fastshap's reference values, outside and inside the near-tie samples.
    atol > 0 only for alternatives that accumulate the Shapley sum in floating point in another order."""
    phi, reference = phi.float().cpu(), reference.float().cpu()
    if phi.shape != reference.shape:
        raise AssertionError(f"shape {tuple(phi.shape)} != reference {tuple(reference.shape)}")
    differ = ((phi - reference).abs() > atol).any(1)
    return {
        "samples": int(phi.shape[0]),
        "mismatch": int((differ & ~near_tie).sum()),
        "near_tie_samples": int(near_tie.sum()),
        "near_tie_mismatch": int((differ & near_tie).sum()),
    }


def assert_agrees(result: dict, max_near_tie_fraction: float = 0.01) -> None:
    assert result["mismatch"] == 0, (
        f"values differ from fastshap on {result['mismatch']} samples that are not near ties: {result}"
    )
    assert result["near_tie_samples"] <= max_near_tie_fraction * result["samples"], (
        f"too many near-tie samples: {result}"
    )


def sanity(ns=(2, 3, 4), batch: int = 96) -> None:
    """Every alternative against fastshap on small seeded cases (run: python bench/alternatives.py)."""
    import fastshap

    for n in ns:
        case = make_case(n, batch, dim=24, classes=7, seed=n)
        f, h, y = case.features, case.head, case.labels
        with torch.no_grad():
            paper = fastshap.modality_shapley(f, h, y, backend="torch")
            accuracy = fastshap.modality_shapley(f, h, y, backend="torch", benefit="accuracy")
            ties = near_tie_samples(f, h, y)
            ties_empty = near_tie_samples(f, h, y, include_empty=True)
            results = {
                "decomposed_torch": compare(decomposed_torch(f, h, y), paper, ties),
                "decomposed_torch accuracy": compare(decomposed_torch(f, h, y, "accuracy"), accuracy, ties_empty),
                "naive_batched": compare(naive_batched(f, h, y), paper, ties),
                "naive_batched accuracy": compare(naive_batched(f, h, y, "accuracy"), accuracy, ties_empty),
                "balancemm_loop": compare(balancemm_to_phi(balancemm_loop(f, h, y)), paper, ties, atol=1e-6),
                "captum": compare(captum_shapley(f, h, y), accuracy, ties_empty, atol=1e-6),
            }
            if n == 2:
                results["authors_loop"] = compare(authors_to_phi(authors_loop(f, h, y)), paper, ties)
        mlp = make_case(n, batch, dim=24, classes=7, hidden=16, seed=n)
        f, h, y = mlp.features, mlp.head, mlp.labels
        with torch.no_grad():
            paper = fastshap.modality_shapley(f, h, y, backend="torch")
            ties = near_tie_samples(f, h, y)
            results["decomposed_torch mlp"] = compare(decomposed_torch(f, h, y), paper, ties)
            results["naive_batched mlp"] = compare(naive_batched(f, h, y), paper, ties)
        for name, result in results.items():
            assert_agrees(result, max_near_tie_fraction=0.05)
            print(f"n={n} {name}: agrees with fastshap ({result['near_tie_samples']} near-tie samples of {batch})")


if __name__ == "__main__":
    sanity()
