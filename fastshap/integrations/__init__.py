"""Callbacks that re-sample each epoch inside training frameworks, imported on demand:

* :mod:`fastshap.integrations.huggingface`: ``ResamplingCallback`` for ``transformers.Trainer``;
* :mod:`fastshap.integrations.lightning`: ``ResamplingCallback`` for ``lightning.pytorch.Trainer``.

Each module imports its framework; ``fastshap`` itself never does. Install them with
``pip install "fastshap-modality[integrations]"``.
"""
