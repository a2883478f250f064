"""The command line's entry point (`catkd-jax`, `python main.py`): stop signals are handled
from the first moment, before the libraries of `catkd_jax.cli` load.

Those imports take a fraction of a second, TensorFlow's and JAX's more; a Ctrl-C in them would
otherwise print a traceback, or be swallowed by a library and let the run go on. Nothing is
written before `cli.run` takes over the signals, so the line below is true.
"""

import os
import signal
import sys
import types


def _end_before_start(number: int, frame: types.FrameType | None) -> None:
    del frame
    print(f"interrupted ({signal.Signals(number).name}) before anything was written; run the same command to "
          "start again", file=sys.stderr, flush=True)
    os._exit(128 + number)  # pylint: disable=protected-access; no shutdown of half-imported libraries


def run() -> None:
    """Handles SIGINT and SIGTERM, then runs the command line (`catkd_jax.cli.run`)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _end_before_start)
    from catkd_jax import cli  # pylint: disable=import-outside-toplevel; after the handlers, see above

    cli.run()
