"""``python -m training`` / ``fastshap-train``: train a multimodal model with one of the paper's methods.

Options come from, in increasing precedence: their defaults, ``training/configs/<dataset>.yaml``, each
``--config FILE``, and the flags below.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  python -m training --dataset uci-mfeat --views fou,kar --method sample-level --epochs 30 --out runs/mfeat
  python -m training --method modality-level --part-ratio 0.5 --valuation online --out runs/ml
  python -m training --config my.yaml --resume auto --epochs 60 --out runs/mfeat
  torchrun --nproc_per_node=2 -m training --dataset synthetic --method sample-level --out runs/ddp
  python -m training --list-methods
"""

_KIND_METAVAR = {"int": "N", "float": "X", "str": "S", "path": "PATH", "str_list": "A,B", "int_list": "N,M",
                 "float_list": "X,Y"}


def build_parser() -> argparse.ArgumentParser:
    from training.config import group_title, options

    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a multimodal model with sample-level modality valuation (fastshap) or a baseline. "
        + " ".join(__doc__.split("\n\n", 1)[1].split()).replace("``", ""),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML file of option: value (and methods: {name: {...}}); repeatable, later wins")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--list-datasets", action="store_true", help="list the datasets and exit")
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
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
    from training.data import dataset_entry, dataset_names

    for name in dataset_names():
        print(f"{name:<16} {dataset_entry(name).help}")


def _list_methods() -> None:
    from training.methods import method_class, method_names

    for name in method_names():
        print(f"{name:<16} {method_class(name).help}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_datasets or args.list_methods:
        if args.list_datasets:
            _list_datasets()
        if args.list_methods:
            _list_methods()
        return 0

    from training.config import ConfigError, options, resolve_config

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

    from training.data.base import DataFileError, DataOptionError
    from training.engine import train
    from training.methods._common import NotApplicable
    from training.outputs import CheckpointError

    try:
        results = train(cfg)
    except (DataFileError, DataOptionError, CheckpointError, FileNotFoundError, NotApplicable) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    if results.get("world_size", 1) == 1 or _is_rank0():
        _summary(cfg, results)
    return 0


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _summary(cfg, results: dict) -> None:
    best, final = results.get("best_test_acc"), results.get("final_test_acc")
    phi = ", ".join(f"{m} {v:+.3f}" for m, v in (results.get("final_phi_mean") or {}).items() if v is not None and v == v)
    print(f"{cfg.method} on {cfg.dataset}: best test accuracy {best:.4f} (epoch {results['best_epoch']}), "
          f"final {final:.4f}" if best is not None and final is not None else f"{cfg.method} on {cfg.dataset}: done")
    if phi:
        print(f"final mean phi: {phi}")
    print(f"valuation share of epoch time {100 * results['valuation_share']:.1f}%; outputs in {cfg.out}")


if __name__ == "__main__":
    sys.exit(main())
