"""``python -m fastshap_train`` / ``fastshap-train``: train a multimodal model with one of the paper's methods.

Options come from, in increasing precedence: their defaults, ``fastshap_train/configs/<dataset>.yaml``, each
``--config FILE``, and the flags below (``--print-config`` shows the result).

An ``--out`` that already holds a run is refused: ``--resume auto`` continues it, ``--overwrite`` starts over.
"""

from __future__ import annotations

import argparse
import sys

from fastshap_train.dependencies import reports_missing_packages

EXAMPLES = """\
examples:
  python -m fastshap_train --dataset uci-mfeat --views fou,kar --method sample-level --epochs 30 --out runs/mfeat
  python -m fastshap_train --method modality-level --part-ratio 0.5 --valuation online --out runs/ml
  python -m fastshap_train --config my.yaml --resume auto --epochs 60 --out runs/mfeat
  python -m fastshap_train --method sample-level --overwrite --out runs/mfeat
  torchrun --nproc_per_node=2 -m fastshap_train --dataset synthetic --method sample-level --out runs/ddp
  python -m fastshap_train --list-methods
"""

_KIND_METAVAR = {
    "int": "N",
    "float": "X",
    "str": "S",
    "path": "PATH",
    "str_list": "A,B",
    "int_list": "N,M",
    "float_list": "X,Y",
}


def build_parser() -> argparse.ArgumentParser:
    from fastshap_train.config import dataset_config_keys, group_title, options

    parser = argparse.ArgumentParser(
        prog="python -m fastshap_train",
        description="Train a multimodal model with sample-level modality valuation (fastshap) or a baseline. "
        + " ".join(__doc__.split("\n\n", 1)[1].split()).replace("``", ""),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file of option: value (and methods: {name: {...}}); repeatable, later wins",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--list-datasets", action="store_true", help="list the datasets and exit")
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out that already holds a run: its outputs (checkpoints, metrics, "
        "phi tables, plots, TensorBoard events) are deleted first; without it such an --out is "
        "refused (use --resume auto to continue the run instead)",
    )
    per_dataset = dataset_config_keys()  # their defaults are the dataset config file's, where it sets them
    groups = {}
    for name, opt in options().items():
        if not opt.cli:
            continue
        group = groups.get(opt.group)
        if group is None:
            group = groups[opt.group] = parser.add_argument_group(group_title(opt.group))
        kind = opt.resolved_kind()
        default = opt.default
        if isinstance(default, list):
            default = ",".join(map(str, default)) or "(none)"
        if name in per_dataset:
            default = f"the dataset's config, else {default}"
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=f"{opt.help} (default: {default})".replace("%", "%%"))
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if opt.choices is not None and not kind.endswith("_list"):
                kwargs["choices"] = list(opt.choices)
                kwargs["type"] = type(opt.choices[0])
            else:
                kwargs["metavar"] = opt.metavar or _KIND_METAVAR.get(kind, "V")
        group.add_argument(opt.flag, **kwargs)
    return parser


def _list_datasets() -> None:
    from fastshap_train.data import dataset_entry, dataset_names

    for name in dataset_names():
        print(f"{name:<16} {dataset_entry(name).help}")


def _list_methods() -> None:
    from fastshap_train.methods import method_class, method_names

    for name in method_names():
        print(f"{name:<16} {method_class(name).help}")


@reports_missing_packages("python -m fastshap_train")
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_datasets or args.list_methods:
        if args.list_datasets:
            _list_datasets()
        if args.list_methods:
            _list_methods()
        return 0

    from fastshap_train.config import ConfigError, options, resolve_config

    known = options()
    overrides = {k: v for k, v in vars(args).items() if k in known}
    try:
        cfg = resolve_config(overrides, args.config)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=True), end="")
        return 0

    from fastshap import BackendError
    from fastshap_train.config import RunError
    from fastshap_train.data.base import DataFileError, DataOptionError
    from fastshap_train.engine import train
    from fastshap_train.methods._common import NotApplicable
    from fastshap_train.outputs import CheckpointError

    try:
        results = train(cfg, overwrite=args.overwrite)
    except (
        DataFileError,
        DataOptionError,
        CheckpointError,
        FileNotFoundError,
        NotApplicable,
        RunError,
        BackendError,
    ) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        print(
            f"{parser.prog}: error: out of memory ({_first_line(exc)}): lower the sizes in the options "
            "(batch size, model widths, classes, samples)",
            file=sys.stderr,
        )
        sys.exit(1)
    if results.get("world_size", 1) == 1 or _is_rank0():
        _summary(cfg, results)
    return 0


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failed: torch's CPU allocator says so in a plain RuntimeError, CUDA's has its own type."""
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split("DefaultCPUAllocator: ", 1)[-1]  # drop the allocator's "[enforce fail at ...]" prefix


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _summary(cfg, results: dict) -> None:
    final, best_val, at_best = (results.get(k) for k in ("final_test_acc", "best_val_acc", "test_acc_at_best"))
    names = results.get("modality_names") or {}
    phi = ", ".join(
        f"{names.get(m, m)} {v:+.3f}"
        for m, v in (results.get("final_phi_mean") or {}).items()
        if v is not None and v == v
    )
    line = f"{cfg.method} on {cfg.dataset}: "
    line += f"final test accuracy {final:.4f}" if final is not None else "done"
    if best_val is not None:
        line += (
            f"; best validation accuracy {best_val:.4f} (epoch {results['best_epoch']}, best.pt), "
            f"test accuracy there {at_best:.4f}"
        )
    elif results.get("selection") == "none":
        line += " (no validation split: no model selection)"
    print(line)
    if phi:
        print(f"final mean phi: {phi}")
    print(f"valuation share of epoch time {100 * results['valuation_share']:.1f}%; outputs in {cfg.out}")


if __name__ == "__main__":
    sys.exit(main())
