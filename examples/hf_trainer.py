"""fastshap with a Hugging Face ``transformers.Trainer``: sample-level re-sampling through a callback.

    python examples/hf_trainer.py --epochs 5
    torchrun --nproc_per_node 2 examples/hf_trainer.py --epochs 5     # data parallel (gloo on CPUs)

fastshap's part is the lines marked ``# [fastshap]``: the keep rows in the model's forward, the re-sampled
dataset (dict items gain "keep") and the callback, which values every sample after each epoch and makes the
Trainer train the next epoch on the whole new plan.
"""

import argparse
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from fastshap.integrations.huggingface import ResamplingCallback  # [fastshap]
from fastshap.resampling import ResampledDataset, apply_keep  # [fastshap]


class Synthetic(Dataset):
    """Dict items as Trainer models take them; audio carries the label clearly, visual faintly."""

    def __init__(self, samples: int, classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (samples,), generator=g)
        centres = torch.randn(classes, 24, generator=g)
        self.audio = 2.0 * centres[self.labels, :20] + torch.randn(samples, 20, generator=g)
        self.visual = 0.5 * centres[self.labels, 12:] + torch.randn(samples, 12, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"audio": self.audio[i], "visual": self.visual[i], "labels": self.labels[i]}


class Model(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16))
        self.visual = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(32, classes)

    def features(self, batch):
        return [self.audio(batch["audio"]), self.visual(batch["visual"])]

    def forward(self, audio, visual, labels=None, keep=None):
        features = self.features({"audio": audio, "visual": visual})
        if keep is not None:  # [fastshap]
            features = apply_keep(features, keep)  # [fastshap] a copy keeps one modality: zero the others
        logits = self.head(torch.cat(features, 1))
        return {"loss": F.cross_entropy(logits, labels), "logits": logits} if labels is not None else {"logits": logits}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data, model = Synthetic(args.samples, 5), Model(5)
    train_set = ResampledDataset(data, num_modalities=2, keep_key="keep")  # [fastshap]
    features_fn = lambda model, batch: (model.features(batch), batch["labels"])  # [fastshap] # noqa: E731
    callback = ResamplingCallback(train_set, features_fn, head="head")  # [fastshap]
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=0.01,
        lr_scheduler_type="constant",  # [fastshap] epochs change length: no schedule over a fixed total
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="epoch",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, callbacks=[callback])  # [fastshap]
    trainer.train()
    if trainer.is_world_process_zero():
        for entry in callback.history:
            print(
                f"after epoch {entry['epoch']}: mean phi {entry['mean_phi']}, next plan {entry['rows']} rows, "
                f"copies {entry['copies']}"
            )


if __name__ == "__main__":
    main()
