"""What KV watches and JetStream reads have in common: a :class:`Reader` that delivers into
one connection's :class:`~natsgate.outbox.Outbox`, no faster than the socket takes it, and
a bridge that keeps every live feed so a NATS reconnect re-reads them all at once."""

from __future__ import annotations

import weakref
from typing import Any

from ..outbox import Outbox
from ..upstream import Upstream
from .reader import OnMessage, Reader, Start


class Feed:
    """One subscription's reader. :meth:`start` sets it up (a KV snapshot, a stream's
    position) and returns the extra fields of the op's ``reply``; :meth:`run` delivers
    until cancelled; :meth:`halt` stops delivery at once; :meth:`stop` deletes the
    consumer on the NATS server (idempotent)."""

    reader: Reader

    def __init__(
        self,
        upstream: Upstream,
        outbox: Outbox,
        stream: str,
        filter_subject: str | None,
        start: Start,
        batch: int,
        on_message: OnMessage,
        *,
        resume: bool = True,
    ) -> None:
        self.outbox = ob = outbox
        self.reader = Reader(
            upstream,
            stream,
            filter_subject,
            start,
            batch,
            on_message,
            lambda: ob.written_up_to(ob.pushed),  # at most one batch in flight to the client
            resume=resume,
        )

    async def start(self) -> dict[str, Any]:
        await self.reader.open()
        return {}

    async def run(self) -> None:
        await self.reader.pump()

    def halt(self) -> None:
        self.reader.halt()

    async def stop(self) -> None:
        await self.reader.stop()


class Bridge:
    """The live feeds of one kind, so that NATS coming back re-reads them now rather than
    after a missed heartbeat."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._feeds: weakref.WeakSet[Feed] = weakref.WeakSet()
        upstream.on_reconnect(self._kick)

    def _track(self, feed: Feed) -> None:
        self._feeds.add(feed)

    async def _kick(self) -> None:
        for feed in list(self._feeds):
            feed.reader.reset()
