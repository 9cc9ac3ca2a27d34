"""NATS slow or unreachable when the gateway starts (issue 6, item 2d).

A real ``natsgate serve`` process is pointed at a port where, in turn, a listener accepts
connections and never says a word (a NATS that hangs), nothing listens (NATS down), and
finally a real nats-server runs. The gateway must answer /healthz 503 and refuse upgrades
with 503 meanwhile, keep retrying, and serve by itself once NATS is there; it says so on
stderr, naming the URL, and stops cleanly on SIGTERM meanwhile (both were bugs, found by
these tests).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from natsgate.auth import mint_token
from natsgate.natsrunner import NatsServer

from ..conftest import SECRET
from ..helpers import T, WsClient
from .conftest import GatewayProc, free_port, record

pytestmark = pytest.mark.slow


async def upgrade_status(gw: GatewayProc, token: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.url + "/ws", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status


async def silent_listener(port: int) -> socket.socket:
    """A "NATS" that accepts connections and never sends INFO: a hung server."""
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", port))
    silent.listen(64)
    return silent


async def test_gateway_waits_for_a_slow_then_absent_nats_and_recovers(
    tmp_path: Path, gateway_procs: Any
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    token = mint_token("u", SECRET, 600)

    # 1. NATS hangs: accepts, says nothing
    silent = await silent_listener(port)
    gw: GatewayProc = gateway_procs(url)
    started = time.monotonic()
    await gw.astart()
    statuses: list[tuple[int, int]] = []
    for _ in range(3):
        statuses.append((await gw.health(), await upgrade_status(gw, token)))
        await asyncio.sleep(1.0)
    silent.close()
    # 2. nothing listens
    for _ in range(3):
        statuses.append((await gw.health(), await upgrade_status(gw, token)))
        await asyncio.sleep(0.5)
    assert set(statuses) == {(503, 503)}, statuses
    assert gw.proc is not None and gw.proc.poll() is None  # still there, still trying

    # 3. NATS comes: the gateway serves by itself
    server = NatsServer(store_dir=tmp_path / "js", port=port)
    await asyncio.to_thread(server.start)
    nats_up = time.monotonic()
    try:
        ready_s = await gw.wait_healthy(timeout=4 * T)
        err = gw.stderr()
        assert f"connected to NATS at 127.0.0.1:{port}" in err
        assert "gateway ready" in err
        assert "Traceback" not in err
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().key_value(gw.env["AUTH_BUCKET"])
        await kv.put("u", json.dumps({"subjects": ["up.>"]}).encode())
        c = await WsClient.open(gw.ws_url, token=token)
        assert (await c.recv())["op"] == "cap_update"
        await c.ok("sub", "up.x")
        await nc.publish("up.x", b'"hello"')
        assert (await c.expect(op="msg"))["data"] == "hello"
        await c.close()
        await nc.close()
        warn_lines = [ln for ln in err.splitlines() if " WARNING " in ln or " ERROR " in ln]
        record(
            "test_gateway_waits_for_a_slow_then_absent_nats_and_recovers",
            nats_hung_s=3,
            nats_absent_s=round(nats_up - started, 1),
            healthz_and_upgrade_while_away=sorted(set(statuses)),
            healthy_after_nats_up_s=round(ready_s, 2),
            warning_lines_while_away=len(warn_lines),
        )
    finally:
        server.stop()


async def test_unreachable_nats_at_startup_is_logged_with_its_url(gateway_procs: Any) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    silent = await silent_listener(port)  # hung first, then absent
    gw: GatewayProc = gateway_procs(url)
    try:
        await gw.astart()
        await asyncio.sleep(3.0)
    finally:
        silent.close()
    await asyncio.sleep(2.0)
    lines = [ln for ln in gw.stderr().splitlines() if url in ln and " WARNING " in ln]
    assert len(lines) >= 2, gw.stderr()[-2000:]


async def test_sigterm_before_nats_was_reached_exits_0(gateway_procs: Any) -> None:
    gw: GatewayProc = gateway_procs(f"nats://127.0.0.1:{free_port()}")
    await gw.astart()
    await asyncio.sleep(1.0)
    gw.signal(signal.SIGTERM)
    code = await asyncio.to_thread(gw.wait, 3 * T)
    assert "Traceback" not in gw.stderr(), gw.stderr()[-1500:]
    assert code == 0
