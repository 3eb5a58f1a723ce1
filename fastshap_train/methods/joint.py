"""``concat`` and ``decision-fusion`` (the paper's joint-training baselines): joint training without re-balancing."""

from __future__ import annotations

import torch.nn.functional as F

from fastshap_train.methods.base import Method
from fastshap_train.registry import register_method


@register_method("concat")
class Concat(Method):
    """Joint training, cross-entropy on the concat-linear head's fused logits."""

    head = "concat"
    help = "joint training of the concatenation model (CE on the fused output)"


@register_method("decision-fusion")
class DecisionFusionMethod(Method):
    """One linear classifier per modality, each with its own CE; prediction = mean of their softmax.

    A row that removes a modality (a re-sampled copy) skips that modality's CE term.
    """

    head = "decision"
    help = "one classifier per modality, a CE each; prediction is the mean of their softmax outputs"

    @classmethod
    def check_config(cls, cfg):
        if cfg["head"] not in ("auto", "decision"):
            return f"needs the decision head, not --head {cfg['head']}"
        return super().check_config(cfg)

    def loss(self, out, batch):
        head = self.trainer.core.head
        logits = head.per_modality_logits(out.features)
        keep = batch.get("keep_bits")
        total = 0.0
        for i, z in enumerate(logits):
            ce = F.cross_entropy(z.float(), batch["label"], reduction="none")
            if keep is not None:
                ce = ce * keep[:, i].to(ce.dtype)
            total = total + ce.mean()
        return total
