"""A Lightning Trainer with fastshap's callback, as a user runs it (``python run_lightning.py [--devices 2]``,
DDP on the CPU); each rank writes what every epoch's plan was and which rows it trained on."""

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from _toy import ToyData, ToyNet, features_fn, plan_rows, script_parser, write_rank
from torch.utils.data import DataLoader

from fastshap.integrations.lightning import ResamplingCallback
from fastshap.resampling import ResampledDataset, value_dataset


class LitToy(L.LightningModule):
    def __init__(self, samples: int, batch_size: int):
        super().__init__()
        self.net = ToyNet()
        self.train_set = ResampledDataset(ToyData(samples), num_modalities=2)
        self.batch_size = batch_size

    def training_step(self, batch, batch_index):
        item, keep = batch
        return F.cross_entropy(self.net.logits(item, keep), item["labels"])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Recorder(L.Callback):
    def __init__(self, resampling):
        self.resampling, self.epochs = resampling, []

    def on_train_epoch_start(self, trainer, module):
        self.epochs.append({"plan": plan_rows(module.train_set.plan), "batches": trainer.num_training_batches})
        module.net.seen.clear()

    def on_train_epoch_end(self, trainer, module):  # after the resampling callback (listed first)
        entry = self.epochs[-1]
        entry["seen"] = list(module.net.seen)
        if len(self.resampling.history) == len(self.epochs):
            local = value_dataset(
                module.train_set.dataset,
                lambda b: features_fn(module.net, b),
                module.net.head,
                model=module,
                distributed=False,
            )
            entry["phi_matches_local"] = bool(torch.equal(self.resampling.phi, local))


def train(epochs=3, samples=90, batch_size=16, devices=1):
    L.seed_everything(0, verbose=False)
    module = LitToy(samples, batch_size)
    resampling = ResamplingCallback(
        module.train_set, lambda m, b: features_fn(m.net, b), head=lambda m: m.net.head, batch_size=32
    )
    recorder = Recorder(resampling)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[resampling, recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    return trainer, recorder


def main():
    parser = script_parser()
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    trainer, recorder = train(args.epochs, args.samples, args.batch_size, args.devices)
    write_rank(args.out, trainer.global_rank, recorder.epochs, trainer.world_size)


if __name__ == "__main__":
    main()
