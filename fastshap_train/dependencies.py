"""The trainer's third-party packages (pyproject's ``train`` extra; fastshap itself needs only torch).

A missing one ends a command with one line naming it and the install command, instead of a traceback from
wherever it was first imported (numpy by the dataset registry, scipy by a loader, h5py by AVE).
"""

from __future__ import annotations

import functools
import sys

#: import name -> distribution name, for the packages of the ``train`` extra (and pillow, through torchvision).
TRAIN_PACKAGES = {
    "numpy": "numpy",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "scipy": "scipy",
    "h5py": "h5py",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "tensorboard": "tensorboard",
    "PIL": "pillow",
}
INSTALL = (
    'pip install --no-build-isolation "fastshap-modality[train]" with your torch pinned (the README\'s '
    '"Installing into an environment of your own")'
)


def missing_package_message(exc: ModuleNotFoundError) -> str | None:
    """The error line for a missing ``train`` package, or None when `exc` is about another module."""
    top = (exc.name or "").partition(".")[0]
    if top not in TRAIN_PACKAGES:
        return None
    return f"the trainer needs the package {TRAIN_PACKAGES[top]!r} (import {top!r} failed): {INSTALL}"


def reports_missing_packages(prog: str):
    """Decorator of a command's ``main``: a missing ``train`` package ends it with one error line and exit 1."""

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except ModuleNotFoundError as exc:
                message = missing_package_message(exc)
                if message is None:
                    raise
                print(f"{prog}: error: {message}", file=sys.stderr)
                sys.exit(1)

        return run

    return wrap
