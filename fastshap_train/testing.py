"""Small, fast configurations for tests and benchmarks (synthetic data, a few steps)."""

from __future__ import annotations

from fastshap_train.config import Config, resolve_config

QUIET = dict(progress=False, tensorboard=False, plots=False)


def tiny_config(out, **overrides) -> Config:
    """A synthetic run of 2 epochs (1 warmup) over 64 training samples in batches of 16."""
    values = dict(
        dataset="synthetic",
        out=str(out),
        epochs=2,
        warmup=1,
        syn_samples=64,
        syn_test_samples=32,
        batch_size=16,
        threads=1,  # tiny models: one thread is fastest, and the machine may be shared
        device="cpu",  # tests state CPU semantics (determinism, exact resume) even where a GPU exists
        **QUIET,
    )
    values.update(overrides)
    return resolve_config(values)
