"""Durable subscriptions through faults: a NATS restart and a gateway killed in the middle
of a stream. With acks the gateway confirmed (an ``inbox`` on ``js_ack``), no acked
message is ever delivered again and no unacked message is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from natsgate.auth import mint_token
from natsgate.config import Config
from natsgate.natsrunner import NatsServer
from tests.conftest import SECRET, connect, unique
from tests.faults.conftest import GatewayProc
from tests.helpers import T, WsClient, eventually, start_gateway

pytestmark = pytest.mark.slow

TOTAL = 60
SUB = {"durable": "d", "ack": "explicit", "ack_wait_ms": 2000, "batch": 10, "start_seq": 1}


@pytest_asyncio.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path / "js").start()
    yield server
    server.stop()


class Reader:
    """A client of one durable that acks every message and records what it saw."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.acked: set[int] = set()  # acks the gateway confirmed
        self.after_ack: list[int] = []  # deliveries of a message already acked: must be none

    async def read(self, c: WsClient, until: int, timeout: float = 3 * T) -> None:
        """Read and ack until ``until`` messages are acked (or the connection fails)."""
        while len(self.acked) < until:
            m = await c.expect(op="msg", timeout=timeout)
            seq = m["data"]["seq"]
            if seq in self.acked:
                self.after_ack.append(seq)
                continue
            answer = await c.reply(
                await c.send("js_ack", self.stream, {"durable": "d", "seq": seq}), timeout
            )
            if answer["op"] == "reply":
                self.acked.add(seq)


async def _fill(nc: Any, stream: str, subject: str) -> None:
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    for i in range(TOTAL):
        await js.publish(f"{subject}.x", json.dumps({"n": i}).encode())


async def test_a_nats_restart_loses_no_unacked_message(
    own_nats: NatsServer, config: Config
) -> None:
    gw = await start_gateway(dataclasses.replace(config, nats_urls=(own_nats.url,)))
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    stream, subject = unique("D"), unique("n")
    await _fill(nc, stream, subject)
    user = unique("u")
    await gw.set_caps(user, {"streams": {stream: [">"]}})
    reader = Reader(stream)
    c = await connect(gw, user)
    await c.ok("js_sub", stream, SUB)
    await reader.read(c, TOTAL // 3)
    own_nats.stop()  # in the middle: acks in flight fail and are not counted
    await eventually(lambda: not gw.gateway.upstream.connected, timeout=3 * T)
    own_nats.start()
    await eventually(lambda: gw.gateway.upstream.connected, timeout=6 * T)
    try:
        await reader.read(c, TOTAL, timeout=6 * T)
    except TimeoutError:  # the binding did not survive: bind again, as a client would
        await c.close()
        c = await connect(gw, user)
        await c.ok("js_sub", stream, {"durable": "d", "ack": "explicit"})
        await reader.read(c, TOTAL, timeout=6 * T)
    assert reader.acked == set(range(1, TOTAL + 1))
    assert reader.after_ack == []
    await c.close()
    await nc.close()
    await gw.stop()


async def test_a_killed_gateway_loses_no_unacked_message(
    own_nats: NatsServer, gateway_procs: Any
) -> None:
    gw: GatewayProc = gateway_procs(own_nats.url)
    await gw.astart()
    await gw.wait_healthy()
    nc = await nats.connect(own_nats.url)
    stream, subject = unique("D"), unique("n")
    await _fill(nc, stream, subject)
    user = unique("u")
    kv = await nc.jetstream().key_value(gw.env["AUTH_BUCKET"])
    await kv.put(user, json.dumps({"streams": {stream: [">"]}}).encode())
    token = mint_token(user, SECRET, 600)
    reader = Reader(stream)
    c = await WsClient.open(gw.ws_url, token=token)
    await c.recv()
    await c.ok("js_sub", stream, SUB)
    await reader.read(c, TOTAL // 2)
    await asyncio.sleep(0.1)  # the next batch is on its way to the socket, not acked
    gw.kill()  # SIGKILL: no NAK, no goodbye; NATS redelivers after ack_wait
    await c.wait_closed()
    await c.close()
    await gw.astart()
    await gw.wait_healthy()
    c = await WsClient.open(gw.ws_url, token=token)
    await c.recv()
    await c.ok("js_sub", stream, {"durable": "d", "ack": "explicit"})
    await reader.read(c, TOTAL, timeout=6 * T)
    assert reader.acked == set(range(1, TOTAL + 1))
    assert reader.after_ack == []
    await c.close()
    await nc.close()
