"""fastshap with PyTorch Lightning: sample-level re-sampling through a callback.

    python examples/lightning_loop.py --epochs 5
    python examples/lightning_loop.py --epochs 5 --devices 2     # data parallel (DDP, gloo on CPUs)

fastshap's part is the lines marked ``# [fastshap]``: the keep rows in the training step, the re-sampled
dataset and the callback, which values every sample after each epoch and has Lightning train the next
epoch on the whole new plan.
"""

import argparse

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastshap.integrations.lightning import ResamplingCallback  # [fastshap]
from fastshap.resampling import ResampledDataset, apply_keep  # [fastshap]


def synthetic(samples: int, classes: int, seed: int = 0) -> TensorDataset:
    """Audio carries the label clearly, visual faintly: visual is the weak modality of most samples."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (samples,), generator=g)
    centres = torch.randn(classes, 24, generator=g)
    audio = 2.0 * centres[labels, :20] + torch.randn(samples, 20, generator=g)
    visual = 0.5 * centres[labels, 12:] + torch.randn(samples, 12, generator=g)
    return TensorDataset(audio, visual, labels)


class Model(L.LightningModule):
    def __init__(self, data, classes: int, batch_size: int):
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16))
        self.visual = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(32, classes)
        self.train_set = ResampledDataset(data, num_modalities=2)  # [fastshap]
        self.batch_size = batch_size

    def features(self, audio, visual):
        return [self.audio(audio), self.visual(visual)]

    def training_step(self, batch, batch_index):
        (audio, visual, labels), keep = batch  # [fastshap]
        features = apply_keep(self.features(audio, visual), keep)  # [fastshap] copies keep one modality
        loss = F.cross_entropy(self.head(torch.cat(features, 1)), labels)
        self.log("loss", loss, prog_bar=True)
        return loss

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    model = Model(synthetic(args.samples, 5), 5, args.batch_size)
    features_fn = lambda model, batch: (model.features(batch[0], batch[1]), batch[2])  # [fastshap] # noqa: E731
    callback = ResamplingCallback(model.train_set, features_fn, head="head")  # [fastshap]
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        callbacks=[callback],  # [fastshap]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    if trainer.is_global_zero:
        for entry in callback.history:
            print(
                f"after epoch {entry['epoch']}: mean phi {entry['mean_phi']}, next plan {entry['rows']} rows, "
                f"copies {entry['copies']}"
            )


if __name__ == "__main__":
    main()
