"""Output files of the commands: checked before any work, never overwritten silently.

A command checks its outputs first, so it never computes for minutes and then fails to write;
and a file it replaces is named in its output line.
"""

from __future__ import annotations

import os
import pathlib

from catkd_jax.errors import UserError


def check_writable(path: str | os.PathLike) -> bool:
    """Checks, creating nothing, that `path` can be written (its directory created if missing).

    Returns whether a file is already at `path` (the caller says it replaced it). Raises
    `UserError` naming what is in the way.
    """
    path = pathlib.Path(path).absolute()
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {path}: {existing} is a file, not a directory; choose another --workdir")
    if not os.access(existing, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"cannot write {path}: no write permission in {existing}; choose another --workdir")
    return path.exists()


def replaced_note(path: str | os.PathLike, existed: bool) -> str:
    """' (replacing the earlier NAME)' when `existed`, else ''; for a command's output line."""
    return f" (replacing the earlier {pathlib.Path(path).name})" if existed else ""
