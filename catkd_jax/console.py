"""What the person at the terminal reads: results, warnings and tables, from process 0 only.

User errors are in `catkd_jax.errors`; the command line prints them.
"""

from __future__ import annotations

import contextlib
import os
import re
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


# What libraries print as they start, which would otherwise come before the command's own lines
# (an error included): C++ INFO logs ("I0000 00:00:1796003875.358 15128 port.cc:153] oneDNN ..."),
# absl's note before its logging starts, the CPU-feature note's second line, and the CUDA
# plugins' double registration that a TensorFlow and a JAX in one process report.
_START_UP_LINE = re.compile(
    r"I\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: "
    r"|.*(Unable to register cu\w+ factory|TF-TRT Warning: Could not find TensorRT)")


def is_start_up_line(line: str) -> bool:
    """Whether a stderr line is a library's start-up note (`_START_UP_LINE`), not news."""
    return _START_UP_LINE.match(line) is not None


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
