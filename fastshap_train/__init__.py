"""The fastshap trainer: the paper's methods (and baselines) on a plain PyTorch loop.

``fastshap_train`` is a consumer of fastshap: it uses only ``fastshap.modality_shapley`` and ``fastshap.heads``;
fastshap never imports it. Entry points: ``python -m fastshap_train`` (see ``--help``),
``python -m fastshap_train.demo``.

Extension points (a new file each, no change to the loop), all registering into the tables of
:mod:`fastshap_train.registry`:

* datasets: ``@register_dataset(...)`` on a builder (see :mod:`fastshap_train.data`);
* encoders: ``@register_encoder(kind)`` on a factory (see :mod:`fastshap_train.models.encoders`);
* methods: a :class:`fastshap_train.methods.Method` subclass with ``@register_method(...)``; options through
  :func:`fastshap_train.registry.register_options`.

The file sits in ``fastshap_train/data/``, ``fastshap_train/methods/``, or anywhere for a module of the user's
loaded with ``python -m fastshap_train --import MODULE`` (see ``examples/trainer_plugin.py``).
"""

__all__ = ["Config", "resolve_config", "Trainer", "train", "load_run"]


def __getattr__(name):
    # Lazy: `python -m fastshap_train --help` should not pay for torchvision/transformers imports.
    if name in ("Config", "resolve_config"):
        from fastshap_train import config

        return getattr(config, name)
    if name in ("Trainer", "train"):
        from fastshap_train import engine

        return getattr(engine, name)
    if name == "load_run":  # a trained run for analysis (fastshap_train.report)
        from fastshap_train.report import load_run

        return load_run
    raise AttributeError(name)
