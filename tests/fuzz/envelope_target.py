"""Coverage-guided fuzz target for the envelope decoder (atheris / libFuzzer).

Run by hand for longer: ``python -m tests.fuzz.envelope_target -runs=1000000``.
The properties (``properties.py``): decoding any bytes yields ops or ProtocolErrors, never
another exception, and every error has a message for people; whatever the gateway would
send about them, and the input as a NATS payload, is one line of valid UTF-8 JSON, with
payloads as the protocol's rules say.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from natsgate import protocol  # noqa: F401  (instrumented before properties imports it)

    from .properties import SEEDS, check_frame

__all__ = ["SEEDS", "check_frame", "main"]


def main(argv: list[str]) -> None:
    atheris.Setup(argv, check_frame)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
