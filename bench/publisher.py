"""The publisher: one nats-py connection to the nats-server behind every target.

Run by ``bench.run`` as ``python -m bench.publisher NATS_URL COUNTERS_FILE SLOTS``; JSON
commands on standard input, answers on standard output (one a line). Exits when standard
input closes, on ``{"cmd": "exit"}``, or after ``MAX_LIFETIME_S``.

``throughput``: publish as fast as the system under test delivers, for a fixed window.
"As fast as possible" is bounded by an in-flight window: only so many deliveries may be
published and not yet counted by the load generators (their counters live in a shared
file, read here without any message round trip). Without the bound a target that falls
behind queues without limit (in nats-py's pending buffers, in every connection's send
queue) until it closes clients as slow or the machine runs out of memory; with it the
number measured is the rate the target sustains with no loss. The bound is half a second
of deliveries at the best rate seen so far (at least 4 messages per subscriber, at most
``budget`` deliveries, i.e. 2,000 messages per subscriber or 200,000 deliveries): enough
queued that batching is never starved, little enough that the drain after the window is
short.

``latency``: publish at a fixed rate, each message to the next subject in turn; the
payload carries its sequence number and ``time.time_ns()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import nats

from bench.common import Counters, commands, install_uvloop, payload, say

MAX_LIFETIME_S = 1800
IN_FLIGHT_S = 0.5  # the in-flight bound, in seconds of deliveries at the best rate seen


async def throughput(nc: Any, counters: Counters, cmd: dict[str, Any], seq0: int) -> dict[str, Any]:
    subjects: list[str] = cmd["subjects"]
    ns = len(subjects)
    fanout = int(cmd["fanout"])  # deliveries per published message
    max_budget = max(fanout, int(cmd["budget"]))
    min_budget = min(max_budget, fanout * 4)
    window = float(cmd["window_s"])
    base = counters.total()
    pub = nc.publish
    mono = time.monotonic
    now_ns = time.time_ns
    published = 0
    waits = 0
    start = mono()
    end = start + window
    seq = seq0
    # the in-flight bound follows the best delivery rate seen over 100 ms: half a second
    # of deliveries, within [4 messages per subscriber, budget]
    budget = min_budget
    best = 0.0
    tick, tick_count = start, 0
    while True:
        now = mono()
        if now >= end:
            break
        delivered = counters.total() - base
        if now - tick >= 0.1:
            best = max(best, (delivered - tick_count) / (now - tick))
            tick, tick_count = now, delivered
            budget = int(min(max_budget, max(min_budget, best * IN_FLIGHT_S)))
        room = (budget - (published * fanout - delivered)) // fanout
        if room <= 0:
            waits += 1
            await asyncio.sleep(0.002)  # uvloop's timers have 1 ms resolution
            continue
        t = now_ns()
        for _ in range(min(room, 500)):
            await pub(subjects[seq % ns], payload(seq, t))
            seq += 1
            published += 1
        await asyncio.sleep(0)
    await nc.flush(timeout=10)
    elapsed = mono() - start
    return {
        "ev": "done",
        "published": published,
        "elapsed": elapsed,
        "waits": waits,
        "seq": seq,
        "best_rate": round(best, 1),
        "last_budget": budget,
    }


async def latency(nc: Any, cmd: dict[str, Any], seq0: int) -> dict[str, Any]:
    subjects: list[str] = cmd["subjects"]
    ns = len(subjects)
    rate = float(cmd["rate"])
    count = max(1, int(rate * float(cmd["duration_s"])))
    start = time.monotonic()
    seq = seq0
    late = 0
    for i in range(count):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.05:
            late += 1
        await nc.publish(subjects[seq % ns], payload(seq, time.time_ns()))
        await nc.flush(timeout=5)
        seq += 1
    return {
        "ev": "done",
        "published": count,
        "elapsed": time.monotonic() - start,
        "late": late,
        "seq": seq,
        "first_seq": seq0,
    }


async def main(url: str, counters_path: str, slots: int) -> None:
    counters = Counters(Path(counters_path), slots)
    nc = await nats.connect(
        url, name="bench-publisher", max_reconnect_attempts=0, pending_size=8 * 1024 * 1024
    )
    seq = 1
    try:
        async for cmd in commands(MAX_LIFETIME_S):
            match cmd["cmd"]:
                case "throughput":
                    res = await throughput(nc, counters, cmd, seq)
                case "latency":
                    res = await latency(nc, cmd, seq)
                case _:
                    break
            seq = res["seq"]
            say(res)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
        counters.close()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
