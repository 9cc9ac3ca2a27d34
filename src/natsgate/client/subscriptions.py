"""Subscription objects: what each one sends, what it keeps across reconnects, and how it
hands messages to its handler.

A subscription lives from ``subscribe()`` until ``unsubscribe()``, a refusal, a revocation
by ``cap_update`` or ``close()``; across reconnects the client re-sends it (:meth:`wire`).
Handlers may be plain functions, called inline by the socket reader (the cheap path), or
coroutine functions, run one message at a time, in order, by one task per subscription
(never one task per message), so that a handler may itself await client operations.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..subjects import match
from .wire import JsMessage, KvEvent, KvWire, Message, NatsgateError, Op, PresenceEvent

log = logging.getLogger("natsgate.client")

M = TypeVar("M", Message, KvEvent, JsMessage, PresenceEvent)
Handler = Callable[[M], object]  # may return an awaitable (async def)
SubKey = tuple[str, str, str]  # (op, target, pattern or filter)


class SubState(enum.Enum):
    SUBSCRIBING = "subscribing"  # sent (or waiting to be sent), no reply yet
    ACTIVE = "active"  # the gateway confirmed it on this connection
    ENDED = "ended"  # unsubscribed, refused, or the client closed
    REVOKED = "revoked"  # a cap_update took the permission away


class Owner(Protocol):
    """What a subscription needs from its client (``Client`` is one): a task that ends
    with the client, and a way to end the subscription at the gateway."""

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...

    async def unsubscribe(self, sub: Subscription[Any]) -> None: ...


def matches(pattern: str, subject: str) -> bool:
    """NATS matching; ``>`` alone matches everything (KV keys and stream subjects are not
    subject to the protocol's ``_INBOX``/``$`` rule, which is about grants)."""
    return pattern == ">" or match(pattern, subject)


class Subscription(Generic[M]):
    """Common state of every kind; the client calls the underscore methods."""

    op: ClassVar[str]
    unop: ClassVar[str]

    def __init__(self, client: Owner, target: str, pattern: str, handler: Handler[M]) -> None:
        self.target = target
        self.pattern = pattern
        self.state = SubState.SUBSCRIBING
        self.reply_data: dict[str, Any] = {}  # the last reply to the (re)subscribe op
        self._client = client
        self._handler: Handler[M] = handler
        self._async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        )
        self._queue: deque[M] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._first: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target!r} {self.pattern!r} {self.state.value}>"

    @property
    def key(self) -> SubKey:
        return (self.op, self.target, self.pattern)

    @property
    def ended(self) -> bool:
        return self.state is SubState.ENDED or self.state is SubState.REVOKED

    async def unsubscribe(self) -> None:
        """End it here at once (the handler is not called again) and at the gateway."""
        await self._client.unsubscribe(self)

    # ---------------------------------------------------------------- wire

    def wire(self) -> Op:
        """The op that (re)creates this subscription (the client adds an inbox)."""
        return Op(self.op, target=self.target)

    def unwire(self) -> Op:
        return Op(self.unop, target=self.target)

    # ---------------------------------------------------------------- client side

    def _pause(self) -> None:
        """The socket dropped: not active until re-sent and confirmed."""
        if not self.ended:
            self.state = SubState.SUBSCRIBING

    def _resending(self) -> None:
        """The (re)subscribe op is about to be sent on a new connection."""
        self._pause()

    def _on_reply(self, data: dict[str, Any]) -> None:
        if self.ended:
            return
        self.state = SubState.ACTIVE
        self.reply_data = data
        if not self._first.done():
            self._first.set_result(data)

    def _end(self, state: SubState, err: NatsgateError | None) -> None:
        """Over for good: no handler call after this, queued messages are dropped."""
        if self.ended:
            return
        self.state = state
        if not self._first.done():
            self._first.set_exception(err or NatsgateError("closed", "subscription ended"))
            self._first.exception()  # retrieved: a refusal nobody awaits is no warning
        self._queue.clear()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
        if self._wake is not None:
            self._wake.set()

    # ---------------------------------------------------------------- delivery

    def _deliver(self, item: M) -> None:
        """The hot path: a sync handler runs now, an async one is queued for the worker."""
        if self._async:
            self._queue.append(item)
            if self._worker is None:
                self._start_worker()
            elif self._wake is not None:
                self._wake.set()
            return
        try:
            result = self._handler(item)
        except Exception:
            log.exception("handler of %r failed", self)
            return
        if result is not None and inspect.isawaitable(result):
            # a plain function handing back an awaitable (a lambda around an async def):
            # from now on run this subscription's handler on its worker
            self._async = True
            self._start_worker(result)

    def _start_worker(self, first: Any = None) -> None:
        self._wake = asyncio.Event()
        self._worker = self._client.spawn(self._work(first), f"handler:{self.target}")

    async def _work(self, first: Any) -> None:
        if first is not None:
            await self._settle(first)
        queue, wake, handler = self._queue, self._wake, self._handler
        assert wake is not None
        while not self.ended:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            try:
                result = handler(queue.popleft())
            except Exception:
                log.exception("handler of %r failed", self)
                continue
            await self._settle(result)

    async def _settle(self, result: object) -> None:
        if not inspect.isawaitable(result):
            return
        try:
            await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler of %r failed", self)


class CoreSubscription(Subscription[Message]):
    """A core subject (wildcards allowed); ``pattern`` is the subject as subscribed."""

    op = "sub"
    unop = "unsub"

    def __init__(self, client: Owner, subject: str, handler: Handler[Message]) -> None:
        super().__init__(client, subject, subject, handler)

    @property
    def key(self) -> SubKey:
        return ("sub", self.target, "")


class KvSubscription(Subscription[KvEvent]):
    """A KV watch of the keys matching ``pattern`` in bucket ``target``.

    Each key's revisions only go up: a revision at or below the last one handed over for
    that key is dropped (a defence; frames from an older gateway, which do not name the
    watch, reach every watch whose pattern matches).  Before a re-subscribe
    after a reconnect the handler gets ``RESYNC``, then the fresh snapshot, then
    ``SYNCED``: keys deleted while the client was away are simply not in it.
    """

    op = "kv_sub"
    unop = "kv_unsub"

    def __init__(
        self, client: Owner, bucket: str, pattern: str | None, handler: Handler[KvEvent]
    ) -> None:
        super().__init__(client, bucket, pattern or ">", handler)
        self._revisions: dict[str, int] = {}
        self._dirty = False  # handed something over since the last RESYNC
        self._resyncing = False  # a client-made RESYNC waits for its SYNCED (the reply)

    def wire(self) -> Op:
        return Op(self.op, target=self.target, data={"pattern": self.pattern})

    def unwire(self) -> Op:
        return Op(self.unop, target=self.target, data={"pattern": self.pattern})

    def _resending(self) -> None:
        super()._resending()
        if self._dirty and not self.ended:
            self._marker("RESYNC")
            self._resyncing = True

    def _on_reply(self, data: dict[str, Any]) -> None:
        super()._on_reply(data)
        if self._resyncing and not self.ended:
            self._resyncing = False
            self._marker("SYNCED")

    def _marker(self, op: str) -> None:
        if op == "RESYNC":
            self._revisions.clear()
            self._dirty = False
        self._deliver(KvEvent(op, pattern=self.pattern))

    def _entry(self, w: KvWire, event: KvEvent) -> None:
        seen = self._revisions.get(w.key)
        if seen is not None and w.revision <= seen:
            return
        self._revisions[w.key] = w.revision
        self._dirty = True
        self._deliver(event)


class JsSubscription(Subscription[JsMessage]):
    """Ordered delivery from stream ``target``, optionally of the subjects matching
    ``filter``.  ``last_seq`` is the highest stream sequence handed over (a sequence at
    or below it is dropped); a re-subscribe after a reconnect starts at ``last_seq + 1``
    (protocol.md §3), so nothing is skipped or repeated.  ``gap`` is true when the
    last (re)subscribe's reply said the stream no longer holds everything asked for.
    """

    op = "js_sub"
    unop = "js_unsub"

    def __init__(
        self,
        client: Owner,
        stream: str,
        handler: Handler[JsMessage],
        *,
        start_seq: int | None,
        start_time: datetime | str | None,
        batch: int | None,
        filter: str | None,
    ) -> None:
        super().__init__(client, stream, filter or ">", handler)  # no filter: every subject
        self.filter = filter
        self.start_seq = start_seq if start_seq and start_seq >= 1 else None
        if isinstance(start_time, datetime):
            if start_time.tzinfo is None:
                start_time = start_time.replace(tzinfo=UTC)
            start_time = start_time.isoformat()
        self.start_time = start_time
        self.batch = batch
        self.last_seq = self.start_seq - 1 if self.start_seq else 0
        self.gap = False
        # For "only new messages": the stream's last_seq when first subscribed, so that
        # messages stored while disconnected are not lost on resume.
        self._anchor: int | None = None

    def wire(self) -> Op:
        data: dict[str, Any] = {}
        if self.last_seq > 0 or self._anchor is not None or self.start_seq:
            data["start_seq"] = max(self.last_seq, self._anchor or 0) + 1
        elif self.start_time is not None:
            data["start_time"] = self.start_time
        if self.batch is not None:
            data["batch"] = self.batch
        if self.filter is not None:
            data["filter"] = self.filter
        return Op(self.op, target=self.target, data=data)

    def unwire(self) -> Op:
        data = {"filter": self.filter} if self.filter is not None else {}
        return Op(self.unop, target=self.target, data=data)

    def _on_reply(self, data: dict[str, Any]) -> None:
        if self.ended:
            return
        from_now = self.start_seq is None and self.start_time is None
        last = data.get("last_seq")
        if from_now and self._anchor is None and isinstance(last, int):
            self._anchor = last
        self.gap = data.get("gap") is True
        super()._on_reply(data)

    def _accept(self, seq: int) -> bool:
        if seq <= self.last_seq:
            return False
        self.last_seq = seq
        return True


class JoinOwner(Owner, Protocol):
    async def update_join(self, membership: Membership, info: Any) -> None: ...


class Membership(Subscription[PresenceEvent]):
    """This connection announced on ``target`` (``join``); sent again after every
    reconnect, with the latest info, until :meth:`leave`."""

    op = "join"
    unop = "leave"

    def __init__(self, client: JoinOwner, subject: str, info: Any) -> None:
        super().__init__(client, subject, "", lambda _: None)
        self.info = info
        self._owner = client

    def wire(self) -> Op:
        return Op(self.op, target=self.target, data=self.info)

    async def leave(self) -> None:
        await self._client.unsubscribe(self)

    async def update(self, info: Any) -> None:
        """Change the info; returns once the gateway stored it."""
        await self._owner.update_join(self, info)


class PresenceSubscription(Subscription[PresenceEvent]):
    """The members of subject ``target``: ``members`` (by connection id) is the list now;
    the handler gets each join (``snapshot`` for those there already) and leave. After a
    reconnect the list is read again and only what changed meanwhile reaches the handler
    (a leave for each member gone, a join for each new one)."""

    op = "presence_sub"
    unop = "presence_unsub"

    def __init__(self, client: Owner, subject: str, handler: Handler[PresenceEvent]) -> None:
        super().__init__(client, subject, "", handler)
        self.members: dict[str, PresenceEvent] = {}
        self._before: dict[str, PresenceEvent] | None = None  # while the list is re-read

    def _resending(self) -> None:
        super()._resending()
        if self._before is None:
            self._before = self.members
        self.members = {}

    def _on_reply(self, data: dict[str, Any]) -> None:
        super()._on_reply(data)
        before, self._before = self._before, None
        for gone in (before or {}).values():
            self._deliver(PresenceEvent("leave", gone.user, gone.conn, gone.info))

    def _take(self, ev: PresenceEvent) -> None:
        if self.ended:
            return
        ev.snapshot = self.state is SubState.SUBSCRIBING
        if ev.op == "leave":
            known = self.members.pop(ev.conn, None)
            if known is not None:
                self._deliver(ev)
            return
        known = self.members.get(ev.conn)
        if known is None and self._before is not None:
            known = self._before.pop(ev.conn, None)
        self.members[ev.conn] = ev
        if known is None or known.info != ev.info or known.user != ev.user:
            self._deliver(ev)


AnySubscription = (
    CoreSubscription | KvSubscription | JsSubscription | Membership | PresenceSubscription
)

__all__ = [
    "AnySubscription",
    "CoreSubscription",
    "Handler",
    "JsSubscription",
    "KvSubscription",
    "Membership",
    "Owner",
    "PresenceSubscription",
    "SubState",
    "Subscription",
]
