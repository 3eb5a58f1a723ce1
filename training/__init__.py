"""The fastshap trainer: the paper's methods (and baselines) on a plain PyTorch loop.

``training`` is a consumer of fastshap: it uses only ``fastshap.modality_shapley`` and ``fastshap.heads``;
fastshap never imports it. Entry points: ``python -m training`` (see ``--help``), ``python -m training.demo``.

Extension points (a new file each, no change to the loop):

* datasets: ``training/data/<name>.py`` with ``@register_dataset(...)`` (see :mod:`training.data`);
* encoders: ``@register_encoder(kind)`` in :mod:`training.models`;
* methods: a :class:`training.methods.Method` subclass with ``@register_method(...)`` in
  ``training/methods/<name>.py``; its options through :func:`training.config.register_options`.
"""

__all__ = ["Config", "resolve_config", "Trainer", "train"]


def __getattr__(name):
    # Lazy: `python -m training --help` should not pay for torchvision/transformers imports.
    if name in ("Config", "resolve_config"):
        from training import config

        return getattr(config, name)
    if name in ("Trainer", "train"):
        from training import engine

        return getattr(engine, name)
    raise AttributeError(name)
