"""fastshap in a plain PyTorch training loop: two small encoders, a concat head, sample-level re-sampling.

    python examples/plain_loop.py --epochs 5

fastshap's part is the lines marked ``# [fastshap]``: the plan's keep rows in the forward, the re-sampled
dataset, the valuation pass after each epoch, and (optional) the values of each training batch from the
features the forward already computed.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastshap  # [fastshap]
from fastshap.resampling import ResampledDataset, apply_keep, sample_level_plan, value_dataset  # [fastshap]


def synthetic(samples: int, classes: int, generator: torch.Generator) -> TensorDataset:
    """Audio carries the label clearly, visual faintly: visual is the weak modality of most samples."""
    labels = torch.randint(0, classes, (samples,), generator=generator)
    centres = torch.randn(classes, 24, generator=generator)
    audio = 2.0 * centres[labels, :20] + torch.randn(samples, 20, generator=generator)
    visual = 0.5 * centres[labels, 12:] + torch.randn(samples, 12, generator=generator)
    return TensorDataset(audio, visual, labels)


class Model(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16))
        self.visual = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(32, classes)

    def features(self, audio, visual):
        return [self.audio(audio), self.visual(visual)]

    def forward(self, audio, visual, keep=None):
        features = self.features(audio, visual)
        if keep is not None:  # [fastshap]
            features = apply_keep(features, keep)  # [fastshap] a copy keeps one modality: zero the others
        return self.head(torch.cat(features, 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    data = synthetic(args.samples, 5, g)
    model = Model(5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_set = ResampledDataset(data, num_modalities=2)  # [fastshap] epoch 0: the originals
    capture = fastshap.capture_features(model.head, dims=[16, 16])  # [fastshap] (optional) online values
    for epoch in range(args.epochs):
        model.train()
        online = []
        for (audio, visual, labels), keep in DataLoader(train_set, args.batch_size, shuffle=True):  # [fastshap]
            loss = F.cross_entropy(model(audio, visual, keep), labels)  # [fastshap] keep
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            online.append(capture.value(labels)[keep.all(1)])  # [fastshap] this batch's originals
        phi = value_dataset(data, lambda b: (model.features(b[0], b[1]), b[2]), model.head, model=model)  # [fastshap]
        train_set.set_plan(sample_level_plan(phi))  # [fastshap] the next epoch's rows
        weak = fastshap.resampling.weak_modality(phi)  # [fastshap] -1: no single weakest (a tie)
        counts = [(weak == w).sum().item() for w in (0, 1, -1)]
        print(
            f"epoch {epoch}: loss {loss.item():.3f}, mean phi {phi.mean(0).tolist()} (online "
            f"{torch.cat(online).mean(0).tolist()}), weak audio/visual/tie {counts}, next plan {len(train_set)} "
            f"rows, copies {train_set.plan.copies_per_modality()}"
        )


if __name__ == "__main__":
    main()
