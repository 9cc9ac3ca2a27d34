"""KV watches (protocol.md §3): current values, then the reply, then live changes."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS

from .conftest import connect, unique
from .helpers import Gw, WsClient, consumers, eventually


async def bucket(nc: NATS, **values: bytes) -> tuple[str, Any]:
    name = unique("kv")
    kv = await nc.jetstream().create_key_value(bucket=name, history=3)
    for k, v in values.items():
        await kv.put(k.replace("__", "."), v)
    return name, kv


async def watcher(gw: Gw, name: str, grant: str = ">") -> WsClient:
    user = unique("u")
    await gw.set_caps(user, {"buckets": {name: [grant]}})
    return await connect(gw, user)


async def test_snapshot_then_reply_then_live(gw: Gw, nc: NATS) -> None:
    name, kv = await bucket(nc, user__a__1=b'{"t": 1}', user__a__2=b"two", user__b__1=b"x")
    await kv.delete("user.a.2")  # deleted keys are not part of the snapshot
    c = await watcher(gw, name)
    inbox = await c.send("kv_sub", name, {"pattern": "user.a.>"})
    first = await c.recv()
    assert first["op"] == "msg" and first["target"] == f"kv:{name}"
    assert first["data"]["key"] == "user.a.1" and first["data"]["value"] == {"t": 1}
    assert first["data"]["op"] == "PUT" and first["data"]["snapshot"] is True
    assert first["sub"] == "user.a.>"
    reply = await c.recv()
    assert reply["op"] == "reply" and reply["inbox"] == inbox  # reply after the snapshot
    await kv.put("user.a.3", b"3")
    await kv.put("user.b.9", b"not mine")
    await kv.delete("user.a.1")
    await kv.purge("user.a.3")
    events = [(await c.expect(op="msg"))["data"] for _ in range(3)]
    assert [(e["key"], e["op"]) for e in events] == [
        ("user.a.3", "PUT"),
        ("user.a.1", "DEL"),
        ("user.a.3", "PURGE"),
    ]
    assert events[0]["value"] == 3 and "snapshot" not in events[0]
    assert events[0]["revision"] < events[1]["revision"] < events[2]["revision"]
    await c.close()


async def test_empty_bucket_replies_at_once_then_live(gw: Gw, nc: NATS) -> None:
    name, kv = await bucket(nc)
    c = await watcher(gw, name)
    await c.ok("kv_sub", name)
    await kv.put("k", b"\xff\xfe")
    m = (await c.expect(op="msg"))["data"]
    assert m["key"] == "k" and m["enc"] == "base64" and m["value"] == "//4="
    await c.close()


async def test_large_snapshot(gw: Gw, nc: NATS) -> None:
    name, kv = await bucket(nc)
    for i in range(600):
        await kv.put(f"k.{i}", str(i).encode())
    c = await watcher(gw, name)
    inbox = await c.send("kv_sub", name)
    keys = set()
    while True:
        env = await c.recv()
        if env["op"] == "reply":
            assert env["inbox"] == inbox
            break
        keys.add(env["data"]["key"])
    assert len(keys) == 600
    await c.close()


async def test_capability_and_missing_bucket(gw: Gw, nc: NATS) -> None:
    name, _ = await bucket(nc)
    c = await watcher(gw, name, "user.me.>")
    assert (await c.error("kv_sub", name))["code"] == "forbidden"
    assert (await c.error("kv_sub", name, {"pattern": "user.other.>"}))["code"] == "forbidden"
    assert (await c.error("kv_sub", "nosuch"))["code"] == "forbidden"
    await c.ok("kv_sub", name, {"pattern": "user.me.>"})
    await c.close()
    user = unique("u")
    await gw.set_caps(user, {"buckets": {"*": [">"]}})
    c = await connect(gw, user)
    assert (await c.error("kv_sub", unique("nosuch")))["code"] == "not_found"
    assert (await c.error("kv_sub", name, {"pattern": "a b"}))["code"] == "bad_request"
    await c.close()


async def test_unsub_and_disconnect_delete_watchers(gw: Gw, nc: NATS, nats_server: Any) -> None:
    name, kv = await bucket(nc, a=b"1")
    c = await watcher(gw, name)
    await c.ok("kv_sub", name, {"pattern": "a"})
    await c.ok("kv_sub", name)
    assert consumers(nats_server.monitor_url, f"KV_{name}") == 2
    await c.ok("kv_unsub", name, {"pattern": "a"})
    await eventually(lambda: consumers(nats_server.monitor_url, f"KV_{name}") == 1, timeout=1.0)
    await kv.put("a", b"2")
    m = await c.expect(op="msg", pred=lambda e: not e["data"].get("snapshot"))
    assert m["sub"] == ">"
    await c.close()
    await eventually(lambda: consumers(nats_server.monitor_url, f"KV_{name}") == 0, timeout=1.0)


async def test_revoked_watch_stops(gw: Gw, nc: NATS, nats_server: Any) -> None:
    name, kv = await bucket(nc)
    user = unique("u")
    await gw.set_caps(user, {"buckets": {name: [">"]}, "subjects": ["x"]})
    c = await connect(gw, user)
    await c.ok("kv_sub", name)
    await gw.set_caps(user, {"subjects": ["x"]})
    upd = await c.expect(op="cap_update")
    assert upd["data"]["revoked"] == [{"op": "kv_sub", "target": name, "pattern": ">"}]
    await kv.put("k", b"after")
    assert not [e for e in await c.quiet(0.3) if e["op"] == "msg"]
    await eventually(lambda: consumers(nats_server.monitor_url, f"KV_{name}") == 0, timeout=1.0)
    await c.close()
