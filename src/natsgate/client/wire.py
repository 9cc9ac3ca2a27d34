"""The client's side of the envelope (protocol.md §3), and its pure rules.

No I/O: decoding server frames, encoding client ops, payload decoding.  The public
message types are here too, because they are what a decoded frame becomes.  What to do
after a close is in ``reconnect``.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

# --------------------------------------------------------------------------- errors


class NatsgateError(Exception):
    """Every failure the client reports.

    ``code`` is one of the protocol's error codes (``bad_request``, ``unsupported_version``,
    ``unauthorized``, ``forbidden``, ``not_found``, ``timeout``, ``no_responders``,
    ``limit``, ``backpressure``, ``internal``) when the gateway refused something, or one
    of the client's own:

    - ``disconnected``: the socket dropped while the op was in flight (it may or may not
      have taken effect), or the client could not get a connection in time;
    - ``closed``: the client (or the subscription) was closed first;
    - ``protocol``: the gateway sent something the protocol does not allow.

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


class PresenceEvent(Struct):
    """A member of a subject joining (or changing its info) or leaving. ``conn`` names
    the connection (one user may be there on several); ``snapshot`` is true for the
    members already there when the list was (re)read."""

    op: str  # join or leave
    user: str = ""
    conn: str = ""
    info: Any = None
    snapshot: bool = False


class Acks(Protocol):
    """Where a message's acknowledgement goes: the binding of the durable it came on."""

    async def settle(self, seq: int, how: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class JsMessage:
    """A JetStream ``msg``: ``seq`` is the stream sequence, ``time`` RFC 3339.

    From a durable with explicit acks (protocol.md §3, durable subscriptions),
    ``delivery`` counts its deliveries (1 the first time) and the handler settles it with
    one of :meth:`ack`, :meth:`nak` or :meth:`term`, once; otherwise ``delivery`` is None.
    """

    seq: int
    subject: str
    payload: Any
    time: str | None = None
    headers: Headers | None = None
    delivery: int | None = None
    _acks: Acks | None = field(default=None, repr=False, compare=False)
    _settled: bool = field(default=False, repr=False, compare=False)

    async def ack(self) -> None:
        """Handled: NATS will not deliver it again. Returns once the gateway says the
        NATS server has the ack."""
        await self._settle({})

    async def nak(self, delay_ms: int | None = None) -> None:
        """Not handled: deliver it again, after ``delay_ms`` milliseconds when given."""
        await self._settle(
            {"nak": True} if delay_ms is None else {"nak": True, "delay_ms": delay_ms}
        )

    async def term(self) -> None:
        """Never deliver it again, handled or not."""
        await self._settle({"term": True})

    async def _settle(self, how: dict[str, Any]) -> None:
        if self._acks is None:
            raise NatsgateError(
                "bad_request", f"message {self.seq} needs no ack: not from explicit acks"
            )
        if self._settled:
            raise NatsgateError("bad_request", f"message {self.seq} was settled already")
        self._settled = True
        await self._acks.settle(self.seq, how)


@dataclass(frozen=True, slots=True)
class DurableInfo:
    """One of the user's durables of a stream (``js_durables``): its ``filter`` (None for
    the whole stream), messages not yet delivered (``pending``) and delivered but not
    acked (``ack_pending``)."""

    name: str
    filter: str | None
    pending: int
    ack_pending: int


DURABLE_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # protocol.md: durable names
MIN_ACK_WAIT_MS, MAX_ACK_WAIT_MS = 1_000, 600_000


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
    durable: str | None = None  # a durable's msg names it (protocol: durable subscriptions)
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
    delivery: int | None = None


class DurableWire(Struct):
    name: str
    filter: str | None = None
    pending: int = 0
    ack_pending: int = 0


class DurablesWire(Struct):
    durables: list[DurableWire] = []


class ErrorBody(Struct):
    code: str = "internal"
    message: str = ""


class RevokedWire(Struct):
    op: str
    target: str
    pattern: str | None = None
    filter: str | None = None
    durable: str | None = None


class CapUpdateWire(Struct):
    caps: dict[str, Any] = {}
    revoked: list[RevokedWire] = []


decode_envelope = msgspec.json.Decoder(Envelope).decode
decode_any = msgspec.json.Decoder().decode
decode_kv = msgspec.json.Decoder(KvWire).decode
decode_js = msgspec.json.Decoder(JsWire).decode
decode_error_body = msgspec.json.Decoder(ErrorBody).decode
decode_cap_update = msgspec.json.Decoder(CapUpdateWire).decode
decode_durables = msgspec.json.Decoder(DurablesWire).decode
decode_presence = msgspec.json.Decoder(PresenceEvent).decode

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
