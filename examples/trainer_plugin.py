"""A trainer plug-in: a dataset, an encoder kind and a method of your own, used by name.

    python -m fastshap_train --import examples.trainer_plugin --dataset toy-sensors --method sample-level \\
        --epochs 4 --warmup 1 --out runs/toy
    python -m fastshap_train --import examples/trainer_plugin.py --dataset toy-sensors --method smoothed \\
        --smoothing 0.2 --epochs 4 --out runs/toy-smoothed
    python -m fastshap_train --import examples/trainer_plugin.py --list-datasets --list-methods

``--import`` takes a dotted module name on the Python path (``python -m`` puts the current directory first
on it: run from the repository root) or a path to a ``.py`` file. The module registers, at import:

* the dataset ``toy-sensors``: two modalities of synthetic tensors, an accelerometer trace ``accel``
  ``(3, length)`` and a feature vector ``stats`` ``(8,)``. Each sample's class shows in the trace (a sine
  of the class's frequency) for a share ``--toy-accel-share`` of the samples and in the vector (the class's
  prototype) for the others; the other modality holds noise;
* the encoder kind ``conv1d``: a small 1-D convolution with batch norm over ``(B, channels, length)``,
  the default encoder of ``accel`` (``encoders: {accel: {kind: conv1d, width: 32}}`` in a config file
  changes its width);
* the method ``smoothed``: joint training with a label-smoothed cross-entropy (``--smoothing``).

Its options are flags like the built-in ones (``--toy-samples``, ``--smoothing``; see ``--help`` with the
``--import``). Every built-in method runs on the dataset, and the plug-in's method on every dataset.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastshap_train.data import MultimodalDataset
from fastshap_train.methods import Method
from fastshap_train.registry import Option, register_dataset, register_encoder, register_method, register_options

# ------------------------------------------------------------------------------------------------------
# a dataset


class ToySensors(MultimodalDataset):
    """Samples generated once, in memory; the same for every machine and run with the same options."""

    name = "toy-sensors"
    modalities = ("accel", "stats")
    SPLIT_SEEDS = {"train": 0, "test": 1, "val": 2}

    def __init__(self, split: str, samples: int, classes: int, length: int, accel_share: float, seed: int):
        g = torch.Generator().manual_seed(seed * 3 + self.SPLIT_SEEDS[split])
        self.num_classes = classes
        self._labels = torch.randint(classes, (samples,), generator=g)
        in_accel = torch.rand(samples, generator=g) < accel_share  # where each sample's signal is
        # accel: class c is a sine of frequency c + 1 on each of its 3 axes (random phase), or noise alone
        t = torch.arange(length) / length
        phase = 2 * math.pi * torch.rand(samples, 3, 1, generator=g)
        sine = torch.sin(2 * math.pi * (self._labels.view(-1, 1, 1) + 1) * t + phase)
        self._accel = in_accel.view(-1, 1, 1) * sine + 0.5 * torch.randn(samples, 3, length, generator=g)
        # stats: the class's prototype (seeded by the data seed only: train and test share them), or noise alone
        prototypes = torch.randn(classes, 8, generator=torch.Generator().manual_seed(seed))
        self._stats = (~in_accel).view(-1, 1) * prototypes[self._labels] + 0.5 * torch.randn(samples, 8, generator=g)

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        i = int(i)
        return {
            "accel": self._accel[i],
            "stats": self._stats[i],
            "label": self._labels[i],
            "index": torch.tensor(i, dtype=torch.long),
        }

    @property
    def labels(self):
        return self._labels

    def encoder_spec(self, modality):
        if modality == "accel":
            return {"kind": "conv1d", "channels": 3}
        return {"kind": "mlp", "in_dim": 8}


def _at_least(low):
    return lambda x: None if x >= low else f"must be >= {low}"


@register_dataset(
    "toy-sensors",
    options=[
        Option(
            "toy_samples", 256, "toy-sensors: training samples (test and validation: half as many)", check=_at_least(2)
        ),
        Option("toy_classes", 4, "toy-sensors: classes", check=_at_least(2)),
        Option("toy_length", 32, "toy-sensors: time steps of the accel trace", check=_at_least(8)),
        Option(
            "toy_accel_share",
            0.7,
            "toy-sensors: share of the samples whose class shows in accel (the others: in stats)",
            check=lambda x: None if 0 <= x <= 1 else "must be in [0, 1]",
        ),
        Option("toy_seed", 0, "toy-sensors: seed of the data", check=_at_least(0)),
    ],
    help="example plug-in (examples/trainer_plugin.py): an accelerometer trace and a feature vector",
    splits=("train", "test", "val"),
)
def build(root, split, augment=False, toy_samples=256, toy_classes=4, toy_length=32, toy_accel_share=0.7, toy_seed=0):
    del root, augment  # generated in memory; no augmentation
    samples = toy_samples if split == "train" else max(2, toy_samples // 2)
    return ToySensors(split, samples, toy_classes, toy_length, toy_accel_share, toy_seed)


# ------------------------------------------------------------------------------------------------------
# an encoder kind


class Conv1dEncoder(nn.Module):
    """(B, channels, length) -> (B, width): two convolutions with batch norm, then the mean over time."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, width, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
        )
        self.out_dim = int(width)  # what the trainer reads to size the fusion head

    def forward(self, x):
        return self.net(x).mean(-1)


def _positive_int(x):
    return None if isinstance(x, int) and not isinstance(x, bool) and x > 0 else "must be an integer > 0"


@register_encoder("conv1d", {"channels": _positive_int, "width": _positive_int})
def conv1d(spec: dict, cfg) -> nn.Module:
    return Conv1dEncoder(int(spec["channels"]), int(spec.get("width", 16)))


# ------------------------------------------------------------------------------------------------------
# a method, with an option of its own

register_options(
    "smoothed",
    [
        Option(
            "smoothing",
            0.1,
            "label smoothing of the smoothed method's cross-entropy",
            check=lambda x: None if 0 <= x < 1 else "must be in [0, 1)",
        )
    ],
    title="method smoothed (examples/trainer_plugin.py)",
)


@register_method("smoothed")
class Smoothed(Method):
    """Joint training (the base class's hooks) with a label-smoothed loss: one hook overridden."""

    help = "example plug-in method: joint training with a label-smoothed cross-entropy (--smoothing)"

    def loss(self, out, batch):
        logits = out.logits.float()
        return F.cross_entropy(
            logits.flatten(0, -2), batch["label"].flatten(), label_smoothing=float(self.cfg.smoothing)
        )
