"""Per-epoch re-sampling inside ``transformers.Trainer``.

::

    train = ResampledDataset(dataset, num_modalities=2, keep_key="keep")   # dict items gain "keep" (n,) bool
    callback = ResamplingCallback(train, lambda model, batch: (model.features(batch), batch["labels"]))
    Trainer(model, args, train_dataset=train, callbacks=[callback]).train()

The model's ``forward(..., keep=None)`` removes what a row does not keep (``fastshap.resampling.apply_keep``).
After each epoch the callback values every training sample (eval mode, no gradients; under data
parallelism each rank values its share and the values are all-gathered, so every rank builds the same
plan) and the next epoch trains on the whole new plan.

The Trainer fixes its loop's steps per epoch, and the step count of its learning-rate schedule, from the
dataset's length when ``train()`` starts. So that no epoch is cut short, the dataset reports ``max_rows``
(the largest plan the rule can make; default: every modality of every sample copied 3 times, the default
cap) until training starts; each epoch then ends when its plan's rows run out. The schedule is therefore
laid over ``max_rows`` rows per epoch: use a schedule that does not depend on the total
(``lr_scheduler_type="constant"`` or ``"constant_with_warmup"``), or set ``max_rows``. A plan larger than
``max_rows`` is an error, and so is an epoch the Trainer ends before its plan is done.
"""

from __future__ import annotations

from collections.abc import Callable

from fastshap.integrations._core import EpochResampler, require
from fastshap.resampling import ResampledDataset

transformers = require("transformers", "transformers and accelerate", "huggingface")
require("accelerate", "transformers and accelerate", "huggingface")  # the Trainer's own dependency

__all__ = ["ResamplingCallback"]


class ResamplingCallback(EpochResampler, transformers.TrainerCallback):
    """Value after each epoch and train the next epoch on the whole new plan.

    Args:
        train_dataset: the :class:`~fastshap.resampling.ResampledDataset` given to the Trainer as
            ``train_dataset`` (with ``keep_key`` for dict items).
        features_fn, head, plan_fn, warmup, subset, seed, batch_size, collate_fn, baselines, benefit,
            backend: see :class:`fastshap.integrations._core.EpochResampler`.
        max_rows: the most rows a plan may have (sets the Trainer's steps per epoch; see the module text).

    ``history`` lists each re-planning (epoch, rows, copies per modality, mean phi); ``phi`` holds the
    latest values. No valuation runs after the last epoch.
    """

    def __init__(
        self,
        train_dataset: ResampledDataset,
        features_fn: Callable,
        head: str | Callable = "head",
        *,
        max_rows: int | None = None,
        **options,
    ):
        super().__init__(train_dataset, features_fn, head, **options)
        samples = len(train_dataset.dataset)
        self.max_rows = samples * (1 + 3 * train_dataset.num_modalities) if max_rows is None else int(max_rows)
        if self.max_rows < len(train_dataset.plan):
            raise ValueError(f"fastshap: max_rows={self.max_rows} is below the plan's {len(train_dataset.plan)} rows")
        self.dataset.reserved_rows = self.max_rows  # read by the Trainer when train() starts
        self._epoch = 0
        self._batches = self._done = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if args.gradient_accumulation_steps != 1:
            # the Trainer steps the optimizer by its fixed count of batches per epoch: the last group of an
            # epoch that ends with its plan would never step
            raise ValueError(
                f"fastshap: ResamplingCallback needs gradient_accumulation_steps=1 (got "
                f"{args.gradient_accumulation_steps}); raise per_device_train_batch_size instead"
            )
        if args.max_steps > 0:
            raise ValueError(
                f"fastshap: ResamplingCallback sizes each epoch by its plan; give num_train_epochs, not max_steps "
                f"(got max_steps={args.max_steps}), or the Trainer would count epochs of max_rows rows"
            )
        if args.dataloader_persistent_workers:
            raise ValueError(
                "fastshap: ResamplingCallback needs dataloader_persistent_workers=False: persistent workers keep "
                "their copy of the dataset and would never see the new plans"
            )
        self.dataset.reserved_rows = None  # the Trainer has sized its epochs: from here on, the plan's rows
        self._epoch = int(state.epoch or 0)

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self._batches = len(train_dataloader) if train_dataloader is not None else 0
        self._done = 0

    def on_step_end(self, args, state, control, **kwargs):
        self._done += 1

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self._done < self._batches and not control.should_training_stop:
            raise RuntimeError(
                f"fastshap: the Trainer ended epoch {self._epoch} after {self._done} of its plan's {self._batches} "
                f"batches; raise max_rows (now {self.max_rows}) to at least the largest plan's length"
            )
        last = self._epoch + 1 >= args.num_train_epochs
        if not last and not control.should_training_stop:
            plan = self.after_epoch(model, self._epoch)
            if plan is not None and len(plan) > self.max_rows:
                raise ValueError(
                    f"fastshap: the plan after epoch {self._epoch} has {len(plan)} rows, more than max_rows="
                    f"{self.max_rows} that the Trainer sized its epochs for; pass a larger max_rows"
                )
        self._epoch += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.dataset.reserved_rows = self.max_rows  # a later train() sizes its epochs again
