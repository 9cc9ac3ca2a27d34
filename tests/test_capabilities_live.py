"""Live capabilities: loaded at connect, watched, revoked mid-connection (protocol.md §4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsgate.capabilities import Capabilities

from .conftest import connect, unique
from .helpers import Gw


async def test_missing_caps_grant_nothing_but_connect(gw: Gw) -> None:
    c = await connect(gw, unique("nobody"))
    assert c.first["data"]["caps"]["subjects"] == []
    assert (await c.error("sub", "a"))["code"] == "forbidden"
    await c.close()


async def test_grant_takes_effect_mid_connection(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    c = await connect(gw, user)
    assert (await c.error("sub", f"{p}.x"))["code"] == "forbidden"
    await gw.set_caps(user, {"subjects": [f"{p}.>"]})
    upd = await c.expect(op="cap_update")
    assert upd["data"]["caps"]["subjects"] == [f"{p}.>"]
    assert upd["data"]["revoked"] == []
    await c.ok("sub", f"{p}.x")
    await c.close()


async def test_revocation_ends_subscription_before_cap_update(gw: Gw, nc: NATS) -> None:
    """Publish after the cap_update and nothing arrives; the socket stays open."""
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, {"subjects": [f"{p}.>"], "publish": [f"{p}.>"]})
    c = await connect(gw, user)
    await c.ok("sub", f"{p}.keep")
    await c.ok("sub", f"{p}.lose.*")
    await nc.publish(f"{p}.lose.1", b"before")
    assert (await c.expect(op="msg"))["data"] == "before"

    await gw.set_caps(user, {"subjects": [f"{p}.keep"]})
    upd = await c.expect(op="cap_update")
    assert upd["data"]["revoked"] == [{"op": "sub", "target": f"{p}.lose.*"}]
    for i in range(20):
        await nc.publish(f"{p}.lose.1", f"after{i}".encode())
    await nc.publish(f"{p}.keep", b"kept")
    m = await c.expect(op="msg")
    assert m["target"] == f"{p}.keep"  # the revoked subject delivered nothing after it
    assert not [e for e in await c.quiet(0.3) if e["op"] == "msg"]
    assert (await c.error("pub", f"{p}.keep", 1))["code"] == "forbidden"  # publish revoked too
    await c.close()


async def test_deleting_the_key_revokes_everything(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, {"subjects": [f"{p}.>"]})
    c = await connect(gw, user)
    await c.ok("sub", f"{p}.a")
    await c.ok("sub", f"{p}.b")
    await gw.set_caps(user, None)
    upd = await c.expect(op="cap_update")
    assert sorted(r["target"] for r in upd["data"]["revoked"]) == [f"{p}.a", f"{p}.b"]
    assert upd["data"]["caps"]["subjects"] == []
    await nc.publish(f"{p}.a", b"x")
    assert not [e for e in await c.quiet(0.3) if e["op"] == "msg"]
    # still connected: ping answers
    inbox = await c.send("ping")
    assert (await c.expect(op="pong"))["inbox"] == inbox
    await c.close()


async def test_every_connection_of_the_user_is_updated(gw: Gw) -> None:
    user = unique("u")
    a, b = await connect(gw, user), await connect(gw, user)
    await gw.set_caps(user, {"subjects": ["z.>"]})
    for c in (a, b):
        upd = await c.expect(lambda e: e["op"] == "cap_update" and e["data"]["caps"]["subjects"])
        assert upd["data"]["caps"]["subjects"] == ["z.>"]
        await c.close()


async def test_no_change_is_missed_under_rapid_updates(gw: Gw) -> None:
    """Regression: a core subscriber may see a KV write before JetStream stored it, so
    reading the key back could return the old revision and lose a revocation. Every one of
    many quick updates must arrive, in order."""
    user = unique("u")
    await gw.set_caps(user, {"subjects": ["a.0"]})
    c = await connect(gw, user)
    for i in range(1, 201):
        await gw.set_caps(user, {"subjects": [f"a.{i}"]})
        await c.expect(
            lambda e, i=i: e["op"] == "cap_update" and e["data"]["caps"]["subjects"] == [f"a.{i}"]
        )
    await c.close()


# ------------------------------------------------------------ read your writes


class Heard:
    """A CapStore listener that keeps what it was told."""

    def __init__(self) -> None:
        self.told: list[Capabilities] = []

    def caps_changed(self, caps: Capabilities) -> None:
        self.told.append(caps)


async def write_all(gw: Gw, docs: dict[str, dict[str, Any]]) -> None:
    """Write many documents at once, each put awaited until JetStream acknowledged it."""
    kv = await gw.gateway.upstream.js.key_value(gw.gateway.config.auth_bucket)
    await asyncio.gather(*(kv.put(u, json.dumps(d).encode()) for u, d in docs.items()))


def wrong(users: list[str], got: list[Capabilities], want: Callable[[str], list[str]]) -> list[str]:
    return [u for u, caps in zip(users, got, strict=True) if caps.subjects != want(u)]


async def test_a_burst_of_writes_is_read_by_the_joins_right_after_it(gw: Gw) -> None:
    """Read your writes, fresh users: 2,000 documents written at once (every put
    acknowledged), then 2,000 first joins at once; each sees its own document."""
    store, p = gw.gateway.capstore, unique("p")
    users = [f"{p}u{i}" for i in range(2000)]
    await write_all(gw, {u: {"subjects": [f"{u}.>"]} for u in users})
    got = await asyncio.gather(*(store.join(u, Heard()) for u in users))
    assert wrong(users, got, lambda u: [f"{u}.>"]) == []


async def test_a_second_connection_sees_what_was_written_before_it(gw: Gw, nc: NATS) -> None:
    """Read your writes, users already connected: their documents are cached and kept up
    by the store's one reader, which follows the stream a little behind the writers. A join
    after a burst of 2,000 acknowledged writes must not get the cached, older document,
    and the burst must not cost a round trip per join."""
    store, p = gw.gateway.capstore, unique("p")
    users = [f"{p}u{i}" for i in range(2000)]
    await write_all(gw, {u: {"subjects": [f"{u}.old"]} for u in users})
    await asyncio.gather(*(store.join(u, Heard()) for u in users))
    asked: list[Msg] = []

    async def note(msg: Msg) -> None:
        asked.append(msg)

    spy = await nc.subscribe(f"$JS.API.STREAM.INFO.KV_{gw.gateway.config.auth_bucket}", cb=note)
    await nc.flush()
    await write_all(gw, {u: {"subjects": [f"{u}.new"]} for u in users})
    got = await asyncio.gather(*(store.join(u, Heard()) for u in users))
    assert wrong(users, got, lambda u: [f"{u}.new"]) == []
    await nc.flush()
    await spy.unsubscribe()
    assert len(asked) < 10, len(asked)  # batched: one request serves every join waiting


async def test_websocket_connections_after_a_burst_get_the_written_caps(gw: Gw) -> None:
    """The same through real sockets: users with a connection open and users new to the
    gateway; caps written for 2,000 users at once, theirs last; the first cap_update of
    each new connection carries them."""
    p = unique("p")
    known = [f"{p}k{i}" for i in range(100)]
    fresh = [f"{p}f{i}" for i in range(100)]
    others = {f"{p}o{i}": {"subjects": ["o.>"]} for i in range(1800)}
    await write_all(gw, {u: {"subjects": [f"{u}.old"]} for u in known})
    before = await asyncio.gather(*(connect(gw, u) for u in known))
    await write_all(gw, others | {u: {"subjects": [f"{u}.new"]} for u in known + fresh})
    after = await asyncio.gather(*(connect(gw, u) for u in known + fresh))
    stale = [
        u
        for u, c in zip(known + fresh, after, strict=True)
        if c.first["data"]["caps"]["subjects"] != [f"{u}.new"]
    ]
    assert stale == []
    await asyncio.gather(*(c.close() for c in before + after))


async def test_a_document_that_does_not_parse_grants_nothing_and_is_logged(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    user = unique("u")
    kv = await gw.gateway.upstream.js.key_value(gw.gateway.config.auth_bucket)
    await kv.put(user, b'{"subjects": "chat.>"}')  # a string, not a list
    c = await connect(gw, user)
    assert c.first["data"]["caps"]["subjects"] == []
    assert (await c.error("sub", "chat.x"))["code"] == "forbidden"
    warned = [r for r in caplog.records if r.levelname == "WARNING" and user in r.getMessage()]
    assert warned, caplog.text
    assert "chat.>" not in warned[0].getMessage()  # the reason, not the document
    await kv.put(user, b"{not json")  # a change that does not parse: revoked, and logged
    upd = await c.expect(op="cap_update")
    assert upd["data"]["caps"]["subjects"] == []
    assert len([r for r in caplog.records if user in r.getMessage()]) >= 2
    await c.close()
