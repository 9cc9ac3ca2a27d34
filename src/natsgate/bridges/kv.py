"""KV watches (``kv_sub``): current values first, then live changes (protocol.md §3).

A bucket is the stream ``KV_<bucket>``; a key's writes go to ``$KV.<bucket>.<key>`` with a
``KV-Operation`` header for deletes and purges.  The watch is a :class:`Reader` starting at
the last value of each key; after a NATS outage it starts over with a fresh snapshot,
framed by ``RESYNC`` and ``SYNCED`` markers so a client can drop keys deleted meanwhile.
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from .. import frames
from .. import protocol as p
from ..errors import ErrorCode, ProtocolError
from ..kvmsg import PUT, kv_op
from ..outbox import Outbox
from ..upstream import Upstream
from .feed import Bridge, SnapshotFeed
from .reader import Delivery, Start

SNAPSHOT_BATCH = 256


class KvFeed(SnapshotFeed):
    def __init__(self, upstream: Upstream, outbox: Outbox, bucket: str, pattern: str) -> None:
        self.bucket = bucket
        self.pattern = pattern
        self._prefix = f"$KV.{bucket}."
        self.in_snapshot = True
        self._resyncing = False
        super().__init__(
            upstream,
            outbox,
            f"KV_{bucket}",
            self._prefix + pattern,
            Start(last_per_subject=True),
            SNAPSHOT_BATCH,
            self._on_message,
            resume=False,  # after an outage: a fresh snapshot, between RESYNC and SYNCED
        )
        self.reader.on_remade = self._on_remade

    def _on_message(self, msg: Msg, d: Delivery) -> None:
        op = kv_op(msg.headers)
        if not (self.in_snapshot and op != PUT):  # a snapshot holds only live keys
            key = msg.subject[len(self._prefix) :]
            self.outbox.push(
                frames.encode_kv(
                    self.bucket,
                    key,
                    d.stream_seq,
                    op,
                    msg.data,
                    snapshot=self.in_snapshot,
                    sub=self.pattern,
                )
            )
        if self.in_snapshot and d.pending == 0:
            self._synced()

    def _synced(self) -> None:
        self.in_snapshot = False
        self.reader.wake()  # start() is waiting for this, with a pull still open
        if self._resyncing:
            self._resyncing = False
            self.outbox.push(frames.encode_kv_marker(self.bucket, "SYNCED", self.pattern))

    def _on_remade(self, info: api.ConsumerInfo) -> None:
        self._resyncing = True
        self.in_snapshot = True
        self.outbox.push(frames.encode_kv_marker(self.bucket, "RESYNC", self.pattern))
        if not info.num_pending:
            self._synced()


class KvBridge(Bridge):
    async def open(self, outbox: Outbox, op: p.KvSub) -> tuple[KvFeed, list[str]]:
        """Check the bucket exists; the feed holds nothing on NATS until it starts."""
        try:
            await self.upstream.js.stream_info(f"KV_{op.target}")
        except NotFoundError:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no bucket {op.target!r}") from None
        feed = KvFeed(self.upstream, outbox, op.target, op.pattern)
        self._track(feed)
        return feed, [op.pattern]
