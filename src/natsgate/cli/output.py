"""What the commands write: one-line results on stdout, one-line errors on stderr."""

from __future__ import annotations

import logging
import os
import sys

from .logs import shaped

log = logging.getLogger("natsgate")


def say(line: str) -> None:
    """One line in one write: with ``--workers`` several processes share stdout, and
    ``print`` writes the text and its newline separately, so lines could interleave."""
    try:
        sys.stdout.write(shaped(line, logging.INFO) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # nobody reads stdout any more: serve goes on, without it
        quiet_stdout()


def quiet_stdout() -> None:
    """Send what is still written to stdout to the null device, once its reader has gone
    (else the next write, or the flush at exit, raises BrokenPipeError again)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def fail(message: str, code: int = 2) -> int:
    print(shaped(f"natsgate: {message}"), file=sys.stderr)
    return code
