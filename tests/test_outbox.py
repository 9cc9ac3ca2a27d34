"""The send queue and the slow-client verdict (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from natsgate.metrics import Traffic
from natsgate.outbox import Flusher, Outbox, OutboxClosed


async def test_batches_what_queued_meanwhile() -> None:
    ob = Outbox(1000, 0.25, lambda: None)
    ob.push(b"a")
    assert ob.next_batch() == (b"a", 1)  # idle socket: at once, alone
    for f in (b"b", b"c", b"d"):
        ob.push(f)
    assert ob.next_batch() == (b"b\nc\nd", 3)  # busy: one frame, newline-joined
    assert ob.size == 0


async def test_batch_is_bounded_in_bytes() -> None:
    ob = Outbox(10_000, 0.25, lambda: None, max_batch=10)
    for _ in range(5):
        ob.push(b"xxxx")
    batch = ob.next_batch()
    assert batch is not None
    frame, n = batch
    assert n == 2 and frame == b"xxxx\nxxxx"
    big = b"y" * 50
    ob2 = Outbox(10_000, 0.25, lambda: None, max_batch=10)
    ob2.push(big)
    assert ob2.next_batch() == (big, 1)  # a larger envelope still goes, alone


async def test_slow_after_staying_full_for_the_backpressure_time() -> None:
    slow = asyncio.Event()
    ob = Outbox(100, 0.05, slow.set)
    ob.push(b"x" * 150)  # over the bound: the clock starts
    assert not slow.is_set()
    await asyncio.wait_for(slow.wait(), 1)
    assert ob.closed and ob.size == 0


async def test_draining_in_time_is_not_slow() -> None:
    slow = asyncio.Event()
    ob = Outbox(100, 0.05, slow.set)
    ob.push(b"x" * 150)
    while ob.next_batch() is not None:  # the writer caught up before the deadline
        pass
    await asyncio.sleep(0.1)
    assert not slow.is_set() and not ob.closed


async def test_hard_bound_is_immediate() -> None:
    hits = []
    ob = Outbox(100, 10, lambda: hits.append(1))
    ob.push(b"x" * 500)
    assert hits == [1] and ob.closed
    ob.push(b"more")  # ignored once closed
    assert ob.size == 0


async def test_written_watermarks_and_close() -> None:
    ob = Outbox(1000, 1, lambda: None)
    ob.push(b"a")
    ob.push(b"b")
    mark = ob.pushed
    waiter = asyncio.create_task(ob.written_up_to(mark))
    batch = ob.next_batch()
    assert batch is not None
    _, n = batch
    await asyncio.sleep(0)
    assert not waiter.done()
    ob.sent(n)
    await asyncio.wait_for(waiter, 1)
    ob.push(b"c")
    pending = asyncio.create_task(ob.written_up_to(ob.pushed))
    await asyncio.sleep(0)
    ob.close()
    with pytest.raises(OutboxClosed):
        await pending
    assert ob.next_batch() is None  # dropped with the close


class Socket:
    """Where a flushed outbox's frames go (a list; the sink's side of a socket)."""

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log

    def write(self, frame: bytes) -> bool:
        self.log.append((self.name, frame))
        return True

    async def drained(self) -> None:
        return None


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_fan_out_waits_while_nats_is_behind_and_answers_do_not() -> None:
    behind = True
    flusher = Flusher(Traffic(), behind=lambda: behind, max_hold_s=0.2)
    written: list[tuple[str, bytes]] = []
    fan = [
        Outbox(10_000, 1, lambda: None, sink=Socket(f"fan{i}", written), flusher=flusher)
        for i in range(3)
    ]
    asker = Outbox(10_000, 1, lambda: None, sink=Socket("asker", written), flusher=flusher)
    for ob in fan:
        ob.push_held(b"m1")
    asker.push_held(b"m1")
    asker.push(b"pong")  # an answer: its connection's queue goes out at once, in order
    await turns(3)
    assert written == [("asker", b"m1\npong")]
    for ob in fan:
        ob.push_held(b"m2")  # the backlog grows: still one frame each later
    await turns(3)
    assert len(written) == 1
    behind = False  # the reader caught up: everything, answers first
    fan[2].push(b"reply")
    await turns(3)
    assert written[1:] == [
        ("fan2", b"m1\nm2\nreply"),
        ("fan0", b"m1\nm2"),
        ("fan1", b"m1\nm2"),
    ]


async def test_fan_out_is_held_for_max_hold_s_at_most() -> None:
    flusher = Flusher(Traffic(), behind=lambda: True, max_hold_s=0.05)
    written: list[tuple[str, bytes]] = []
    ob = Outbox(10_000, 1, lambda: None, sink=Socket("fan", written), flusher=flusher)
    await asyncio.sleep(0.06)  # the last full pass was longer ago than max_hold_s
    ob.push_held(b"m1")
    await turns(2)
    assert written == [("fan", b"m1")]  # a full pass, behind or not
    ob.push_held(b"m2")
    await turns(3)
    assert written == [("fan", b"m1")]  # held: a full pass was just made
    await asyncio.sleep(0.06)
    assert written == [("fan", b"m1"), ("fan", b"m2")]
