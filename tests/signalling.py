"""A fixed point of a run at which a real signal arrives, for tests of interruption.

`signal_at_step(patch, number, *signums)` makes the training loop send `signums` to its own
process as it takes the batch of its `number`-th training step (counted from 1 in this
process), so the signals arrive while that step runs, whatever the timing. `patch` is
`monkeypatch.setattr` in a test, or `setattr` in a subprocess (`python -c`, see
`test_interruption`). `signal_on_call` and `signal_on_import` do the same at a point of
start-up: a call of a function, the import of a module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import os
import sys
from typing import Any, Callable


def signal_at_step(patch: Callable, number: int, *signums: int) -> None:
    from catkd_jax import sharding  # pylint: disable=import-outside-toplevel; JAX stays unimported (signal_on_import)

    prefetch = sharding.prefetch
    taken = [0]

    def signalling_prefetch(*args, **kwargs):
        for batch in prefetch(*args, **kwargs):
            if "mask" not in batch:  # a training batch (evaluation batches are masked)
                taken[0] += 1
                if taken[0] == number:
                    for signum in signums:
                        os.kill(os.getpid(), signum)
            yield batch

    patch(sharding, "prefetch", signalling_prefetch)


def signal_on_call(patch: Callable, module_name: str, attribute: str, signum: int, after: bool = False) -> None:
    """Sends `signum` as `module_name`'s `attribute` (a function, or `Class.method`) is called, or
    once it has returned (`after`)."""
    owner: Any = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    @functools.wraps(original)
    def signalling(*args, **kwargs):
        if not after:
            os.kill(os.getpid(), signum)
        result = original(*args, **kwargs)
        if after:
            os.kill(os.getpid(), signum)
        return result

    patch(owner, name, signalling)


def signal_on_import(module_name: str, signum: int) -> None:
    """Sends `signum` as `module_name` starts to be imported."""

    class Signalling(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):  # pylint: disable=unused-argument
            if name == module_name:
                os.kill(os.getpid(), signum)
            return None  # the usual finders import it

    sys.meta_path.insert(0, Signalling())
