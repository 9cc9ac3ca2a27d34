"""Each connection's life (protocol.md §6): backpressure, limits, pings, expiry, release."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
from nats.aio.client import Client as NATS

from .conftest import SECRET, connect, unique
from .helpers import Closed, Gw, T, WsClient, eventually, nats_subscriptions


async def test_slow_client_is_cut_off_and_others_get_everything(make_gw: Any, nc: NATS) -> None:
    gw: Gw = await make_gw(outbox_bytes=128 * 1024, backpressure_ms=250)
    p = unique("s")
    await gw.set_caps("slow", {"subjects": [f"{p}.>"]})
    await gw.set_caps("fast", {"subjects": [f"{p}.>"]})
    slow = await connect(gw, "slow")
    fast = await connect(gw, "fast")
    await slow.ok("sub", f"{p}.feed")
    await fast.ok("sub", f"{p}.feed")
    # From here the slow client reads nothing; the fast one reads everything. Publish until
    # the gateway gives up on the slow one (kernel buffers decide how much that takes).
    payload = json.dumps({"pad": "x" * 1000}).encode()
    received = 0

    async def read_fast() -> None:
        nonlocal received
        while True:
            env = await fast.recv(timeout=3 * T)
            if env["op"] == "msg":
                received += 1

    reader = asyncio.create_task(read_fast())
    sent = 0
    while gw.gateway.hub.receivers(f"{p}.feed") == 2 and sent < 200_000:
        for _ in range(200):
            await nc.publish(f"{p}.feed", payload)
        sent += 200
        await nc.flush()
    assert gw.gateway.hub.receivers(f"{p}.feed") == 1, "the slow client was never cut off"
    for _ in range(200):  # and the fast one keeps getting messages afterwards
        await nc.publish(f"{p}.feed", payload)
    sent += 200
    await nc.flush()
    await eventually(lambda: received == sent, timeout=6 * T)
    reader.cancel()
    # the slow one got an error envelope saying why, then close code 1013
    envs: list[dict[str, Any]] = []
    try:
        while True:
            envs.append(await slow.recv(timeout=3 * T))
    except Closed:
        pass
    assert slow.close_code == 1013
    assert envs[-1]["op"] == "error" and envs[-1]["data"]["code"] == "backpressure"
    assert gw.gateway.metrics.backpressure_closes._value.get() == 1
    await slow.close()
    await fast.close()


async def test_oversized_frame_closes_1009(make_gw: Any) -> None:
    gw: Gw = await make_gw(max_frame_bytes=4096)
    c = await connect(gw, unique("u"))
    await c.send_raw(json.dumps({"op": "pub", "target": "a", "data": "x" * 5000}))
    assert await c.wait_closed() == 1009
    await c.close()


async def test_subscription_limit(make_gw: Any) -> None:
    gw: Gw = await make_gw(max_subs=3)
    user = unique("u")
    await gw.set_caps(user, {"subjects": ["lim.>"]})
    c = await connect(gw, user)
    for i in range(3):
        await c.ok("sub", f"lim.{i}")
    e = await c.error("sub", "lim.4")
    assert e["code"] == "limit"
    await c.ok("unsub", "lim.0")
    await c.ok("sub", "lim.4")  # room again, connection still open
    await c.close()


async def test_silent_client_is_closed_after_ping_timeout(make_gw: Any) -> None:
    gw: Gw = await make_gw(ping_interval_s=0.2, ping_timeout_s=0.3)
    c = await connect(gw, unique("u"), autoping=False)  # never answers pings
    started = time.monotonic()
    assert await c.wait_closed(timeout=3 * T) == 4002
    assert time.monotonic() - started >= 0.4
    await c.close()


async def test_answering_client_stays(make_gw: Any) -> None:
    gw: Gw = await make_gw(ping_interval_s=0.1, ping_timeout_s=0.2)
    c = await connect(gw, unique("u"))  # aiohttp answers pings itself
    assert not [e for e in await c.quiet(1.0) if e["op"] == "error"]
    assert not c.ws.closed
    await c.close()


async def test_expired_token_closes_with_4001(gw: Gw) -> None:
    tok = jwt.encode({"sub": "exp", "exp": int(time.time()) + 1}, SECRET, "HS256")
    c = await WsClient.open(gw.ws_url, token=tok)
    envs = []
    try:
        while True:
            envs.append(await c.recv(timeout=3 * T))
    except Exception:
        pass
    assert c.close_code == 4001
    assert envs[-1]["op"] == "error" and envs[-1]["data"]["code"] == "unauthorized"
    await c.close()


async def test_token_refresh_keeps_connection_and_subscriptions(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, {"subjects": [f"{p}.>"]})
    short = jwt.encode({"sub": user, "exp": int(time.time()) + 2}, SECRET, "HS256")
    c = await WsClient.open(gw.ws_url, token=short)
    await c.recv()
    await c.ok("sub", f"{p}.a")
    fresh = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, "HS256")
    r = await c.ok("auth", data={"token": fresh})
    assert r["data"]["ok"] is True
    # another user's token is refused, the connection stays
    other = jwt.encode({"sub": "someone-else", "exp": int(time.time()) + 3600}, SECRET, "HS256")
    assert (await c.error("auth", data={"token": other}))["code"] == "forbidden"
    assert (await c.error("auth", data={"token": "garbage"}))["code"] == "unauthorized"
    await asyncio.sleep(2.5)  # past the first token's exp: the refresh must have held
    await nc.publish(f"{p}.a", b"still")
    assert (await c.expect(op="msg"))["data"] == "still"
    await c.close()


async def test_pending_command_limit(make_gw: Any, nc: NATS) -> None:
    gw: Gw = await make_gw(max_pending_cmds=2)
    user, svc = unique("u"), unique("svc")
    await gw.set_caps(user, {"commands": [f"{svc}.>"]})

    async def silent(m: Any) -> None:
        return None

    await nc.subscribe(f"{svc}.slow", cb=silent)
    await nc.flush()
    c = await connect(gw, user)
    a = await c.send("cmd", f"{svc}.slow", 1, timeout_ms=2000)
    b = await c.send("cmd", f"{svc}.slow", 2, timeout_ms=2000)
    assert (await c.error("cmd", f"{svc}.slow", 3))["code"] == "limit"
    assert (await c.reply(a))["data"]["code"] == "timeout"
    assert (await c.reply(b))["data"]["code"] == "timeout"
    await c.close()


async def test_frame_rate_limit(make_gw: Any) -> None:
    gw: Gw = await make_gw(rate_per_s=5, rate_burst=5)
    c = await connect(gw, unique("u"))
    await c.send_raw("\n".join(json.dumps({"op": "ping", "inbox": str(i)}) for i in range(20)))
    envs = [await c.recv() for _ in range(20)]
    assert sum(e["op"] == "pong" for e in envs) <= 6
    limited = [e for e in envs if e["op"] == "error"]
    assert limited and all(e["data"]["code"] == "limit" for e in limited)
    await c.close()


async def test_disconnect_releases_every_subscription(gw: Gw, nats_server: Any) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, {"subjects": [f"{p}.>"]})
    c = await connect(gw, user)
    for i in range(5):
        await c.ok("sub", f"{p}.{i}")
    assert all(nats_subscriptions(nats_server.monitor_url, f"{p}.{i}") == 1 for i in range(5))
    await c.ws.close()
    await c.session.close()
    await eventually(lambda: not gw.gateway.sessions)
    await eventually(
        lambda: all(nats_subscriptions(nats_server.monitor_url, f"{p}.{i}") == 0 for i in range(5))
    )
    assert len(gw.gateway.hub) == 0
