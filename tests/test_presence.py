"""Presence (protocol.md, Presence): join, leave, presence_sub across gateways, the grants,
the limits, revocation, and members that expire when nobody refreshes them."""

from __future__ import annotations

import json
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from natsgate.members import member_key

from .conftest import connect, unique
from .helpers import Gw, T, WsClient, eventually


def grant(subject: str, **more: Any) -> dict[str, Any]:
    return {"subjects": [subject], "presence": [subject], **more}


async def member(gw: Gw, user: str, caps: dict[str, Any]) -> WsClient:
    await gw.set_caps(user, caps)
    return await connect(gw, user)


async def pmsg(c: WsClient, op: str, user: str, timeout: float = T) -> dict[str, Any]:
    """The next presence event ``op`` of ``user``."""
    env = await c.expect(
        lambda e: (
            e["op"] == "msg"
            and e["target"].startswith("presence:")
            and e["data"]["op"] == op
            and e["data"]["user"] == user
        ),
        timeout,
    )
    return env["data"]  # type: ignore[no-any-return]


async def two_gateways(make_gw: Any, **changes: Any) -> tuple[Gw, Gw, str]:
    bucket = unique("pres_")
    a = await make_gw(presence_bucket=bucket, **changes)
    b = await make_gw(presence_bucket=bucket, **changes)
    return a, b, bucket


async def test_two_users_on_two_gateways_see_each_other(make_gw: Any) -> None:
    a, b, _ = await two_gateways(make_gw)
    room = unique("room.")
    alice, bob = unique("alice"), unique("bob")
    ca = await member(a, alice, grant(room))
    cb = await member(b, bob, grant(room))
    await ca.ok("join", room, {"name": "Alice"})
    # bob's list: alice first (one msg each), then the reply
    inbox = await cb.send("presence_sub", room)
    first = await cb.recv()
    assert first["op"] == "msg" and first["target"] == f"presence:{room}"
    assert first["data"]["user"] == alice and first["data"]["op"] == "join"
    assert first["data"]["info"] == {"name": "Alice"}
    alice_conn = first["data"]["conn"]
    assert isinstance(alice_conn, str) and len(alice_conn) >= 12
    assert (await cb.recv())["inbox"] == inbox
    await ca.ok("presence_sub", room)
    assert (await pmsg(ca, "join", alice))["conn"] == alice_conn  # a member sees itself

    started = time.perf_counter()
    await cb.ok("join", room, {"name": "Bob"})
    seen = await pmsg(ca, "join", bob)
    join_ms = (time.perf_counter() - started) * 1000
    assert seen["info"] == {"name": "Bob"} and seen["conn"] != alice_conn
    started = time.perf_counter()
    await cb.ok("leave", room)
    left = await pmsg(ca, "leave", bob)
    leave_ms = (time.perf_counter() - started) * 1000
    assert left["conn"] == seen["conn"]
    print(
        f"\npresence across two gateways: join seen after {join_ms:.1f} ms, leave {leave_ms:.1f} ms"
    )
    for c in (ca, cb):
        await c.close()


async def test_info_update_is_a_join_and_refreshes_are_silent(make_gw: Any) -> None:
    gw = await make_gw(presence_bucket=unique("pres_"), presence_ttl_s=1.5)
    room, user = unique("room."), unique("u")
    c = await member(gw, user, grant(room))
    await c.ok("presence_sub", room)
    await c.ok("join", room, {"status": "here"})
    assert (await pmsg(c, "join", user))["info"] == {"status": "here"}
    # refreshed every 0.5 s: three refreshes, no event
    assert [e for e in await c.quiet(1.6) if e["op"] == "msg"] == []
    await c.ok("join", room, {"status": "away"})  # the same connection again: new info
    assert (await pmsg(c, "join", user))["info"] == {"status": "away"}
    await c.ok("join", room)  # no data: info null
    assert (await pmsg(c, "join", user))["info"] is None
    await c.ok("leave", room)
    assert (await pmsg(c, "leave", user))["user"] == user
    await c.ok("leave", room)  # leaving again is fine
    await c.ok("presence_unsub", room)
    await c.ok("join", room)
    assert [e for e in await c.quiet(0.3) if e["op"] == "msg"] == []
    await c.close()


async def test_disconnect_leaves_at_once(make_gw: Any) -> None:
    gw = await make_gw(presence_bucket=unique("pres_"))  # PRESENCE_TTL 30 s
    room = unique("room.")
    watcher, gone = unique("w"), unique("g")
    cw = await member(gw, watcher, grant(room))
    cg = await member(gw, gone, grant(room))
    await cg.ok("join", room, "x")
    await cw.ok("presence_sub", room)
    await pmsg(cw, "join", gone)
    started = time.perf_counter()
    await cg.close()
    await pmsg(cw, "leave", gone, timeout=T)  # not after 30 s
    print(f"\nleave after a disconnect seen in {(time.perf_counter() - started) * 1000:.1f} ms")
    await cw.close()


async def test_grants(make_gw: Any) -> None:
    gw = await make_gw(presence_bucket=unique("pres_"))
    room = unique("room.")
    reader = await member(gw, unique("r"), {"subjects": [f"{room.split('.')[0]}.>"]})
    err = await reader.error("join", room, "hi")
    assert err["code"] == "forbidden"
    await reader.ok("presence_sub", room)  # a covering subjects grant reads the list
    joiner = await member(gw, unique("j"), {"presence": [room]})
    await joiner.ok("join", room)
    assert (await joiner.error("presence_sub", room))["code"] == "forbidden"
    assert (await joiner.error("join", f"{room}.other"))["code"] == "forbidden"
    assert (await joiner.error("join", f"{room}.*"))["code"] == "bad_request"  # literal only
    assert (await joiner.error("presence_sub", "a.>"))["code"] == "bad_request"
    for c in (reader, joiner):
        await c.close()


async def test_info_limit_and_max_joins(make_gw: Any) -> None:
    gw = await make_gw(presence_bucket=unique("pres_"), max_joins=3)
    p = unique("p")
    c = await member(gw, unique("u"), grant(f"{p}.>"))
    fits = "x" * (1024 - 2)  # a JSON string: two quotes
    await c.ok("join", f"{p}.a", fits)
    err = await c.error("join", f"{p}.b", fits + "x")
    assert err["code"] == "bad_request" and "1024" in err["message"]
    await c.ok("join", f"{p}.b", {"n": 1})
    await c.ok("join", f"{p}.c")
    await c.ok("join", f"{p}.c", {"again": True})  # the same subject again: no new join
    err = await c.error("join", f"{p}.d")
    assert err["code"] == "limit"
    await c.ok("leave", f"{p}.a")
    await c.ok("join", f"{p}.d")
    await c.close()


async def test_presence_subs_count_as_feeds(make_gw: Any) -> None:
    gw = await make_gw(presence_bucket=unique("pres_"), max_feeds=2)
    p = unique("p")
    c = await member(gw, unique("u"), grant(f"{p}.>"))
    await c.ok("presence_sub", f"{p}.a")
    await c.ok("presence_sub", f"{p}.b")
    assert (await c.error("presence_sub", f"{p}.c"))["code"] == "limit"
    await c.ok("presence_sub", f"{p}.a")  # the same one again: fine
    await c.close()


async def test_revocation_leaves_and_ends_the_list(make_gw: Any) -> None:
    gw = await make_gw(presence_bucket=unique("pres_"))
    room = unique("room.")
    user, other = unique("u"), unique("o")
    c = await member(gw, user, grant(room))
    watcher = await member(gw, other, {"subjects": [room]})
    await c.ok("join", room, 1)
    await c.ok("presence_sub", room)
    await watcher.ok("presence_sub", room)
    await pmsg(watcher, "join", user)
    await pmsg(c, "join", user)

    await gw.set_caps(user, {"subjects": [room]})  # presence taken away
    upd = await c.expect(op="cap_update")
    assert upd["data"]["revoked"] == [{"op": "join", "target": room}]
    await pmsg(watcher, "leave", user)
    await pmsg(c, "leave", user)  # its own list goes on: subjects still covers it

    assert (await c.error("join", room))["code"] == "forbidden"
    await gw.set_caps(user, {})  # subjects taken away too
    upd = await c.expect(op="cap_update")
    assert upd["data"]["revoked"] == [{"op": "presence_sub", "target": room}]
    await gw.set_caps(other, grant(room))
    await watcher.expect(op="cap_update")
    await watcher.ok("join", room)
    await pmsg(watcher, "join", other)
    assert [e for e in await c.quiet(0.3) if e["op"] == "msg"] == []  # nothing after revoking
    for x in (c, watcher):
        await x.close()


async def test_the_bucket_is_reserved(make_gw: Any) -> None:
    bucket = unique("pres_")
    gw = await make_gw(presence_bucket=bucket)
    room = unique("room.")
    m = await member(gw, unique("m"), grant(room))
    await m.ok("join", room, {"secret": "mine"})
    wide = await member(
        gw,
        unique("w"),
        {"buckets": {"*": [">"]}, "streams": {"*": [">"]}, "subjects": [">", "$KV.>"]},
    )
    assert (await wide.error("kv_sub", bucket))["code"] == "forbidden"
    assert (await wide.error("js_sub", f"KV_{bucket}"))["code"] == "forbidden"
    assert (await wide.error("sub", f"$KV.{bucket}.>"))["code"] == "forbidden"
    named = await member(gw, unique("n"), {"buckets": {bucket: [">"]}})
    await named.ok("kv_sub", bucket)  # a grant naming the bucket itself does reach it
    for c in (m, wide, named):
        await c.close()


async def test_member_of_a_dead_gateway_expires_by_its_ttl(make_gw: Any, nc: NATS) -> None:
    """What a gateway that stopped refreshing leaves behind: NATS expires the key and its
    MaxAge marker reaches every watch as a leave."""
    bucket = unique("pres_")
    gw = await make_gw(presence_bucket=bucket)
    room = unique("room.")
    c = await member(gw, unique("w"), {"subjects": [room]})
    await c.ok("presence_sub", room)
    body = json.dumps({"user": "ghost", "conn": "deadconn0001", "info": None}).encode()
    written = time.monotonic()
    await nc.jetstream().publish(
        f"$KV.{bucket}.{member_key(room, 'deadconn0001')}", body, msg_ttl=2
    )
    await pmsg(c, "join", "ghost")
    await pmsg(c, "leave", "ghost", timeout=2 + T)
    print(f"\nexpired member left after {time.monotonic() - written:.2f} s (TTL 2 s)")
    await c.close()


async def test_without_markers_watches_drop_stale_members(make_gw: Any, nc: NATS) -> None:
    """A bucket made beforehand without per-message TTLs (as by an older server): entries
    vanish by max_age with no marker, so the watch itself drops a member not written for
    PRESENCE_TTL; live members, refreshed, stay."""
    bucket = unique("pres_")
    await nc.jetstream().create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=2))
    gw = await make_gw(presence_bucket=bucket, presence_ttl_s=2)
    assert not gw.gateway.presence.markers
    room = unique("room.")
    live, ghost = unique("live"), "ghost"
    c = await member(gw, live, grant(room))
    await c.ok("join", room)
    await c.ok("presence_sub", room)
    await pmsg(c, "join", live)
    body = json.dumps({"user": ghost, "conn": "deadconn0002", "info": None}).encode()
    written = time.monotonic()
    await nc.jetstream().publish(f"$KV.{bucket}.{member_key(room, 'deadconn0002')}", body)
    await pmsg(c, "join", ghost)
    await pmsg(c, "leave", ghost, timeout=2 + T)
    print(f"\nstale member dropped after {time.monotonic() - written:.2f} s (TTL 2 s)")
    assert [e for e in await c.quiet(2.5) if e["op"] == "msg"] == []  # live stays
    late = await member(gw, unique("late"), {"subjects": [room]})
    await late.ok("presence_sub", room)
    users = [e["data"]["user"] for e in list(late.inbox) if e["op"] == "msg"]
    assert users == [live]
    for x in (c, late):
        await x.close()


async def test_a_slow_join_does_not_outlive_its_connection(make_gw: Any) -> None:
    """Close right after a join: whatever order the gateway handles them in, the member
    is gone for everyone afterwards."""
    gw = await make_gw(presence_bucket=unique("pres_"))
    room = unique("room.")
    watcher = await member(gw, unique("w"), {"subjects": [room]})
    await watcher.ok("presence_sub", room)
    users = [unique("q") for _ in range(5)]
    for u in users:
        c = await member(gw, u, grant(room))
        await c.send("join", room)
        await c.close()
    bridge = gw.gateway.presence
    # every session closed (its frames handled first), every leave written
    await eventually(
        lambda: len(gw.gateway.sessions) == 1 and not bridge._members and not bridge._writes
    )
    late = await member(gw, unique("late"), {"subjects": [room]})
    await late.ok("presence_sub", room)
    assert [e for e in list(late.inbox) if e["op"] == "msg"] == []
    for x in (watcher, late):
        await x.close()


async def test_the_refresh_keeps_members_past_their_ttl(make_gw: Any) -> None:
    """PRESENCE_TTL 1 s: each key would expire a second after its last write; the one
    refresh loop writes it every third of that, so nobody leaves."""
    gw = await make_gw(presence_bucket=unique("pres_"), presence_ttl_s=1)
    room, user = unique("room."), unique("u")
    c = await member(gw, user, grant(room))
    await c.ok("join", room)
    await c.ok("presence_sub", room)
    await pmsg(c, "join", user)
    assert [e for e in await c.quiet(3.5) if e["op"] == "msg"] == []  # no leave, no join
    late = await member(gw, unique("late"), {"subjects": [room]})
    await late.ok("presence_sub", room)
    assert [e["data"]["user"] for e in list(late.inbox) if e["op"] == "msg"] == [user]
    await c.close()
    await pmsg(late, "leave", user)
    await late.close()
