"""The gateway's NATS goes away and comes back (issue: surviving a NATS outage).

A real nats-server is stopped and started again on the same port and storage directory.
Browsers keep their sockets; core subscriptions deliver again, KV watches re-snapshot
(framed by RESYNC/SYNCED) and JetStream subscriptions continue with no gap or duplicate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest_asyncio
from nats.js.api import StreamConfig

from natsgate.config import Config
from natsgate.natsrunner import NatsServer

from .conftest import connect, unique
from .helpers import Gw, T, eventually, start_gateway


@pytest_asyncio.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path / "js").start()
    yield server
    server.stop()


async def health(gw: Gw) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/healthz") as r:
        return r.status


async def test_everything_survives_a_nats_restart(own_nats: NatsServer, config: Config) -> None:
    cfg = dataclasses.replace(config, nats_urls=(own_nats.url,))
    gw = await start_gateway(cfg)
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    stream, subj, bucket = unique("S"), unique("o"), unique("kv")
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subj}.js.*"]))
    kv = await js.create_key_value(bucket=bucket)
    await kv.put("a", b"1")
    await kv.put("gone", b"x")
    for i in range(5):
        await js.publish(f"{subj}.js.x", str(i).encode())

    async def echo(m: Any) -> None:
        await m.respond(m.data)

    await nc.subscribe(f"{subj}.svc", cb=echo)
    user = unique("u")
    await gw.set_caps(
        user,
        {
            "subjects": [f"{subj}.core.>"],
            "commands": [f"{subj}.svc"],
            "buckets": {bucket: [">"]},
            "streams": {stream: [f"{subj}.js.>"]},
        },
    )
    c = await connect(gw, user)
    await c.ok("sub", f"{subj}.core.>")
    await c.ok("kv_sub", bucket)
    await c.ok("js_sub", stream, {"start_seq": 1})
    seqs = [
        (await c.expect(lambda e: e["target"] == f"js:{stream}"))["data"]["seq"] for _ in range(5)
    ]
    assert seqs == [1, 2, 3, 4, 5]
    c.inbox.clear()
    assert (await c.ok("cmd", f"{subj}.svc", "hi"))["data"] == "hi"

    own_nats.stop()  # NATS goes away
    await eventually(lambda: not gw.gateway.upstream.connected)
    assert await health(gw) == 503
    inbox = await c.send("ping")  # the browser's socket is still there
    assert (await c.expect(op="pong"))["inbox"] == inbox
    started = time.monotonic()
    e = await c.error("cmd", f"{subj}.svc", "hi", timeout_ms=5000)
    assert e["code"] == "no_responders" and "unreachable" in e["message"]
    assert time.monotonic() - started < 1.0  # at once, not after its timeout

    own_nats.start()  # same port, same storage
    await eventually(lambda: gw.gateway.upstream.connected, timeout=3 * T)
    await eventually(lambda: health(gw), timeout=T)
    assert await health(gw) == 200
    await eventually(lambda: nc.is_connected, timeout=3 * T)

    # KV: a fresh snapshot, framed, after which a key deleted meanwhile is absent
    await kv.delete("gone")
    resync = await c.expect(
        lambda e: e["target"] == f"kv:{bucket}" and e["data"]["op"] == "RESYNC", timeout=3 * T
    )
    assert resync["data"]["pattern"] == ">"
    snap = []
    while True:
        env = await c.expect(lambda e: e["target"] == f"kv:{bucket}", timeout=2 * T)
        if env["data"]["op"] == "SYNCED":
            break
        snap.append(env["data"])
    assert {d["key"] for d in snap if d["op"] == "PUT"} <= {"a", "gone"}
    assert all(d.get("snapshot") for d in snap)

    # JetStream continues from seq 6, no gap, no duplicate
    for i in range(5, 25):
        await js.publish(f"{subj}.js.x", str(i).encode())
    got = [
        (await c.expect(lambda e: e["target"] == f"js:{stream}", timeout=2 * T))["data"]["seq"]
        for _ in range(20)
    ]
    assert got == list(range(6, 26))

    # core delivers again
    async def delivered() -> bool:
        await nc.publish(f"{subj}.core.x", b'"back"')
        try:
            await c.expect(lambda e: e["target"] == f"{subj}.core.x", timeout=0.3)
        except TimeoutError:
            return False
        return True

    await eventually(delivered, timeout=2 * T)
    assert (await c.ok("cmd", f"{subj}.svc", "again"))["data"] == "again"
    assert not [e for e in await c.quiet(0.3) if e["op"] == "msg" and e["target"] == f"js:{stream}"]
    await c.close()
    await nc.close()
    await gw.stop()


async def test_gateway_starts_before_nats_and_recovers(tmp_path: Path, config: Config) -> None:
    """NATS unreachable at start-up: /healthz 503, retries, service resumes by itself."""
    server = NatsServer(store_dir=tmp_path / "js")
    # reserve a port by starting once, then stop so the gateway starts against nothing
    server.start()
    url = server.url
    server.stop()
    cfg = dataclasses.replace(config, nats_urls=(url,))
    from natsgate.edge import Edge
    from natsgate.gateway import Gateway
    from natsgate.server import make_app

    gateway = Gateway(cfg)
    await gateway.start()
    edge = Edge(gateway, make_app(gateway))
    gw = Gw(gateway, edge, await edge.start("127.0.0.1", 0))
    assert await health(gw) == 503
    async with aiohttp.ClientSession() as s, s.get(gw.ws_url.replace("ws://", "http://")) as r:
        assert r.status in (401, 503)
    await asyncio.sleep(0.5)  # let it fail a few times
    server.start()
    await eventually(lambda: gateway.ready.is_set(), timeout=3 * T)
    assert await health(gw) == 200
    c = await connect(gw, unique("u"))
    await c.close()
    await gw.stop()
    server.stop()
