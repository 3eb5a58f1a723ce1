"""Training methods: a :class:`Method` is a set of hooks the loop calls; a new method is one new file here.

The loop (``fastshap_train.engine.Trainer``) runs, per epoch ``e``::

    plan = the epoch's rows (index, keep-mask, data-mask)      # method.first_plan() / method.next_plan()
    for batch in plan (shuffled):
        batch = method.on_batch(batch)                          # input transforms (data mask, ...)
        out = model(inputs, keep)                               # logits + per-modality features
        loss = method.loss(out, batch)                          # CE, per-modality CE, prototype CE, ...
        loss.backward(); method.after_backward(out, batch)      # gradient modulation (OGM-GE, AGM, ...)
        optimizer.step(); [online valuation of the batch from `out`]
    idx = method.valuation_indices(e)                           # all, a subset Z, or None
    values = valuation of idx (a pass in eval mode, or the online table)
    next plan = method.next_plan(e, values)                     # re-sampling, modality drop, ...
    test; metrics (+ method.epoch_metrics()); checkpoint (+ method.state_dict())

Register with ``@register_method("name")`` (from :mod:`fastshap_train.registry`) on the class; options
through :func:`fastshap_train.registry.register_options` in the same file. A method of the user's lives in a
module loaded with ``python -m fastshap_train --import MODULE`` (see ``examples/trainer_plugin.py``).
"""

from __future__ import annotations

import importlib
import pkgutil

from fastshap_train.methods.base import Method, Values  # noqa: F401
from fastshap_train.registry import method_class, method_names, register_method  # noqa: F401  (re-exported)


def build_method(cfg, trainer) -> Method:
    return method_class(cfg.method)(cfg, trainer)


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
