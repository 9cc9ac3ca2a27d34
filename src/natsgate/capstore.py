"""Live capabilities: the ``auth_users`` bucket, watched for every connected user.

One ordered reader per process follows every write to the bucket as JetStream stores it
(value and revision together), and applies it to the connected user it names.  A user's
document is read once with a KV ``get`` when the first connection of that user arrives;
from then on only a newer revision replaces it, whichever of the two paths brings it.

Read your writes: a document written (and acknowledged) before a connection arrives is in
that connection's first ``cap_update``.  The reader follows the stream a little behind the
writers (a burst of thousands of writes takes it a while), so a join that finds its user
already loaded first asks the stream for its last sequence and waits until the reader has
passed it.  One such request serves every join that asks while the previous one is out.
The ``get`` of a user's first join goes to the stream leader, never a direct get: with
``allow_direct`` (set by ``nats kv add``) any replica may answer, possibly one that has not
stored the latest write yet, and a write the reader brought before the user joined would
then be lost until the next one.

Why not a core subscription on ``$KV.<bucket>.>`` plus a ``get``: a core subscriber can
see the write before JetStream has stored it, so the ``get`` may return the old value and a
revocation would be missed.  Why not a watcher per connection: that is a consumer on the
NATS server for every browser.  After a NATS outage the reader resumes after the last
revision it applied, so no change made meanwhile is lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import msgspec
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyValueLimitMarkerTTLNotSupportedError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from .bridges.reader import Delivery, Reader, Start
from .capabilities import NONE, Capabilities
from .coalesce import Coalesced
from .kvmsg import kv_op
from .upstream import Upstream

log = logging.getLogger("natsgate.caps")

TTL_MARKER_S = 60.0  # how long a TTL-expired entry's marker stays (nats-server 2.11+)

CATCH_UP_S = 5.0  # longest a join waits for the reader to reach the stream's last write


class CapListener(Protocol):
    def caps_changed(self, caps: Capabilities) -> None: ...


class _User:
    __slots__ = ("caps", "listeners", "loaded", "revision")

    def __init__(self) -> None:
        self.caps: Capabilities = NONE
        self.revision = 0  # of the document in ``caps``; only a higher one replaces it
        self.listeners: dict[CapListener, None] = {}
        self.loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()


async def ensure_bucket(
    upstream: Upstream, bucket: str, *, ttl_markers: bool = False, max_age: float | None = None
) -> KeyValue:
    """The bucket, created when missing (the gateway creates its buckets at start). With
    ``ttl_markers``, per-message TTLs are allowed where the server has them (2.11+);
    ``max_age`` (seconds) bounds every entry where it has not (presence's fallback)."""
    js = upstream.js
    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        log.info("creating KV bucket %s", bucket)
    if ttl_markers:
        try:
            config = KeyValueConfig(bucket=bucket, history=1, limit_marker_ttl=TTL_MARKER_S)
            return await js.create_key_value(config)
        except KeyValueLimitMarkerTTLNotSupportedError:  # nats-server before 2.11
            log.warning("NATS has no per-message TTLs: entries of %s stay until deleted", bucket)
    return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=max_age))


def _parse(user: str, raw: bytes | None) -> Capabilities:
    """:meth:`Capabilities.parse`, but a document that does not parse is logged (the user
    and the reason, never the document): it still grants nothing (protocol.md §4)."""
    if not raw:
        return NONE
    try:
        return msgspec.json.decode(raw, type=Capabilities).sanitized()
    except msgspec.DecodeError as exc:
        log.warning("capabilities of %s do not parse, granting nothing: %s", user, exc)
        return NONE


class CapStore:
    def __init__(self, upstream: Upstream, bucket: str) -> None:
        self.upstream = upstream
        self.bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._users: dict[str, _User] = {}
        self._kv: KeyValue | None = None
        self._reader: Reader | None = None
        self._task: asyncio.Task[None] | None = None
        self._loads: set[asyncio.Task[None]] = set()
        # read your writes: the stream's last sequence, asked once for many joins
        self._last_seq = Coalesced(self._read_last_seq, "capabilities-last-seq")
        # stream sequences joins wait for the reader to reach; each given up after a while
        self._marks: dict[int, tuple[asyncio.Future[None], asyncio.TimerHandle]] = {}

    async def start(self) -> None:
        if self._reader is not None:
            return
        await self._bucket()
        reader = Reader(
            self.upstream,
            self._stream,
            self._prefix + ">",
            Start(),  # writes from now on; documents before it are read with get()
            256,
            self._on_write,
            None,  # no client to wait for
        )
        await reader.open()
        self._reader = reader
        self._task = asyncio.create_task(reader.pump(), name="capabilities")
        self.upstream.on_reconnect(self._kick)

    async def _kick(self) -> None:
        if self._reader is not None:
            self._reader.reset()  # resume after the last write seen, now

    def _on_write(self, msg: Msg, d: Delivery) -> None:
        user = msg.subject[len(self._prefix) :]
        u = self._users.get(user)
        if u is not None:
            caps = _parse(user, msg.data) if kv_op(msg.headers) == "PUT" else NONE
            self._apply(u, caps, d.stream_seq)
        if self._marks:
            self._reached(d.stream_seq)

    def _apply(self, u: _User, caps: Capabilities, revision: int) -> None:
        if revision <= u.revision:
            return
        u.caps, u.revision = caps, revision
        if u.loaded.done():
            for listener in list(u.listeners):
                listener.caps_changed(caps)

    async def join(self, user: str, listener: CapListener) -> Capabilities:
        """The user's capabilities now, including every write acknowledged before this
        call; ``listener`` hears of every change until it leaves."""
        u = self._users.get(user)
        known = u is not None
        if u is None:
            u = self._users[user] = _User()
            task = asyncio.create_task(self._load(user, u))
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)
        u.listeners[listener] = None
        try:
            if known:  # its get may predate a write, which the reader may not have yet
                await self._catch_up()
            await asyncio.shield(u.loaded)
        except BaseException:
            self.leave(user, listener)
            raise
        return u.caps

    async def _load(self, user: str, u: _User) -> None:
        try:
            caps, revision = await self._get(user)
        except Exception as exc:
            log.warning("cannot read capabilities of %s: %r", user, exc)
            if self._users.get(user) is u:
                del self._users[user]
            u.loaded.set_exception(exc)
            u.loaded.exception()  # retrieved: each joiner re-raises it
            return
        if revision >= u.revision:  # a write the reader brought meanwhile may be newer
            u.caps, u.revision = caps, revision
        u.loaded.set_result(None)

    def leave(self, user: str, listener: CapListener) -> None:
        u = self._users.get(user)
        if u is None:
            return
        u.listeners.pop(listener, None)
        if not u.listeners:
            del self._users[user]

    async def read(self, user: str) -> Capabilities:
        """The stored capabilities of any user, connected or not (``/auth/me``), as of now."""
        caps, _ = await self._get(user)
        return caps

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            await ensure_bucket(self.upstream, self.bucket)
            # gets answered by the stream leader only (see the module docstring)
            self._kv = KeyValue(self.bucket, self._stream, self._prefix, self.upstream.js, False)
        return self._kv

    async def _get(self, user: str) -> tuple[Capabilities, int]:
        """(caps, revision); a missing or deleted key is (nothing, 0): default deny."""
        kv = await self._bucket()
        try:
            entry = await kv.get(user, validate_keys=False)  # any one-token user id
        except KeyNotFoundError:
            return NONE, 0
        return _parse(user, entry.value), entry.revision or 0

    # ------------------------------------------------------------ read your writes

    async def _catch_up(self) -> None:
        """Return once the reader has brought every write the stream held when this was
        called, or after ``CATCH_UP_S`` (then a later write still comes as a change)."""
        reader = self._reader
        if reader is None:
            return
        try:
            last = await asyncio.shield(self._last_seq.get())
        except Exception as exc:  # NATS away: the user's other connections know no more
            log.info("cannot read the last sequence of %s: %r", self._stream, exc)
            return
        if reader.last_seq >= last:
            return
        mark = self._marks.get(last)
        if mark is None:
            fut = asyncio.get_running_loop().create_future()
            timer = asyncio.get_running_loop().call_later(CATCH_UP_S, self._give_up, last)
            mark = self._marks[last] = (fut, timer)
        await asyncio.shield(mark[0])

    async def _read_last_seq(self) -> int:
        info = await self.upstream.js.stream_info(self._stream)
        return int(info.state.last_seq)

    def _reached(self, seq: int) -> None:
        for mark in [m for m in self._marks if m <= seq]:
            fut, timer = self._marks.pop(mark)
            timer.cancel()
            fut.set_result(None)

    def _give_up(self, seq: int) -> None:
        mark = self._marks.pop(seq, None)
        if mark is None:
            return
        at = self._reader.last_seq if self._reader is not None else 0
        log.warning(
            "capabilities reader still at %d of %s, not %d, after %.0f s; joining without it",
            at,
            self._stream,
            seq,
            CATCH_UP_S,
        )
        mark[0].set_result(None)

    async def close(self) -> None:
        for seq in list(self._marks):
            fut, timer = self._marks.pop(seq)
            timer.cancel()
            fut.set_result(None)
        await self._last_seq.close()
        tasks = [t for t in (self._task, *self._loads) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._reader is not None:
            await self._reader.stop()
