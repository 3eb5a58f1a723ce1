"""``synthetic``: multimodal classification with a controllable dominant modality and known ground truth.

Each sample has a label y and one *informative* modality m*, drawn from ``--syn-dominance`` (the share of
samples whose signal sits in each modality: the dataset-level dominance). The informative modality
carries ``strength[m] * prototype_m[y]`` plus noise; the others carry ``weak[m] * strength[m] *
prototype_m[y]`` plus noise (``weak = 0``: pure noise). So which modality matters varies per sample, like
MM-Debiased, and ``dataset.informative`` is the ground truth a valuation should recover.

``weak[m]`` is ``--syn-weak`` for every modality unless ``--syn-weak-by-modality`` gives one per modality:
e.g. ``--syn-dominance 0.6,0.4 --syn-weak-by-modality 0,1`` makes modality 1 carry the label in every
sample while modality 0 is pure noise wherever it is not the informative one (a slow but always useful
modality beside a fast, partial one). ``--syn-dims`` gives each vector modality its own width (a wide
modality can fit its noise where it carries nothing).

Modality kinds (``--syn-modalities``): ``vector`` (a feature view ``(dim,)``, key ``view<k>``), ``audio``
(a ``(1, S, S)`` spectrogram-like map), ``visual`` (``(frames, 3, S, S)`` frames), ``flow``
(``(frames, 2, S, S)``), ``text`` (``(3, L)`` int64 token ids / attention mask / token types for the
BERT-family encoder: [CLS], L - 2 words, [SEP]; each word is the class's word with probability
``min(1, 0.25 * signal)``, else a random noise word). Items are generated on the fly from a per-sample seed: nothing is
stored, and every split, index and seed gives the same tensors on every machine. ``augment`` adds
``--syn-augment-noise`` extra noise from the global RNG (a stand-in for training augmentation).
"""

from __future__ import annotations

import torch

from fastshap_train.data.base import DataOptionError, MultimodalDataset
from fastshap_train.registry import Option, register_dataset, seed_check

KINDS = ("vector", "audio", "visual", "flow", "text")
_SPLIT_IDS = {"train": 0, "test": 1, "val": 2}
# torch.manual_seed takes [0, 2^64): the per-sample seeds below wrap into it (smaller ones are unchanged).
_SEED_RANGE = 2**64


def _list_of_positive(xs):
    return None if xs and all(x >= 0 for x in xs) else "must be a non-empty list of numbers >= 0"


def _optional_list(minimum, what):
    """Empty (the option is off) or numbers >= minimum."""
    return lambda xs: None if all(x >= minimum for x in xs) else f"must be empty or a list of {what}"


OPTIONS = [
    Option("syn_modalities", ["vector", "vector"], "modality kinds, comma-separated: vector, audio, visual, flow"),
    Option("syn_samples", 512, "training samples", check=lambda x: None if x > 0 else "must be > 0"),
    Option("syn_test_samples", 256, "test samples", check=lambda x: None if x > 0 else "must be > 0"),
    Option("syn_classes", 4, "classes", check=lambda x: None if x >= 2 else "must be >= 2"),
    Option("syn_dim", 16, "width of vector modalities", check=lambda x: None if x > 0 else "must be > 0"),
    Option("syn_size", 32, "side S of audio maps and frames", check=lambda x: None if x >= 8 else "must be >= 8"),
    Option("syn_frames", 2, "frames of visual / flow modalities", check=lambda x: None if x > 0 else "must be > 0"),
    Option("syn_text_len", 12, "tokens of text modalities", check=lambda x: None if x >= 3 else "must be >= 3"),
    Option(
        "syn_strength",
        [1.5, 1.0],
        "signal strength of each modality when it is the informative one",
        kind="float_list",
        check=_list_of_positive,
    ),
    Option(
        "syn_dominance",
        [0.7, 0.3],
        "share of samples whose informative modality is each modality (normalised)",
        kind="float_list",
        check=_list_of_positive,
    ),
    Option(
        "syn_weak",
        0.25,
        "signal of a non-informative modality, relative to its strength",
        check=lambda x: None if x >= 0 else "must be >= 0",
    ),
    Option(
        "syn_weak_by_modality",
        [],
        "per-modality --syn-weak, one value per modality (empty: --syn-weak for all)",
        kind="float_list",
        check=_optional_list(0, "numbers >= 0"),
    ),
    Option(
        "syn_dims",
        [],
        "per-modality width of vector modalities, one value per modality (empty: --syn-dim for all)",
        kind="int_list",
        check=_optional_list(1, "integers > 0"),
    ),
    Option("syn_noise", 1.0, "noise standard deviation", check=lambda x: None if x >= 0 else "must be >= 0"),
    Option(
        "syn_augment_noise",
        0.0,
        "extra noise std added by the training augmentation",
        check=lambda x: None if x >= 0 else "must be >= 0",
    ),
    Option("syn_seed", 0, "seed of the data (prototypes and samples), independent of --seed", check=seed_check),
]


def modality_keys(kinds) -> tuple:
    keys, counts = [], {}
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise DataOptionError(f"synthetic: unknown modality kind {kind!r}; choose from {', '.join(KINDS)}")
        if kind == "vector":
            keys.append(f"view{i}")
        else:
            counts[kind] = counts.get(kind, 0) + 1
            keys.append(kind if counts[kind] == 1 else f"{kind}{counts[kind]}")
    return tuple(keys)


class SyntheticMultimodal(MultimodalDataset):
    name = "synthetic"

    # Token ids of the text modality (BERT uncased vocabulary: [CLS] 101, [SEP] 102, ordinary words above).
    CLS, SEP, CLASS_WORD0, NOISE_WORDS = 101, 102, 2000, (3000, 4000)

    def __init__(
        self,
        split="train",
        kinds=("vector", "vector"),
        samples=512,
        classes=4,
        dim=16,
        size=32,
        frames=2,
        strength=(1.5, 1.0),
        dominance=(0.7, 0.3),
        weak=0.25,
        noise=1.0,
        augment_noise=0.0,
        seed=0,
        augment=False,
        text_len=12,
        weak_by_modality=(),
        dims=(),
    ):
        n = len(kinds)
        if len(strength) != n or len(dominance) != n:
            raise DataOptionError(
                f"synthetic: {n} modalities need {n} strengths and {n} dominance shares, "
                f"got {len(strength)} and {len(dominance)}"
            )
        for name, values in (("--syn-weak-by-modality", weak_by_modality), ("--syn-dims", dims)):
            if values and len(values) != n:
                raise DataOptionError(f"synthetic: {name} needs one value per modality ({n}), got {len(values)}")
        if sum(dominance) <= 0:
            raise DataOptionError("synthetic: the dominance shares must not all be zero")
        self.kinds = tuple(kinds)
        self.modalities = modality_keys(kinds)
        self.num_classes = int(classes)
        self.shapes = {}
        widths = [int(d) for d in dims] if dims else [int(dim)] * n
        for key, kind, width in zip(self.modalities, self.kinds, widths):
            self.shapes[key] = {
                "vector": (width,),
                "audio": (1, size, size),
                "visual": (frames, 3, size, size),
                "flow": (frames, 2, size, size),
                "text": (3, text_len),
            }[kind]
        self.strength = [float(s) for s in strength]
        self.weak, self.noise, self.augment_noise = float(weak), float(noise), float(augment_noise)
        self.weak_by_modality = [float(w) for w in weak_by_modality] if weak_by_modality else [self.weak] * n
        self.augment = augment
        self.seed = int(seed)
        self.split_id = _SPLIT_IDS[split]
        g = torch.Generator().manual_seed(self.seed)
        # Prototypes depend on the data seed only, so train and test share them.
        self.prototypes = {
            key: torch.randn(self.num_classes, *shape, generator=g) / (torch.tensor(shape).prod().float().sqrt() / 4)
            for key, shape in self.shapes.items()
            if self.kinds[self.modalities.index(key)] != "text"
        }
        g = torch.Generator().manual_seed((self.seed * 7919 + 101 + self.split_id) % _SEED_RANGE)
        self._labels = torch.randint(0, self.num_classes, (samples,), generator=g)
        probs = torch.tensor([float(d) for d in dominance])
        self.informative = torch.multinomial(probs / probs.sum(), samples, replacement=True, generator=g)

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        i = int(i)
        y = int(self._labels[i])
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.split_id) * 10_000_019 + i) % _SEED_RANGE)
        item = {}
        for m, key in enumerate(self.modalities):
            scale = self.strength[m] * (1.0 if m == int(self.informative[i]) else self.weak_by_modality[m])
            if self.kinds[m] == "text":
                item[key] = self._text(y, scale, g)
                continue
            x = scale * self.prototypes[key][y] + self.noise * torch.randn(self.shapes[key], generator=g)
            if self.augment and self.augment_noise > 0:
                x = x + self.augment_noise * torch.randn(self.shapes[key])
            item[key] = x
        item["label"] = torch.tensor(y, dtype=torch.long)
        item["index"] = torch.tensor(i, dtype=torch.long)
        return item

    def _text(self, y: int, signal: float, g: torch.Generator) -> torch.Tensor:
        length = self.shapes[self.modalities[self.kinds.index("text")]][1]
        words = torch.randint(*self.NOISE_WORDS, (length - 2,), generator=g)
        hit = torch.rand(length - 2, generator=g) < min(1.0, 0.25 * signal)
        words = torch.where(hit, torch.full_like(words, self.CLASS_WORD0 + y), words)
        ids = torch.cat([torch.tensor([self.CLS]), words, torch.tensor([self.SEP])])
        return torch.stack([ids, torch.ones_like(ids), torch.zeros_like(ids)]).long()

    @property
    def labels(self):
        return self._labels

    def encoder_spec(self, modality):
        kind = self.kinds[self.modalities.index(modality)]
        if kind == "vector":
            return {"kind": "mlp", "in_dim": self.shapes[modality][0]}
        return {"kind": kind}


@register_dataset(
    "synthetic",
    options=OPTIONS,
    help="generated multimodal data with a controllable dominant modality and known ground truth",
    splits=("train", "test", "val"),
)
def build(
    root,
    split,
    augment=False,
    syn_modalities=("vector", "vector"),
    syn_samples=512,
    syn_test_samples=256,
    syn_classes=4,
    syn_dim=16,
    syn_size=32,
    syn_frames=2,
    syn_strength=(1.5, 1.0),
    syn_dominance=(0.7, 0.3),
    syn_weak=0.25,
    syn_noise=1.0,
    syn_augment_noise=0.0,
    syn_seed=0,
    syn_text_len=12,
    syn_weak_by_modality=(),
    syn_dims=(),
):
    del root  # generated, nothing to read
    return SyntheticMultimodal(
        split,
        syn_modalities,
        syn_samples if split == "train" else syn_test_samples,
        syn_classes,
        syn_dim,
        syn_size,
        syn_frames,
        syn_strength,
        syn_dominance,
        syn_weak,
        syn_noise,
        syn_augment_noise,
        syn_seed,
        augment,
        syn_text_len,
        syn_weak_by_modality,
        syn_dims,
    )
