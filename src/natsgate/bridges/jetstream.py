"""JetStream reads (``js_sub``): from a sequence, a time, or only new messages; in stream
order with no gap and no duplicate, also across NATS reconnects (contract §3)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from .. import protocol as p
from ..errors import ErrorCode, ProtocolError
from ..subjects import overlaps
from ..upstream import Upstream
from .reader import Delivery, Reader, Start

if TYPE_CHECKING:
    from ..session import Session


class JsFeed:
    def __init__(
        self, upstream: Upstream, session: Session, op: p.JsSub, first_seq: int, last_seq: int
    ) -> None:
        self.stream = op.target
        self.first_seq = first_seq
        self.last_seq = last_seq
        opts = op.opts
        self.start_seq = opts.start_seq or None
        self.filter = opts.filter
        self._outbox = ob = session.outbox
        self.reader = Reader(
            upstream,
            op.target,
            opts.filter,
            Start(seq=self.start_seq, time=opts.start_time),
            opts.batch,
            self._on_message,
            lambda: ob.written_up_to(ob.pushed),
        )

    def _on_message(self, msg: Msg, d: Delivery) -> None:
        headers = dict(msg.headers) if msg.headers else None
        self._outbox.push(
            p.encode_js(
                self.stream, d.stream_seq, msg.subject, msg.data, d.time, headers, sub=self.filter
            )
        )

    async def start(self) -> dict[str, Any]:
        await self.reader.open()
        extra: dict[str, Any] = {"first_seq": self.first_seq, "last_seq": self.last_seq}
        if self.start_seq is not None and self.start_seq < self.first_seq:
            extra["gap"] = True  # retention dropped what the client missed
        return extra

    async def run(self) -> None:
        await self.reader.pump()

    def halt(self) -> None:
        self.reader.halt()

    async def stop(self) -> None:
        await self.reader.stop()


class JsBridge:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._feeds: weakref.WeakSet[JsFeed] = weakref.WeakSet()
        upstream.on_reconnect(self._kick)

    async def open(self, session: Session, op: p.JsSub) -> tuple[JsFeed, list[str]]:
        """Look the stream up; the capability check covers the filter, or without one
        every subject of the stream."""
        try:
            info = await self.upstream.js.stream_info(op.target)
        except NotFoundError:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no stream {op.target!r}") from None
        subjects = list(info.config.subjects or [])
        flt = op.opts.filter
        if flt is not None and not any(overlaps(flt, s) for s in subjects):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"filter {flt!r} is outside the subjects of stream {op.target!r}",
            )
        state = info.state
        feed = JsFeed(self.upstream, session, op, state.first_seq or 0, state.last_seq or 0)
        self._feeds.add(feed)
        return feed, [flt] if flt is not None else subjects

    async def _kick(self) -> None:
        for feed in list(self._feeds):
            feed.reader.reset()
