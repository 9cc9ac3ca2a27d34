"""Coalesced reads (natsgate.coalesce): a caller always gets a read that started after
its call, at most one read runs at a time, and everyone waiting shares the next one."""

from __future__ import annotations

import asyncio

import pytest

from natsgate.coalesce import Coalesced, CoalescedBy


class Source:
    """A value that writes change; each read takes a gate to finish."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.running = 0
        self.most = 0
        self.gate = asyncio.Event()

    async def read(self) -> int:
        self.reads += 1
        self.running += 1
        self.most = max(self.most, self.running)
        seen = self.value  # what the read sees is what was written when it started
        await self.gate.wait()
        self.running -= 1
        return seen


async def test_a_caller_never_gets_a_read_older_than_its_call() -> None:
    src = Source()
    c = Coalesced(src.read, "t")
    first = c.get()
    await asyncio.sleep(0)  # the first read is out, having seen value 0
    src.value = 1  # a write acknowledged now...
    later = [c.get() for _ in range(50)]  # ...must be seen by every later caller
    assert all(f is later[0] for f in later)
    src.gate.set()
    assert await first == 0
    assert [await f for f in later] == [1] * 50
    assert src.reads == 2 and src.most == 1
    assert c.idle


async def test_a_failed_read_fails_its_callers_only() -> None:
    calls = 0

    async def read() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("away")
        return 7

    c = Coalesced(read, "t")
    with pytest.raises(OSError):
        await c.get()
    assert await c.get() == 7


async def test_close_cancels_the_waiting() -> None:
    src = Source()
    c = Coalesced(src.read, "t")
    out = c.get()
    await asyncio.sleep(0)
    waiting = c.get()
    await c.close()
    assert out.cancelled() and waiting.cancelled()


async def test_by_key_shares_per_key_and_forgets_idle_keys() -> None:
    a, b = Source(), Source()
    by = CoalescedBy[str, int]("t")
    a.gate.set()
    b.gate.set()
    a.value, b.value = 1, 2
    got = await asyncio.gather(*(by.get("a", a.read) for _ in range(10)), by.get("b", b.read))
    assert got == [1] * 10 + [2]
    assert a.reads == 1 and b.reads == 1
    assert by._reads == {}
