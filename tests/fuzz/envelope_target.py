"""Coverage-guided fuzz target for the envelope decoder (atheris / libFuzzer).

Run by hand for longer: ``python -m tests.fuzz.envelope_target -runs=1000000``.
The property: decoding any bytes yields ops or ProtocolErrors, never another exception,
and every error has a message for people.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from natsgate import protocol
    from natsgate.errors import ProtocolError


def one_input(data: bytes) -> None:
    for item in protocol.decode_frame(data):
        if isinstance(item, ProtocolError):
            assert item.message, item
        else:
            assert isinstance(item, protocol.ClientOp.__args__)  # type: ignore[attr-defined]


SEEDS = [
    b'{"op":"sub","target":"a.*","inbox":"1"}',
    b'{"op":"pub","target":"a.b","data":{"x":[1,2]}}',
    b'{"op":"cmd","target":"svc.x","data":1,"timeout_ms":50}',
    b'{"op":"kv_sub","target":"todos","data":{"pattern":"user.a.>"}}',
    b'{"op":"js_sub","target":"CHAT","data":{"start_seq":5,"batch":10,"filter":"c.*","start_time":"2026-01-02T03:04:05Z"}}',
    b'{"op":"auth","data":{"token":"x.y.z"}}',
    b'{"type":"subscribe","topic":"a.b"}',
    b'{"v":2,"op":"ping"}\n{"op":"ping","inbox":"p"}',
]


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
