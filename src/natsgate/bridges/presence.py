"""Presence on NATS: this gateway's members in the bucket ``PRESENCE_BUCKET``, kept alive
by one refresh pass, and the watches (``presence_sub``) of any gateway's members.

Every joined connection is one key (:mod:`..members`), written with a per-message TTL of
``PRESENCE_TTL`` (nats-server 2.11+) and written again every third of it, by one loop for
the whole gateway (not a task per member). A leave or a disconnect purges the key at
once; a gateway that dies stops refreshing, and NATS expires its keys within
``PRESENCE_TTL``, leaving a ``MaxAge`` marker that every watch sees as a leave. On a
bucket without per-message TTLs (an older server, or one made so beforehand) entries
expire by the bucket's ``max_age`` without a marker; then each watch drops the members
it has not seen written for longer than ``PRESENCE_TTL`` itself.

A refresh writes the same bytes again; a watch tells a member's join or new info from a
refresh by comparing the value, so refreshes reach no client.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from msgspec import Raw
from nats.aio.msg import Msg
from nats.js import api

from .. import frames
from ..capstore import ensure_bucket
from ..config import Config
from ..errors import ErrorCode, ProtocolError
from ..kvmsg import PURGE, PUT, kv_op
from ..members import Member, decode_member, encode_member, member_key, subject_key
from ..outbox import Outbox
from ..upstream import Upstream
from .feed import Bridge, SnapshotFeed
from .reader import Delivery, Start

log = logging.getLogger("natsgate.presence")

SNAPSHOT_BATCH = 256
SWEEP_S = 0.5  # how often stale members are looked for where NATS leaves no marker
WRITE_TIMEOUT_S = 5.0


class PresenceFeed(SnapshotFeed):
    """One ``presence_sub``: the members of one subject, then their joins and leaves."""

    def __init__(self, bridge: PresenceBridge, outbox: Outbox, subject: str) -> None:
        self.subject = subject
        self._bridge = bridge
        self._prefix = f"$KV.{bridge.bucket}."
        # key -> (stored value, member, monotonic time it was last written)
        self.members: dict[str, tuple[bytes, Member, float]] = {}
        self._before: dict[str, tuple[bytes, Member, float]] | None = None  # re-reading
        self.in_snapshot = True
        self._halted = False
        super().__init__(
            bridge.upstream,
            outbox,
            f"KV_{bridge.bucket}",
            f"{self._prefix}{subject_key(subject)}.*",
            Start(last_per_subject=True),
            SNAPSHOT_BATCH,
            self._on_message,
            resume=False,  # after an outage: read the members again, then tell the difference
        )
        self.reader.on_remade = self._on_remade

    def _emit(self, op: str, m: Member) -> None:
        self.outbox.push(frames.encode_presence(self.subject, op, m.user, m.conn, m.info))

    def _on_message(self, msg: Msg, d: Delivery) -> None:
        key = msg.subject[len(self._prefix) :]
        if kv_op(msg.headers) == PUT:
            self._put(key, msg.data, d)
        else:
            old = self.members.pop(key, None)
            if old is not None:
                self._emit("leave", old[1])
        if self.in_snapshot and d.pending == 0:
            self._synced()

    def _put(self, key: str, raw: bytes, d: Delivery) -> None:
        at = time.monotonic()
        if self.in_snapshot and not self._bridge.markers:
            age = time.time() - d.timestamp_ns / 1e9
            if age > self._bridge.ttl:
                return  # expired, with no marker to say so
            at -= max(0.0, age)
        member = decode_member(raw)
        if member is None:
            return
        old = self.members.get(key)
        if old is None and self._before is not None:
            old = self._before.pop(key, None)
        self.members[key] = (raw, member, at)
        if old is None or old[0] != raw:  # a refresh writes the same bytes: not an event
            self._emit("join", member)

    def _synced(self) -> None:
        self.in_snapshot = False
        self.reader.wake()  # start() is waiting for this, with a pull still open
        before, self._before = self._before, None
        for _, member, _ in (before or {}).values():  # gone while NATS was away
            self._emit("leave", member)

    def _on_remade(self, info: api.ConsumerInfo) -> None:
        if self._before is None:
            self._before = self.members
        else:  # remade again before the last re-read finished
            self._before.update(self.members)
        self.members = {}
        self.in_snapshot = True
        if not info.num_pending:
            self._synced()

    def expire(self, now: float, ttl: float) -> None:
        """Drop members not written for ``ttl`` (only where NATS leaves no marker)."""
        if self.in_snapshot or self._halted:
            return
        for key, (_, member, at) in list(self.members.items()):
            if now - at > ttl:
                del self.members[key]
                self._emit("leave", member)

    def halt(self) -> None:
        self._halted = True
        super().halt()


class PresenceBridge(Bridge):
    """The presence bucket: this gateway's members and the one loop that refreshes them."""

    def __init__(self, upstream: Upstream, config: Config) -> None:
        super().__init__(upstream)
        self.bucket = config.presence_bucket
        self.ttl = config.presence_ttl_s
        self.msg_ttl = False  # the bucket takes per-message TTLs (nats-server 2.11+)
        self.markers = False  # an expired entry leaves a marker that watches see
        self._members: dict[str, bytes] = {}  # key -> value: every member of this gateway
        self._joins: dict[str, dict[str, str]] = {}  # conn -> subject -> key
        self._prefix = f"$KV.{self.bucket}."
        self._ready = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Make the bucket when missing and see what it can do; start refreshing."""
        await ensure_bucket(self.upstream, self.bucket, ttl_markers=True, max_age=self.ttl)
        cfg = (await self.upstream.js.stream_info(f"KV_{self.bucket}")).config
        self.msg_ttl = bool(cfg.allow_msg_ttl)
        self.markers = self.msg_ttl and bool(cfg.subject_delete_marker_ttl)
        if not self.msg_ttl and not cfg.max_age:
            log.warning(
                "bucket %s has neither per-message TTLs nor max_age: members of a dead "
                "gateway stay in it (watches still drop them after %.0f s)",
                self.bucket,
                self.ttl,
            )
        self._ready = True
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="presence-refresh")

    @property
    def _ttl_s(self) -> int:
        return max(1, math.ceil(self.ttl))

    # ------------------------------------------------------------ members

    def joins(self, conn: str) -> dict[str, str]:
        """The subjects ``conn`` has joined (subject -> key)."""
        return self._joins.get(conn, {})

    async def join(self, user: str, conn: str, subject: str, info: Raw) -> None:
        """Announce ``conn`` on ``subject`` (again: new info); returns once NATS has it."""
        if not self._ready or not self.upstream.connected:
            raise ProtocolError(ErrorCode.INTERNAL, "NATS is unreachable; try again shortly")
        key = member_key(subject, conn)
        value = encode_member(user, conn, info)
        before = self._members.get(key)
        self._joins.setdefault(conn, {})[subject] = key
        self._members[key] = value  # first: a leave or close meanwhile purges after this
        try:
            await self.upstream.js.publish(
                self._prefix + key,
                value,
                timeout=WRITE_TIMEOUT_S,
                msg_ttl=self._ttl_s if self.msg_ttl else None,
            )
        except Exception as exc:
            log.info("join of %s on %s not stored: %r", conn, subject, exc)
            if self._members.get(key) is value:  # still this join's: undo it
                if before is not None:
                    self._members[key] = before
                else:
                    self._drop(conn, subject)
                    self._spawn(self._purge([key]))
            raise ProtocolError(ErrorCode.INTERNAL, "NATS did not store the join") from None

    async def leave(self, conn: str, subject: str) -> None:
        key = self._drop(conn, subject)
        if key is not None:
            await self._purge([key])

    def leave_all(self, conn: str, subjects: list[str] | None = None) -> None:
        """A connection closed (or lost the grant for ``subjects``): purge its members
        now, without holding the caller."""
        which = list(self.joins(conn)) if subjects is None else subjects
        keys = [k for s in which if (k := self._drop(conn, s)) is not None]
        if keys:
            self._spawn(self._purge(keys))

    def _drop(self, conn: str, subject: str) -> str | None:
        joins = self._joins.get(conn)
        key = joins.pop(subject, None) if joins else None
        if joins is not None and not joins:
            del self._joins[conn]
        if key is not None:
            self._members.pop(key, None)
        return key

    async def _purge(self, keys: list[str]) -> None:
        """Purge markers: a watch sees a leave; the marker itself expires after TTL."""
        headers = {"KV-Operation": PURGE, "Nats-Rollup": "sub"}
        ttl = self._ttl_s if self.msg_ttl else None
        for key in keys:
            try:
                await self.upstream.js.publish(
                    self._prefix + key, b"", headers=headers, timeout=WRITE_TIMEOUT_S, msg_ttl=ttl
                )
            except Exception as exc:  # NATS away: the entry expires by its TTL
                log.info("leave of %s not stored: %r", key, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro, name="presence-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # ------------------------------------------------------------ the refresh pass

    async def _loop(self) -> None:
        every = max(0.1, self.ttl / 3)
        tick = min(every, SWEEP_S)
        due = time.monotonic() + every
        while True:
            try:
                async with asyncio.timeout(tick):
                    await self._wake.wait()
                due = 0.0  # woken: NATS is back, write everything now
            except TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            if now >= due:
                due = now + every
                try:
                    await self._refresh()
                except Exception as exc:
                    log.info("presence refresh failed: %r", exc)
            if not self.markers:
                for feed in list(self._feeds):
                    if isinstance(feed, PresenceFeed):
                        feed.expire(now, self.ttl)

    async def _refresh(self) -> None:
        """Write every member of this gateway again (no ack awaited: one NATS message per
        member and pass); an entry NATS expired meanwhile (a long outage) comes back."""
        nc = self.upstream.nc
        if not nc.is_connected:
            return
        headers = {"Nats-TTL": str(self._ttl_s)} if self.msg_ttl else None
        for key, value in list(self._members.items()):
            if self._members.get(key) is value:  # not left meanwhile
                await nc.publish(self._prefix + key, value, headers=headers)

    async def _kick(self) -> None:
        await super()._kick()
        self._wake.set()

    def open(self, outbox: Outbox, subject: str) -> PresenceFeed:
        if not self._ready:
            raise ProtocolError(ErrorCode.INTERNAL, "presence is not ready; try again shortly")
        feed = PresenceFeed(self, outbox, subject)
        self._track(feed)
        return feed

    async def close(self) -> None:
        """After every session closed: their purges go out before NATS is drained."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writes:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await asyncio.gather(*list(self._writes), return_exceptions=True)
            except TimeoutError:
                pass
