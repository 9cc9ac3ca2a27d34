"""The envelope (protocol.md §3): the ops a client sends, decoded and validated.

Pure: no I/O.  ``decode_frame`` turns one WebSocket text frame into validated ops, or a
:class:`~natsgate.errors.ProtocolError` per bad envelope; it never raises anything else.
What the server sends is encoded in :mod:`.frames`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from .errors import ErrorCode, ProtocolError
from .subjects import InvalidSubject, validate

PROTOCOL_VERSION = 1
MAX_INBOX = 128
MAX_BATCH = 1000
DEFAULT_BATCH = 100
MAX_TIMEOUT_MS = 300_000
MIN_ACK_WAIT_MS, ACK_WAIT_MS, MAX_ACK_WAIT_MS = 1_000, 30_000, 600_000

Inbox = Annotated[str, Meta(min_length=1, max_length=MAX_INBOX)]
BUCKET_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")  # NATS KV bucket names
STREAM_RE = re.compile(r"^[^.*>\s/\\\x00]{1,255}$")  # NATS stream names
KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9*>]+$")  # NATS KV keys, plus wildcards for patterns


# --------------------------------------------------------------------------- client ops


class _Op(Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    """Fields every client op may carry. ``data`` is accepted everywhere, used where the
    protocol gives it a meaning."""

    v: Any = PROTOCOL_VERSION
    inbox: Inbox | None = None


class Sub(_Op, tag="sub"):
    target: str
    data: Any = None


class Unsub(_Op, tag="unsub"):
    target: str
    data: Any = None


class Pub(_Op, tag="pub"):
    target: str
    data: Raw = Raw(b"")


class Cmd(_Op, tag="cmd"):
    target: str
    data: Raw = Raw(b"")
    timeout_ms: Annotated[int, Meta(ge=1, le=MAX_TIMEOUT_MS)] | None = None


class KvData(Struct, forbid_unknown_fields=True):
    pattern: str | None = None


class KvSub(_Op, tag="kv_sub"):
    target: str
    data: KvData | None = None

    @property
    def pattern(self) -> str:
        return (self.data.pattern if self.data else None) or ">"


class KvUnsub(_Op, tag="kv_unsub"):
    target: str
    data: KvData | None = None

    @property
    def pattern(self) -> str:
        return (self.data.pattern if self.data else None) or ">"


Durable = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class JsData(Struct, forbid_unknown_fields=True):
    start_seq: Annotated[int, Meta(ge=0)] | None = None
    start_time: Annotated[datetime, Meta(tz=True)] | None = None
    batch: Annotated[int, Meta(ge=1, le=MAX_BATCH)] = DEFAULT_BATCH
    filter: str | None = None
    durable: Durable | None = None  # the position lives on the NATS server (§ durables)
    ack: Literal["none", "explicit"] = "none"
    # absent: 30 s for a new durable, unchanged for an existing one
    ack_wait_ms: Annotated[int, Meta(ge=MIN_ACK_WAIT_MS, le=MAX_ACK_WAIT_MS)] | None = None
    reset: bool = False  # make the durable afresh when its filter or ack mode differs


class JsSub(_Op, tag="js_sub"):
    target: str
    data: JsData | None = None

    @property
    def opts(self) -> JsData:
        return self.data or JsData()


class JsUnsubData(Struct, forbid_unknown_fields=True):
    filter: str | None = None
    durable: Durable | None = None
    delete: bool = False  # with durable: delete it on the NATS server too


class JsUnsub(_Op, tag="js_unsub"):
    target: str
    data: JsUnsubData | None = None

    @property
    def filter(self) -> str | None:
        return self.data.filter if self.data else None

    @property
    def durable(self) -> str | None:
        return self.data.durable if self.data else None


class JsAckData(Struct, forbid_unknown_fields=True):
    durable: Durable
    seq: Annotated[int, Meta(ge=1)]
    nak: bool = False
    delay_ms: Annotated[int, Meta(ge=0, le=MAX_ACK_WAIT_MS)] | None = None
    term: bool = False


class JsAck(_Op, tag="js_ack"):
    """Acknowledge (or ``nak``, ``term``) one message of a durable with explicit acks."""

    target: str
    data: JsAckData


class JsDurables(_Op, tag="js_durables"):
    """The user's durables of one stream."""

    target: str
    data: Any = None


class Ping(_Op, tag="ping"):
    target: str | None = None
    data: Any = None


class AuthData(Struct, forbid_unknown_fields=True):
    token: Annotated[str, Meta(min_length=1, max_length=8192)]


class Auth(_Op, tag="auth"):
    data: AuthData
    target: str | None = None


class Join(_Op, tag="join"):
    """Announce this connection on a literal subject; ``data`` is its info (any JSON)."""

    target: str
    data: Raw = Raw(b"")


class Leave(_Op, tag="leave"):
    target: str
    data: Any = None


class PresenceSub(_Op, tag="presence_sub"):
    """The members of a literal subject: current ones, then joins and leaves."""

    target: str
    data: Any = None


class PresenceUnsub(_Op, tag="presence_unsub"):
    target: str
    data: Any = None


ClientOp = (
    Sub
    | Unsub
    | Pub
    | Cmd
    | KvSub
    | KvUnsub
    | JsSub
    | JsUnsub
    | JsAck
    | JsDurables
    | Ping
    | Auth
    | Join
    | Leave
    | PresenceSub
    | PresenceUnsub
)

_decoder = msgspec.json.Decoder(ClientOp)


class _Probe(Struct):
    """A lenient look at a bad envelope, only to address the error to it."""

    op: Any = None
    v: Any = None
    inbox: Any = None
    target: Any = None
    type: Any = None
    topic: Any = None


_probe_decoder = msgspec.json.Decoder(_Probe)


def decode_frame(frame: bytes | str) -> Iterator[ClientOp | ProtocolError]:
    """Each newline-separated envelope of ``frame``, validated, in order (protocol.md §1)."""
    if isinstance(frame, str):
        frame = frame.encode()
    ascii_only = frame.isascii()  # the common case, and then certainly UTF-8
    for line in frame.split(b"\n"):
        if line.strip():
            yield decode_envelope(line, utf8_checked=ascii_only)


def decode_envelope(raw: bytes, *, utf8_checked: bool = False) -> ClientOp | ProtocolError:
    """One envelope. Its bytes are checked for UTF-8 unless the caller knows: msgspec's
    ``Raw`` carries a string holding invalid UTF-8 through unchecked (onward to NATS, and
    from there to every subscriber), and a binary WebSocket frame is never checked."""
    if not utf8_checked and not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError:
            return _not_utf8(raw)
    try:
        op: ClientOp = _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
        return _explain(raw, exc)
    except UnicodeDecodeError:  # msgspec, naming an unknown field that is not UTF-8
        return ProtocolError(ErrorCode.BAD_REQUEST, "frame is not valid UTF-8")
    if not (type(op.v) is int and op.v == PROTOCOL_VERSION):
        return _error(ErrorCode.UNSUPPORTED_VERSION, f"unsupported version {op.v!r}; use 1", op)
    try:
        _check_names(op)
    except InvalidSubject as exc:
        return _error(ErrorCode.BAD_REQUEST, f"invalid target or pattern: {exc}", op)
    if (problem := _conflict(op)) is not None:
        return _error(ErrorCode.BAD_REQUEST, problem, op)
    return op


def _conflict(op: ClientOp) -> str | None:
    """Fields that are valid alone but not together."""
    match op:
        case JsSub() if op.opts.ack == "explicit" and op.opts.durable is None:
            return '"ack": "explicit" needs a "durable"'
        case JsAck() if op.data.nak and op.data.term:
            return '"nak" and "term" exclude each other'
        case JsAck() if op.data.delay_ms is not None and not op.data.nak:
            return '"delay_ms" goes with "nak"'
        case JsUnsub() if op.data is not None and op.data.delete and op.durable is None:
            return '"delete" needs a "durable"'
    return None


def _not_utf8(raw: bytes) -> ProtocolError:
    """The error for an envelope with bytes that are not UTF-8, addressed to its inbox when
    one can be read (so the op is still answered exactly once)."""
    inbox = target = None
    try:
        probe = _probe_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    else:
        if isinstance(probe.inbox, str) and len(probe.inbox) <= MAX_INBOX:
            inbox = _utf8_or_none(probe.inbox)
        if isinstance(probe.target, str):
            target = _utf8_or_none(probe.target)
    return ProtocolError(
        ErrorCode.BAD_REQUEST, "envelope is not valid UTF-8", inbox=inbox, target=target
    )


def _utf8_or_none(text: str) -> str | None:
    try:
        text.encode()
    except UnicodeEncodeError:
        return None
    return text


def _error(code: ErrorCode, message: str, op: ClientOp) -> ProtocolError:
    return ProtocolError(code, message, inbox=op.inbox, target=op.target)


def _check_names(op: ClientOp) -> None:
    """Subject, bucket, stream and key syntax, so that sessions only see valid names."""
    match op:
        case Sub() | Unsub():
            validate(op.target, wildcards=True)
        case Pub() | Cmd() | Join() | Leave() | PresenceSub() | PresenceUnsub():
            validate(op.target, wildcards=False)
        case KvSub() | KvUnsub():
            if not BUCKET_RE.match(op.target):
                raise InvalidSubject("bucket names are letters, digits, '-' and '_'")
            validate(op.pattern, wildcards=True)
            if not KEY_RE.match(op.pattern):
                raise InvalidSubject("key pattern has characters a KV key cannot have")
        case JsSub() | JsUnsub() | JsAck() | JsDurables():
            if not STREAM_RE.match(op.target):
                raise InvalidSubject("stream names have no '.', '*', '>', '/' or spaces")
            flt = (
                op.opts.filter
                if isinstance(op, JsSub)
                else op.filter
                if isinstance(op, JsUnsub)
                else None
            )
            if flt is not None:
                validate(flt, wildcards=True)
        case Ping() | Auth():
            pass


def _explain(raw: bytes, exc: msgspec.DecodeError) -> ClientOp | ProtocolError:
    """Turn a decode failure into the error envelope a person can act on (or, for a
    legacy frame, into its op)."""
    try:
        probe = _probe_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return ProtocolError(ErrorCode.BAD_REQUEST, "frame is not a JSON object")
    inbox = probe.inbox if isinstance(probe.inbox, str) and len(probe.inbox) <= MAX_INBOX else None
    target = probe.target if isinstance(probe.target, str) else None
    if probe.op is None and probe.type is not None:
        return _legacy(raw, inbox)
    if probe.v is not None and not (type(probe.v) is int and probe.v == PROTOCOL_VERSION):
        return ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"unsupported version {probe.v!r}; use 1",
            inbox=inbox,
            target=target,
        )
    text = str(exc)
    if isinstance(probe.op, str) and text.startswith("Invalid value") and "`$.op`" in text:
        text = f"unknown op {probe.op!r}"
    return ProtocolError(ErrorCode.BAD_REQUEST, text, inbox=inbox, target=target)


class _Legacy(Struct, forbid_unknown_fields=True):
    type: Literal["subscribe", "unsubscribe"]
    topic: str


_legacy_decoder = msgspec.json.Decoder(_Legacy)


def _legacy(raw: bytes, inbox: str | None) -> ClientOp | ProtocolError:
    """Legacy ``{"type": "subscribe", "topic": ...}`` frames (protocol.md §3)."""
    try:
        legacy = _legacy_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return ProtocolError(ErrorCode.BAD_REQUEST, f"legacy frame: {exc}", inbox=inbox)
    op: ClientOp = (
        Sub(target=legacy.topic) if legacy.type == "subscribe" else Unsub(target=legacy.topic)
    )
    try:
        _check_names(op)
    except InvalidSubject as exc:
        return _error(ErrorCode.BAD_REQUEST, f"invalid target or pattern: {exc}", op)
    return op
