"""What KV watches and JetStream reads have in common: a :class:`Feed` delivers into one
connection's :class:`~natsgate.outbox.Outbox`, no faster than the socket takes it; most
run on a :class:`Reader` (:class:`ReaderFeed`), and a :class:`Bridge` keeps those live so
a NATS reconnect re-reads them all at once."""

from __future__ import annotations

import abc
import weakref
from typing import Any

from ..outbox import Outbox
from ..upstream import Upstream
from .reader import OnMessage, Reader, Start


class Feed(abc.ABC):
    """One subscription's delivery into one connection's outbox. :meth:`start` sets it up
    (a KV snapshot, a stream's position, a durable's binding) and returns the extra fields
    of the op's ``reply``; :meth:`run` delivers until cancelled; :meth:`halt` stops
    delivery at once; :meth:`stop` releases what it holds on the NATS server
    (idempotent)."""

    outbox: Outbox

    @abc.abstractmethod
    async def start(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def run(self) -> None: ...

    @abc.abstractmethod
    def halt(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...


class ReaderFeed(Feed):
    """A feed on an ordered, ack-less :class:`Reader`: KV watches and plain ``js_sub``."""

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


class SnapshotFeed(ReaderFeed):
    """A reader feed whose current values come first (KV watches, presence lists):
    ``start`` returns once they are out; the subclass clears ``in_snapshot`` then."""

    in_snapshot: bool

    async def start(self) -> dict[str, Any]:
        info = await self.reader.open()
        if not info.num_pending:
            self.in_snapshot = False
        else:
            await self.reader.pump(until=lambda: not self.in_snapshot)
        return {}


class Bridge:
    """The live feeds of one kind, so that NATS coming back re-reads them now rather than
    after a missed heartbeat."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._feeds: weakref.WeakSet[ReaderFeed] = weakref.WeakSet()
        upstream.on_reconnect(self._kick)

    def _track(self, feed: ReaderFeed) -> None:
        self._feeds.add(feed)

    async def _kick(self) -> None:
        for feed in list(self._feeds):
            feed.reader.reset()
