"""JetStream reads (``js_sub``): from a sequence, a time, or only new messages; in stream
order with no gap and no duplicate, also across NATS reconnects (protocol.md §3)."""

from __future__ import annotations

from typing import Any

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from .. import frames
from .. import protocol as p
from ..errors import ErrorCode, ProtocolError
from ..outbox import Outbox
from ..subjects import overlaps
from ..upstream import Upstream
from .feed import Bridge, ReaderFeed
from .reader import Delivery, Start


class JsFeed(ReaderFeed):
    def __init__(
        self, upstream: Upstream, outbox: Outbox, op: p.JsSub, first_seq: int, last_seq: int
    ) -> None:
        self.stream = op.target
        self.first_seq = first_seq
        self.last_seq = last_seq
        opts = op.opts
        self.start_seq = opts.start_seq or None
        self.filter = opts.filter
        super().__init__(
            upstream,
            outbox,
            op.target,
            opts.filter,
            Start(seq=self.start_seq, time=opts.start_time),
            opts.batch,
            self._on_message,
        )

    def _on_message(self, msg: Msg, d: Delivery) -> None:
        headers = dict(msg.headers) if msg.headers else None
        self.outbox.push(
            frames.encode_js(
                self.stream, d.stream_seq, msg.subject, msg.data, d.time, headers, sub=self.filter
            )
        )

    async def start(self) -> dict[str, Any]:
        await self.reader.open()
        extra: dict[str, Any] = {"first_seq": self.first_seq, "last_seq": self.last_seq}
        if self.start_seq is not None and self.start_seq < self.first_seq:
            extra["gap"] = True  # retention dropped what the client missed
        return extra


class JsBridge(Bridge):
    async def open(self, outbox: Outbox, op: p.JsSub) -> tuple[JsFeed, list[str]]:
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
        feed = JsFeed(self.upstream, outbox, op, state.first_seq or 0, state.last_seq or 0)
        self._track(feed)
        return feed, [flt] if flt is not None else subjects
