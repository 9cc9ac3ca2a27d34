"""Responsiveness under load: one more client of the target, not subscribed to anything,
that asks for an answer every ``INTERVAL_S`` while the throughput window runs and records
how long each took (``ping`` → ``pong`` with natsgate's envelope, ``PING`` → ``PONG`` in
the NATS protocol). Throughput alone says nothing of what a saturated target makes
everyone else wait: a user who just opened the page, a client's heartbeat, a ``pub``.

Runs in the orchestrator's own process (aiohttp; a few messages a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp

INTERVAL_S = 0.02  # one question at a time, 20 ms after the last answer
ANSWER_S = 30.0  # a question not answered by then ends the probe


class Probe:
    def __init__(self, url: str, headers: dict[str, str], proto: str) -> None:
        self.url = url
        self.headers = headers
        self.proto = proto
        self.rtts: list[float] = []  # seconds
        self.error: str | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def supported(proto: str) -> bool:
        return proto in ("natsgate", "nats")

    async def start(self) -> None:
        """Connect; returns once the first answer came (or the probe failed)."""
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ANSWER_S):
                await self._ready.wait()

    async def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(ANSWER_S + 5):
                    await self._task
            except TimeoutError:
                self._task.cancel()
                self.error = self.error or "did not stop"
        ms = sorted(r * 1000 for r in self.rtts)

        def pct(q: float) -> float | None:
            return round(ms[min(len(ms) - 1, int(q * len(ms)))], 3) if ms else None

        return {
            "interval_ms": INTERVAL_S * 1000,
            "answers": len(ms),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(ms[-1], 3) if ms else None,
            "error": self.error,
        }

    async def _run(self) -> None:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.ws_connect(self.url, headers=self.headers, max_msg_size=0, autoping=True) as ws,
            ):
                if self.proto == "nats":
                    await ws.receive()  # INFO
                    await ws.send_bytes(b'CONNECT {"verbose":false,"protocol":1}\r\n')
                else:
                    await ws.receive()  # cap_update
                n = 0
                while not self._stop.is_set():
                    n += 1
                    t0 = time.perf_counter()
                    await self._ask(ws, n)
                    async with asyncio.timeout(ANSWER_S):
                        while not self._answered(await ws.receive(), n):
                            pass
                    if n > 1:  # the first one includes the probe's own start
                        self.rtts.append(time.perf_counter() - t0)
                    self._ready.set()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(INTERVAL_S):
                            await self._stop.wait()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self._ready.set()

    async def _ask(self, ws: aiohttp.ClientWebSocketResponse, n: int) -> None:
        if self.proto == "nats":
            await ws.send_bytes(b"PING\r\n")
        else:
            await ws.send_str(json.dumps({"op": "ping", "inbox": f"probe{n}"}))

    def _answered(self, msg: aiohttp.WSMessage, n: int) -> bool:
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise ConnectionError(f"closed: {msg.data!r}")
        data = msg.data if isinstance(msg.data, bytes) else str(msg.data).encode()
        if self.proto == "nats":
            return b"PONG" in data
        return f'"inbox":"probe{n}"'.encode() in data
