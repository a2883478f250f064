"""The user-facing error types: a mistake the user can fix, told in one line without a traceback.

The command line prints `error: <message>` and exits with the error's `exit_code`: 2 for a bad
setting or usage (`ConfigError`), 1 for an input that cannot be used or found (`InputError`,
`MissingInputError`) and for anything else the user can fix (`UserError`). Each message says
what was wrong and what to do. The subclasses are also the built-in errors library code expects
(`ValueError`, `FileNotFoundError`), so callers of the library may catch either.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what was wrong and what to do."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A setting (a config field, a command-line flag) that cannot work."""

    exit_code = 2


class InputError(UserError, ValueError):
    """An input (data, a checkpoint, a workdir) that exists but cannot be used as it is."""


class MissingInputError(UserError, FileNotFoundError):
    """An input (data, a checkpoint, a config file) that is not where the settings point."""


class DivergedError(UserError, FloatingPointError):
    """A training loss that became NaN or infinite: an expected end of a run, not a crash."""
