"""The errors a user can act on, which the command lines report as one line instead of a traceback.

A leaf module (it imports nothing of the package), so that any module may raise them without an import cycle.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value, key or file is wrong; the message names it (exit 2)."""


class RunError(RuntimeError):
    """The run cannot start or go on for a reason the user can act on (its output directory, its device,
    an option that does not fit the data, a diverged model): the command line reports the message as one
    error line (exit 1), like a DataOptionError, instead of a traceback."""
