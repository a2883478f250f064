"""Output files of the commands that read a trained network (figures, probe results).

Checked before any work is done, so a command never computes for minutes and then fails to
write; and a file it replaces is named, never overwritten silently.
"""

from __future__ import annotations

import os
import pathlib

from catkd_jax.errors import UserError


def check_writable(path: str | os.PathLike) -> bool:
    """Creates `path`'s directory and checks that `path` can be written there.

    Returns whether a file is already at `path` (the caller says it replaced it). Raises
    `UserError` naming the directory when it cannot be created or written.
    """
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {path.parent} for {path.name} ({error.strerror}); "
                        "choose another --workdir") from error
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"cannot write {path} (no write permission in {path.parent}); choose another --workdir")
    return path.exists()


def replaced_note(path: str | os.PathLike, existed: bool) -> str:
    """' (replacing the earlier one)' when `existed`, else ''; for a command's output line."""
    return f" (replacing the earlier {pathlib.Path(path).name})" if existed else ""
