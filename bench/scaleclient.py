"""The scale run's client process: up to ~19,000 natsgate WebSocket clients (picows +
uvloop), each bound to a loopback source address of its own choosing so that many
processes together get past one address's ephemeral port range.

Run by ``bench.scale`` as ``python -m bench.scaleclient``; JSON commands on standard
input, answers on standard output (one a line), as ``bench.loadgen`` does. Not an
extension of ``bench.loadgen``: that one counts deliveries per process; this one keeps,
per client, which broadcast sequence numbers it got (loss is per connection), and a
histogram of every single delivery's latency, publish to that client.

Each client subscribes to the shared broadcast subject and, with ``own``, to a subject of
its own (``bench.user.<n>``: a per-user notification channel, idle until the end).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import sys
import time
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.common import SEQ_PATTERN, commands, install_uvloop, raise_nofile, say
from bench.settings import BUCKET_US

MAX_LIFETIME_S = 1800
CONNECT_TIMEOUT_S = 30.0
SEQ_RE = re.compile(SEQ_PATTERN)
TEXT, CLOSE = WSMsgType.TEXT, WSMsgType.CLOSE


class Gen:
    """What every client of this process adds to."""

    def __init__(self) -> None:
        self.clients: list[Conn] = []
        self.transports: list[WSTransport] = []
        # seq -> [clients that got it, last ns, publish ns, first ns]
        self.per_seq: dict[int, list[int]] = {}
        self.hist: collections.Counter[int] = collections.Counter()  # BUCKET_US -> deliveries
        self.dups = 0
        self.own_got = 0
        self.closing = False
        self.disconnects = 0
        self.close_codes: collections.Counter[str] = collections.Counter()


class Conn(WSListener):
    """One client: live once every ``sub`` it sent has its ``reply``."""

    __slots__ = ("gen", "got", "last_seq", "live", "own", "ready", "replies", "subs")

    def __init__(self, gen: Gen, subs: list[bytes], ready: asyncio.Future[None]) -> None:
        self.gen = gen
        self.subs = subs
        self.ready = ready
        self.replies = 0
        self.live = False
        self.got = 0  # broadcast sequence numbers received, each once
        self.last_seq = 0
        self.own = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        for s in self.subs:
            transport.send(TEXT, s)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before subscribed"))
        elif not self.gen.closing:
            self.gen.disconnects += 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is CLOSE:
            with contextlib.suppress(Exception):
                self.gen.close_codes[str(frame.get_close_code())] += 1
            return
        data = frame.get_payload_as_bytes()
        if self.live:
            now = time.time_ns()
            gen = self.gen
            for m in SEQ_RE.finditer(data):
                seq = int(m.group(1))
                if seq <= self.last_seq:
                    gen.dups += 1
                    continue
                self.last_seq = seq
                self.got += 1
                t = int(m.group(2))
                gen.hist[(now - t) // (1000 * BUCKET_US)] += 1
                e = gen.per_seq.get(seq)
                if e is None:
                    gen.per_seq[seq] = [1, now, t, now]
                else:
                    e[0] += 1
                    e[1] = now
            if b'"own":' in data:
                self.own += 1
                gen.own_got += 1
            return
        if b'"op":"error"' in data and not self.ready.done():
            self.ready.set_exception(RuntimeError(data[:160].decode(errors="replace")))
            return
        self.replies += data.count(b'"op":"reply"')
        if self.replies >= len(self.subs):
            self.live = True
            if not self.ready.done():
                self.ready.set_result(None)


async def connect_all(gen: Gen, cmd: dict[str, Any]) -> dict[str, Any]:
    """Open clients ``first`` .. ``first + count - 1`` at ``rate`` a second at most, with at
    most ``concurrency`` set-ups in flight, source addresses taken in turn from ``addrs``."""
    url: str = cmd["url"]
    headers: dict[str, str] = cmd["headers"]
    addrs: list[str] = cmd["addrs"]
    first, count = int(cmd["first"]), int(cmd["count"])
    rate = float(cmd["rate"])
    sem = asyncio.Semaphore(int(cmd["concurrency"]))
    bcast = b'{"op":"sub","target":"%s","inbox":"b"}' % cmd["subject"].encode()
    own_prefix: str | None = cmd.get("own_prefix")
    loop = asyncio.get_running_loop()
    errors: collections.Counter[str] = collections.Counter()
    ok = 0

    async def one(n: int) -> None:
        nonlocal ok
        subs = [bcast]
        if own_prefix:
            subs.append(b'{"op":"sub","target":"%s%d","inbox":"o"}' % (own_prefix.encode(), n))
        ready: asyncio.Future[None] = loop.create_future()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):  # TCP connect, upgrade, replies
                transport, listener = await ws_connect(
                    lambda: Conn(gen, subs, ready),
                    url,
                    extra_headers=headers,
                    websocket_handshake_timeout=CONNECT_TIMEOUT_S,
                    enable_auto_pong=True,
                    local_addr=(addrs[n % len(addrs)], 0),
                )
                gen.transports.append(transport)
                await ready
            gen.clients.append(listener)  # type: ignore[arg-type]
            ok += 1
        except Exception as exc:  # a failure to count, not to crash on
            errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
            if not ready.done():
                ready.cancel()
            elif not ready.cancelled():
                ready.exception()
        finally:
            sem.release()

    max_failed = int(cmd.get("max_failed") or 0)  # stop opening more after so many
    skipped = 0
    t0 = time.time()
    start = time.monotonic()
    tasks = []
    for i in range(count):
        if max_failed and sum(errors.values()) >= max_failed:
            skipped = count - i
            print(
                f"{time.strftime('%X')} {max_failed} failed: {skipped} not tried", file=sys.stderr
            )
            break
        due = start + i / rate
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        await sem.acquire()
        tasks.append(asyncio.ensure_future(one(first + i)))
        if i and i % 2000 == 0:
            print(f"{time.strftime('%X')} {i} started, {ok} subscribed", file=sys.stderr)
    await asyncio.gather(*tasks)
    return {
        "ev": "connected",
        "ok": ok,
        "failed": sum(errors.values()),
        "errors": dict(errors.most_common(5)),
        "skipped": skipped,
        "t0": t0,
        "t1": time.time(),
    }


def collect(gen: Gen, cmd: dict[str, Any]) -> dict[str, Any]:
    """Loss per client against the broadcasts ``1 .. last`` (every client was subscribed
    before the first one)."""
    last = int(cmd["last"])
    short = [last - c.got for c in gen.clients if c.got != last]
    return {
        "ev": "stats",
        "clients": len(gen.clients),
        "open": sum(1 for t in gen.transports if not t.is_disconnected),
        "delivered": sum(c.got for c in gen.clients),
        "clients_short": len(short),
        "missing": sum(short),
        "dups": gen.dups,
        "own_got": gen.own_got,
        "own_clients": sum(1 for c in gen.clients if c.own),
        "per_seq": {str(k): v for k, v in gen.per_seq.items()},
        "hist": {str(k): v for k, v in gen.hist.items()},
        "disconnects": gen.disconnects,
        "close_codes": dict(gen.close_codes),
    }


async def close_all(gen: Gen) -> None:
    gen.closing = True
    for t in gen.transports:
        with contextlib.suppress(Exception):
            t.disconnect(graceful=False)
    waits = [t.wait_disconnected() for t in gen.transports]
    if waits:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*waits, return_exceptions=True)
    gen.transports.clear()
    gen.clients.clear()


async def main() -> None:
    nofile = raise_nofile()
    gen = Gen()
    try:
        async for cmd in commands(MAX_LIFETIME_S):
            match cmd["cmd"]:
                case "limits":
                    say({"ev": "limits", "nofile": nofile})
                case "connect":
                    say(await connect_all(gen, cmd))
                case "collect":
                    say(collect(gen, cmd))
                case "close":
                    await close_all(gen)
                    say({"ev": "closed"})
    finally:
        await close_all(gen)


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
