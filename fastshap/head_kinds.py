"""The head kinds the kernels run, declared once for the Python side.

A head kind is a head that the kernels value from its parameters alone. Each kind has a name (the ``head``
argument of ``torch.ops.fastshap.shapley``), an integer code (what the CUDA and Triton kernels switch on),
its parameters in the order the op takes them with their shapes in symbols (n modalities, D = sum d_i,
C classes, H hidden units; a symbol's first occurrence fixes its value, the later ones must agree), which
parameter is the first layer (the ``(K, D)`` matrix of the partial products), and the backends whose
kernels run it.

csrc/head_kinds.h is the C++ table with the same entries; ``torch.ops.fastshap.head_kinds()`` prints it and
tests/kernels/test_ops.py checks that the two agree. docs/internals.md lists the files a new kind touches.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What each shape symbol stands for.
SYMBOLS = {"n": "modalities", "D": "sum of the feature widths d_i", "C": "classes", "H": "hidden units"}


@dataclass(frozen=True)
class HeadKind:
    name: str
    code: int
    params: tuple[str, ...]
    shapes: tuple[str, ...]  # one symbol per dimension of each parameter: "CD" is (C, D)
    formula: str  # what the head computes, in the parameters' names
    first_layer: int = 0
    backends: tuple[str, ...] = ("torch", "cpp", "cuda", "triton")

    @property
    def signature(self) -> str:
        """The parameters with their shapes, e.g. ``weight (C, D), bias (C,)``."""
        return ", ".join(f"{p} {shape_text(s)}" for p, s in zip(self.params, self.shapes))


def shape_text(symbols: str) -> str:
    """A shape's symbols as text: ``"CD"`` -> ``(C, D)``, ``"C"`` -> ``(C,)``."""
    return "(" + ", ".join(symbols) + ("," if len(symbols) == 1 else "") + ")"


CONCAT = HeadKind(
    "concat",
    0,
    ("weight", "bias"),
    ("CD", "C"),
    "logits(S) = bias + sum_i (i in S ? W_i h_i : W_i b_i)",
)
DECISION = HeadKind(
    "decision",
    1,
    ("weight", "bias"),
    ("CD", "nC"),
    "classifier i = (the columns of modality i of weight, bias[i]); score(S) = sum_i softmax(classifier_i)",
)
MLP = HeadKind(
    "mlp",
    2,
    ("weight1", "bias1", "weight2", "bias2"),
    ("HD", "H", "CH", "C"),
    "logits(S) = weight2 relu(bias1 + sum_i (i in S ? W1_i h_i : W1_i b_i)) + bias2",
)

#: Every kind by name, in code order.
KINDS: dict[str, HeadKind] = {kind.name: kind for kind in (CONCAT, DECISION, MLP)}


def get(name: str) -> HeadKind:
    """The kind called `name` (ValueError naming the kinds for another name)."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"fastshap: unknown head kind {name!r}; expected one of {', '.join(map(repr, KINDS))}")
    return kind


def describe() -> str:
    """The table in the format of ``torch.ops.fastshap.head_kinds()``: ``name:code:param=SHAPE,...:first``
    per kind, ``;`` between kinds."""
    return ";".join(
        f"{k.name}:{k.code}:{','.join(f'{p}={s}' for p, s in zip(k.params, k.shapes))}:{k.first_layer}"
        for k in KINDS.values()
    )
