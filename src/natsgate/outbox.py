"""One connection's bounded send queue and the slow-client verdict (protocol.md §6).

Producers (fan-out, bridges, replies) call :meth:`Outbox.push`, which never blocks: fan-out
must not wait on one slow socket (centrifuge ``writer.go``).  A push marks the outbox ready;
the :class:`Flusher` then has every ready outbox write itself to its :class:`Sink` (the
connection's socket) once, at the end of the current event loop step: everything queued
goes out as one newline-joined frame.  So an idle socket gets
each message at once, a busy one gets batches, and no task per connection is woken per
message (nor kept in memory).  Fan-out (:meth:`Outbox.push_held`) may be held back while
the NATS reader is behind (``directsub.py``), so a backlog leaves in large batches; any
other push (an answer, a feed's message) is written at the end of the step it came in,
with whatever its connection had queued before it.  When the queue has stayed over its
byte bound for ``backpressure_s`` (a frame "could not be queued within 250 ms"), or grows
past a hard bound, the owner is told the client is slow.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .metrics import Traffic

NEWLINE = b"\n"
log = logging.getLogger("natsgate.outbox")


class Sink(Protocol):
    """Where an outbox's frames go: one connection's socket."""

    def write(self, frame: bytes) -> bool: ...  # one text frame; False: congested
    async def drained(self) -> None: ...  # until the socket takes writes again


class OutboxClosed(Exception):
    """The connection is ending; nothing more will be sent."""


class Outbox:
    __slots__ = (
        "_closed",
        "_congested",
        "_drain",
        "_flusher",
        "_frames",
        "_hard_limit",
        "_loop",
        "_on_gone",
        "_on_slow",
        "_ready",
        "_sink",
        "_timer",
        "_urgent",
        "_watermarks",
        "backpressure_s",
        "bytes_out",
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
        sink: Sink | None = None,
        flusher: Flusher | None = None,
        on_gone: Callable[[], None] | None = None,
        max_batch: int = 65_536,
    ) -> None:
        """``sink`` and ``flusher``: where and when to write (without them, a bare queue
        that is read with :meth:`next_batch`); ``on_gone``: the socket failed."""
        self.limit = limit  # bytes queued before the backpressure clock starts
        self._hard_limit = limit * 4  # past this, the verdict is immediate
        self.backpressure_s = backpressure_s
        self.max_batch = max_batch  # bytes per outgoing frame (a larger single envelope goes alone)
        self._on_slow = on_slow
        self._sink = sink
        self._flusher = flusher
        self._on_gone = on_gone
        self._ready = False  # handed to the flusher for this round
        self._urgent = False  # holds something that must not wait for the fan-out
        self._congested = False  # the socket's buffer is full: wait for it to drain
        self._drain: asyncio.Task[None] | None = None
        self._frames: deque[bytes] = deque()
        self.size = 0
        self.pushed = 0  # frames ever pushed
        self.written = 0  # frames ever handed to the socket
        self.bytes_out = 0  # bytes ever handed to the socket (the admin API shows them)
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._watermarks: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, frame: bytes) -> None:
        """Queue one encoded envelope (no newline inside), to be written at the end of
        this event loop step. Never blocks."""
        if self._closed:
            return
        self._urgent = True
        flusher = self._flusher
        if flusher is not None:
            if not self._ready:
                self._ready = True
                flusher.add(self)
            else:
                flusher.wake()
        self._queue(frame)

    def push_held(self, frame: bytes) -> None:
        """Queue fan-out from NATS: it may wait while the NATS reader is behind (the
        flusher's ``max_hold_s`` at most). Never blocks."""
        if self._closed:
            return
        if not self._ready and self._flusher is not None:
            self._ready = True
            self._flusher.add(self)
        self._queue(frame)

    def _queue(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.size += len(frame)
        self.pushed += 1
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

    def write_out(self, traffic: Traffic) -> None:
        """The flusher's call: write everything queued to the sink, in frames of up to
        ``max_batch`` bytes. When the socket is congested (its write returns False), the
        rest waits until it drains, and counts towards backpressure meanwhile."""
        self._ready = self._urgent = False
        sink = self._sink
        if self._congested or self._closed or sink is None:
            return
        try:
            while (batch := self.next_batch()) is not None:
                frame, count = batch
                traffic.frames += 1
                traffic.bytes += len(frame)
                self.bytes_out += len(frame)
                traffic.envelopes += count
                ok = sink.write(frame)
                self.sent(count)
                if not ok:
                    self._congested = True
                    self._drain = self._loop.create_task(self._drained(sink, traffic))
                    return
        except (ConnectionError, RuntimeError, OSError) as exc:
            log.debug("send failed: %r", exc)
            self._gone()

    async def _drained(self, sink: Sink, traffic: Traffic) -> None:
        try:
            await sink.drained()
        except (ConnectionError, RuntimeError, OSError):
            self._gone()
            return
        finally:
            self._drain = None
        self._congested = False
        self.write_out(traffic)

    def _gone(self) -> None:
        if self._on_gone is not None and not self._closed:
            self._on_gone()

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
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, fut in self._watermarks:
            if not fut.done():
                fut.set_exception(OutboxClosed())
                fut.exception()  # mark retrieved: nobody may be waiting any more
        self._watermarks = []


class Flusher:
    """Writes every outbox that became ready during this event loop step, once, right
    after it: fan-out of one NATS message to N sockets is N pushes and one pass of writes,
    and a burst of messages handled in one step leaves as one frame per socket.

    While ``behind()`` (the NATS reader has more waiting), outboxes that hold only fan-out
    are kept for a later pass, at most ``max_hold_s`` after the last full one: the
    reader then gives the loop a turn every slice without writing every socket each
    time, and answers to clients are not kept behind the backlog."""

    __slots__ = ("_behind", "_last_full", "_loop", "_ready", "_scheduled", "max_hold_s", "traffic")

    def __init__(
        self,
        traffic: Traffic,
        behind: Callable[[], bool] = lambda: False,
        max_hold_s: float = 0.05,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready: list[Outbox] = []
        self._scheduled = False
        self._behind = behind
        self._last_full = self._loop.time()
        self.max_hold_s = max_hold_s
        self.traffic = traffic  # what was written, counted as plain ints

    def add(self, item: Outbox) -> None:
        self._ready.append(item)
        self.wake()

    def wake(self) -> None:
        """Run at the end of this step (an outbox already waiting may have got
        something that must not wait)."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        ready, self._ready = self._ready, []
        traffic = self.traffic
        if self._behind() and self._loop.time() - self._last_full < self.max_hold_s:
            held = []
            for item in ready:
                if item._urgent:
                    self._write(item, traffic)
                else:
                    held.append(item)
            if held:
                self._ready = held + self._ready
                self.wake()  # runs again after the reader's next slice
            return
        self._last_full = self._loop.time()
        for item in ready:  # answers first: a pass over 1,000 sockets takes milliseconds
            if item._urgent:
                self._write(item, traffic)
        for item in ready:
            if item._ready:  # not written above (nor twice in the list)
                self._write(item, traffic)

    @staticmethod
    def _write(item: Outbox, traffic: Traffic) -> None:
        try:
            item.write_out(traffic)
        except Exception:  # one broken connection must not stall the others
            log.exception("flushing %r failed", item)
