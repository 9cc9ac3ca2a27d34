"""Presence when a gateway dies (docs/reliability.md, "A gateway dies"), with real
``natsgate serve`` processes: gateway A, holding joined members, is killed with SIGKILL
(no leave is ever written). Nobody refreshes their keys any more, NATS expires them
within ``PRESENCE_TTL`` and every watch, on gateway B, sees them leave. Their clients
reconnect (to a gateway started again on A's address, as a process manager would) and
join again; B sees them come back. A raw client that moves to B by itself joins there.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from natsgate import client as ng
from natsgate.auth import mint_token
from natsgate.natsrunner import NatsServer

from ..conftest import SECRET, unique
from ..helpers import T, WsClient, eventually
from .conftest import Collector, GatewayProc, record

pytestmark = pytest.mark.slow

TTL = 3  # PRESENCE_TTL, seconds: short, so the test is


@pytest_asyncio.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path / "js").start()
    yield server
    server.stop()


async def test_members_of_a_killed_gateway_leave_within_the_ttl_and_come_back(
    own_nats: NatsServer, gateway_procs: Any
) -> None:
    n = 5
    room = unique("room.")
    env = {
        "AUTH_BUCKET": unique("caps_"),
        "PRESENCE_BUCKET": unique("pres_"),
        "PRESENCE_TTL": str(TTL),
    }
    a: GatewayProc = gateway_procs(own_nats.url, env=env)
    b: GatewayProc = gateway_procs(own_nats.url, env=env)
    await a.astart()
    await b.astart()
    await a.wait_healthy()
    await b.wait_healthy()
    nc = await nats.connect(own_nats.url)
    kv = await nc.jetstream().key_value(env["AUTH_BUCKET"])
    users = [f"m{i}" for i in range(n)] + ["watcher", "mover"]
    for u in users:
        await kv.put(u, json.dumps({"subjects": [room], "presence": [room]}).encode())

    # the watcher, on B
    raw = await WsClient.open(b.ws_url, token=mint_token("watcher", SECRET, 3600))
    watcher = Collector(raw, "watcher")
    await watcher.ok("presence_sub", room)

    def events(op: str) -> dict[str, float]:
        """user -> when the watcher saw its latest ``op``."""
        out: dict[str, float] = {}
        for env_, at in zip(watcher.envs, watcher.arrived, strict=False):
            if env_.get("op") == "msg" and env_["data"]["op"] == op:
                out[env_["data"]["user"]] = at
        return out

    # members on A: Python clients, which reconnect and join again by themselves
    clients = []
    for u in users[:n]:
        c = await ng.connect(
            a.ws_url, token=mint_token(u, SECRET, 3600), min_backoff=0.1, max_backoff=1.0
        )
        await c.join(room, {"name": u})
        clients.append(c)
    mover = await WsClient.open(a.ws_url, token=mint_token("mover", SECRET, 3600))
    await mover.recv()  # cap_update
    await mover.send("join", room, {"name": "mover"})
    await eventually(lambda: len(events("join")) == n + 1)
    joined_conns = {
        e["data"]["user"]: e["data"]["conn"] for e in watcher.envs if e.get("op") == "msg"
    }

    a.kill()  # SIGKILL: no leave is written, refreshes stop
    killed = time.monotonic()
    await eventually(lambda: len(events("leave")) == n + 1, timeout=TTL + T)
    left = {u: at - killed for u, at in events("leave").items()}
    assert max(left.values()) <= TTL + 1, left  # the promise: within PRESENCE_TTL (+1 s)

    # the mover goes to B on its own; the others wait for A to come back at its address
    moved = await connect_raw(b, "mover")
    await moved.send("join", room, {"name": "mover"})
    restarted = time.monotonic()
    await a.astart()
    await eventually(
        lambda: all(u in rejoined(watcher, killed) for u in [*users[:n], "mover"]), 6 * T
    )
    back = {u: at - restarted for u, at in rejoined(watcher, killed).items()}
    new_conns = {
        e["data"]["user"]: e["data"]["conn"]
        for e in watcher.envs
        if e.get("op") == "msg" and e["data"]["op"] == "join"
    }
    assert all(new_conns[u] != joined_conns[u] for u in users[:n])  # new connections
    record(
        "test_members_of_a_killed_gateway_leave_within_the_ttl_and_come_back",
        members=n + 1,
        presence_ttl_s=TTL,
        fault="SIGKILL of the members' gateway",
        leave_seen_first_s=round(min(left.values()), 2),
        leave_seen_last_s=round(max(left.values()), 2),
        rejoined_after_restart_last_s=round(max(back.values()), 2),
    )
    print(f"\nleaves seen {min(left.values()):.2f}-{max(left.values()):.2f} s after the kill")
    # the watcher first, while nothing is sent to it (a cancel that races a frame's
    # arrival is lost in the helper's asyncio.wait_for on Python 3.11)
    await watcher.stop()
    for c in clients:
        await c.close()
    await moved.close()
    await mover.close()
    await nc.close()


async def connect_raw(gw: GatewayProc, user: str) -> WsClient:
    c = await WsClient.open(gw.ws_url, token=mint_token(user, SECRET, 3600))
    first = await c.recv()
    assert first["op"] == "cap_update"
    return c


def rejoined(watcher: Collector, after: float) -> dict[str, float]:
    """user -> when the watcher saw it join after ``after``."""
    return {
        e["data"]["user"]: at
        for e, at in zip(watcher.envs, watcher.arrived, strict=False)
        if at > after and e.get("op") == "msg" and e["data"]["op"] == "join"
    }
