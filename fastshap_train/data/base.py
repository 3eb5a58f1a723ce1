"""The dataset interface, and an epoch's training plan as (index, keep-mask) rows.

Re-sampled copies are never materialised: a :class:`Plan` row says which sample to load and which
modalities it keeps (a bitmask, bit i = modality i), plus which modalities get the data mask. The model
removes the others (feature or input zeroing) when it sees the batch's ``keep`` column.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

Tensor = torch.Tensor


class DataFileError(OSError):
    """A data file is missing, unreadable or malformed; ``filename`` names it."""

    def __init__(self, filename, problem: str):
        self.problem = problem
        super().__init__(f"{filename}: {problem}")
        self.filename = str(filename)

    def __str__(self):
        return f"data file {self.filename}: {self.problem}"


class DataOptionError(ValueError):
    """A dataset option the dataset cannot take (an unknown or repeated view, a modality kind, shares):
    the command line reports it as an error instead of a traceback."""


class MultimodalDataset(Dataset):
    """Base class. Subclasses set ``modalities``, ``num_classes`` and implement ``__len__``/``__getitem__``.

    ``__getitem__(i)`` returns ``{modality: tensor, ..., "label": int64, "index": int64}``.
    """

    modalities: tuple = ()
    num_classes: int = 0
    augment: bool = False
    name: str = ""

    def encoder_spec(self, modality: str) -> dict:
        """The default encoder of a modality, e.g. ``{"kind": "mlp", "in_dim": 76}`` (models.build_encoder)."""
        raise NotImplementedError

    def display_name(self, modality: str) -> str:
        return modality

    @property
    def labels(self) -> Tensor | None:
        """(N,) int64 labels when cheap to provide (used for stratified draws and the phi tables)."""
        return None

    def with_augment(self, augment: bool) -> MultimodalDataset:
        """The same samples with training transforms on or off (valuation uses eval transforms)."""
        if augment == self.augment:
            return self
        other = copy.copy(self)
        other.augment = augment
        return other

    def zero_input(self, modality: str) -> Tensor:
        """The input of a removed modality for ``--removal input``: zeros shaped like one sample's input."""
        return torch.zeros_like(self[0][modality])


class FeatureViews(MultimodalDataset):
    """Multi-view feature vectors held in memory (UCI multiple features, Caltech101-20): the views of one
    split of the rows, each standardised with its training rows' mean and std. An MLP encodes each view."""

    def _load_views(self, views: dict, labels, train_rows, rows, modalities) -> None:
        """views: modality source key -> (N, d) float array of all rows, in the order of `modalities`."""
        self.modalities = tuple(modalities)
        self.source_rows = torch.from_numpy(rows)
        self._labels = torch.from_numpy(labels[rows]).long()
        self._x = {}
        for key, x in zip(self.modalities, views.values()):
            mean, std = x[train_rows].mean(0), x[train_rows].std(0)
            std[std < 1e-8] = 1.0  # constant features stay zero rather than blowing up
            self._x[key] = torch.from_numpy((x[rows] - mean) / std).float()

    def __len__(self):
        return int(self._labels.numel())

    def __getitem__(self, i):
        item = {m: self._x[m][int(i)] for m in self.modalities}
        item["label"] = self._labels[int(i)]
        item["index"] = torch.tensor(int(i), dtype=torch.long)
        return item

    @property
    def labels(self):
        return self._labels

    def encoder_spec(self, modality):
        return {"kind": "mlp", "in_dim": int(self._x[modality].shape[1])}


def keep_bits(keep: Tensor, n: int) -> Tensor:
    """keep bitmask (B,) int64 -> (B, n) bool, column i = modality i kept."""
    shifts = torch.arange(n, device=keep.device)
    return (keep.unsqueeze(1) >> shifts) & 1 == 1


@dataclass
class Plan:
    """An epoch's training rows: sample ``index[j]`` with modalities ``keep[j]`` (bitmask), data mask ``mask[j]``."""

    index: Tensor  # (M,) int64, positions in the base training set
    keep: Tensor  # (M,) int64 bitmask of kept modalities; full = 2^n - 1
    mask: Tensor  # (M,) int64 bitmask of modalities whose input gets the data mask
    n: int

    @property
    def full(self) -> int:
        return (1 << self.n) - 1

    @classmethod
    def originals(cls, indices: Tensor, n: int) -> Plan:
        indices = torch.as_tensor(indices, dtype=torch.long)
        full = (1 << n) - 1
        return cls(indices.clone(), torch.full_like(indices, full), torch.zeros_like(indices), n)

    def add_copies(self, index: Tensor, keep, mask=0) -> Plan:
        """A new plan with rows (index, keep, mask) appended (keep/mask: one int or per row)."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        keep = torch.as_tensor(keep, dtype=torch.long).expand(index.shape).clone()
        mask = torch.as_tensor(mask, dtype=torch.long).expand(index.shape).clone()
        return Plan(torch.cat([self.index, index]), torch.cat([self.keep, keep]), torch.cat([self.mask, mask]), self.n)

    def __len__(self) -> int:
        return int(self.index.numel())

    @property
    def resampled(self) -> int:
        """Rows that are not an unmodified original: extra copies, or originals altered (drop / mask)."""
        return int(((self.keep != self.full) | (self.mask != 0)).sum())

    def kept_only(self, i: int) -> int:
        """Number of rows that keep modality i alone."""
        return int((self.keep == (1 << i)).sum())

    def state_dict(self) -> dict:
        return {"index": self.index, "keep": self.keep, "mask": self.mask, "n": self.n}

    @classmethod
    def from_state(cls, state: dict) -> Plan:
        return cls(state["index"].long(), state["keep"].long(), state["mask"].long(), int(state["n"]))


class PlanDataset(Dataset):
    """Rows of a Plan over a base dataset; items get ``keep`` and ``mask`` (int64 bitmasks)."""

    def __init__(self, base: Dataset, plan: Plan):
        self.base = base
        self.plan = plan
        # Plain lists: indexing a tensor per item is slow in the DataLoader's hot path.
        self._index = plan.index.tolist()
        self._keep = plan.keep.tolist()
        self._mask = plan.mask.tolist()

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, j: int) -> dict:
        item = dict(self.base[self._index[j]])
        item["keep"] = torch.tensor(self._keep[j], dtype=torch.long)
        item["mask"] = torch.tensor(self._mask[j], dtype=torch.long)
        return item


class PlanBatches(Sampler):
    """Batches of `batch_size` positions drawn from `sampler`, except that a last batch of a single row is
    merged into the one before it (which then holds batch_size + 1 rows).

    Batch norm in train mode cannot normalise one row ("Expected more than 1 value per channel"), and a
    re-sampled plan can be any length. Merging keeps every row of the epoch (nothing is dropped) and every
    other batch at its configured size, so plans of other lengths batch exactly as a plain DataLoader
    would; spreading the row over the epoch would reshuffle the batch sizes of every epoch instead. Under
    DDP every rank's DistributedSampler yields as many rows, so all ranks merge alike and take the same
    number of steps. A sampler of one row in all still gives one batch of one row (see :meth:`smallest`).
    """

    def __init__(self, sampler, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.batch_size = int(batch_size)

    def sizes(self) -> list:
        """The batch sizes of an epoch, in order."""
        full, rest = divmod(len(self.sampler), self.batch_size)
        sizes = [self.batch_size] * full
        if rest == 1 and full:
            sizes[-1] += 1
        elif rest:
            sizes.append(rest)
        return sizes

    def smallest(self) -> int:
        return min(self.sizes(), default=0)

    def __len__(self) -> int:
        return len(self.sizes())

    def __iter__(self):
        sizes, rows = self.sizes(), iter(self.sampler)
        for size in sizes:
            yield [next(rows) for _ in range(size)]


class Subset(Dataset):
    """Items of `base` at `indices` (valuation of a subset Z); items keep their base ``index``."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base = base
        self.indices = [int(i) for i in indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        return self.base[self.indices[j]]
