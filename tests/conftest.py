"""Shared test settings and fixtures.

Reference data lives in `../shared` beside the repository (present in CI, absent in a user's
fresh clone): tests that need it skip with the reason. `CATKD_SHARED` overrides the location.
"""

from __future__ import annotations

import os
import pathlib

import jax
import pytest

# Tests compile many small programs once each; XLA's optimisations cost more than they save.
jax.config.update("jax_disable_most_optimizations", True)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("CATKD_SHARED", REPO_ROOT.parent / "shared"))


def shared_path(relative: str) -> pathlib.Path:
    """A file under ../shared, or skip the test saying what is missing and why."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(
            f"{path} not found: reference data ships beside the repository in CI "
            "(set CATKD_SHARED to its location to run this test)"
        )
    return path
