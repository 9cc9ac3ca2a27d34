"""What the commands write: one-line results on stdout, one-line errors on stderr."""

from __future__ import annotations

import logging
import sys

from .logs import shaped

log = logging.getLogger("natsgate")


def say(line: str) -> None:
    """One line in one write: with ``--workers`` several processes share stdout, and
    ``print`` writes the text and its newline separately, so lines could interleave."""
    sys.stdout.write(shaped(line, logging.INFO) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> int:
    print(shaped(f"natsgate: {message}"), file=sys.stderr)
    return code
