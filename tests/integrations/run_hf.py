"""transformers.Trainer with fastshap's callback, as a user runs it (``python run_hf.py`` or ``torchrun
--nproc_per_node 2 run_hf.py``); each rank writes what every epoch's plan was and which rows it trained on."""

import os
import tempfile

import torch
import torch.nn.functional as F
from _toy import ToyData, ToyNet, features_fn, plan_rows, script_parser, write_rank
from transformers import Trainer, TrainerCallback, TrainingArguments

from fastshap.integrations.huggingface import ResamplingCallback
from fastshap.resampling import ResampledDataset, sample_level_plan, value_dataset


class Net(ToyNet):
    def forward(self, audio, visual, labels, index, keep=None):
        logits = self.logits({"audio": audio, "visual": visual, "index": index}, keep)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Recorder(TrainerCallback):
    """Per epoch: the plan it trains, the rows this rank trained on, and (after the re-planning) whether the
    gathered values equal this process's own pass over every sample."""

    def __init__(self, train, resampling, model):
        self.train, self.resampling, self.model, self.epochs = train, resampling, model, []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epochs.append({"plan": plan_rows(self.train.plan), "rows": len(self.train)})
        self.model.seen.clear()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        entry = self.epochs[-1]
        entry["seen"] = list(self.model.seen)
        phi = getattr(self.resampling, "phi", None)
        if phi is not None and len(self.resampling.history) == len(self.epochs):
            local = value_dataset(
                self.train.dataset, lambda b: features_fn(model, b), model.head, model=model, distributed=False
            )
            entry["phi_matches_local"] = bool(torch.equal(phi, local))


class NaivePlanSwap(TrainerCallback):
    """What the issue tried: swap the plan after each epoch and nothing else (the Trainer keeps its step count)."""

    def __init__(self, train, model):
        self.train, self.model = train, model
        self.phi = None
        self.history = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        phi = value_dataset(self.train.dataset, lambda b: features_fn(model, b), model.head, model=model)
        self.train.set_plan(sample_level_plan(phi))


def train(
    out_dir,
    epochs=3,
    samples=90,
    batch_size=16,
    naive=False,
    gradient_accumulation_steps=1,
    max_steps=-1,
    **callback_kwargs,
):
    """Train the toy model with the callback (or the naive swap); returns the Recorder."""
    model = Net()
    train_set = ResampledDataset(ToyData(samples), num_modalities=2, keep_key="keep")
    if naive:
        resampling = NaivePlanSwap(train_set, model)
    else:
        resampling = ResamplingCallback(train_set, features_fn, batch_size=32, **callback_kwargs)
    recorder = Recorder(train_set, resampling, model)
    training_args = TrainingArguments(
        output_dir=out_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        max_steps=max_steps,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=training_args, train_dataset=train_set, callbacks=[resampling, recorder]).train()
    return recorder


def main():
    args = script_parser().parse_args()
    recorder = train(tempfile.mkdtemp(), args.epochs, args.samples, args.batch_size)
    write_rank(args.out, int(os.environ.get("RANK", 0)), recorder.epochs, int(os.environ.get("WORLD_SIZE", 1)))


if __name__ == "__main__":
    main()
