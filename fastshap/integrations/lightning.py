"""Per-epoch re-sampling inside a PyTorch Lightning ``Trainer``.

::

    class Model(L.LightningModule):
        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=64, shuffle=True)   # train_set: a ResampledDataset
        def training_step(self, batch, _):
            (x_a, x_v, y), keep = batch
            ...

    callback = ResamplingCallback(model.train_set, lambda model, batch: (model.features(batch), batch[-1]))
    L.Trainer(max_epochs=10, callbacks=[callback]).fit(model)

After each training epoch the callback values every training sample (eval mode, no gradients; under data
parallelism each rank values its share and the values are all-gathered, so every rank builds the same
plan) and swaps the plan in. Lightning sizes an epoch when it builds the train DataLoader, so the callback
sets ``reload_dataloaders_every_n_epochs=1``: each epoch gets a new DataLoader (and, under DDP, a new
DistributedSampler) over the whole new plan.
"""

from __future__ import annotations

from fastshap.integrations._core import EpochResampler, require

pl = require("lightning.pytorch", "lightning", "lightning")

__all__ = ["ResamplingCallback"]


class ResamplingCallback(EpochResampler, pl.Callback):
    """Value after each training epoch and train the next one on the whole new plan.

    Args:
        train_dataset: the :class:`~fastshap.resampling.ResampledDataset` that the module's (or data
            module's) ``train_dataloader()`` wraps.
        features_fn, head, plan_fn, warmup, subset, seed, batch_size, collate_fn, baselines, benefit,
            backend: see :class:`fastshap.integrations._core.EpochResampler`; the model is the
            LightningModule.

    ``history`` lists each re-planning (epoch, rows, copies per modality, mean phi); ``phi`` holds the
    latest values. No valuation runs after the last epoch.
    """

    def setup(self, trainer, pl_module, stage):
        if stage == "fit" and trainer.reload_dataloaders_every_n_epochs != 1:
            # otherwise the first epoch's DataLoader (and its length, and a DDP sampler's length) stays
            trainer.reload_dataloaders_every_n_epochs = 1

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= epoch + 1:
            return  # no epoch follows
        self.after_epoch(pl_module, epoch)
