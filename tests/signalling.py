"""A fixed point of a run at which a real signal arrives, for tests of interruption.

`signal_at_step(patch, number, *signums)` makes the training loop send `signums` to its own
process as it takes the batch of its `number`-th training step (counted from 1 in this
process), so the signals arrive while that step runs, whatever the timing. `patch` is
`monkeypatch.setattr` in a test, or `setattr` in a subprocess (`python -c`, see
`test_interruption`).
"""

from __future__ import annotations

import os
from typing import Callable

from catkd_jax import sharding


def signal_at_step(patch: Callable, number: int, *signums: int) -> None:
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
