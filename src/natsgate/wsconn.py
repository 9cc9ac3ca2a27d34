"""One upgraded socket, as the session's :class:`~natsgate.session.Transport`.

It reads in protocol callbacks (no task and no buffer per connection while idle) and
writes frames straight to the socket, so the flusher writes to every ready connection
in one synchronous pass.

Unfinished input is bounded twice: a message in progress (a partial frame, or fragments
of a message) must be complete within ``MESSAGE_TIMEOUT_S``, by a timer that exists only
while something is held; and the bytes held for all connections of the process together
stay within one :class:`InputBudget`. Both close with 1013 (try again later).

With permessage-deflate agreed, the reader inflates compressed messages and data messages
leave deflated (from ``Compression.min_bytes`` up) through the process's shared
:class:`~natsgate.deflate.Deflater`, which makes each distinct text message's frame once
per loop step however many sockets write it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, ClassVar

from .deflate import Compression
from .errors import CloseCode
from .wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    close_payload,
    frame,
    header,
    parse_close,
)

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("natsgate.ws")

ABORT_AFTER_S = 1.0  # a peer that will not take our close frame is cut off after this
MESSAGE_TIMEOUT_S = 30.0  # a message begun must be complete by then (else 1013)
PARTIAL_INPUT_BYTES = 256 << 20  # unfinished input of all connections together (else 1013)


class InputBudget:
    """The bytes of unfinished client messages that all connections of the process hold
    together (protocol: partial input is bounded in bytes). One per process: otherwise
    10,000 connections, each 1 byte short of a MAX_FRAME_BYTES message, hold 10 GiB.

    A read that would take the total over ``limit`` closes its connection; the overshoot
    is at most that one read (asyncio reads at most 256 KiB at a time)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


PARTIAL_INPUT = InputBudget(PARTIAL_INPUT_BYTES)


class WsConnection(asyncio.Protocol):
    __slots__ = (
        "_close_sent",
        "_closed",
        "_deadline",
        "_deflate",
        "_drain",
        "_paused",
        "_reader",
        "_transport",
        "session",
    )

    budget: ClassVar[InputBudget] = PARTIAL_INPUT

    def __init__(
        self,
        transport: asyncio.Transport,
        max_frame_bytes: int,
        deflate: Compression | None = None,
    ) -> None:
        self._transport = transport
        self._reader = FrameReader(max_frame_bytes, inflate=deflate is not None)
        self._deflate = deflate  # shared by every connection with the same settings
        self._paused = False  # the socket's write buffer is over its high-water mark
        self._close_sent = False
        self._drain: asyncio.Future[None] | None = None  # made when someone waits
        self._closed: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None  # only while a message is unfinished
        self.session: Session | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        before = reader.held
        error: FrameError | None = None
        try:
            messages = reader.feed(data)
        except FrameError as exc:
            error, messages = exc, exc.before
        held = reader.held
        if held != before:
            grown = held - before
            if grown < 0:
                self.budget.give(-grown)
            elif not self.budget.take(grown):
                reader.discard()
                self.budget.give(before)
                held = 0
                error = FrameError(
                    CloseCode.TRY_AGAIN_LATER, "too much unfinished input on the gateway"
                )
        if held:
            # a clock per message: restarted when a data message completed in this read
            if self._deadline is None or any(op <= OP_BINARY for op, _ in messages):
                self._arm_deadline()
        elif self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._dispatch(messages)
        if error is not None:
            user = self.session.user if self.session else "?"
            log.info("closing %s: %s (%d)", user, error.reason, error.code)
            self._shut(error.code, error.reason)

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(MESSAGE_TIMEOUT_S, self._unfinished)

    def _unfinished(self) -> None:
        self._deadline = None
        t = self._transport
        if t.is_closing() or not self._reader.held:
            return
        if not t.is_reading():  # we paused it (the session is behind): not the peer's fault
            self._arm_deadline()
            return
        user = self.session.user if self.session else "?"
        log.info("closing %s: message not finished within %.0f s", user, MESSAGE_TIMEOUT_S)
        self._shut(
            CloseCode.TRY_AGAIN_LATER, f"message not finished within {MESSAGE_TIMEOUT_S:.0f} s"
        )

    def _dispatch(self, messages: list[tuple[int, bytes]]) -> None:
        session = self.session
        if session is None:
            return
        for op, payload in messages:
            if op <= OP_BINARY:  # text or binary (the reader never yields a continuation)
                if not self.deliver(op, payload):
                    self.pause_reading()  # the session resumes it when caught up
            elif op == OP_PING:
                session.seen()
                # Not while our writes are backed up: a client that pings without reading
                # would grow the buffer (RFC 6455 §5.5.3 lets pongs be coalesced).
                if not (self._paused or self._close_sent or self._transport.is_closing()):
                    self._transport.write(frame(OP_PONG, payload))
            elif op == OP_PONG:
                session.seen()
            else:  # OP_CLOSE: the last message (FrameReader stops there)
                self._peer_closed(payload)

    def _peer_closed(self, payload: bytes) -> None:
        try:
            code, _ = parse_close(payload)
        except FrameError as exc:
            self._shut(exc.code, exc.reason)
            return
        # echo it (RFC 6455 §5.5.1), then the server closes the TCP connection
        self._send_close(close_payload(code) if code else b"")
        self._transport.close()
        self._wake_closed()

    def deliver(self, op: int, payload: bytes) -> bool:
        """One whole text or binary message; False: pause reading. The session reads
        both kinds alike (``protocol.md``); a subclass may tell them apart (the Autobahn
        echo in ``tests/autobahn``)."""
        assert self.session is not None
        return self.session.receive(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_input()
        d, self._drain = self._drain, None
        if d is not None and not d.done():
            d.set_exception(ConnectionResetError("the socket closed"))
            d.exception()  # nobody may be waiting any more: no "never retrieved" warning
        self._wake_closed()
        if self.session is not None:
            self.session.disconnected()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        d, self._drain = self._drain, None
        if d is not None and not d.done():
            d.set_result(None)

    # ------------------------------------------------------------------ Transport

    def write(self, frame: bytes) -> bool:
        t = self._transport
        if self._close_sent or t.is_closing():
            raise ConnectionResetError("the socket is closed")
        z = self._deflate
        if z is not None and len(frame) >= z.min_bytes:
            t.write(z.deflater.text_frame(frame))
        else:
            t.write(header(OP_TEXT, len(frame)) + frame)
        return not self._paused

    def write_message(self, opcode: int, payload: bytes) -> bool:
        """One message of any opcode (``write`` is the session's: text only, and hot)."""
        t = self._transport
        if self._close_sent or t.is_closing():
            raise ConnectionResetError("the socket is closed")
        z = self._deflate
        if z is not None and opcode <= OP_BINARY and len(payload) >= z.min_bytes:
            t.write(z.deflater.frame(opcode, payload))
        else:
            t.write(header(opcode, len(payload)) + payload)
        return not self._paused

    async def drained(self) -> None:
        if not self._paused:
            return
        if self._transport.is_closing():
            raise ConnectionResetError("the socket is closed")
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
        await self._drain

    async def ping(self) -> None:
        if self._close_sent or self._transport.is_closing():
            raise ConnectionResetError("the socket is closed")
        self._transport.write(frame(OP_PING, b""))

    async def close(self, code: int, reason: str) -> None:
        """Send our close frame and wait for the peer's; cut the socket if that never
        comes (the caller bounds the wait), so a stalled peer frees its buffers too."""
        t = self._transport
        if t.is_closing():
            return
        self._send_close(close_payload(code, reason))
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        try:
            await self._closed
        except asyncio.CancelledError:
            t.abort()
            raise

    def pause_reading(self) -> None:
        if not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        t = self._transport
        if not t.is_closing() and not t.is_reading():
            t.resume_reading()

    # ------------------------------------------------------------------ internals

    def _send_close(self, payload: bytes) -> None:
        if not self._close_sent:
            self._close_sent = True
            self._transport.write(frame(OP_CLOSE, payload))

    def _wake_closed(self) -> None:
        c = self._closed
        if c is not None and not c.done():
            c.set_result(None)

    def _drop_input(self) -> None:
        """The connection ends: what it held of unfinished messages goes back."""
        reader = self._reader
        self.budget.give(reader.held)
        reader.discard()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _shut(self, code: int, reason: str) -> None:
        """A protocol error: say why in a close frame and close without waiting."""
        self._drop_input()
        t = self._transport
        if t.is_closing():
            return
        self._send_close(close_payload(code, reason))
        t.close()
        asyncio.get_running_loop().call_later(ABORT_AFTER_S, t.abort)
