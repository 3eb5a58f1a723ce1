"""What valuation costs inside training: epoch time of plain concat training, sample-level training with
the paper's epoch-mode valuation pass, and with online valuation (fastshap_train.valuation).

Synthetic audio + visual data (``(1, S, S)`` spectrograms, 2 frames of ``(3, S, S)``) through two
torchvision ResNet-18 encoders and the concat-linear head; warmup longer than the run, so every case
trains on the same rows (no re-sampling) and only the valuation differs. Each test times its case and
the baseline it is compared with in alternating rounds (so a busy neighbour hits both alike), and puts
the medians and ratios in ``extra_info``:

* ``online``: the training epoch with online valuation (one op call per step) against the same epoch
  without valuation; target overhead <= 3 %.
* ``valuation pass``: the epoch-mode pass (eval mode, encoders + op) against a plain eval forward
  (encoders + head) over the same data and batches; target <= 1.05x.
* ``epoch mode``: training epoch + valuation pass, against the training epoch alone (the valuation share
  of an epoch in the paper's scheme).

Sizes: ``BENCH_TRAIN_SAMPLES`` (default 128), ``BENCH_TRAIN_SIZE`` (side S, default 32), ``BENCH_TRAIN_BATCH`` (32);
``BENCH_TRAIN_ROUNDS`` (7), ``BENCH_TRAIN_THREADS`` (1). Each case also reports ``op_share``: the time
inside the op calls over the case's time, measured directly (immune to round-to-round noise), and the
online case ``valuation_share`` (op calls + the per-sample table's upkeep).
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from fastshap_train.config import Config
from fastshap_train.engine import Trainer
from fastshap_train.testing import tiny_config

SAMPLES = int(os.environ.get("BENCH_TRAIN_SAMPLES", "128"))
SIZE = int(os.environ.get("BENCH_TRAIN_SIZE", "32"))
ROUNDS = int(os.environ.get("BENCH_TRAIN_ROUNDS", "7"))
# One thread by default: on a shared 2-core machine a neighbour's load makes 2-thread runs stall 10x at
# random, which swamps the few-percent differences measured here. BENCH_TRAIN_THREADS=0: torch's default.
THREADS = int(os.environ.get("BENCH_TRAIN_THREADS", "1"))
BATCH = int(os.environ.get("BENCH_TRAIN_BATCH", "32"))
BACKEND = os.environ.get("BENCH_TRAIN_BACKEND", "auto")


def make_trainer(tmp_path, valuation: str, method: str = "sample-level") -> Trainer:
    cfg = tiny_config(
        tmp_path / valuation,
        method=method,
        valuation=valuation,
        warmup=10**6,
        epochs=10**6,
        syn_modalities="audio,visual",
        syn_size=SIZE,
        syn_frames=2,
        syn_samples=SAMPLES,
        syn_test_samples=32,
        batch_size=BATCH,
        threads=THREADS,
        device="auto",  # the GPU where there is one
        backend=BACKEND,
        checkpoint=False,
        save_phi=False,
    )
    return Trainer(cfg)


def train_epoch(trainer: Trainer, valuation=None) -> float:
    """One training epoch; `valuation` switches the trainer's mode for this epoch (same model, same data)."""
    if valuation is not None:
        # Not cfg.replace(): sample-level refuses valuation "none" in a config, and here it only means
        # "a plain concat epoch" (warmup outlasts the run, so there is no re-sampling either way).
        trainer.cfg = Config({**trainer.cfg.to_dict(), "valuation": valuation})
    trainer.valuator.reset_epoch()
    start = time.perf_counter()
    trainer.train_epoch()  # ends with a device-to-host read of its sums: synchronised
    if trainer.cfg.valuation == "online":
        trainer.valuator.online_finish(trainer.train_indices)
    return time.perf_counter() - start


def valuation_pass(trainer: Trainer) -> float:
    trainer.valuator.reset_epoch()
    start = time.perf_counter()
    values = trainer.valuator.run_pass(trainer.train_indices)
    assert len(values) == SAMPLES and not torch.isnan(values.phi).any()  # .cpu() inside: synchronised
    return time.perf_counter() - start


@torch.no_grad()
def eval_forward(trainer: Trainer) -> float:
    """The yardstick of the pass: the pass's own loader (same batches, workers, pinned memory), eval mode,
    encoders + head, no valuation."""
    loader = trainer.valuator.pass_loader(trainer.train_indices)
    start = time.perf_counter()
    trainer.core.eval()
    for batch in loader:
        with trainer.autocast():
            trainer.core(trainer.inputs_to_device(batch)).logits.argmax(-1).cpu()  # the pass also copies phi back
    trainer.core.train()
    return time.perf_counter() - start


def alternate(benchmark, case, baseline, rounds=ROUNDS):
    """Median times of `case` and of `baseline`, in interleaved rounds: pytest-benchmark times `case`; the
    baseline runs untimed by it (as the round's setup) and is timed here. The warm-up ends with `case`, so
    that every timed run of either follows a run of the other (what one leaves in caches and the allocator,
    the next finds, alike for both)."""
    baseline(), case()  # warm-up: allocator, first-call dispatch
    benchmark.extra_info["note"] = "medians of interleaved rounds; min in *_min_s"
    base_times, case_times = [], []

    def setup():
        base_times.append(baseline())

    def timed_case():
        case_times.append(case())

    benchmark.pedantic(timed_case, setup=setup, rounds=rounds, iterations=1)
    benchmark.extra_info.update(
        case_rounds_s=[round(t, 4) for t in case_times], baseline_rounds_s=[round(t, 4) for t in base_times]
    )
    benchmark.extra_info.update(case_min_s=min(case_times), baseline_min_s=min(base_times))
    return statistics.median(case_times), statistics.median(base_times)


def _info(benchmark, **values):
    benchmark.extra_info.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in values.items()})
    benchmark.extra_info.update(samples=SAMPLES, side=SIZE, batch=BATCH, threads=torch.get_num_threads())


@pytest.mark.benchmark(group="training epoch")
def test_online_valuation_overhead(benchmark, tmp_path):
    # One trainer for both: the same model, data and memory; only the valuation mode differs.
    trainer = make_trainer(tmp_path, "online")
    shares, op_shares = [], []

    def online_epoch():
        t = train_epoch(trainer, "online")
        shares.append(trainer.valuator.seconds / t)
        op_shares.append(trainer.valuator.op_seconds / t)
        return t

    case, base = alternate(benchmark, online_epoch, lambda: train_epoch(trainer, "none"))
    _info(
        benchmark,
        online_epoch_s=case,
        plain_epoch_s=base,
        overhead=case / base - 1,
        valuation_share=statistics.median(shares),
        op_share=statistics.median(op_shares),
        op_calls_per_epoch=trainer.valuator.calls,
        target="<= 0.03",
    )


@pytest.mark.benchmark(group="valuation pass")
def test_valuation_pass_vs_eval_forward(benchmark, tmp_path):
    trainer = make_trainer(tmp_path, "epoch")
    op_shares = []

    def run_pass():
        t = valuation_pass(trainer)
        op_shares.append(trainer.valuator.op_seconds / t)
        return t

    case, base = alternate(benchmark, run_pass, lambda: eval_forward(trainer))
    _info(
        benchmark,
        pass_s=case,
        eval_forward_s=base,
        ratio=case / base,
        op_share=statistics.median(op_shares),
        target="<= 1.05",
    )


@pytest.mark.benchmark(group="training epoch")
def test_epoch_mode_valuation_share(benchmark, tmp_path):
    trainer = make_trainer(tmp_path, "epoch")
    pass_times = []

    def epoch_with_pass():
        t = train_epoch(trainer)
        pass_times.append(valuation_pass(trainer))
        return t + pass_times[-1]

    case, base = alternate(benchmark, epoch_with_pass, lambda: train_epoch(trainer))
    _info(
        benchmark,
        epoch_with_pass_s=case,
        train_epoch_s=base,
        pass_s=statistics.median(pass_times),
        valuation_share=statistics.median(pass_times) / case,
    )
