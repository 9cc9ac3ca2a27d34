"""Every frame the server sends (protocol.md §3), encoded here and nowhere else, and
the payload rules that make any NATS payload one line of valid UTF-8 JSON.

Pure: no I/O. A frame that goes to many connections is encoded once (see :mod:`.hub`).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from msgspec import Raw, Struct

from .errors import ErrorCode, ProtocolError


class _Frame(Struct, tag_field="op", omit_defaults=True):
    pass


class MsgFrame(_Frame, tag="msg"):
    target: str
    data: Raw
    durable: str | None = None
    sub: str | None = None
    enc: str | None = None
    headers: dict[str, str] | None = None


class ReplyFrame(_Frame, tag="reply"):
    target: str | None = None
    inbox: str | None = None
    data: Any = None
    enc: str | None = None
    headers: dict[str, str] | None = None


class ErrorBody(Struct):
    code: str
    message: str


class ErrorFrame(_Frame, tag="error"):
    data: ErrorBody
    target: str | None = None
    inbox: str | None = None


class CapUpdateBody(Struct):
    caps: Any
    revoked: list[dict[str, str]]


class CapUpdateFrame(_Frame, tag="cap_update"):
    data: CapUpdateBody


class PongFrame(_Frame, tag="pong"):
    inbox: str | None = None


_encoder = msgspec.json.Encoder()
encode = _encoder.encode
B64 = "base64"


def payload(raw: bytes) -> tuple[Raw, str | None]:
    """A NATS payload as a JSON value: JSON as itself, UTF-8 text as a string, other bytes
    as base64 (then the second item is ``"base64"``). Never contains a newline, so frames
    can be newline-joined, and always valid UTF-8: msgspec's ``Raw`` passes a JSON string
    with invalid UTF-8 inside unchecked, and a browser fails the whole WebSocket (1007) on
    one such frame, so bytes are checked here, once per message (``isascii`` is the fast
    path for most payloads)."""
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError:
            return Raw(_encoder.encode(base64.b64encode(raw).decode())), B64
    if raw:
        try:
            value = msgspec.json.decode(raw, type=Raw)
        except msgspec.DecodeError:
            pass
        else:
            if b"\n" in raw or b"\r" in raw:
                # Outside strings these are JSON whitespace (inside they must be escaped):
                # blank them to keep frames one line, without re-encoding the value.
                return Raw(raw.replace(b"\n", b" ").replace(b"\r", b" ")), None
            return value, None
    return Raw(_encoder.encode(raw.decode())), None


def encode_msg(
    target: str, raw: bytes, *, sub: str | None = None, headers: dict[str, str] | None = None
) -> bytes:
    """A core ``msg`` frame; encoded once per message and shared by every receiver."""
    data, enc = payload(raw)
    return encode(MsgFrame(target=target, data=data, sub=sub, enc=enc, headers=headers or None))


def encode_kv(
    bucket: str,
    key: str,
    revision: int,
    kv_op: str,
    value: bytes | None,
    *,
    snapshot: bool,
    sub: str | None = None,
) -> bytes:
    """A KV ``msg``; ``snapshot`` marks current values sent before live changes; ``sub``
    names the watched key pattern, so overlapping watches can be told apart."""
    body: dict[str, Any] = {"key": key, "revision": revision, "op": kv_op}
    if kv_op == "PUT" and value is not None:
        body["value"], enc = payload(value)  # Raw: embedded as it is
        if enc:
            body["enc"] = enc
    else:
        body["value"] = None
    if snapshot:
        body["snapshot"] = True
    return encode(MsgFrame(target=f"kv:{bucket}", data=Raw(encode(body)), sub=sub))


def encode_kv_marker(bucket: str, marker: str, pattern: str) -> bytes:
    """``RESYNC`` (drop what you hold for this pattern; a fresh snapshot follows) or
    ``SYNCED`` (that snapshot is complete): sent when the gateway re-reads a bucket after
    its NATS connection came back."""
    body = Raw(encode({"op": marker, "pattern": pattern}))
    return encode(MsgFrame(target=f"kv:{bucket}", data=body, sub=pattern))


def encode_presence(subject: str, op: str, user: str, conn: str, info: Raw) -> bytes:
    """A presence ``msg``: ``op`` is ``join`` (a new member, or new info) or ``leave``."""
    body = Raw(encode({"user": user, "conn": conn, "op": op, "info": info}))
    return encode(MsgFrame(target=f"presence:{subject}", data=body))


def encode_js(
    stream: str,
    seq: int,
    subject: str,
    raw: bytes,
    time: str | None,
    headers: dict[str, str] | None,
    *,
    sub: str | None = None,
    durable: str | None = None,
    delivery: int | None = None,
) -> bytes:
    """A JetStream ``msg``; ``sub`` is the subscription's filter, when it has one;
    ``durable`` and ``delivery`` (1 the first time) for a durable's messages."""
    body: dict[str, Any] = {"seq": seq, "subject": subject}
    body["payload"], enc = payload(raw)
    if enc:
        body["enc"] = enc
    body["time"] = time
    if delivery is not None:
        body["delivery"] = delivery
    frame = MsgFrame(
        target=f"js:{stream}",
        data=Raw(encode(body)),
        headers=headers or None,
        sub=sub,
        durable=durable,
    )
    return encode(frame)


def encode_reply(target: str | None, inbox: str | None, data: Any = None, **extra: Any) -> bytes:
    """The acknowledgement of an op: ``{"ok": true, ...extra}`` unless ``data`` is given."""
    if data is None:
        data = {"ok": True, **extra}
    return encode(ReplyFrame(target=target, inbox=inbox, data=data))


def encode_cmd_reply(
    target: str, inbox: str | None, raw: bytes, headers: dict[str, str] | None
) -> bytes:
    data, enc = payload(raw)
    return encode(ReplyFrame(target=target, inbox=inbox, data=data, enc=enc, headers=headers))


def encode_error(
    code: ErrorCode, message: str, *, target: str | None = None, inbox: str | None = None
) -> bytes:
    return encode(
        ErrorFrame(data=ErrorBody(code=code.value, message=message), target=target, inbox=inbox)
    )


def encode_protocol_error(err: ProtocolError) -> bytes:
    return encode_error(err.code, err.message, target=err.target, inbox=err.inbox)


def encode_cap_update(caps: Any, revoked: list[dict[str, str]]) -> bytes:
    return encode(CapUpdateFrame(data=CapUpdateBody(caps=caps, revoked=revoked)))


def encode_pong(inbox: str | None) -> bytes:
    return encode(PongFrame(inbox=inbox))
