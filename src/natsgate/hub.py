"""Core-subject fan-out: one NATS subscription per distinct pattern per process, shared by
every connection subscribed to it (reference counted, released with the last).

Each NATS message is encoded once into a ``msg`` frame and the same bytes are pushed to
every receiver's outbox; pushing never blocks, so one slow socket cannot slow the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from nats.aio.subscription import Subscription

from .directsub import Client
from .frames import encode_msg
from .upstream import flush

log = logging.getLogger("natsgate.hub")

_PRIVATE_FIRST = ("_INBOX.", "$")


class Receiver(Protocol):
    def push_held(self, frame: bytes) -> None: ...


class _Entry:
    __slots__ = ("pattern", "private_filter", "ready", "receivers", "skip", "sub")

    def __init__(self, pattern: str, skip: tuple[str, ...] = ()) -> None:
        self.pattern = pattern
        # protocol.md §4: a pattern whose first token is a wildcard never delivers _INBOX./$
        # subjects (NATS itself would).
        self.private_filter = pattern.split(".", 1)[0] in ("*", ">")
        self.skip = skip  # reserved prefixes it reaches only by a wildcard (the audit trail)
        self.receivers: dict[Receiver, None] = {}  # insertion-ordered set
        self.sub: Subscription | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_msg(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        """Called from the NATS client's reader (a direct subscription): never awaits."""
        if self.private_filter and subject.startswith(_PRIVATE_FIRST):
            return
        if self.skip and subject.startswith(self.skip):
            return
        frame = encode_msg(subject, data, sub=self.pattern, headers=headers)
        for receiver in self.receivers:
            receiver.push_held(frame)


class Hub:
    def __init__(
        self,
        nc: Callable[[], Client],
        *,
        flush_timeout: float = 5.0,
        skip: Callable[[str], tuple[str, ...]] = lambda pattern: (),
    ) -> None:
        self._nc = nc  # a getter: the upstream may replace its client before first connect
        self._skip = skip  # a pattern's subject prefixes never delivered (Reserved.unnamed)
        self._entries: dict[str, _Entry] = {}
        self._flush_timeout = flush_timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def receivers(self, pattern: str) -> int:
        entry = self._entries.get(pattern)
        return len(entry.receivers) if entry else 0

    async def add(self, pattern: str, receiver: Receiver) -> None:
        """Deliver ``pattern`` to ``receiver``; returns once the subscription is live on the
        NATS server. Raises if NATS does not confirm it in time (the receiver is not added)."""
        entry = self._entries.get(pattern)
        if entry is None:
            entry = self._entries[pattern] = _Entry(pattern, self._skip(pattern))
            entry.receivers[receiver] = None
            try:
                nc = self._nc()
                entry.sub = await nc.subscribe_direct(pattern, entry.on_msg)
                await flush(nc, self._flush_timeout)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    entry.ready.cancel()
                else:
                    entry.ready.set_exception(exc)
                    entry.ready.exception()  # retrieved: later adders re-raise it themselves
                self._drop(entry)
                raise
            entry.ready.set_result(None)
            if self._entries.get(pattern) is not entry:
                self._drop(entry)  # every receiver left while NATS confirmed it: no leak
            return
        entry.receivers[receiver] = None
        try:
            await asyncio.shield(entry.ready)
        except BaseException:
            entry.receivers.pop(receiver, None)
            raise

    def remove(self, pattern: str, receiver: Receiver) -> None:
        """Stop delivering at once; the NATS subscription goes with its last receiver."""
        entry = self._entries.get(pattern)
        if entry is None:
            return
        entry.receivers.pop(receiver, None)
        if not entry.receivers:
            self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        if self._entries.get(entry.pattern) is entry:
            del self._entries[entry.pattern]
        sub = entry.sub
        entry.sub = None
        if sub is not None:
            task = asyncio.create_task(self._unsubscribe(self._nc(), sub))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _unsubscribe(nc: Client, sub: Subscription) -> None:
        try:
            await nc.unsubscribe_direct(sub)
        except Exception as exc:  # connection closed or reconnecting: nothing left to free
            log.debug("unsubscribe %s: %r", sub.subject, exc)

    async def close(self) -> None:
        for entry in list(self._entries.values()):
            self._drop(entry)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
