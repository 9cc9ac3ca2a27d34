"""Core subjects and commands over a real gateway and nats-server (protocol.md §3)."""

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
    c = await connect(gw, user, first=False)
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
    await c.ok(
        "pub",
        f"{p}.out",
        {"hello": "world"},
    )
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


async def _echo_service(nc: NATS, subject: str) -> None:
    async def cb(m: Msg) -> None:
        user = (m.headers or {}).get("Natsgate-User", "")
        await m.respond(json.dumps({"echo": json.loads(m.data), "user": user}).encode())

    await nc.subscribe(subject, cb=cb)
    await nc.flush()


async def test_cmd_reply_carries_identity(gw: Gw, nc: NATS) -> None:
    user, svc = unique("u"), unique("svc")
    await gw.set_caps(user, {"commands": [f"{svc}.*"]})
    await _echo_service(nc, f"{svc}.echo")
    c = await connect(gw, user)
    r = await c.ok("cmd", f"{svc}.echo", {"q": 1})
    assert r["target"] == f"{svc}.echo"
    assert r["data"] == {"echo": {"q": 1}, "user": user}
    await c.close()


async def test_cmd_timeout_and_no_responders(gw: Gw, nc: NATS) -> None:
    user, svc = unique("u"), unique("svc")
    await gw.set_caps(user, {"commands": [f"{svc}.>"]})

    async def silent(m: Msg) -> None:
        return None

    await nc.subscribe(f"{svc}.slow", cb=silent)
    await nc.flush()
    c = await connect(gw, user)
    e = await c.error("cmd", f"{svc}.slow", 1, timeout_ms=100)
    assert e["code"] == "timeout"
    e = await c.error("cmd", f"{svc}.nobody", 1)
    assert e["code"] == "no_responders"
    # the connection is still fine afterwards
    inbox = await c.send("ping")
    assert (await c.expect(op="pong"))["inbox"] == inbox
    await c.close()


async def test_commands_of_two_users_never_cross(gw: Gw, nc: NATS) -> None:
    svc = unique("svc")
    await _echo_service(nc, f"{svc}.echo")
    users = [unique("u"), unique("u")]
    clients = []
    for u in users:
        await gw.set_caps(u, {"commands": [f"{svc}.echo"], "subjects": [">"]})
        clients.append(await connect(gw, u))
    # even a user granted ">" sees no _INBOX replies of the other's commands
    await clients[1].ok("sub", ">")
    inboxes = [
        [
            await c.send("cmd", f"{svc}.echo", {"n": i, "who": u}, inbox=f"same{i}")
            for i in range(20)
        ]
        for c, u in zip(clients, users, strict=True)
    ]
    for c, u, ib in zip(clients, users, inboxes, strict=True):
        for i, inbox in enumerate(ib):
            r = await c.reply(inbox)
            assert r["data"] == {"echo": {"n": i, "who": u}, "user": u}
    leaked = [e for e in await clients[1].quiet(0.3) if e["op"] == "msg"]
    assert not [e for e in leaked if e["target"].startswith("_INBOX.")]
    for c in clients:
        await c.close()


async def test_publish_and_subscribe_need_grants(gw: Gw) -> None:
    user = unique("u")
    await gw.set_caps(user, {"subjects": ["a.*"], "publish": ["a.x"], "commands": ["s.x"]})
    c = await connect(gw, user)
    assert (await c.error("sub", "a.>"))["code"] == "forbidden"  # a.* does not cover a.>
    assert (await c.error("sub", "_INBOX.>"))["code"] == "forbidden"
    assert (await c.error("sub", "b"))["code"] == "forbidden"
    assert (await c.error("pub", "a.y", 1))["code"] == "forbidden"
    assert (await c.error("cmd", "s.y", 1))["code"] == "forbidden"
    await c.ok("sub", "a.*")
    await c.ok("pub", "a.x", 1)
    await c.close()


async def test_grant_of_everything_still_excludes_private_subjects(gw: Gw) -> None:
    user = unique("u")
    await gw.set_caps(user, {"subjects": [">"]})
    c = await connect(gw, user)
    for target in ("_INBOX.>", "_INBOX.abc", "$JS.API.>", "$KV.auth_users.>", "$SYS.>"):
        assert (await c.error("sub", target))["code"] == "forbidden", target
    await c.close()


async def test_sub_is_idempotent_and_unsub_stops_delivery(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, caps(p))
    c = await connect(gw, user)
    await c.ok("sub", f"{p}.a")
    await c.ok("sub", f"{p}.a")
    await nc.publish(f"{p}.a", b"1")
    await c.expect(op="msg")
    assert not [e for e in await c.quiet(0.2) if e["op"] == "msg"]  # once, not twice
    await c.ok("unsub", f"{p}.a")
    await nc.publish(f"{p}.a", b"2")
    await nc.flush()
    assert not [e for e in await c.quiet(0.3) if e["op"] == "msg"]
    await c.close()


async def test_legacy_subscribe_frame(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, caps(p))
    c = await connect(gw, user)
    await c.send_raw(json.dumps({"type": "subscribe", "topic": f"{p}.legacy"}))
    await eventually(lambda: gw.gateway.hub.receivers(f"{p}.legacy") == 1)
    await nc.publish(f"{p}.legacy", b'"hi"')
    m = await c.expect(op="msg")
    assert m["data"] == "hi"
    await c.close()


async def test_ack_means_live_for_the_very_next_message(gw: Gw, nc: NATS) -> None:
    """Regression: nats-py's flush() can PING ahead of a SUB still in its buffer, so an
    acknowledged subscription missed the next message now and then. Publish right after
    each ack, from another connection, without any pause: every one must arrive."""
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, caps(p))
    c = await connect(gw, user)
    for i in range(1000):
        await c.ok("sub", f"{p}.{i}")
        await nc.publish(f"{p}.{i}", b"1")
        m = await c.expect(op="msg")
        assert m["target"] == f"{p}.{i}"
    await c.close()
