"""Live capabilities: loaded at connect, watched, revoked mid-connection (contract §4)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

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
