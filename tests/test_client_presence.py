"""natsgate.client's presence (docs/python-client.md, Presence) against real gateways:
join, update and leave; the member list and its events; after a reconnect the client
joins again and reads the list again, reporting only what changed meanwhile."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from natsgate import client as ng
from natsgate.config import Config

from .conftest import unique
from .helpers import Gw, T, start_gateway
from .test_client import Collect, Restartable, expect, open_client, within


@pytest.fixture
def pconfig(config: Config) -> Config:
    return dataclasses.replace(config, presence_bucket=unique("pres_"))


@pytest_asyncio.fixture
async def restartable(pconfig: Config) -> AsyncIterator[Restartable]:
    r = Restartable(pconfig)
    await r.start()
    yield r
    await r.stop()


@pytest_asyncio.fixture
async def other(pconfig: Config) -> AsyncIterator[Gw]:
    """A second gateway on the same NATS and presence bucket."""
    g = await start_gateway(pconfig)
    yield g
    await g.stop()


def names(events: list[ng.PresenceEvent]) -> list[tuple[str, str]]:
    return [(e.op, e.user) for e in events]


async def test_join_update_leave_and_the_list(restartable: Restartable, other: Gw) -> None:
    assert restartable.gw is not None
    room = unique("room.")
    alice, bob = unique("alice"), unique("bob")
    for user in (alice, bob):
        await restartable.gw.set_caps(user, {"subjects": [room], "presence": [room]})
    a = await open_client(restartable.ws_url, alice)
    b = await open_client(other.ws_url, bob)
    joined = await a.join(room, {"name": "Alice"})
    seen: Collect[ng.PresenceEvent] = Collect()
    sub = await b.presence(room, seen)
    assert names(seen.items) == [("join", alice)] and seen.items[0].snapshot
    assert [m.info for m in sub.members.values()] == [{"name": "Alice"}]
    mine = await b.join(room)
    await seen.until(lambda ev: ("join", bob) in names(ev))
    assert not seen.items[-1].snapshot and seen.items[-1].conn != seen.items[0].conn
    await joined.update({"name": "Alice", "typing": True})
    await seen.until(lambda ev: ev[-1].info == {"name": "Alice", "typing": True})
    await joined.leave()
    await seen.until(lambda ev: names(ev)[-1] == ("leave", alice))
    assert [m.user for m in sub.members.values()] == [bob]
    assert joined.state is ng.SubState.ENDED
    await mine.leave()
    await seen.until(lambda ev: names(ev)[-1] == ("leave", bob))
    assert sub.members == {}
    await a.close()
    await b.close()


async def test_refusals(restartable: Restartable) -> None:
    assert restartable.gw is not None
    room, user = unique("room."), unique("u")
    await restartable.gw.set_caps(user, {"presence": [room]})
    c = await open_client(restartable.ws_url, user)
    with pytest.raises(ng.NatsgateError) as err:
        await c.presence(room, lambda _: None)
    assert err.value.code == "forbidden"
    with pytest.raises(ng.NatsgateError) as err:
        await c.join(f"{room}.elsewhere")
    assert err.value.code == "forbidden"
    with pytest.raises(ng.NatsgateError) as err:
        await c.join(room, "x" * 2000)
    assert err.value.code == "bad_request"
    await c.join(room, "fits")
    with pytest.raises(ng.NatsgateError) as err:
        await c.join(room, "twice")  # one membership per subject: update() changes it
    assert err.value.code == "bad_request"
    await c.close()


async def test_after_a_reconnect_it_joins_again_and_rereads(
    restartable: Restartable, other: Gw
) -> None:
    assert restartable.gw is not None
    room = unique("room.")
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    for user in (alice, bob, carol):
        await restartable.gw.set_caps(user, {"subjects": [room], "presence": [room]})
    a = await open_client(restartable.ws_url, alice)  # on the gateway that restarts
    b = await open_client(other.ws_url, bob)
    c = await open_client(other.ws_url, carol)
    await a.join(room, {"name": "Alice"})
    a_seen: Collect[ng.PresenceEvent] = Collect()
    a_sub = await a.presence(room, a_seen)
    b_seen: Collect[ng.PresenceEvent] = Collect()
    await b.presence(room, b_seen)
    await b.join(room, "bob")
    carols = await c.join(room, "carol")
    await a_seen.until(lambda ev: {("join", bob), ("join", carol)} <= set(names(ev)))

    back = expect(a, "reconnect")
    await restartable.stop()  # a's members leave at once (the gateway closes cleanly)
    await b_seen.until(lambda ev: names(ev)[-1] == ("leave", alice))
    await carols.leave()  # while a is away
    n = len(a_seen.items)
    await restartable.start()
    await within(back, 3 * T)
    # a joined again: everyone sees it, with its info
    await b_seen.until(lambda ev: names(ev)[-1] == ("join", alice), 3 * T)
    assert b_seen.items[-1].info == {"name": "Alice"}
    # a read the list again: carol's leave is reported, bob is not repeated
    await a_seen.until(lambda ev: ("leave", carol) in names(ev[n:]))
    await a_seen.until(lambda ev: ("join", alice) in names(ev[n:]))
    assert ("join", bob) not in names(a_seen.items[n:])
    assert sorted(m.user for m in a_sub.members.values()) == sorted([alice, bob])
    for x in (a, b, c):
        await x.close()


async def test_revocation_ends_the_membership(restartable: Restartable) -> None:
    gw = restartable.gw
    assert gw is not None
    room, user = unique("room."), unique("u")
    await gw.set_caps(user, {"subjects": [room], "presence": [room]})
    c = await open_client(restartable.ws_url, user)
    m = await c.join(room)
    sub = await c.presence(room, lambda _: None)
    update = expect(c, "cap_update", lambda u: u.revoked)  # not the current caps at once
    await gw.set_caps(user, {})
    got = await within(update)
    assert {(r["op"], r["target"]) for r in got.revoked} == {
        ("join", room),
        ("presence_sub", room),
    }
    assert m.state is ng.SubState.REVOKED and sub.state is ng.SubState.REVOKED
    await c.close()
