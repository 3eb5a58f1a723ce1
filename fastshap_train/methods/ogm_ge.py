"""``ogm-ge``: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng et al., CVPR 2022).

Per training step, with u_m the modality's unimodal logits (its slice of the concat head's weights on its
features plus bias / n, as in the authors' code) and y the labels:

    s_m   = sum over the batch of softmax(u_m)[y]                       (summed over DDP ranks)
    rho_m = s_m / s_other; for n > 2 the mean over j != m of s_m / s_j  (ours)
    k_m   = 1 - tanh(alpha * rho_m)   if rho_m > 1, else 1              (paper Eq. 10, released main.py)

The loss is the CE of the fused output. After the backward pass, within epochs ``--ogm-start`` ..
``--ogm-end`` (both inclusive, as ``modulation_starts <= epoch <= modulation_ends`` in the code), every
encoder weight gradient g of modality m becomes ``k_m * g`` and, with GE (``--ogm-ge``, the default),
``+ N(0, std(g)^2)``: Gaussian noise with the standard deviation of the unmodulated gradient, added for
every modality, dominant or not (paper Eq. 11, released code). The released code touches only the
4-D (convolution) weights of each encoder; ``--ogm-params weights`` (default) generalises that to every
weight tensor of dim >= 2 (conv and linear weights, not biases or norm scales), ``all`` takes every
encoder parameter. ``--ogm-form shifted`` uses ``1 - tanh(alpha (rho - 1))`` instead, which is continuous
at rho = 1 (a variant found in later re-implementations; not the paper's).

Defaults are the README's "default modulation setting" (alpha 0.1, epochs 0..50); the authors recommend
alpha 0.8 for CREMA-D. Noise is drawn from a generator seeded by (seed, global step), so DDP ranks add
the same noise and runs are reproducible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastshap_train.methods._common import (
    check_head,
    encoder_parameters,
    in_window,
    label_scores,
    reduce_sum,
    unimodal_logits,
)
from fastshap_train.methods.base import Method
from fastshap_train.registry import Option, register_method, register_options

register_options(
    "ogm-ge",
    [
        Option(
            "ogm_alpha",
            0.1,
            "OGM-GE alpha: strength of the modulation 1 - tanh(alpha rho) (README default 0.1; "
            "0.8 recommended for CREMA-D)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "ogm_start",
            0,
            "OGM-GE: first epoch with modulation (released code: modulation_starts 0)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "ogm_end",
            50,
            "OGM-GE: last epoch with modulation, inclusive (released code: modulation_ends 50; -1: no end)",
        ),
        Option("ogm_ge", True, "OGM-GE: add the generalisation-enhancement noise N(0, std(g)^2) (off: plain OGM)"),
        Option(
            "ogm_form",
            "paper",
            "OGM-GE coefficient: paper 1 - tanh(alpha rho), shifted 1 - tanh(alpha (rho - 1))",
            choices=("paper", "shifted"),
        ),
        Option(
            "ogm_params",
            "weights",
            "OGM-GE: encoder parameters modulated: weights (dim >= 2, the released code's "
            "conv weights generalised) or all",
            choices=("weights", "all"),
        ),
    ],
    title="ogm-ge (Peng et al., CVPR 2022)",
)


def ogm_coefficients(scores: torch.Tensor, alpha: float, form: str = "paper") -> tuple:
    """scores (n,) positive -> (k (n,), rho (n,)) float64: the modulation coefficient of each modality.

    rho_m is the mean over j != m of s_m / s_j (for n = 2 exactly s_m / s_other); k_m = 1 - tanh(alpha
    rho_m) (``form="shifted"``: alpha (rho_m - 1)) where rho_m > 1, else 1. One modality: k = 1.
    """
    s = scores.detach().double().cpu().clamp_min(1e-300)
    n = s.numel()
    if n < 2:
        return torch.ones(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    ratio = s.view(-1, 1) / s.view(1, -1)  # [m, j] = s_m / s_j, diagonal 1
    rho = (ratio.sum(1) - 1.0) / (n - 1)
    x = rho if form == "paper" else rho - 1.0
    k = torch.where(rho > 1, 1.0 - torch.tanh(alpha * x), torch.ones_like(rho))
    return k, rho


def modulate_gradients(params, coefficient: float, noise: bool, generator=None) -> int:
    """g <- coefficient * g (+ N(0, std(g)^2) when `noise`) for every parameter with a gradient.

    The noise's standard deviation is that of the gradient before scaling (released code: the right-hand
    side ``grad * coeff + normal_(0, grad.std() + 1e-8)`` reads the old gradient). Returns how many
    gradients were changed.
    """
    changed = 0
    for p in params:
        g = p.grad
        if g is None:
            continue
        if noise:
            std = float(g.float().std()) if g.numel() > 1 else 0.0
            std = 0.0 if not math.isfinite(std) else std
            eps = torch.randn(g.shape, generator=generator, device=g.device, dtype=torch.float32)
            g.mul_(coefficient).add_(eps.to(g.dtype), alpha=std + 1e-8)
        elif coefficient != 1.0:
            g.mul_(coefficient)
        changed += 1
    return changed


@register_method("ogm-ge")
class OGMGE(Method):
    """OGM-GE on the concat-linear head (or decision fusion: per-modality classifiers as u_m)."""

    head = "concat"
    help = "OGM-GE (Peng et al. 2022): damp the dominant modality's encoder gradients, plus gradient noise"

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        self._k = None
        self._sums = {}
        self.modulated_steps = 0

    @classmethod
    def check_config(cls, cfg):
        return check_head(cfg) or super().check_config(cfg)

    def loss(self, out, batch):
        labels = batch["label"]
        with torch.no_grad():
            logits = unimodal_logits(self.trainer.core.head, out.features)
            scores = torch.stack([label_scores(u, labels) for u in logits]).to(labels.device)
            scores = reduce_sum(scores, self.trainer)
        self._k, rho = ogm_coefficients(scores, float(self.cfg.ogm_alpha), self.cfg.ogm_form)
        self._accumulate(self._k, rho)
        return F.cross_entropy(out.logits.float(), labels)

    def active(self) -> bool:
        return in_window(self.trainer.epoch, int(self.cfg.ogm_start), int(self.cfg.ogm_end))

    def after_backward(self, out, batch):
        if self._k is None or not self.active():
            return
        seed = self.trainer.seed_for("ogm-ge-noise", self.trainer.global_step)
        generators = {}
        weights_only = self.cfg.ogm_params == "weights"
        for i, m in enumerate(self.trainer.modalities):
            params = encoder_parameters(self.trainer.core, m, weights_only)
            if not params:
                continue
            dev = params[0].device
            if dev not in generators:
                generators[dev] = torch.Generator(device=dev).manual_seed(seed)
            modulate_gradients(params, float(self._k[i]), bool(self.cfg.ogm_ge), generators[dev])
        self.modulated_steps += 1

    # -- logging ----------------------------------------------------------------------------------------
    def _accumulate(self, k, rho):
        s = self._sums
        s["steps"] = s.get("steps", 0) + 1
        s["k"] = s.get("k", 0) + k
        s["rho"] = s.get("rho", 0) + rho
        s["damped"] = s.get("damped", 0) + (k < 1).double()

    def epoch_metrics(self):
        s, self._sums = self._sums, {}
        out = {"ogm_modulated_steps": self.modulated_steps}
        self.modulated_steps = 0
        if not s:
            return out
        for i, m in enumerate(self.trainer.modality_names):
            out[f"ogm_coef_{m}"] = float(s["k"][i] / s["steps"])
            out[f"ogm_ratio_{m}"] = float(s["rho"][i] / s["steps"])
            out[f"ogm_damped_{m}"] = int(s["damped"][i])  # steps in which modality m was the damped one
        return out
