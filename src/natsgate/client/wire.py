"""The client's side of the envelope (contract section 3), and its pure rules.

No I/O: decoding server frames, encoding client ops, payload decoding.  The public
message types are here too, because they are what a decoded frame becomes.  What to do
after a close is in ``reconnect``.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

# --------------------------------------------------------------------------- errors


class NatsgateError(Exception):
    """Every failure the client reports.

    ``code`` is one of the contract's error codes (``bad_request``, ``unsupported_version``,
    ``unauthorized``, ``forbidden``, ``not_found``, ``timeout``, ``no_responders``,
    ``limit``, ``backpressure``, ``internal``) when the gateway refused something, or one
    of the client's own:

    - ``disconnected``: the socket dropped while the op was in flight (it may or may not
      have taken effect), or the client could not get a connection in time;
    - ``closed``: the client (or the subscription) was closed first;
    - ``protocol``: the gateway sent something the contract does not allow.

    ``timeout`` is also the client's own when no answer came within an op's timeout plus
    a grace period.  ``target`` is the op's target when the error concerns one.
    """

    def __init__(self, code: str, message: str, *, target: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.target = target


# --------------------------------------------------------------------------- public types


class ClientState(enum.Enum):
    CONNECTING = "connecting"  # before the first connection opened
    OPEN = "open"  # socket up and its first cap_update received
    RECONNECTING = "reconnecting"  # lost the socket; trying again
    CLOSED = "closed"  # for good: close() was called, or reconnecting was hopeless


Headers = dict[str, str | list[str]]


class Message(Struct):
    """A core ``msg``: ``subject`` is the concrete subject, ``pattern`` the subscribed one."""

    subject: str
    pattern: str
    data: Any  # the payload's JSON value, a str, or bytes (sent as base64)
    headers: Headers | None = None


class KvEvent(Struct):
    """A KV change, or a marker.

    ``PUT``/``DEL``/``PURGE`` carry ``key``, ``revision`` and (PUT) ``value``; ``snapshot``
    is true for current values sent while a watch hydrates.  ``RESYNC`` means "drop what
    you hold for ``pattern``, a fresh snapshot follows"; ``SYNCED`` means that snapshot is
    complete.  The gateway sends both after its own NATS outage; the client produces them
    itself around each re-subscription after a reconnect.
    """

    op: str  # PUT, DEL, PURGE, RESYNC or SYNCED
    key: str = ""
    revision: int = 0
    value: Any = None
    snapshot: bool = False
    pattern: str = ""


class JsMessage(Struct):
    """A JetStream ``msg``: ``seq`` is the stream sequence, ``time`` RFC 3339."""

    seq: int
    subject: str
    payload: Any
    time: str | None = None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class DisconnectInfo:
    """The socket closed: its close code (1006 when it just dropped), and the delay before
    the next attempt (None: the client gives up and is CLOSED)."""

    code: int
    reason: str
    delay: float | None


@dataclass(frozen=True, slots=True)
class ReconnectInfo:
    """A connection opened again after ``attempts`` tries."""

    attempts: int


# --------------------------------------------------------------------------- decoding


class Envelope(Struct):
    """A server envelope, with ``data`` left undecoded until its target says what it is."""

    op: str
    target: str | None = None
    inbox: str | None = None
    data: Raw = Raw(b"null")
    sub: str | None = None
    enc: str | None = None
    headers: Headers | None = None
    v: int = 1


class KvWire(Struct):
    op: str = "PUT"
    key: str = ""
    revision: int = 0
    value: Any = None
    enc: str | None = None
    snapshot: bool = False
    pattern: str = ""


class JsWire(Struct):
    seq: int
    subject: str = ""
    payload: Any = None
    enc: str | None = None
    time: str | None = None


class ErrorBody(Struct):
    code: str = "internal"
    message: str = ""


class RevokedWire(Struct):
    op: str
    target: str
    pattern: str | None = None
    filter: str | None = None


class CapUpdateWire(Struct):
    caps: dict[str, Any] = {}
    revoked: list[RevokedWire] = []


decode_envelope = msgspec.json.Decoder(Envelope).decode
decode_any = msgspec.json.Decoder().decode
decode_kv = msgspec.json.Decoder(KvWire).decode
decode_js = msgspec.json.Decoder(JsWire).decode
decode_error_body = msgspec.json.Decoder(ErrorBody).decode
decode_cap_update = msgspec.json.Decoder(CapUpdateWire).decode

B64 = "base64"


def payload(value: Any, enc: str | None) -> Any:
    """Bytes the gateway sent as base64 (``enc`` beside the value) become bytes."""
    if enc == B64 and isinstance(value, str):
        return base64.b64decode(value)
    return value


def error_from(env: Envelope) -> NatsgateError:
    """An ``error`` envelope as an exception; a malformed one is the peer's fault."""
    try:
        body = decode_error_body(env.data)
    except msgspec.DecodeError:
        return NatsgateError("protocol", "malformed error envelope", target=env.target)
    return NatsgateError(body.code, body.message, target=env.target)


# --------------------------------------------------------------------------- encoding


class Op(Struct, omit_defaults=True):
    """A client envelope (``v`` absent: version 1). ``data`` left UNSET is not sent;
    ``None`` is sent as ``null``."""

    op: str
    inbox: str | None = None
    target: str | None = None
    data: Any = UNSET
    timeout_ms: int | UnsetType = UNSET


encode = msgspec.json.Encoder().encode
