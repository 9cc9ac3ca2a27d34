"""The properties the decoder fuzz targets check, shared by atheris (``envelope_target``)
and hypothesis (``tests/test_fuzz_decoder.py``, ``tests/test_protocol.py``).

1. Decoding any bytes yields ops or ProtocolErrors, never another exception, and every
   error has a message for people (protocol.md §3).
2. Whatever the gateway would send about a decoded op or error, and any NATS payload it
   would carry in a ``msg`` or ``cmd`` reply, is one line of valid UTF-8 JSON: the frame
   decodes as UTF-8, parses as JSON (strictly: no NaN or Infinity), holds no raw newline
   (frames are newline-joined, protocol.md §1) and is an object with an ``op``
   (security.md: "every envelope the server sends is valid UTF-8 JSON").
3. Payloads follow the rules of section 3: JSON as itself, other UTF-8 text as a string,
   other bytes as base64 with ``"enc": "base64"``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

from natsgate import frames
from natsgate import protocol as p
from natsgate.errors import ErrorCode, ProtocolError

SEEDS = [
    b'{"op":"sub","target":"a.*","inbox":"1"}',
    b'{"op":"pub","target":"a.b","data":{"x":[1,2]}}',
    b'{"op":"cmd","target":"svc.x","data":1,"timeout_ms":50}',
    b'{"op":"kv_sub","target":"todos","data":{"pattern":"user.a.>"}}',
    b'{"op":"js_sub","target":"CHAT","data":{"start_seq":5,"batch":10,"filter":"c.*","start_time":"2026-01-02T03:04:05Z"}}',
    b'{"op":"auth","data":{"token":"x.y.z"}}',
    b'{"type":"subscribe","topic":"a.b"}',
    b'{"v":2,"op":"ping"}\n{"op":"ping","inbox":"p"}',
    b'{"op":"pub","target":"a.b","data":"\xff"}',
    b'"\xff"',
]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(text: str) -> Any:
    """JSON as RFC 8259 has it: Python's ``json`` without its NaN and Infinity."""
    return json.loads(text, parse_constant=_no_constant)


def loads_frame(frame: bytes) -> dict[str, Any]:
    """One server frame, checked as property 2 says, parsed."""
    assert isinstance(frame, bytes), type(frame)
    assert b"\n" not in frame, frame
    text = frame.decode("utf-8")  # strict: raises on anything that is not UTF-8
    env = strict_loads(text)
    assert isinstance(env, dict) and isinstance(env.get("op"), str), frame
    return env


def expect_payload(raw: bytes, value: Any, enc: Any) -> None:
    """``value`` (with ``enc`` beside it) is how ``raw`` should arrive (property 3)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        assert enc == frames.B64, (raw, value, enc)
        assert base64.b64decode(value, validate=True) == raw
        return
    try:
        as_json = strict_loads(text)
    except ValueError:  # JSONDecodeError, or NaN/Infinity
        assert (value, enc) == (text, None), raw
    else:
        assert enc is None, raw
        assert value == as_json, raw


Carried = Callable[[dict[str, Any]], tuple[Any, Any]]
"""Where a frame carries its payload: (value, enc)."""


def _at_top(env: dict[str, Any]) -> tuple[Any, Any]:
    return env["data"], env.get("enc")


def _in_data(field: str) -> Carried:
    return lambda env: (env["data"][field], env["data"].get("enc"))


def payload_frames(raw: bytes, subject: str = "a.b") -> Iterator[tuple[bytes, Carried]]:
    """Every frame that carries the NATS payload ``raw``, with where it carries it."""
    yield frames.encode_msg(subject, raw, sub=subject), _at_top
    yield frames.encode_msg(subject, raw, headers={"Natsgate-User": "u"}), _at_top
    yield frames.encode_kv("b", "k", 1, "PUT", raw, snapshot=True, sub=">"), _in_data("value")
    yield frames.encode_js("S", 1, subject, raw, "2026-01-02T03:04:05Z", None), _in_data("payload")
    yield frames.encode_cmd_reply(subject, "i", raw, None), _at_top


def check_payload(raw: bytes, subject: str = "a.b") -> None:
    """Properties 2 and 3 for every frame that carries ``raw``."""
    for frame, carried in payload_frames(raw, subject):
        expect_payload(raw, *carried(loads_frame(frame)))


def server_frames(item: p.ClientOp | ProtocolError) -> Iterator[bytes]:
    """What the gateway may send about ``item`` other than a payload it carries."""
    if isinstance(item, ProtocolError):
        yield frames.encode_protocol_error(item)
        return
    target = item.target
    yield frames.encode_reply(target, item.inbox)
    yield frames.encode_error(
        ErrorCode.FORBIDDEN, f"not allowed: {target}", target=target, inbox=item.inbox
    )
    match item:
        case p.Ping():
            yield frames.encode_pong(item.inbox)
        case p.KvSub() | p.KvUnsub():
            yield frames.encode_kv(
                item.target, "k", 2, "DEL", None, snapshot=False, sub=item.pattern
            )
            for marker in ("RESYNC", "SYNCED"):
                yield frames.encode_kv_marker(item.target, marker, item.pattern)
        case p.JsSub():
            yield frames.encode_reply(target, item.inbox, first_seq=1, last_seq=9, gap=True)
        case _:
            pass


def subject_of(item: p.ClientOp) -> str:
    """The subject a payload about ``item`` would come on."""
    match item:
        case p.Sub() | p.Unsub() | p.Pub() | p.Cmd():
            return item.target
        case p.JsSub():
            return item.opts.filter or "a.b"
        case _:
            return "a.b"


def check_frame(data: bytes) -> None:
    """Properties 1 to 3 for one client frame: every item it decodes to, what the gateway
    would send about it, and ``data`` itself (and a published payload) as NATS payloads."""
    check_payload(data)
    for item in p.decode_frame(data):
        if isinstance(item, ProtocolError):
            assert item.message, item
        else:
            assert isinstance(item, p.ClientOp.__args__)  # type: ignore[attr-defined]
            if isinstance(item, p.Pub | p.Cmd):  # to NATS as sent, back to a subscriber
                check_payload(bytes(item.data), item.target)
            elif subject_of(item) != "a.b":
                check_payload(data, subject_of(item))
        for frame in server_frames(item):
            loads_frame(frame)
