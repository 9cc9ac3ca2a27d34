"""A reader's pump ends when its task is cancelled, whatever it was waiting on.

Regression: on Python 3.11 ``asyncio.wait_for`` returns the inner result, and drops the
cancellation, when the awaited event is set in the same loop turn as the cancel. The
pump then went on forever and the gateway's stop() never returned (seen once in CI, at
the teardown of a test that wrote 2,000 capability documents: each write wakes the
capabilities reader)."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from natsgate.bridges.reader import Reader, Start

from .conftest import T, unique
from .helpers import Gw


async def test_a_pump_cancelled_as_it_is_woken_ends(gw: Gw, nc: NATS) -> None:
    stream = unique("S")
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    for _ in range(20):
        reader = Reader(gw.gateway.upstream, stream, None, Start(), 16, lambda m, d: None, None)
        await reader.open()
        task = asyncio.create_task(reader.pump())
        await asyncio.sleep(0.05)  # waiting for a delivery or a wake
        reader.wake()  # the event is set ...
        task.cancel()  # ... and the task cancelled in the same turn
        done, _ = await asyncio.wait({task}, timeout=T)
        assert done, "the pump kept running after its task was cancelled"
        assert task.cancelled()
        await reader.stop()
