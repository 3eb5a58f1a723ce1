"""A tiny two-modality task for the framework tests and their multi-process scripts (no framework imports).

Items are dicts ``{"audio", "visual", "labels", "index"}``; the model records, for every training row it
sees, ``(index, keep bitmask)``, so that a test can compare the rows an epoch trained on with the plan.
"""

import argparse
import json
import os

import torch
from torch import nn
from torch.utils.data import Dataset

from fastshap.resampling import Plan, apply_keep


class ToyData(Dataset):
    def __init__(self, samples: int, classes: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (samples,), generator=g)
        centres = torch.randn(classes, 10, generator=g)
        self.audio = 2.0 * centres[self.labels, :6] + torch.randn(samples, 6, generator=g)
        self.visual = 0.3 * centres[self.labels, 4:] + torch.randn(samples, 6, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"audio": self.audio[i], "visual": self.visual[i], "labels": self.labels[i], "index": torch.tensor(i)}


class ToyNet(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.audio = nn.Linear(6, 8)
        self.visual = nn.Linear(6, 8)
        self.head = nn.Linear(16, classes)
        self.seen = []  # (index, keep bits) of the training rows seen

    def features(self, batch):
        return [torch.relu(self.audio(batch["audio"])), torch.relu(self.visual(batch["visual"]))]

    def logits(self, batch, keep=None):
        features = self.features(batch)
        if keep is not None:
            features = apply_keep(features, keep)
            if self.training:
                self.seen += rows(batch["index"], keep)
        return self.head(torch.cat(features, 1))


def bits(keep: torch.Tensor) -> list:
    return (keep.long() << torch.arange(keep.shape[1])).sum(1).tolist()


def rows(index: torch.Tensor, keep: torch.Tensor) -> list:
    return [(int(i), b) for i, b in zip(index.tolist(), bits(keep.cpu()))]


def plan_rows(plan: Plan) -> list:
    return rows(plan.index, plan.keep)


def features_fn(model, batch):
    return model.features(batch), batch["labels"]


def script_parser() -> argparse.ArgumentParser:
    """The options the run_* scripts share: --out (the folder for each rank's JSON) and the run's size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=90)
    parser.add_argument("--batch-size", type=int, default=16)
    return parser


def write_rank(out: str, rank: int, epochs: list, world: int) -> None:
    """A script's result for its test: out/rank<rank>.json, the epochs its Recorder noted and the world size."""
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"epochs": epochs, "world": world}, f)
