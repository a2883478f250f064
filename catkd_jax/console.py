"""What the person at the terminal reads: results, warnings and tables, from process 0 only.

User errors are in `catkd_jax.errors`; the command line prints them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any, Callable, Iterator, Sequence

import jax


def report(message: str) -> None:
    """A line for the person at the terminal, from the first process only."""
    if jax.process_index() == 0:
        print(message, flush=True)


def warn(message: str) -> None:
    """A `warning: ...` line on stderr, from the first process only."""
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table: `header`, a rule, then `rows` (cells of any type, shown as `str`)."""
    lines = [[str(cell) for cell in cells] for cells in (header, *rows)]
    widths = [max(len(cells[i]) for cells in lines if i < len(cells)) for i in range(len(header))]
    render = lambda cells: "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
    return "\n".join([render(lines[0]), "-" * len(render(lines[0])), *map(render, lines[1:])])


@contextlib.contextmanager
def filtered_stderr(keep: Callable[[str], bool]) -> Iterator[None]:
    """Passes on what the process writes to stderr in the block (C++ libraries and other threads
    included, which Python's hooks never see), line by line, where `keep(line)` holds."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write("".join(line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                                     if keep(line)))
            sys.stderr.flush()
