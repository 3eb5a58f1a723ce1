"""``greedy``: balanced multimodal learning against the greedy nature of joint training (Wu et al., ICML 2022).

Defined for exactly two modalities (the paper's algorithm compares two branches); with n != 2 the run stops
with a "not applicable" error (the paper's tables mark it so).

**Model.** The two encoders are cut into stages and MMTM blocks (multimodal transfer modules, Joze et al.
2020, as in the authors' ``MMTM_mitigate``) sit at the stage boundaries both encoders share, counted from
the output end: ResNet-18 encoders after layer1..layer4 (channels 64, 128, 256, 512), MLP encoders after each
hidden ReLU, any other encoder at its output features. At a boundary with features h_0, h_1 (channels first;
frames folded into the batch are averaged with space):

    q_m = mean of h_m over everything but the batch and channels         ("squeeze")
    e   = relu(W_s [q_0, q_1] + b_s),   g_m = sigmoid(W_m e + b_m)       ("excitation", width 2 (C_0 + C_1) / ratio)
    h_m <- h_m * g_m                                                      (g_m broadcast over the other axes)

The fused features go to the concat-linear head; the loss is its CE. Each block keeps running averages
(over training steps) of g_m and q_m in buffers.

**Curation (the paper's balanced multimodal learning, released ``Bias_Mitigation_Strong``).** After each
backward pass the conditional learning speed of each branch is tracked: with sums over the parameters of
a branch's encoder ("main") and over the MMTM parameters it uses ("bypass": its own excitation layers plus
the shared squeeze layer),

    M_main_m  += sum ||grad||^2 / sum ||w||^2,   M_bypass_m += the same over the bypass parameters
    BDR_m      = log10(M_bypass_m / M_main_m),   d = BDR_0 - BDR_1

From epoch ``--greedy-start`` on (released: 2), when not curating and |d| > ``--greedy-epsilon`` (released
epsilon 0.01), the next ``--greedy-window`` steps (released curation window 5) are re-balancing steps for
the caring modality c = 0 if d > 0 else 1: c's MMTM gates are replaced by their running averages, so c's
features no longer depend on the other modality and c must learn from its own input. The speeds are not
updated during curation (as released).

**Conditional utilisation rates** (paper Sec. 3), logged after each epoch on ``--greedy-util-samples``
training samples: with A_m(on) the accuracy of modality m's branch output (its slice of the head plus
bias / 2) and A_m(off) the same when the MMTM blocks see the other modality's running-average squeeze
instead of its input, u(other | m) = (A_m(on) - A_m(off)) / A_m(on).

Valuation (logging only for this method) removes a modality by zeroing its pooled features; the other
branch still saw it through the MMTM gates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastshap_train.errors import RunError
from fastshap_train.methods._common import NotApplicable, eval_loader, random_subset, reduce_sum
from fastshap_train.methods.base import Method
from fastshap_train.models.encoders import MLPEncoder, ResNetEncoder
from fastshap_train.models.multimodal import MultimodalModel
from fastshap_train.registry import Option, register_method, register_options

register_options(
    "greedy",
    [
        Option(
            "greedy_epsilon",
            0.01,
            "Greedy: imbalance tolerance on |BDR_0 - BDR_1| that starts curation (released epsilon 0.01)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "greedy_window",
            5,
            "Greedy: re-balancing steps per curation (released curation_windowsize 5)",
            check=lambda x: None if x >= 1 else "must be >= 1",
        ),
        Option(
            "greedy_start",
            2,
            "Greedy: first epoch where curation may start (released starting_epoch 2)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "greedy_ratio",
            4,
            "Greedy: MMTM reduction ratio (excitation width 2 (C_0 + C_1) / ratio; released 4)",
            check=lambda x: None if x >= 1 else "must be >= 1",
        ),
        Option(
            "greedy_skip",
            0,
            "Greedy: leave out the first K shared stage boundaries (no MMTM there)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "greedy_util_samples",
            512,
            "Greedy: training samples for the conditional utilisation rates after each epoch (0: off)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
    ],
    title="greedy (Wu et al., ICML 2022)",
)


# --------------------------------------------------------------------------------------------------------
# encoders cut into stages


class _Stages:
    """An encoder as ``start`` -> stages -> ``finish``; ``dims[j]`` = channels after stage j.

    Holds references to the encoder's submodules (registered by the model's ``encoders``), not copies.
    """

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        if isinstance(encoder, ResNetEncoder):
            net = encoder.net
            self.stages = [
                nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
                net.layer2,
                net.layer3,
                net.layer4,
            ]
            self.dims = [64, 128, 256, 512]
            self.kind = "resnet"
        elif isinstance(encoder, MLPEncoder) and isinstance(encoder.net, nn.Sequential):
            self.stages, self.dims, current, width = [], [], [], None
            for layer in encoder.net:
                current.append(layer)
                if isinstance(layer, nn.Linear):
                    width = layer.out_features
                if isinstance(layer, nn.ReLU):
                    self.stages.append(nn.Sequential(*current))
                    self.dims.append(width)
                    current = []
            if current:  # trailing layers (dropout) join the last stage
                self.stages[-1] = nn.Sequential(*self.stages[-1], *current)
            self.kind = "mlp"
        else:
            self.stages, self.dims, self.kind = [encoder], [int(encoder.out_dim)], "whole"

    def start(self, x) -> tuple:
        """(tensor for stage 0, batch size B, frames T)."""
        if self.kind == "mlp":
            return (x.flatten(1).float() if not x.is_floating_point() else x.flatten(1)), x.shape[0], 1
        if self.kind == "resnet":
            if x.dim() == 3 and self.encoder.channels == 1:
                x = x.unsqueeze(1)
            if x.dim() == 4:
                return x, x.shape[0], 1
            if x.dim() != 5:
                raise ValueError(f"ResNet encoder expects (B, C, H, W) or (B, T, C, H, W), got {tuple(x.shape)}")
            return x.flatten(0, 1), x.shape[0], x.shape[1]
        return x, x.shape[0], 1

    def finish(self, h, batch: int, frames: int):
        if self.kind == "resnet":
            h = torch.flatten(self.encoder.net.avgpool(h), 1)
            return h.view(batch, frames, -1).mean(1)
        return h


def squeeze(h: torch.Tensor, batch: int) -> torch.Tensor:
    """(B * T, C, ...) -> (B, C): the mean over frames and the remaining axes."""
    return h.reshape(batch, h.shape[0] // batch, h.shape[1], -1).mean(dim=(1, 3))


def excite(h: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """h (B * T, C, ...) times gate (B, C) or (C,), broadcast over frames and the remaining axes."""
    if gate.dim() == 1:
        gate = gate.unsqueeze(0).expand(h.shape[0], -1)
    elif gate.shape[0] != h.shape[0]:
        gate = gate.repeat_interleave(h.shape[0] // gate.shape[0], 0)
    return h * gate.reshape(gate.shape + (1,) * (h.dim() - 2)).to(h.dtype)


class MMTM(nn.Module):
    """A multimodal transfer module between two feature maps (the authors' ``MMTM_mitigate``)."""

    def __init__(self, dim0: int, dim1: int, ratio: int = 4):
        super().__init__()
        hidden = max(1, int(2 * (dim0 + dim1) / ratio))
        self.fc_squeeze = nn.Linear(dim0 + dim1, hidden)
        self.fc_excite = nn.ModuleList([nn.Linear(hidden, dim0), nn.Linear(hidden, dim1)])
        self.register_buffer("avg_gate0", torch.zeros(dim0))
        self.register_buffer("avg_gate1", torch.zeros(dim1))
        self.register_buffer("avg_squeeze0", torch.zeros(dim0))
        self.register_buffer("avg_squeeze1", torch.zeros(dim1))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def gates(self, q0, q1, cross_off: bool = False) -> tuple:
        """(g0, g1) (B, C_m) from the squeezed features; `cross_off`: each gate sees the other modality's
        running-average squeeze instead of its input (the paper's unimodal branch evaluation)."""
        if cross_off:
            a1 = self.avg_squeeze1.to(q1.dtype).expand_as(q1)
            a0 = self.avg_squeeze0.to(q0.dtype).expand_as(q0)
            g0 = torch.sigmoid(self.fc_excite[0](torch.relu(self.fc_squeeze(torch.cat([q0, a1], 1)))))
            g1 = torch.sigmoid(self.fc_excite[1](torch.relu(self.fc_squeeze(torch.cat([a0, q1], 1)))))
            return g0, g1
        e = torch.relu(self.fc_squeeze(torch.cat([q0, q1], 1)))
        return torch.sigmoid(self.fc_excite[0](e)), torch.sigmoid(self.fc_excite[1](e))

    def forward(self, h0, h1, batch: int, curation: bool = False, caring: int = 0, cross_off: bool = False):
        q0, q1 = squeeze(h0, batch), squeeze(h1, batch)
        g0, g1 = self.gates(q0, q1, cross_off)
        if self.training:
            with torch.no_grad():  # cumulative means over training steps (released running_avg_weight_*)
                k = float(self.steps)
                for buf, x in (
                    (self.avg_gate0, g0),
                    (self.avg_gate1, g1),
                    (self.avg_squeeze0, q0),
                    (self.avg_squeeze1, q1),
                ):
                    buf.mul_(k / (k + 1)).add_(x.detach().float().mean(0), alpha=1 / (k + 1))
                self.steps += 1
        if curation:
            if caring == 0:
                g0 = self.avg_gate0
            else:
                g1 = self.avg_gate1
        return excite(h0, g0), excite(h1, g1)


class GreedyModel(MultimodalModel):
    """Two encoders with MMTM blocks at their shared stage boundaries, and the fusion head."""

    def __init__(self, base: MultimodalModel, ratio: int = 4, skip: int = 0):
        super().__init__(base.modalities, dict(base.encoders.items()), base.head, base.removal)
        self.encoder_kinds = dict(getattr(base, "encoder_kinds", {}))
        if self.n != 2:
            raise NotApplicable(f"greedy needs exactly 2 modalities, this data has {self.n}")
        self.staged = [_Stages(self.encoders[m]) for m in self.modalities]
        self.slots = max(len(s.stages) for s in self.staged)
        self.offsets = [self.slots - len(s.stages) for s in self.staged]  # stages aligned at the output end
        shared = [s for s in range(self.slots) if all(s >= o for o in self.offsets)]
        self.mmtm_slots = shared[skip:]
        if not self.mmtm_slots:
            raise RunError(f"greedy: --greedy-skip {skip} leaves no MMTM block ({len(shared)} shared boundaries)")
        self.mmtm = nn.ModuleList(
            MMTM(*(st.dims[s - o] for st, o in zip(self.staged, self.offsets)), ratio=ratio) for s in self.mmtm_slots
        )
        self.curation, self.caring, self.cross_off = False, 0, False

    def encode(self, inputs):
        starts = [st.start(inputs[m]) for st, m in zip(self.staged, self.modalities)]
        hs = [x for x, _, _ in starts]
        batch = starts[0][1]
        blocks = dict(zip(self.mmtm_slots, self.mmtm))
        for s in range(self.slots):
            for i, (st, o) in enumerate(zip(self.staged, self.offsets)):
                if s >= o:
                    hs[i] = st.stages[s - o](hs[i])
            if s in blocks:
                hs[0], hs[1] = blocks[s](hs[0], hs[1], batch, self.curation, self.caring, self.cross_off)
        return [st.finish(h, b, t) for st, h, (_, b, t) in zip(self.staged, hs, starts)]

    def branch_parameters(self) -> tuple:
        """(main, bypass): for each modality, its encoder's parameters and the MMTM parameters it uses."""
        main = [[p for p in self.encoders[m].parameters() if p.requires_grad] for m in self.modalities]
        bypass = [[], []]
        for block in self.mmtm:
            for i in range(2):
                bypass[i] += list(block.fc_squeeze.parameters()) + list(block.fc_excite[i].parameters())
        return main, bypass


# --------------------------------------------------------------------------------------------------------
# curation


def speed(params) -> tuple:
    """(sum ||grad||^2, sum ||w||^2) over `params` (missing gradients count as zero)."""
    g = sum(float(p.grad.detach().double().pow(2).sum()) for p in params if p.grad is not None)
    w = sum(float(p.detach().double().pow(2).sum()) for p in params)
    return g, w


class CurationController:
    """The released ``Bias_Mitigation_Strong`` state machine, fed with each step's branch speeds."""

    def __init__(self, epsilon: float, window: int):
        self.epsilon, self.window = float(epsilon), int(window)
        self.m_bypass = [0.0, 0.0]
        self.m_main = [0.0, 0.0]
        self.curation, self.caring, self.step, self.d = False, 0, 0, 0.0

    def d_bdr(self, main: list, bypass: list) -> float:
        """Accumulate one step's speeds ((g, w) per branch) and return BDR_0 - BDR_1."""
        for i in range(2):
            self.m_bypass[i] += bypass[i][0] / bypass[i][1] if bypass[i][1] > 0 else 0.0
            self.m_main[i] += main[i][0] / main[i][1] if main[i][1] > 0 else 0.0
        bdr = []
        for i in range(2):
            if self.m_bypass[i] <= 0 or self.m_main[i] <= 0:
                return 0.0
            bdr.append(math.log10(self.m_bypass[i] / self.m_main[i]))
        return bdr[0] - bdr[1]

    def needs_speeds(self, unlocked: bool) -> bool:
        return not (unlocked and self.curation)

    def update(self, unlocked: bool, main: list | None = None, bypass: list | None = None) -> None:
        """One step: speeds are needed unless curating (see ``needs_speeds``)."""
        if unlocked and self.curation:
            self.step += 1
            if self.step == self.window:
                self.curation = False
            return
        self.d = self.d_bdr(main, bypass)
        if unlocked and abs(self.d) > self.epsilon:
            self.curation, self.step = True, 0
            self.caring = 0 if self.d > 0 else 1
        else:
            self.curation, self.caring = False, 0

    def state_dict(self) -> dict:
        return {
            "m_bypass": list(self.m_bypass),
            "m_main": list(self.m_main),
            "curation": self.curation,
            "caring": self.caring,
            "step": self.step,
            "d": self.d,
        }

    def load_state_dict(self, state: dict) -> None:
        self.m_bypass, self.m_main = list(state["m_bypass"]), list(state["m_main"])
        self.curation, self.caring = bool(state["curation"]), int(state["caring"])
        self.step, self.d = int(state["step"]), float(state["d"])


def utilisation_rate(acc_on: float, acc_off: float) -> float:
    """u = (A(on) - A(off)) / A(on): the share of a branch's accuracy owed to the other modality."""
    return (acc_on - acc_off) / acc_on if acc_on > 0 else math.nan


@register_method("greedy")
class Greedy(Method):
    head = "concat"
    skips_parameters = True  # a curation step swaps the caring modality's gate for the average one
    help = "Greedy (Wu et al. 2022): MMTM blocks and curation steps on conditional learning speeds (2 modalities)"

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        if self.n != 2:
            raise NotApplicable(
                f"greedy is not applicable to {self.n} modalities ({', '.join(trainer.modalities)}): the method "
                "(Wu et al. 2022) balances exactly two branches; choose two modalities (e.g. --views)"
            )
        self.controller = CurationController(cfg.greedy_epsilon, cfg.greedy_window)
        self._counts = [0, 0]  # curation steps caring for modality 0 / 1 in the current epoch
        self._metrics = {}

    @classmethod
    def check_config(cls, cfg):
        if cfg["head"] not in ("auto", "concat"):
            return f"uses the concat head (its branch outputs are the head's slices), not --head {cfg['head']}"
        return super().check_config(cfg)

    def build_model(self, dataset):
        base = super().build_model(dataset)
        return GreedyModel(base, int(self.cfg.greedy_ratio), int(self.cfg.greedy_skip))

    def unlocked(self) -> bool:
        return self.trainer.epoch >= int(self.cfg.greedy_start)

    def on_batch(self, batch):
        core = self.trainer.core
        core.curation, core.caring = self.controller.curation, self.controller.caring
        if core.curation:
            self._counts[core.caring] += 1
        return batch

    def after_backward(self, out, batch):
        ctl, unlocked = self.controller, self.unlocked()
        if ctl.needs_speeds(unlocked):
            main, bypass = self.trainer.core.branch_parameters()
            ctl.update(unlocked, [speed(p) for p in main], [speed(p) for p in bypass])
        else:
            ctl.update(unlocked)
        self.trainer.core.curation = False

    # -- conditional utilisation rates ------------------------------------------------------------------
    @torch.no_grad()
    def branch_accuracies(self, indices) -> torch.Tensor:
        """(2, 2) float64: [m, 0] accuracy of branch m with the cross-modal flow, [m, 1] without."""
        t = self.trainer
        core = t.core
        was_training = core.training
        core.eval()
        correct = torch.zeros(2, 2, dtype=torch.float64, device=t.device)
        count = torch.zeros(1, dtype=torch.float64, device=t.device)
        for batch in eval_loader(t, indices[t.dist.rank :: t.dist.world]):
            labels = batch["label"].to(t.device)
            inputs = t.inputs_to_device(batch)
            for j, off in enumerate((False, True)):
                core.cross_off = off
                feats = core.encode(inputs)
                for i, z in enumerate(core.head.unimodal_logits(feats)):
                    correct[i, j] += (z.argmax(-1) == labels).sum().double()
            count += labels.shape[0]
        core.cross_off = False
        core.train(was_training)
        sums = reduce_sum(torch.cat([correct.flatten(), count]), t)
        return (sums[:4] / sums[4].clamp_min(1)).view(2, 2).cpu()

    def next_plan(self, epoch, values):
        self._metrics = {"greedy_d_bdr": self.controller.d}
        m = self.trainer.modality_names  # metrics.csv names the modalities as the summary does
        for i in range(2):
            self._metrics[f"greedy_curation_steps_{m[i]}"] = self._counts[i]
        self._counts = [0, 0]
        samples = int(self.cfg.greedy_util_samples)
        if samples > 0:
            pool = self.trainer.train_indices
            subset = random_subset(pool, samples, self.trainer.generator("greedy-utilisation"))
            acc = self.branch_accuracies(subset)
            for i in range(2):
                self._metrics[f"greedy_acc_{m[i]}"] = float(acc[i, 0])
                self._metrics[f"greedy_acc_{m[i]}_alone"] = float(acc[i, 1])
                rate = utilisation_rate(float(acc[i, 0]), float(acc[i, 1]))
                self._metrics[f"greedy_util_{m[1 - i]}_given_{m[i]}"] = rate
        return super().next_plan(epoch, values)

    def epoch_metrics(self):
        out, self._metrics = self._metrics, {}
        return out

    def state_dict(self):
        return {"controller": self.controller.state_dict()}

    def load_state_dict(self, state):
        if state:
            self.controller.load_state_dict(state["controller"])
