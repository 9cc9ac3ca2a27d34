"""Live capabilities: the ``auth_users`` bucket, watched for every connected user.

One core subscription per process on ``$KV.<bucket>.>`` (the subject every KV write of that
bucket is published on) tells which key changed; the changed key is then read back with a
KV ``get`` and applied only if its revision is newer.  This costs the NATS server one
subscription per gateway, not one watcher per connection, and the events cannot reorder
state: they only say "look again".  After a NATS reconnect every cached user is read again,
since changes may have been missed while away.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from .capabilities import NONE, Capabilities
from .upstream import Upstream

log = logging.getLogger("natsgate.caps")


class CapListener(Protocol):
    def caps_changed(self, caps: Capabilities) -> None: ...


class _User:
    __slots__ = ("caps", "dirty", "listeners", "loaded", "refreshing", "revision")

    def __init__(self) -> None:
        self.caps: Capabilities = NONE
        self.revision = 0
        self.listeners: dict[CapListener, None] = {}
        self.loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.refreshing = False
        self.dirty = False


async def ensure_bucket(upstream: Upstream, bucket: str) -> KeyValue:
    """The bucket, created when missing (contract §4: the gateway creates both auth buckets)."""
    js = upstream.js
    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        log.info("creating KV bucket %s", bucket)
        return await js.create_key_value(bucket=bucket, history=1)


class CapStore:
    def __init__(self, upstream: Upstream, bucket: str) -> None:
        self.upstream = upstream
        self.bucket = bucket
        self._prefix = f"$KV.{bucket}."
        self._users: dict[str, _User] = {}
        self._kv: KeyValue | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._kv = await ensure_bucket(self.upstream, self.bucket)
        await self.upstream.nc.subscribe(self._prefix + ">", cb=self._on_change)
        self.upstream.on_reconnect(self._refresh_all)

    async def join(self, user: str, listener: CapListener) -> Capabilities:
        """The user's capabilities now; ``listener`` hears of every change until it leaves."""
        u = self._users.get(user)
        if u is None:
            u = self._users[user] = _User()
            u.listeners[listener] = None
            self._refresh(user, u)
        else:
            u.listeners[listener] = None
        try:
            await asyncio.shield(u.loaded)
        except BaseException:
            self.leave(user, listener)
            raise
        return u.caps

    def leave(self, user: str, listener: CapListener) -> None:
        u = self._users.get(user)
        if u is None:
            return
        u.listeners.pop(listener, None)
        if not u.listeners:
            del self._users[user]

    def current(self, user: str) -> Capabilities:
        u = self._users.get(user)
        return u.caps if u else NONE

    async def _on_change(self, msg: Msg) -> None:
        user = msg.subject[len(self._prefix) :]
        u = self._users.get(user)
        if u is not None:
            self._refresh(user, u)

    async def _refresh_all(self) -> None:
        for user, u in list(self._users.items()):
            self._refresh(user, u)

    def _refresh(self, user: str, u: _User) -> None:
        if u.refreshing:
            u.dirty = True
            return
        u.refreshing = True
        task = asyncio.create_task(self._read(user, u))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, user: str, u: _User) -> None:
        try:
            while True:
                u.dirty = False
                try:
                    caps, revision = await self._get(user)
                except Exception as exc:
                    log.warning("cannot read capabilities of %s: %r", user, exc)
                    if not u.loaded.done():
                        u.loaded.set_exception(exc)
                        u.loaded.exception()
                        self._users.pop(user, None)
                    return
                if revision != u.revision or not u.loaded.done():
                    changed = u.loaded.done()
                    u.caps, u.revision = caps, revision
                    if not u.loaded.done():
                        u.loaded.set_result(None)
                    if changed:
                        for listener in list(u.listeners):
                            listener.caps_changed(caps)
                if not u.dirty:
                    return
        finally:
            u.refreshing = False

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
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
