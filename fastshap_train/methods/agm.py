"""``agm``: Adaptive Gradient Modulation (Li et al., ICCV 2023).

**Mono-modal responses.** AGM splits the fused output f into one response per modality with the Shapley
value of the modality in f, removed modalities zeroed at the input as in the released code: by default
(``--agm-zero-inputs``) a removed modality's features are its encoder's output for an all-zero input batch,
computed at every step in the step's mode (train: dropout, batch-norm batch statistics) and with gradients,
as the released code runs the model on zero-padded inputs; with ``--no-agm-zero-inputs`` the run's removal
(feature zeroing, or the eval-mode Enc_i(0) of ``--removal input``, once per epoch):

    u_m = phi_m(f) + f(empty) / n,   phi_m(f) = sum over S not containing m of
          |S|! (n - |S| - 1)! / n! * (f(S + m) - f(S))

so that sum_m u_m = f(all) (efficiency). This is the authors' ``0.5 (total - pad_m' + pad_m)`` for two
modalities and their 1/3, 1/6 weights for three. ``f`` is the head's logits, not a benefit, so this is not
``fastshap.modality_shapley`` (which values a coalition by its correctness or probability); we use
fastshap's exact coalition masks and integer Shapley coefficients (``fastshap.reference``) and evaluate
the head on the 2^n coalitions of the features with gradients (the encoders run once on the batch, and once
on its zero input). For the concat-linear head with feature zeroing the decomposition is exact in closed form:
f(S) = b + sum_{i in S} W_i h_i, so u_m = W_m h_m + b / n, the head's partial logits (``unimodal_logits``),
and that path is taken.

**Modulation.** The training loss is CE(sum_m u_m, y) (= CE of the fused logits); each u_m carries a
backward hook that multiplies its gradient by kappa_m, so modality m's encoder (and its share of the head)
receives kappa_m times its gradient (the authors' ``register_full_backward_hook`` on the per-modality
outputs). Per step, with s_m = mean over the batch of -log max(softmax(u_m)[y], 1e-8) (mono-modal CE,
summed over DDP ranks) and s_hat its running mean over all steps so far (s_hat = 0 before the first):

    r_m     = exp(n / (n - 1) * (mean_j s_j - s_m))          current discrepancy ratio
    r_hat_m = exp(n / (n - 1) * (mean_j s_hat_j - s_hat_m))  its value for the running means
    kappa_m = exp(alpha * min(r_hat_m - r_m, cap))

For n = 2 this is the authors' ``ratio_a = exp(s_v - s_a)``, ``coeff_a = exp(alpha min(optimal_ratio_a -
ratio_a, 10))`` (CREMA-D ``main.py``): a modality that is currently ahead of its usual standing is damped,
the others amplified. (The three-modality variant in GeWu-Lab's BalanceBenchmark and some
re-implementations flip the sign of r; we keep the released two-modality direction for every n.) kappa is
computed before s_hat is updated with the current batch. Modulation runs within epochs ``--agm-start`` ..
``--agm-end``; s_hat is updated every step. Like the released code, when a head gradient entry exceeds
``--agm-clip`` in magnitude the whole gradient is clipped to that norm (0: off). alpha defaults to 0.1
(GeWu-Lab BalanceBenchmark's AGM setting; the paper tunes it per dataset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fastshap import heads
from fastshap.reference import coalition_masks, shapley_coefficients
from fastshap_train.methods._common import in_window, reduce_sum
from fastshap_train.methods.base import Method
from fastshap_train.registry import Option, register_method, register_options

register_options(
    "agm",
    [
        Option(
            "agm_alpha",
            0.1,
            "AGM: alpha of kappa = exp(alpha (r_hat - r)) (BalanceBenchmark default 0.1)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option("agm_start", 0, "AGM: first epoch with modulation", check=lambda x: None if x >= 0 else "must be >= 0"),
        Option("agm_end", -1, "AGM: last epoch with modulation, inclusive (-1: until the end)"),
        Option(
            "agm_cap",
            10.0,
            "AGM: cap on r_hat - r inside the exponent (released code: 10)",
            check=lambda x: None if x > 0 else "must be > 0",
        ),
        Option(
            "agm_zero_inputs",
            True,
            "AGM: a removed modality is its encoder's output for a zero input, "
            "computed every step with gradients (the released code); off: the run's --removal",
        ),
        Option(
            "agm_clip",
            1.0,
            "AGM: when a head gradient entry exceeds this in magnitude, clip the gradient norm "
            "to it (released code: 1.0; 0: off)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
    ],
    title="agm (Li et al., ICCV 2023)",
)


def shapley_outputs(head, features: Sequence[torch.Tensor], baselines: Sequence[torch.Tensor] | None = None) -> list:
    """n tensors (B, C): u_m = Shapley value of modality m in head(features) plus head(empty) / n.

    features: n tensors (B, d_i); baselines: None (a removed modality's features are zeros) or n tensors
    (d_i,) / (B, d_i). Differentiable; sum_m u_m == head(features). The head sees every coalition once.
    """
    feats = list(features)
    n = len(feats)
    if baselines is None and isinstance(head, heads.ConcatLinear):
        return head.unimodal_logits(feats)
    dev = feats[0].device
    absent = [
        torch.zeros_like(f) if baselines is None else baselines[i].to(f).expand_as(f) for i, f in enumerate(feats)
    ]
    masks = coalition_masks(n, "cpu").tolist()
    outs = torch.stack([head([f if keep[i] else a for i, (f, a) in enumerate(zip(feats, absent))]) for keep in masks])
    coef = (shapley_coefficients(n) / math.factorial(n)).to(dev, outs.dtype)  # (2^n, n)
    u = torch.einsum("si,s...->i...", coef, outs) + outs[0] / n  # row 0 is the empty coalition
    return list(u.unbind(0))


def mono_modal_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of -log max(softmax(logits)[y], 1e-8) (float64, detached)."""
    p = torch.softmax(logits.detach().double(), -1).gather(1, labels.view(-1, 1)).clamp_min(1e-8)
    return -p.log().sum()


def discrepancy_ratios(scores: torch.Tensor) -> torch.Tensor:
    """scores (n,) -> exp(n / (n - 1) (mean(s) - s_m)) (n,); all ones for n = 1."""
    s = scores.double()
    n = s.numel()
    if n < 2:
        return torch.ones_like(s)
    return torch.exp(n / (n - 1) * (s.mean() - s))


def agm_coefficients(scores: torch.Tensor, running: torch.Tensor, alpha: float, cap: float = 10.0) -> tuple:
    """(kappa, r, r_hat) (n,) float64 from the current mono-modal CEs and their running means."""
    r = discrepancy_ratios(scores.detach().cpu())
    r_hat = discrepancy_ratios(running.detach().cpu())
    kappa = torch.exp(alpha * (r_hat - r).clamp(max=cap))
    return kappa, r, r_hat


@register_method("agm")
class AGM(Method):
    head = "concat"
    help = "AGM (Li et al. 2023): per-modality gradient scaling of Shapley mono-modal responses via backward hooks"

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        self.running = torch.zeros(self.n, dtype=torch.float64)  # s_hat
        self.iteration = 0
        self.kappa = torch.ones(self.n, dtype=torch.float64)
        self._baselines = None
        self._baseline_epoch = None
        self._sums = {}
        self.clipped_steps = 0

    def baselines(self, batch):
        """What a removed modality's features are: with --agm-zero-inputs, the encoders' outputs for a zero
        input batch of this step (its mode, with gradients); else Enc_i(0) for --removal input, refreshed once
        per epoch (eval mode), or None for feature zeroing."""
        if self.cfg.agm_zero_inputs:
            inputs = self.trainer.inputs_to_device(batch)
            return self.trainer.core.encode({m: torch.zeros_like(x) for m, x in inputs.items()})
        if self.cfg.removal != "input":
            return None
        if self._baseline_epoch != self.trainer.epoch:
            self._baselines = self.trainer.valuator.compute_baselines()
            self._baseline_epoch = self.trainer.epoch
        return self._baselines

    def loss(self, out, batch):
        labels = batch["label"]
        u = shapley_outputs(self.trainer.core.head, out.features, self.baselines(batch))
        with torch.no_grad():
            sums = torch.stack(
                [mono_modal_ce(x, labels) for x in u] + [labels.new_tensor(labels.shape[0], dtype=torch.float64)]
            )
            sums = reduce_sum(sums, self.trainer).cpu()
            scores = sums[:-1] / sums[-1].clamp_min(1.0)
        kappa, r, r_hat = agm_coefficients(scores, self.running, float(self.cfg.agm_alpha), float(self.cfg.agm_cap))
        self.iteration += 1
        self.running = self.running * (self.iteration - 1) / self.iteration + scores / self.iteration
        active = in_window(self.trainer.epoch, int(self.cfg.agm_start), int(self.cfg.agm_end))
        self.kappa = kappa if active else torch.ones_like(kappa)
        self._accumulate(self.kappa, scores)
        if active:
            for x, k in zip(u, self.kappa.tolist()):
                if x.requires_grad:
                    x.register_hook(lambda g, k=k: g * k)
        fused = torch.stack(u).sum(0)
        return F.cross_entropy(fused.float(), labels)

    def after_backward(self, out, batch):
        limit = float(self.cfg.agm_clip)
        if limit <= 0:
            return
        grads = [p.grad for p in self.trainer.core.head.parameters() if p.grad is not None]
        if grads and float(torch.stack([g.abs().max() for g in grads]).max()) > limit:
            params = [p for p in self.trainer.core.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, limit)
            self.clipped_steps += 1

    # -- logging and checkpoints ------------------------------------------------------------------------
    def _accumulate(self, kappa, scores):
        s = self._sums
        s["steps"] = s.get("steps", 0) + 1
        s["kappa"] = s.get("kappa", 0) + kappa
        s["score"] = s.get("score", 0) + scores

    def epoch_metrics(self):
        s, self._sums = self._sums, {}
        out = {"agm_clipped_steps": self.clipped_steps}
        self.clipped_steps = 0
        if not s:
            return out
        for i, m in enumerate(self.trainer.modality_names):
            out[f"agm_coef_{m}"] = float(s["kappa"][i] / s["steps"])
            out[f"agm_mono_ce_{m}"] = float(s["score"][i] / s["steps"])
        return out

    def state_dict(self):
        return {"running": self.running.clone(), "iteration": self.iteration}

    def load_state_dict(self, state):
        if state:
            self.running = state["running"].double().clone()
            self.iteration = int(state["iteration"])
