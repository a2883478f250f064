"""Stopping a run cleanly: SIGINT, SIGTERM and JAX preemption notices become a request to stop.

While `StopRequests` is active, the first SIGINT (Ctrl-C) or SIGTERM does not kill the process:
the training loop finishes its current step, saves a checkpoint at that step and raises
`Interrupted`. A second signal stops at once (`KeyboardInterrupt`).

Several processes must stop at the same step. There, JAX's preemption service owns SIGTERM (it
spreads the notice to every process and picks a step all of them reach); SIGINT is forwarded to
it as a SIGTERM, and `should_stop(step)` is JAX's `reached_preemption_sync_point`.

Outside the training loop the command line ends the process at once on these signals
(`catkd_jax.cli`), and catches `Interrupted` before JAX is imported: so this module imports JAX
only where it is used.
"""

from __future__ import annotations

import os
import signal
import threading
import types
from typing import Any


class Interrupted(Exception):
    """The run stopped on request after saving a checkpoint; `exit_code` is 128 + the signal."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


class StopRequests:
    """A context manager that turns stop signals into `should_stop(step) == True`.

    Handlers are installed on entry and the previous ones restored on exit; outside the main
    thread (where Python cannot handle signals) nothing is installed and only JAX's
    preemption notices count.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}
        import jax  # pylint: disable=import-outside-toplevel; see the module docstring

        self._multi_process = jax.process_count() > 1

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            # With several processes, SIGTERM stays with JAX's preemption notifier.
            wanted = (signal.SIGINT,) if self._multi_process else (signal.SIGINT, signal.SIGTERM)
            for number in wanted:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: types.FrameType | None) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(number).name}: stopping without a checkpoint")
        self.signal_number = number
        if self._multi_process and number != signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)  # tell JAX's preemption service, which tells all

    def should_stop(self, step: int) -> bool:
        """Whether to stop after global step `step`; every process calls it at every step."""
        if self._multi_process:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_number = self.signal_number or signal.SIGTERM
                return True
            return False
        return self.signal_number is not None

    def interrupted(self, epoch: int, step: int) -> Interrupted:
        """The exception that ends the run once the checkpoint of `step` (in `epoch`) is saved."""
        return Interrupted(
            f"interrupted at epoch {epoch}, step {step}: checkpoint saved; run the same command to resume",
            self.signal_number or signal.SIGTERM,
        )
