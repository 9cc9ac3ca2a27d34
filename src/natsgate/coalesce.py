"""One read shared by everyone who asked while the previous one was out.

A caller must see every write made before its call, so it cannot take the answer of a
read already under way; it shares the *next* read with everyone else who asks meanwhile.
So at most one read runs at a time and one more is queued, however many callers there
are: a burst of 2,000 joins asks the capabilities stream's last sequence twice, and a
client repeating ``js_durables`` costs one listing at a time (``capstore.py``,
``bridges/durable.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Coalesced(Generic[T]):
    __slots__ = ("_name", "_next", "_read", "_task")

    def __init__(self, read: Callable[[], Awaitable[T]], name: str) -> None:
        self._read = read
        self._name = name
        self._next: asyncio.Future[T] | None = None  # for callers waiting to read
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing out and nobody waiting."""
        return self._next is None and (self._task is None or self._task.done())

    def get(self) -> asyncio.Future[T]:
        """The result of a read started after this call (await it through
        ``asyncio.shield``: it is shared)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name=self._name)
        return self._next

    async def _run(self) -> None:
        while (fut := self._next) is not None:
            self._next = None  # calls from now on wait for the next read
            try:
                value = await self._read()
            except Exception as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: each waiter handles it
            else:
                fut.set_result(value)
            finally:
                if not fut.done():  # cancelled by close(): so are its waiters
                    fut.cancel()

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class CoalescedBy(Generic[K, T]):
    """A :class:`Coalesced` read per key, kept only while someone reads it."""

    __slots__ = ("_name", "_reads")

    def __init__(self, name: str) -> None:
        self._name = name
        self._reads: dict[K, Coalesced[T]] = {}

    async def get(self, key: K, read: Callable[[], Awaitable[T]]) -> T:
        """The result of a read of ``key`` started after this call (``read`` is how, when
        no read of it is waiting yet)."""
        c = self._reads.get(key)
        if c is None:
            c = self._reads[key] = Coalesced(read, f"{self._name}-{key}")
        try:
            return await asyncio.shield(c.get())
        finally:
            if c.idle and self._reads.get(key) is c:
                del self._reads[key]

    async def close(self) -> None:
        reads, self._reads = list(self._reads.values()), {}
        for c in reads:
            await c.close()
