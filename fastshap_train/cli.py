"""``python -m fastshap_train`` / ``fastshap-train``: train a multimodal model with one of the paper's methods.

Options come from, in increasing precedence: their defaults, ``fastshap_train/configs/<dataset>.yaml``, each
``--config FILE``, and the flags below (``--print-config`` shows the result).

An ``--out`` that already holds a run is refused: ``--resume auto`` continues it, ``--overwrite`` starts over.
Ctrl-C stops a run with one line giving the command that resumes it (the checkpoints are written atomically,
so the last one is intact). ``--import MODULE`` loads the user's datasets, encoders and methods first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import warnings

from fastshap_train.dependencies import reports_missing_packages
from fastshap_train.plugins import PluginError, load
from fastshap_train.registry import RegistrationError

PROG = "python -m fastshap_train"

EXAMPLES = """\
examples:
  python -m fastshap_train --dataset uci-mfeat --views fou,kar --method sample-level --epochs 30 --out runs/mfeat
  python -m fastshap_train --method modality-level --part-ratio 0.5 --valuation online --out runs/ml
  python -m fastshap_train --config my.yaml --resume auto --epochs 60 --out runs/mfeat
  python -m fastshap_train --method sample-level --overwrite --out runs/mfeat
  torchrun --nproc_per_node=2 -m fastshap_train --dataset synthetic --method sample-level --out runs/ddp
  python -m fastshap_train --list-methods
  python -m fastshap_train --import examples.trainer_plugin --dataset toy-sensors --method smoothed --out runs/toy
"""

#: The option groups of the trainer itself, first in --help; datasets', methods' and plug-ins' follow.
CORE_GROUPS = ("run", "optim", "model", "valuation", "data")

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
        prog=PROG,
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
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module of yours first (a dotted name on the Python path, or a .py file): its "
        "register_dataset / register_encoder / register_method calls add datasets, encoder kinds and "
        "methods by name, with their options as flags; repeatable",
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
    declared = options()
    order = {group: k for k, group in enumerate(CORE_GROUPS)}
    # the trainer's own groups first, then the rest in declaration order (datasets, methods, plug-ins)
    ranked = sorted(declared.items(), key=lambda item: order.get(item[1].group, len(order)))
    for name, opt in ranked:
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


@reports_missing_packages(PROG)
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The plug-ins first: their datasets' and methods' options are flags of the parser built below.
    imports, _ = _import_parser().parse_known_args(argv)
    try:
        load(imports.imports)
    except (PluginError, RegistrationError) as exc:
        _fail(str(exc), code=2)
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
        with _one_line_warnings():
            results = train(cfg, overwrite=args.overwrite)
    except KeyboardInterrupt as exc:
        if _is_rank0():
            print(f"{PROG}: {interrupted_message(cfg, argv, parser, exc)}", file=sys.stderr, flush=True)
        return 130  # the shell's code for a command ended by SIGINT
    except RegistrationError as exc:  # a plug-in's builder or factory returned something unusable
        _fail(str(exc), code=2)
    except (
        DataFileError,
        DataOptionError,
        CheckpointError,
        FileNotFoundError,
        NotApplicable,
        RunError,
        BackendError,
    ) as exc:
        _fail(str(exc))
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        _fail(
            f"out of memory ({_first_line(exc)}): lower the sizes in the options "
            "(batch size, model widths, classes, samples)"
        )
    if results.get("world_size", 1) == 1 or _is_rank0():
        _summary(cfg, results)
    return 0


def _import_parser() -> argparse.ArgumentParser:
    """--import alone (the full parser, which needs the plug-ins' options, reads every other flag)."""
    parser = argparse.ArgumentParser(prog=PROG, add_help=False)
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    return parser


def _fail(message: str, code: int = 1):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def _one_line_warnings():
    """Warnings as one line each ("python -m fastshap_train: warning: ..."), not file:line plus source."""
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"{PROG}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


def resume_command(cfg, argv: list, parser: argparse.ArgumentParser) -> str:
    """The command line the user ran, made to resume: its --resume and --overwrite replaced by --resume auto
    (by the checkpoint it resumed from, while --out holds no checkpoint of its own yet)."""
    kept, resume, skip = [], None, False
    for k, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        flag, eq, value = arg.partition("=")
        target = _long_flag(parser, flag) if arg.startswith("--") else None
        if target == "--overwrite":
            continue
        if target == "--resume":
            if eq:
                resume = value
            elif k + 1 < len(argv):
                resume, skip = argv[k + 1], True
            continue
        kept.append(arg)
    last = os.path.join(cfg.out, "last.pt")
    resume = "auto" if os.path.isfile(last) or resume in (None, "auto") else resume
    return shlex.join([*_prog_words(), *kept, "--resume", resume])


def _long_flag(parser: argparse.ArgumentParser, flag: str) -> str | None:
    """The option `flag` stands for, argparse's unambiguous prefixes included (--resu for --resume)."""
    names = [name for name in parser._option_string_actions if name.startswith("--")]
    if flag in names:
        return flag
    matches = [name for name in names if name.startswith(flag)]
    return matches[0] if len(matches) == 1 else None


def _prog_words() -> list:
    """How the user started the trainer: the console script, python -m, or torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", str(world))
        return ["torchrun", f"--nproc_per_node={per_node}", "-m", "fastshap_train"]
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return [script] if script.startswith("fastshap-train") else PROG.split()


def interrupted_message(cfg, argv: list, parser: argparse.ArgumentParser, exc: BaseException) -> str:
    """The line a Ctrl-C ends a run with: where it stopped, what is saved, and the command that resumes it."""
    epoch = getattr(exc, "epoch", None)
    where = f"interrupted in epoch {epoch}" if epoch is not None else "interrupted"
    last = os.path.join(cfg.out, "last.pt")
    if not cfg.checkpoint:
        return (
            f"{where}; no checkpoint is written (--no-checkpoint), so nothing can be resumed: "
            f"run again with --overwrite to start over"
        )
    done = getattr(exc, "saved_epochs", None)
    if os.path.isfile(last):
        saved = f"{last} holds the first {done} epoch(s)" if done is not None else f"{last} is intact"
    else:
        saved = "no checkpoint was written yet"
    return f"{where}; {saved}; resume with: {resume_command(cfg, argv, parser)}"


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failed: torch's CPU allocator says so in a plain RuntimeError, CUDA's has its own type."""
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split("DefaultCPUAllocator: ", 1)[-1]  # drop the allocator's "[enforce fail at ...]" prefix


def _is_rank0() -> bool:
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
