"""Core subjects and commands over a real gateway and nats-server (contract §3)."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .conftest import connect, unique
from .helpers import Gw, eventually, nats_subscriptions


def caps(prefix: str, **extra: object) -> dict[str, object]:
    return {"subjects": [f"{prefix}.>"], "publish": [f"{prefix}.>"], **extra}


async def test_first_envelope_is_cap_update(gw: Gw) -> None:
    user = unique("u")
    await gw.set_caps(user, caps("a"))
    c = await connect(gw, user)
    first = await c.recv()
    assert first["op"] == "cap_update"
    assert first["data"]["caps"]["subjects"] == ["a.>"]
    assert first["data"]["revoked"] == []
    await c.close()


async def test_sub_pub_roundtrip_with_headers(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, caps(p))
    c = await connect(gw, user)
    reply = await c.ok("sub", f"{p}.*")
    assert reply["data"] == {"ok": True}
    await nc.publish(f"{p}.x", b'{"n": 1}', headers={"X-Trace": "abc"})
    msg = await c.expect(op="msg")
    assert msg["target"] == f"{p}.x"
    assert msg["sub"] == f"{p}.*"
    assert msg["data"] == {"n": 1}
    assert msg["headers"]["X-Trace"] == "abc"
    await c.close()


async def test_payload_encodings(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, caps(p))
    c = await connect(gw, user)
    await c.ok("sub", f"{p}.>")
    await nc.publish(f"{p}.json", b'{"a":\n [1, 2]}')
    await nc.publish(f"{p}.text", "héllo world".encode())
    await nc.publish(f"{p}.bin", b"\xff\x00\x01")
    got = {}
    for _ in range(3):
        m = await c.expect(op="msg")
        got[m["target"].rsplit(".", 1)[1]] = m
    assert got["json"]["data"] == {"a": [1, 2]}
    assert got["text"]["data"] == "héllo world"
    assert got["bin"]["data"] == "/wAB" and got["bin"]["enc"] == "base64"
    await c.close()


async def test_pub_carries_identity_header(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, caps(p))
    seen: asyncio.Queue[Msg] = asyncio.Queue()

    async def cb(m: Msg) -> None:
        await seen.put(m)

    await nc.subscribe(f"{p}.>", cb=cb)
    await nc.flush()
    c = await connect(gw, user)
    await c.ok("pub", f"{p}.out", {"hello": "world"}, )
    m = await asyncio.wait_for(seen.get(), 5)
    assert json.loads(m.data) == {"hello": "world"}
    assert m.headers == {"Natsgate-User": user}
    await c.close()


async def test_unsub_and_disconnect_release_nats_interest(gw: Gw, nats_server) -> None:  # type: ignore[no-untyped-def]
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, caps(p))
    c1 = await connect(gw, user)
    c2 = await connect(gw, user)
    await c1.ok("sub", f"{p}.a")
    await c2.ok("sub", f"{p}.a")

    def interest() -> int:
        return nats_subscriptions(nats_server.monitor_url, f"{p}.a")

    assert interest() == 1  # one shared NATS subscription for both connections
    await c1.ok("unsub", f"{p}.a")
    assert interest() == 1
    await c2.close()
    await eventually(lambda: interest() == 0)
    await c1.close()
