"""Enhancement without extra copies (the paper's supp. Table 7). Our definitions (the paper publishes none):

A sample *marks a modality weak* when its smallest phi is below 1 and some modality has a larger phi;
its weak modality is the (first) argmin, its *stronger* modalities those with phi above the minimum.
After warmup, from each epoch's values:

modality-drop: with probability ``--drop-prob`` the sample's original row keeps only the modalities that
    are not stronger (the others are removed as ``--removal`` says) for the next epoch. No rows are added;
    ``resampled`` counts the altered rows.
data-mask: with probability ``--mask-prob`` the inputs of the sample's stronger modalities are partly
    masked in the next epoch (a fresh random mask each time the row is loaded), ``--mask-ratio`` of:
    spectrograms ``(B, 1, T, F)``: one band of time frames and one of frequency bins (SpecAugment-like);
    images / frames ``(B, [T,] C, H, W)``: square patches (side max(1, H // 8)), the same for every frame;
    feature vectors ``(B, d)``: single features; text ``(B, 3, L)``: tokens after [CLS] (attention mask 0).
"""

from __future__ import annotations

import torch

from fastshap_train.methods.resampling import _Resampling
from fastshap_train.registry import Option, register_method, register_options

register_options(
    "enhance",
    [
        Option(
            "drop_prob",
            0.5,
            "modality-drop: probability that a sample with a weak modality loses its stronger modalities for an epoch",
            check=lambda x: None if 0 <= x <= 1 else "must be in [0, 1]",
        ),
        Option(
            "mask_prob",
            0.5,
            "data-mask: probability that a sample with a weak modality gets its stronger modalities' inputs masked",
            check=lambda x: None if 0 <= x <= 1 else "must be in [0, 1]",
        ),
        Option(
            "mask_ratio",
            0.25,
            "data-mask: share of the input masked (bands, patches, features, tokens)",
            check=lambda x: None if 0 < x < 1 else "must be in (0, 1)",
        ),
    ],
    title="modality-drop and data-mask",
)


def stronger_modalities(phi: torch.Tensor) -> torch.Tensor:
    """phi (K, n) -> (K, n) bool: modalities stronger than the sample's weakest, for samples that mark one
    weak (min phi < 1 and not all equal); all False otherwise (and for rows with NaN)."""
    low = phi.min(1, keepdim=True).values
    marked = (low < 1) & (phi.max(1, keepdim=True).values > low)
    return (phi > low) & marked


def bits(mask: torch.Tensor) -> torch.Tensor:
    """(K, n) bool -> (K,) int64 bitmask."""
    weights = 1 << torch.arange(mask.shape[1])
    return (mask.long() * weights).sum(1)


class _Enhance(_Resampling):
    prob_option = ""  # the option holding the probability of altering a selected sample
    metric = ""  # metrics.csv column: how many samples were altered this epoch

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        self._metrics = {}

    def selected(self, epoch, values) -> tuple:
        """(positions in the plan, stronger (K', n) bool) of the samples altered for epoch + 1."""
        stronger = stronger_modalities(values.phi)
        g = self.trainer.generator(self.name, epoch)
        coin = torch.rand(len(values), generator=g) < float(self.cfg[self.prob_option])
        chosen = stronger.any(1) & coin
        position = torch.full((int(self.trainer.train_indices.max()) + 1,), -1, dtype=torch.long)
        position[self.trainer.train_indices] = torch.arange(len(self.trainer.train_indices))
        pos = position[values.index[chosen]]
        ok = pos >= 0
        return pos[ok], stronger[chosen][ok]

    def epoch_metrics(self):
        return dict(self._metrics)

    def next_plan(self, epoch, values):
        """The originals, with the selected samples altered by :meth:`alter` (from the warmup on)."""
        plan = self.first_plan()
        self._metrics = {}
        if values is None or not self.resampling_epoch(epoch):
            return plan
        pos, stronger = self.selected(epoch, values)
        self.alter(plan, pos, bits(stronger))
        self._metrics = {self.metric: int(pos.numel())}
        return plan

    def alter(self, plan, pos, stronger_bits) -> None:
        raise NotImplementedError


@register_method("modality-drop")
class ModalityDrop(_Enhance):
    help = "remove a sample's stronger modalities with probability --drop-prob when one of its modalities is weak"
    prob_option = "drop_prob"
    metric = "dropped"
    # Its rows with modalities removed are originals (it adds no copies): with feature removal their encoder
    # outputs are the whole sample's, so online valuation values them like any original.
    removes_from_originals = True

    @classmethod
    def check_config(cls, cfg):
        if cfg["valuation"] == "online" and cfg["removal"] == "input":
            return (
                "--valuation online cannot value a dropped sample under --removal input (its encoders see "
                "zero inputs, not the sample): such a sample would go unvalued, and could not be dropped, "
                "every other epoch; use --valuation epoch or --removal feature"
            )
        return super().check_config(cfg)

    def alter(self, plan, pos, stronger_bits):
        plan.keep[pos] = plan.full & ~stronger_bits


@register_method("data-mask")
class DataMask(_Enhance):
    help = "mask parts of a sample's stronger modalities' inputs with probability --mask-prob"
    prob_option = "mask_prob"
    metric = "masked"

    @classmethod
    def check_config(cls, cfg):
        if cfg["valuation"] == "online":
            return (
                "--valuation online cannot value a masked sample (the step's features are the masked "
                "input's): such a sample would go unvalued, and could not be masked, every other epoch; use "
                "--valuation epoch"
            )
        return super().check_config(cfg)

    def alter(self, plan, pos, stronger_bits):
        plan.mask[pos] = stronger_bits

    def on_batch(self, batch):
        mask = batch.get("mask")
        if mask is None:
            return batch
        g = self.trainer.generator("data-mask-batch", self.trainer.epoch, self.trainer.step)
        kinds = getattr(self.trainer.core, "encoder_kinds", {})
        batch = dict(batch)
        for i, m in enumerate(self.trainer.modalities):
            rows = (mask >> i) & 1 == 1
            # One flag test per modality and batch: cheap, and skips the work on unmasked batches.
            if not bool(rows.any()):
                continue
            x = batch[m]
            masked = mask_input(x, kinds.get(m, ""), float(self.cfg.mask_ratio), g)
            batch[m] = torch.where(rows.view(-1, *([1] * (x.dim() - 1))), masked, x)
        return batch


def mask_input(x: torch.Tensor, kind: str, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A masked copy of every row of `x` (see the module docstring for the layouts)."""
    b, dev = x.shape[0], x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    if kind == "text" or (x.dim() == 3 and not x.is_floating_point()):
        drop = rand(b, x.shape[-1]) < ratio
        drop[:, 0] = False  # keep [CLS]
        out = x.clone()
        out[:, 1] = torch.where(drop, torch.zeros_like(out[:, 1]), out[:, 1])
        return out
    if x.dim() == 2:  # feature vector
        return x * (rand(*x.shape) >= ratio).to(x.dtype)
    spectrogram = kind == "audio" or x.dim() == 3 or (x.dim() == 4 and x.shape[1] == 1)
    if spectrogram:
        t_len, f_len = x.shape[-2], x.shape[-1]
        keep = torch.ones(b, t_len, f_len, dtype=torch.bool, device=dev)
        for axis, size in ((1, t_len), (2, f_len)):
            width = max(1, int(ratio * size))
            start = (rand(b) * (size - width + 1)).long().clamp_max(size - width)
            pos = torch.arange(size, device=dev)
            band = (pos >= start.view(-1, 1)) & (pos < (start + width).view(-1, 1))
            keep &= ~(band.unsqueeze(2) if axis == 1 else band.unsqueeze(1))
        return x * keep.view(b, *([1] * (x.dim() - 3)), t_len, f_len).to(x.dtype)
    h, w = x.shape[-2], x.shape[-1]
    side = max(1, h // 8)
    gh, gw = -(-h // side), -(-w // side)
    keep = rand(b, gh, gw) >= ratio
    keep = keep.repeat_interleave(side, 1).repeat_interleave(side, 2)[:, :h, :w]
    return x * keep.view(b, *([1] * (x.dim() - 3)), h, w).to(x.dtype)
