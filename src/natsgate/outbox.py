"""One connection's bounded send queue and the slow-client verdict (contract section 5).

Producers (fan-out, bridges, replies) call :meth:`Outbox.push`, which never blocks: fan-out
must not wait on one slow socket (centrifuge ``writer.go``).  A push marks the outbox ready;
the :class:`Flusher` then writes every ready outbox once, at the end of the current event
loop step: everything queued goes out as one newline-joined frame.  So an idle socket gets
each message at once, a busy one gets batches, and no task per connection is woken per
message (nor kept in memory).  When the queue has stayed over its byte bound for
``backpressure_s`` (a frame "could not be queued within 250 ms"), or grows past a hard
bound, the owner is told the client is slow.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

NEWLINE = b"\n"
log = logging.getLogger("natsgate.outbox")


class OutboxClosed(Exception):
    """The connection is ending; nothing more will be sent."""


class Outbox:
    __slots__ = (
        "_closed",
        "_frames",
        "_hard_limit",
        "_loop",
        "_on_ready",
        "_on_slow",
        "_ready",
        "_timer",
        "_watermarks",
        "backpressure_s",
        "limit",
        "max_batch",
        "pushed",
        "size",
        "written",
    )

    def __init__(
        self,
        limit: int,
        backpressure_s: float,
        on_slow: Callable[[], None],
        *,
        on_ready: Callable[[], None] | None = None,
        max_batch: int = 65_536,
    ) -> None:
        self.limit = limit  # bytes queued before the backpressure clock starts
        self._hard_limit = limit * 4  # past this, the verdict is immediate
        self.backpressure_s = backpressure_s
        self.max_batch = max_batch  # bytes per outgoing frame (a larger single envelope goes alone)
        self._on_slow = on_slow
        self._on_ready = on_ready  # told once per flush round that something is queued
        self._ready = False
        self._frames: deque[bytes] = deque()
        self.size = 0
        self.pushed = 0  # frames ever pushed
        self.written = 0  # frames ever handed to the socket
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._watermarks: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, frame: bytes) -> None:
        """Queue one encoded envelope (no newline inside). Never blocks."""
        if self._closed:
            return
        self._frames.append(frame)
        self.size += len(frame)
        self.pushed += 1
        if not self._ready and self._on_ready is not None:
            self._ready = True
            self._on_ready()
        if self.size > self.limit:
            if self.size > self._hard_limit:
                self._slow()
            elif self._timer is None:
                self._timer = self._loop.call_later(self.backpressure_s, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.size > self.limit:
            self._slow()

    def _slow(self) -> None:
        if not self._closed:
            self.close()
            self._on_slow()

    def flush(self, write: Callable[[bytes, int], bool]) -> bool:
        """Write everything queued, in frames of up to ``max_batch`` bytes. ``write``
        returns False when the socket is congested: then stop and return False, the rest
        waits for the socket to drain (and counts towards backpressure)."""
        self._ready = False
        while (batch := self.next_batch()) is not None:
            ok = write(*batch)
            self.sent(batch[1])
            if not ok:
                return False
        return True

    def next_batch(self) -> tuple[bytes, int] | None:
        """Up to ``max_batch`` bytes of queued envelopes as one newline-joined frame, and how
        many envelopes it holds; None when nothing is queued."""
        frames = self._frames
        if not frames:
            return None
        if self.size < self.max_batch:  # all of it fits: one join, no pop per envelope
            nbytes, count = self.size, len(frames)
            out = frames.popleft() if count == 1 else NEWLINE.join(frames)
            frames.clear()
        else:
            first = frames.popleft()
            batch = [first]
            nbytes = len(first)
            while frames and nbytes + len(frames[0]) < self.max_batch:
                f = frames.popleft()
                batch.append(f)
                nbytes += len(f)
            out, count = NEWLINE.join(batch), len(batch)
        self.size -= nbytes
        if self._timer is not None and self.size <= self.limit:
            self._timer.cancel()
            self._timer = None
        return out, count

    def sent(self, count: int) -> None:
        """The writer handed ``count`` frames to the socket; wake who waits for that."""
        self.written += count
        if self._watermarks:
            keep = []
            for mark, fut in self._watermarks:
                if mark <= self.written:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((mark, fut))
            self._watermarks = keep

    async def written_up_to(self, mark: int) -> None:
        """Wait until the frame numbered ``mark`` (a past ``pushed`` value) is written.

        JetStream delivery uses this to keep at most one batch in flight to a client.
        """
        if self.written >= mark:
            return
        if self._closed:
            raise OutboxClosed
        fut: asyncio.Future[None] = self._loop.create_future()
        self._watermarks.append((mark, fut))
        await fut

    def close(self) -> None:
        """Drop what is queued and wake every waiter."""
        if self._closed:
            return
        self._closed = True
        self._frames.clear()
        self.size = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, fut in self._watermarks:
            if not fut.done():
                fut.set_exception(OutboxClosed())
                fut.exception()  # mark retrieved: nobody may be waiting any more
        self._watermarks = []


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    """Writes every outbox that became ready during this event loop step, once, right
    after it: fan-out of one NATS message to N sockets is N pushes and one pass of writes,
    and a burst of messages handled in one step leaves as one frame per socket."""

    __slots__ = ("_loop", "_ready", "_scheduled")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready: list[Flushable] = []
        self._scheduled = False

    def add(self, item: Flushable) -> None:
        self._ready.append(item)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        ready, self._ready = self._ready, []
        for item in ready:
            try:
                item.flush()
            except Exception:  # one broken connection must not stall the others
                log.exception("flushing %r failed", item)
