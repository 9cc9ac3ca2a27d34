"""Presence at 1,000 members: one natsgate process, 1,000 WebSocket connections joining
one subject, and what each join and leave costs in time and in NATS operations.

    python -m bench.presence                       # 1,000 members, 100 late readers
    python -m bench.presence --members 1000 --watchers 10 --readers 100

All on 127.0.0.1, from scratch: a nats-server (JetStream, a temporary store, monitoring
on), one ``natsgate serve`` (PRESENCE_TTL 30 s, the rate limit off), and this process
holding every WebSocket (``--members`` of them, users ``p0``..``p9`` granted
``{"subjects": ["room.bench"], "presence": ["room.bench"]}``). Then:

1. ``--watchers`` of the connections ``presence_sub`` the subject (empty yet);
2. every connection sends ``join`` at once (info ``{"n": i}``); the time until the last
   reply, each join's own round trip, and until every watcher has seen every join;
3. ``--readers`` connections ``presence_sub`` afterwards: each must get exactly
   ``--members`` current members before its reply;
4. every connection sends ``leave`` at once; the same times, until every watcher has seen
   every leave;
5. ``--alone`` connections join, then leave, one at a time: each op's own round trip.

NATS operations are counted two ways during steps 2 and 4: a spy subscription on
``$KV.<bucket>.>`` (the bucket writes themselves: joins, refreshes, purges) and the
server's own ``/varz`` ``in_msgs``/``out_msgs`` (everything: publishes, their JetStream
acks, deliveries to the watchers' consumers). Results: ``bench/results/presence-<ts>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import nats

from bench.machine import machine
from bench.procs import Server, free_port, wait_for_line
from bench.settings import RESULTS, ROOT
from bench.sut import caps_bucket, http_ok, natsgate_argv
from natsgate.auth import mint_token
from natsgate.natsrunner import NatsServer

SUBJECT = "room.bench"
BUCKET = "presence"
USERS = 10


def varz(monitor: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{monitor}/varz", timeout=5) as r:
        v = json.loads(r.read())
    return int(v["in_msgs"]), int(v["out_msgs"])


class Conn:
    """One raw WebSocket: ops by inbox, presence events counted."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.joins = 0
        self.leaves = 0
        self.members_before_reply: int | None = None
        self._n = 0
        self._listing = False
        self._listed = 0
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            for line in msg.data.split("\n"):
                env = json.loads(line)
                op = env.get("op")
                if op == "msg":
                    if env["data"]["op"] == "join":
                        self.joins += 1
                        self._listed += self._listing
                    else:
                        self.leaves += 1
                    self.changed.set()
                elif op in ("reply", "error"):
                    fut = self.waiting.pop(env.get("inbox"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(env)

    async def op(self, op: str, data: Any = None) -> float:
        """Send ``op`` on the subject; its round trip in seconds (raises on an error)."""
        self._n += 1
        inbox = str(self._n)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[inbox] = fut
        env: dict[str, Any] = {"op": op, "target": SUBJECT, "inbox": inbox}
        if data is not None:
            env["data"] = data
        if op == "presence_sub":
            self._listing, self._listed = True, 0
        t0 = time.perf_counter()
        await self.ws.send_str(json.dumps(env))
        reply = await fut
        took = time.perf_counter() - t0
        if op == "presence_sub":
            self._listing = False
            self.members_before_reply = self._listed
        if reply["op"] != "reply":
            raise RuntimeError(f"{op}: {reply}")
        return took

    async def until(self, attr: str, n: int) -> None:
        while getattr(self, attr) < n:
            self.changed.clear()
            await self.changed.wait()


def ms(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "p50_ms": round(statistics.median(s) * 1000, 2),
        "p99_ms": round(s[min(len(s) - 1, round(0.99 * (len(s) - 1)))] * 1000, 2),
        "max_ms": round(s[-1] * 1000, 2),
    }


async def phase(
    conns: list[Conn],
    watchers: list[Conn],
    op: str,
    seen: str,
    monitor: str,
    spy: list[int],
) -> dict[str, Any]:
    n = len(conns)
    in0, out0 = varz(monitor)
    writes0 = spy[0]
    t0 = time.perf_counter()
    rtts = await asyncio.gather(
        *(c.op(op, {"n": i} if op == "join" else None) for i, c in enumerate(conns))
    )
    replied = time.perf_counter() - t0
    await asyncio.gather(*(w.until(seen, n) for w in watchers))
    everywhere = time.perf_counter() - t0
    await asyncio.sleep(0.5)  # let the counters settle (JetStream acks, deliveries)
    in1, out1 = varz(monitor)
    return {
        "ops": n,
        "all_replied_s": round(replied, 3),
        "seen_by_every_watcher_s": round(everywhere, 3),
        "per_op_ms": round(replied / n * 1000, 3),
        "round_trip": ms(list(rtts)),
        "bucket_writes": spy[0] - writes0,
        "bucket_writes_per_op": round((spy[0] - writes0) / n, 2),
        "nats_in_msgs_per_op": round((in1 - in0) / n, 2),
        "nats_out_msgs_per_op": round((out1 - out0) / n, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-presence-"))
    server = NatsServer(store_dir=work / "js").start()
    secret = secrets.token_hex(32)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.update(
        JWT_SECRET=secret,
        NATS_URL=server.url,
        RATE_PER_S="0",
        PRESENCE_BUCKET=BUCKET,
        PRESENCE_TTL="30",
        MAX_CONNS_PER_USER=str(args.members),
    )
    argv = [*natsgate_argv(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    gw = Server("natsgate", [*argv, "--log", "warn"], work / "natsgate.log", env, work)
    conns: list[Conn] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))  # no pool cap
    nc = await nats.connect(server.url)
    try:
        await wait_for_line(gw, r"natsgate listening on", 1, 30)
        await http_ok(f"http://127.0.0.1:{port}/healthz", 30)
        kv = await caps_bucket(nc)
        caps = json.dumps({"subjects": [SUBJECT], "presence": [SUBJECT]}).encode()
        for u in range(USERS):
            await kv.put(f"p{u}", caps)
        writes = [0]

        async def count(_msg: Any) -> None:
            writes[0] += 1

        await nc.subscribe(f"$KV.{BUCKET}.>", cb=count)
        tokens = [mint_token(f"p{u}", secret, 3600) for u in range(USERS)]
        url = f"ws://127.0.0.1:{port}/ws"
        sem = asyncio.Semaphore(50)

        async def dial(i: int) -> Conn:
            async with sem:
                ws = await session.ws_connect(
                    url, headers={"Authorization": f"Bearer {tokens[i % USERS]}"}, max_msg_size=0
                )
            return Conn(ws)

        conns = list(await asyncio.gather(*(dial(i) for i in range(args.members))))
        watchers = conns[: args.watchers]
        for w in watchers:
            await w.op("presence_sub")
        joined = await phase(conns, watchers, "join", "joins", server.monitor_url, writes)
        readers = conns[args.watchers : args.watchers + args.readers]
        t0 = time.perf_counter()
        await asyncio.gather(*(r.op("presence_sub") for r in readers))
        read_s = time.perf_counter() - t0
        listed = [r.members_before_reply for r in readers]
        assert all(n == args.members for n in listed), sorted(set(map(str, listed)))
        left = await phase(conns, watchers, "leave", "leaves", server.monitor_url, writes)
        # one at a time: a join's and a leave's own round trip on a quiet gateway
        alone = conns[: args.alone]
        one_join = [await c.op("join", {"n": i}) for i, c in enumerate(alone)]
        one_leave = [await c.op("leave") for c in alone]
        return {
            "machine": machine(),
            "members": args.members,
            "watchers_during_joins": args.watchers,
            "join": joined,
            "late_readers": {
                "readers": args.readers,
                "each_listed": args.members,
                "all_listed_s": round(read_s, 3),
            },
            "leave": left,
            "one_at_a_time": {
                "ops": len(alone),
                "presence_subs_open": args.watchers + args.readers,
                "join_round_trip": ms(one_join),
                "leave_round_trip": ms(one_leave),
            },
            "refresh_writes_per_s": round(args.members / 10, 1),  # every PRESENCE_TTL / 3
        }
    finally:
        for c in conns:
            c.task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(c.ws.close() for c in conns), return_exceptions=True)
        await session.close()
        await nc.close()
        gw.stop()
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--watchers", type=int, default=10)
    ap.add_argument("--readers", type=int, default=100)
    ap.add_argument("--alone", type=int, default=100, help="joins/leaves one at a time")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"presence-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
