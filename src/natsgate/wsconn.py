"""One upgraded socket, as the session's :class:`~natsgate.session.Transport`.

It reads in protocol callbacks (no task and no buffer per connection while idle) and
writes frames straight to the socket, so the flusher writes to every ready connection
in one synchronous pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

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


class WsConnection(asyncio.Protocol):
    __slots__ = ("_close_sent", "_closed", "_drain", "_paused", "_reader", "_transport", "session")

    def __init__(self, transport: asyncio.Transport, max_frame_bytes: int) -> None:
        self._transport = transport
        self._reader = FrameReader(max_frame_bytes)
        self._paused = False  # the socket's write buffer is over its high-water mark
        self._close_sent = False
        self._drain: asyncio.Future[None] | None = None  # made when someone waits
        self._closed: asyncio.Future[None] | None = None
        self.session: Session | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        error: FrameError | None = None
        try:
            messages = self._reader.feed(data)
        except FrameError as exc:
            error, messages = exc, exc.before
        self._dispatch(messages)
        if error is not None:
            user = self.session.user if self.session else "?"
            log.info("closing %s: %s (%d)", user, error.reason, error.code)
            self._shut(error.code, error.reason)

    def _dispatch(self, messages: list[tuple[int, bytes]]) -> None:
        session = self.session
        if session is None:
            return
        for op, payload in messages:
            if op in (OP_TEXT, OP_BINARY):
                if not session.receive(payload):
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

    def connection_lost(self, exc: Exception | None) -> None:
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
        t.write(header(OP_TEXT, len(frame)) + frame)
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

    def _shut(self, code: int, reason: str) -> None:
        """A protocol error: say why in a close frame and close without waiting."""
        t = self._transport
        if t.is_closing():
            return
        self._send_close(close_payload(code, reason))
        t.close()
        asyncio.get_running_loop().call_later(ABORT_AFTER_S, t.abort)
