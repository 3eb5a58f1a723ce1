"""What valuation costs inside training: epoch time of plain concat training, sample-level training with
the paper's epoch-mode valuation pass, and with online valuation (training.valuation).

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

Sizes: ``BENCH_TRAIN_SAMPLES`` (default 256), ``BENCH_TRAIN_SIZE`` (side S, default 32), batch 32.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
from torch.utils.data import DataLoader

from training.data.base import Subset
from training.engine import Trainer
from training.testing import tiny_config

SAMPLES = int(os.environ.get("BENCH_TRAIN_SAMPLES", "256"))
SIZE = int(os.environ.get("BENCH_TRAIN_SIZE", "32"))
ROUNDS = int(os.environ.get("BENCH_TRAIN_ROUNDS", "3"))


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
        batch_size=32,
        threads=0,  # the machine's default
        checkpoint=False,
        save_phi=False,
    )
    return Trainer(cfg)


def train_epoch(trainer: Trainer) -> float:
    trainer.valuator.reset_epoch()
    start = time.perf_counter()
    trainer.train_epoch()
    if trainer.cfg.valuation == "online":
        trainer.valuator.online_finish(trainer.train_indices)
    return time.perf_counter() - start


def valuation_pass(trainer: Trainer) -> float:
    start = time.perf_counter()
    values = trainer.valuator.run_pass(trainer.train_indices)
    assert len(values) == SAMPLES and not torch.isnan(values.phi).any()
    return time.perf_counter() - start


@torch.no_grad()
def eval_forward(trainer: Trainer) -> float:
    """The yardstick of the pass: the same loader, eval mode, encoders + head, no valuation."""
    loader = DataLoader(
        Subset(trainer.value_set, trainer.train_indices.tolist()), batch_size=2 * trainer.per_rank_batch, shuffle=False
    )
    start = time.perf_counter()
    trainer.core.eval()
    for batch in loader:
        trainer.core(trainer.inputs_to_device(batch)).logits.argmax(-1)
    trainer.core.train()
    return time.perf_counter() - start


def alternate(benchmark, case, baseline, rounds=ROUNDS):
    """Median times of `case` (also recorded by pytest-benchmark) and `baseline`, rounds interleaved."""
    case(), baseline()  # warm-up: allocator, first-call dispatch
    base_times = []

    def timed_case():
        base_times.append(baseline())
        return case()

    benchmark.pedantic(timed_case, rounds=rounds, iterations=1)
    case_median = statistics.median(benchmark.stats.stats.data) if benchmark.stats else float("nan")
    return case_median, statistics.median(base_times)


def _info(benchmark, **values):
    benchmark.extra_info.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in values.items()})
    benchmark.extra_info.update(samples=SAMPLES, side=SIZE, batch=32, threads=torch.get_num_threads())


@pytest.mark.benchmark(group="training epoch")
def test_online_valuation_overhead(benchmark, tmp_path):
    plain = make_trainer(tmp_path, "none", method="concat")
    online = make_trainer(tmp_path, "online")
    online.core.load_state_dict(plain.core.state_dict())
    op_seconds = []

    def online_epoch():
        t = train_epoch(online)
        op_seconds.append(online.valuator.seconds)
        return t

    case, base = alternate(benchmark, online_epoch, lambda: train_epoch(plain))
    _info(
        benchmark,
        online_epoch_s=case,
        plain_epoch_s=base,
        overhead=case / base - 1,
        op_share=statistics.median(op_seconds) / case,
        op_calls_per_epoch=online.valuator.calls,
        target="<= 0.03",
    )


@pytest.mark.benchmark(group="valuation pass")
def test_valuation_pass_vs_eval_forward(benchmark, tmp_path):
    trainer = make_trainer(tmp_path, "epoch")
    case, base = alternate(benchmark, lambda: valuation_pass(trainer), lambda: eval_forward(trainer))
    _info(benchmark, pass_s=case, eval_forward_s=base, ratio=case / base, target="<= 1.05")


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
