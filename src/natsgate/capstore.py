"""Live capabilities: the ``auth_users`` bucket, watched for every connected user.

One ordered reader per process follows every write to the bucket as JetStream stores it
(value and revision together), and applies it to the connected user it names.  A user's
document is read once with a KV ``get`` when the first connection of that user arrives;
from then on only a newer revision replaces it, whichever of the two paths brings it.

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

from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from .bridges.kv import kv_op
from .bridges.reader import Delivery, Reader, Start
from .capabilities import NONE, Capabilities
from .upstream import Upstream

log = logging.getLogger("natsgate.caps")


class CapListener(Protocol):
    def caps_changed(self, caps: Capabilities) -> None: ...


class _User:
    __slots__ = ("caps", "listeners", "loaded", "revision")

    def __init__(self) -> None:
        self.caps: Capabilities = NONE
        self.revision = 0  # of the document in ``caps``; only a higher one replaces it
        self.listeners: dict[CapListener, None] = {}
        self.loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()


async def ensure_bucket(upstream: Upstream, bucket: str) -> KeyValue:
    """The bucket, created when missing (contract §4: the gateway creates both auth buckets)."""
    js = upstream.js
    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        log.info("creating KV bucket %s", bucket)
        return await js.create_key_value(bucket=bucket, history=1)


async def _nothing_to_wait_for() -> None:
    return None


class CapStore:
    def __init__(self, upstream: Upstream, bucket: str) -> None:
        self.upstream = upstream
        self.bucket = bucket
        self._prefix = f"$KV.{bucket}."
        self._users: dict[str, _User] = {}
        self._kv: KeyValue | None = None
        self._reader: Reader | None = None
        self._task: asyncio.Task[None] | None = None
        self._loads: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._reader is not None:
            return
        self._kv = await ensure_bucket(self.upstream, self.bucket)
        reader = Reader(
            self.upstream,
            f"KV_{self.bucket}",
            self._prefix + ">",
            Start(),  # writes from now on; documents before it are read with get()
            256,
            self._on_write,
            _nothing_to_wait_for,
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
        if u is None:
            return
        caps = Capabilities.parse(msg.data) if kv_op(msg) == "PUT" else NONE
        self._apply(u, caps, d.stream_seq)

    def _apply(self, u: _User, caps: Capabilities, revision: int) -> None:
        if revision <= u.revision:
            return
        u.caps, u.revision = caps, revision
        if u.loaded.done():
            for listener in list(u.listeners):
                listener.caps_changed(caps)

    async def join(self, user: str, listener: CapListener) -> Capabilities:
        """The user's capabilities now; ``listener`` hears of every change until it leaves."""
        u = self._users.get(user)
        if u is None:
            u = self._users[user] = _User()
            task = asyncio.create_task(self._load(user, u))
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)
        u.listeners[listener] = None
        try:
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
        """The stored capabilities of any user, connected or not (``/auth/me``)."""
        u = self._users.get(user)
        if u is not None and u.loaded.done() and not u.loaded.exception():
            return u.caps
        caps, _ = await self._get(user)
        return caps

    async def _get(self, user: str) -> tuple[Capabilities, int]:
        """(caps, revision); a missing or deleted key is (nothing, 0): default deny."""
        if self._kv is None:
            self._kv = await ensure_bucket(self.upstream, self.bucket)
        try:
            entry = await self._kv.get(user)
        except KeyNotFoundError:
            return NONE, 0
        return Capabilities.parse(entry.value), entry.revision or 0

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._loads) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._reader is not None:
            await self._reader.stop()
