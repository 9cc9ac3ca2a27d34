"""JetStream reads (protocol.md §3): start points, order, batch flow control, resume, cleanup."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from .conftest import connect, unique
from .helpers import Gw, T, WsClient, consumers, eventually


async def make_stream(nc: NATS, n: int = 0) -> tuple[str, str]:
    name, subj = unique("S"), unique("js")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{subj}.*"]))
    for i in range(n):
        await js.publish(f"{subj}.a", f'{{"i": {i}}}'.encode())
    return name, subj


async def reader(gw: Gw, stream: str, subj: str) -> WsClient:
    user = unique("u")
    await gw.set_caps(user, {"streams": {stream: [f"{subj}.>"]}})
    return await connect(gw, user)


async def collect(c: WsClient, n: int, timeout: float = T) -> list[dict[str, Any]]:
    out = []
    while len(out) < n:
        env = await c.expect(op="msg", timeout=timeout)
        out.append(env["data"])
    return out


async def test_from_sequence_inclusive_in_order(gw: Gw, nc: NATS) -> None:
    stream, subj = await make_stream(nc, 10)
    c = await reader(gw, stream, subj)
    r = await c.ok("js_sub", stream, {"start_seq": 4, "batch": 3})
    assert r["data"]["first_seq"] == 1 and r["data"]["last_seq"] == 10
    assert "gap" not in r["data"]
    got = await collect(c, 7)
    assert [m["seq"] for m in got] == list(range(4, 11))
    assert got[0]["payload"] == {"i": 3} and got[0]["subject"] == f"{subj}.a"
    assert got[0]["time"].endswith("Z")
    # live messages continue in order
    js = nc.jetstream()
    for _i in range(5):
        await js.publish(f"{subj}.b", b"live")
    got = await collect(c, 5)
    assert [m["seq"] for m in got] == list(range(11, 16))
    await c.close()


async def test_only_new_messages_by_default(gw: Gw, nc: NATS) -> None:
    stream, subj = await make_stream(nc, 3)
    c = await reader(gw, stream, subj)
    await c.ok("js_sub", stream)
    assert not [e for e in await c.quiet(0.3) if e["op"] == "msg"]
    await nc.jetstream().publish(f"{subj}.x", b"new")
    (m,) = await collect(c, 1)
    assert m["seq"] == 4 and m["payload"] == "new"
    await c.close()


async def test_start_time(gw: Gw, nc: NATS) -> None:
    stream, subj = await make_stream(nc, 3)
    await asyncio.sleep(0.05)
    mark = datetime.now(UTC)
    js = nc.jetstream()
    for _ in range(2):
        await js.publish(f"{subj}.a", b"after")
    c = await reader(gw, stream, subj)
    await c.ok("js_sub", stream, {"start_time": mark.isoformat()})
    got = await collect(c, 2)
    assert [m["seq"] for m in got] == [4, 5]
    await c.close()


async def test_filter_and_headers(gw: Gw, nc: NATS) -> None:
    stream, subj = await make_stream(nc)
    js = nc.jetstream()
    await js.publish(f"{subj}.a", b"1")
    await js.publish(f"{subj}.b", b"2", headers={"X-K": "v"})
    await js.publish(f"{subj}.a", b"3")
    user = unique("u")
    await gw.set_caps(user, {"streams": {stream: [f"{subj}.b"]}})
    c = await connect(gw, user)
    assert (await c.error("js_sub", stream, {"start_seq": 1}))["code"] == "forbidden"
    assert (await c.error("js_sub", stream, {"start_seq": 1, "filter": f"{subj}.a"}))[
        "code"
    ] == "forbidden"
    await c.ok("js_sub", stream, {"start_seq": 1, "filter": f"{subj}.b"})
    env = await c.expect(op="msg")
    assert env["data"]["seq"] == 2 and env["headers"]["X-K"] == "v"
    await c.close()


async def test_gap_is_reported_when_retention_dropped_messages(gw: Gw, nc: NATS) -> None:
    name, subj = unique("S"), unique("js")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{subj}.*"], max_msgs=5))
    for i in range(10):
        await js.publish(f"{subj}.a", str(i).encode())
    c = await reader(gw, name, subj)
    r = await c.ok("js_sub", name, {"start_seq": 2})
    assert r["data"]["gap"] is True and r["data"]["first_seq"] == 6
    got = await collect(c, 5)
    assert [m["seq"] for m in got] == [6, 7, 8, 9, 10]
    await c.close()


async def test_bad_input_keeps_other_subscriptions(gw: Gw, nc: NATS) -> None:
    stream, subj = await make_stream(nc, 2)
    c = await reader(gw, stream, subj)
    await c.ok("js_sub", stream, {"start_seq": 1})
    await collect(c, 2)
    for data, code in [
        ({"start_seq": -1}, "bad_request"),
        ({"start_seq": "x"}, "bad_request"),
        ({"batch": 0}, "bad_request"),
        ({"batch": 1001}, "bad_request"),
        ({"start_time": "not a time"}, "bad_request"),
        ({"filter": "elsewhere.>"}, "forbidden"),
    ]:
        assert (await c.error("js_sub", stream, data))["code"] == code, data
    assert (await c.error("js_sub", unique("NOPE")))["code"] == "forbidden"
    await nc.jetstream().publish(f"{subj}.a", b"still")
    (m,) = await collect(c, 1)
    assert m["seq"] == 3
    await c.close()


async def test_missing_stream_and_filter_outside_stream(gw: Gw, nc: NATS) -> None:
    stream, _subj = await make_stream(nc)
    user = unique("u")
    await gw.set_caps(user, {"streams": {"*": [">"]}})
    c = await connect(gw, user)
    assert (await c.error("js_sub", unique("NOPE")))["code"] == "not_found"
    e = await c.error("js_sub", stream, {"filter": "other.subject"})
    assert e["code"] == "bad_request" and "outside" in e["message"]
    await c.close()


async def test_resume_after_reconnect_with_thousands_missed(gw: Gw, nc: NATS) -> None:
    stream, subj = await make_stream(nc, 50)
    c = await reader(gw, stream, subj)
    user_caps = c.first["data"]["caps"]
    await c.ok("js_sub", stream, {"start_seq": 1, "batch": 100})
    got = await collect(c, 50)
    last = got[-1]["seq"]
    await c.close()
    js = nc.jetstream()
    for i in range(3000):
        await js.publish(f"{subj}.a", f'{{"n": {i}}}'.encode())
    user = unique("u")
    await gw.set_caps(user, user_caps)
    c2 = await connect(gw, user)
    await c2.ok("js_sub", stream, {"start_seq": last + 1, "batch": 500})
    got2 = await collect(c2, 3000, timeout=3 * T)
    assert [m["seq"] for m in got2] == list(range(last + 1, last + 3001))
    assert not [e for e in await c2.quiet(0.3) if e["op"] == "msg"]
    await c2.close()


async def test_batch_bounds_messages_in_flight(gw: Gw, nc: NATS, nats_server: Any) -> None:
    """A client that does not read holds at most about one batch on its consumer."""
    stream, subj = await make_stream(nc, 0)
    js = nc.jetstream()
    for _i in range(400):
        await js.publish(f"{subj}.a", b"x" * 200)
    c = await reader(gw, stream, subj)
    await c.ok("js_sub", stream, {"start_seq": 1, "batch": 10})
    got = await collect(c, 400, timeout=3 * T)
    assert [m["seq"] for m in got] == list(range(1, 401))
    await c.close()


async def test_consumers_are_deleted_on_unsub_and_disconnect(
    gw: Gw, nc: NATS, nats_server: Any
) -> None:
    stream, subj = await make_stream(nc, 1)
    c = await reader(gw, stream, subj)
    await c.ok("js_sub", stream, {"start_seq": 1})
    await c.ok("js_sub", stream, {"start_seq": 1, "filter": f"{subj}.a"})
    assert consumers(nats_server.monitor_url, stream) == 2
    await c.ok("js_unsub", stream, {"filter": f"{subj}.a"})
    await eventually(lambda: consumers(nats_server.monitor_url, stream) == 1, timeout=1.0)
    await c.close()
    await eventually(lambda: consumers(nats_server.monitor_url, stream) == 0, timeout=1.0)
