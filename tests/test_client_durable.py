"""natsgate.client's durable subscriptions (docs/protocol.md, "Durable subscriptions and
acknowledgements") against a real nats-server and real gateways: what a client did not
ack comes again on its next connection, nak redelivers, term never again, durables are
listed and deleted, and two users' durables of the same name never meet.

The pure side (wire, routing, acks without a socket) is in ``tests/test_client.py``.
Every wait is for an event, bounded by ``T``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js.api import StorageType

from natsgate import client as ng
from natsgate.config import Config

from .conftest import unique
from .helpers import T, eventually
from .test_client import Collect, Restartable, expect, open_client, within

ACK_WAIT_MS = 1000  # the protocol's least: redeliveries come soon


@pytest_asyncio.fixture
async def gateway(config: Config) -> AsyncIterator[Restartable]:
    r = Restartable(config)
    await r.start()
    yield r
    await r.stop()


async def notify_stream(nc: NATS) -> tuple[str, str]:
    """A fresh stream on ``<prefix>.>``: (stream, prefix)."""
    stream, prefix = unique("N"), unique("n")
    await nc.jetstream().add_stream(
        name=stream, subjects=[f"{prefix}.>"], storage=StorageType.MEMORY
    )
    return stream, prefix


async def notify(nc: NATS, subject: str, *texts: str) -> None:
    js = nc.jetstream()
    for text in texts:
        await js.publish(subject, json.dumps({"text": text}).encode())


async def user_of(gateway: Restartable, stream: str, subject: str) -> str:
    user = unique("u")
    assert gateway.gw is not None
    await gateway.gw.set_caps(user, {"streams": {stream: [subject]}})
    return user


def texts(items: list[ng.JsMessage]) -> list[str]:
    return [m.payload["text"] for m in items]


async def test_unacked_comes_again_on_the_next_connection(gateway: Restartable, nc: NATS) -> None:
    """A client that goes away before acking: its next connection (another device) gets
    the message again, ``delivery`` 2; acked ones never; what arrived while every device
    was offline is delivered too."""
    stream, p = await notify_stream(nc)
    user = await user_of(gateway, stream, f"{p}.alice")
    await notify(nc, f"{p}.alice", "one", "two")
    first = await open_client(gateway.ws_url, user)
    got: Collect[ng.JsMessage] = Collect()
    opts: dict[str, Any] = {"ack": "explicit", "ack_wait_ms": ACK_WAIT_MS, "filter": f"{p}.alice"}
    try:
        async with asyncio.timeout(3 * T):
            sub = await first.js_subscribe(stream, got, durable="inbox", start_seq=1, **opts)
        assert isinstance(sub, ng.DurableSubscription) and sub.durable == "inbox"
        assert sub.reply_data["durable"] == "inbox" and sub.reply_data["pending"] == 2
        one, two = await got.count(2)
        assert (one.seq, one.delivery, two.delivery) == (1, 1, 1)
        assert texts([one, two]) == ["one", "two"]
        await one.ack()  # "two" stays unacked
    finally:
        await first.close()

    await notify(nc, f"{p}.alice", "three")  # while no device is connected
    second = await open_client(gateway.ws_url, user)
    again: Collect[ng.JsMessage] = Collect()
    try:
        async with asyncio.timeout(3 * T):
            await second.js_subscribe(stream, again, durable="inbox", **opts)
        items = await again.until(lambda ms: {"two", "three"} <= set(texts(ms)), 3 * T)
        assert "one" not in texts(items)
        redelivered = next(m for m in items if m.payload["text"] == "two")
        assert redelivered.seq == 2 and redelivered.delivery == 2
        for m in items:
            await m.ack()
        await eventually(lambda: settled(second, stream, "inbox"), 3 * T)
    finally:
        await second.close()


async def settled(c: ng.Client, stream: str, name: str) -> bool:
    """Durable ``name`` has nothing left to deliver and nothing awaiting an ack."""
    return any(
        d.name == name and d.pending == 0 and d.ack_pending == 0 for d in await c.durables(stream)
    )


async def test_reconnect_rebinds_and_redelivers(gateway: Restartable, nc: NATS) -> None:
    """The gateway goes away with a message unacked: the client rebinds the durable by
    name on the new gateway and its handler gets the message again (``delivery`` 2, the
    same ``seq``: no dedupe by sequence); the old copy can no longer be acked."""
    stream, p = await notify_stream(nc)
    user = await user_of(gateway, stream, f"{p}.>")
    client = await open_client(gateway.ws_url, user)
    got: Collect[ng.JsMessage] = Collect()
    try:
        async with asyncio.timeout(3 * T):
            sub = await client.js_subscribe(
                stream, got, durable="dev1", ack="explicit", ack_wait_ms=ACK_WAIT_MS
            )
        await notify(nc, f"{p}.x", "hello")
        (first,) = await got.count(1)
        assert first.delivery == 1
        reconnected = expect(client, "reconnect")
        await gateway.stop()
        await gateway.start()
        await within(reconnected, 3 * T)
        with pytest.raises(ng.NatsgateError) as info:
            await first.ack()  # delivered on a connection that is gone
        assert info.value.code == "disconnected"
        second = (await got.count(2, 3 * T))[1]
        assert (second.seq, second.delivery) == (first.seq, 2)
        assert sub.state is ng.SubState.ACTIVE
        await second.ack()
        await notify(nc, f"{p}.x", "after")
        third = (await got.count(3))[2]
        assert third.payload == {"text": "after"} and third.delivery == 1
        await third.ack()
    finally:
        await client.close()


async def test_nak_redelivers_and_term_never_again(gateway: Restartable, nc: NATS) -> None:
    stream, p = await notify_stream(nc)
    user = await user_of(gateway, stream, f"{p}.>")
    client = await open_client(gateway.ws_url, user)
    got: Collect[ng.JsMessage] = Collect()
    try:
        async with asyncio.timeout(3 * T):
            await client.js_subscribe(
                stream, got, durable="jobs", ack="explicit", ack_wait_ms=60_000
            )
        await notify(nc, f"{p}.x", "later", "now", "never")
        later, now, never = await got.count(3)
        loop = asyncio.get_running_loop()
        nakked_at = loop.time()
        await later.nak(delay_ms=1000)
        await now.nak()
        await never.term()
        again = await got.until(lambda ms: len(ms) >= 5, 3 * T)
        assert [(m.payload["text"], m.delivery) for m in again[3:]] == [("now", 2), ("later", 2)]
        assert loop.time() - nakked_at >= 0.9  # "later" waited for its delay
        for m in again[3:]:
            await m.ack()
        with pytest.raises(ng.NatsgateError) as info:
            await never.ack()  # settled once already
        assert info.value.code == "bad_request"
        # NATS holds nothing more for this durable: the termed message is gone for good
        await eventually(lambda: settled(client, stream, "jobs"), 3 * T)
        await notify(nc, f"{p}.x", "sentinel")
        last = (await got.count(6))[5]
        assert last.payload == {"text": "sentinel"} and len(got.items) == 6
        await last.ack()
    finally:
        await client.close()


async def test_durables_listed_unbound_kept_deleted_gone(gateway: Restartable, nc: NATS) -> None:
    stream, p = await notify_stream(nc)
    user = await user_of(gateway, stream, f"{p}.>")
    await notify(nc, f"{p}.a", "a1", "a2")
    client = await open_client(gateway.ws_url, user)
    try:
        a: Collect[ng.JsMessage] = Collect()
        async with asyncio.timeout(3 * T):
            sub_a = await client.js_subscribe(
                stream, a, durable="a", ack="explicit", filter=f"{p}.a", start_seq=1
            )
            sub_b = await client.js_subscribe(stream, lambda m: None, durable="b")
        await a.count(2)
        listed = await client.durables(stream)
        assert [(d.name, d.filter) for d in listed] == [("a", f"{p}.a"), ("b", None)]
        assert listed[0].ack_pending == 2 and listed[0].pending == 0
        assert isinstance(listed[0], ng.DurableInfo)

        with pytest.raises(ng.NatsgateError) as info:  # the same durable twice
            await client.js_subscribe(stream, lambda m: None, durable="a", filter=f"{p}.a")
        assert info.value.code == "bad_request"

        await sub_b.unsubscribe()  # unbinds: the durable stays
        assert sub_b.state is ng.SubState.ENDED
        assert [d.name for d in await client.durables(stream)] == ["a", "b"]
        with pytest.raises(ng.NatsgateError) as info:  # another filter needs reset
            await client.js_subscribe(stream, lambda m: None, durable="b", filter=f"{p}.b")
        assert info.value.code == "bad_request"
        fresh = await client.js_subscribe(
            stream, lambda m: None, durable="b", filter=f"{p}.b", reset=True
        )
        assert fresh.reply_data["durable"] == "b"
        assert [(d.name, d.filter) for d in await client.durables(stream)] == [
            ("a", f"{p}.a"),
            ("b", f"{p}.b"),
        ]

        await sub_a.unsubscribe(delete=True)
        assert sub_a.state is ng.SubState.ENDED and sub_a not in client.subscriptions
        await client.delete_durable(stream, "b")
        assert fresh.ended
        assert await client.durables(stream) == []
    finally:
        await client.close()


async def test_two_users_same_durable_name_are_isolated(gateway: Restartable, nc: NATS) -> None:
    """Alice's and Bob's "inbox" are two durables: each gets its own notifications, lists
    only its own, and deleting one leaves the other."""
    stream, p = await notify_stream(nc)
    alice = await user_of(gateway, stream, f"{p}.alice")
    bob = await user_of(gateway, stream, f"{p}.bob")
    ca = await open_client(gateway.ws_url, alice)
    cb = await open_client(gateway.ws_url, bob)
    try:
        got_a: Collect[ng.JsMessage] = Collect()
        got_b: Collect[ng.JsMessage] = Collect()
        async with asyncio.timeout(3 * T):
            await ca.js_subscribe(
                stream, got_a, durable="inbox", ack="explicit", filter=f"{p}.alice"
            )
            sub_b = await cb.js_subscribe(
                stream, got_b, durable="inbox", ack="explicit", filter=f"{p}.bob"
            )
        await notify(nc, f"{p}.alice", "for alice")
        await notify(nc, f"{p}.bob", "for bob")
        assert texts(await got_a.count(1)) == ["for alice"]
        assert texts(await got_b.count(1)) == ["for bob"]
        await got_a.items[0].ack()
        with pytest.raises(ng.NatsgateError) as info:  # Bob cannot ack Alice's message
            await cb.js_ack(stream, "inbox", got_a.items[0].seq)
        assert info.value.code == "bad_request"
        assert [(d.name, d.filter) for d in await ca.durables(stream)] == [("inbox", f"{p}.alice")]
        assert [(d.name, d.filter) for d in await cb.durables(stream)] == [("inbox", f"{p}.bob")]

        await sub_b.unsubscribe(delete=True)
        assert await cb.durables(stream) == []
        assert [d.name for d in await ca.durables(stream)] == ["inbox"]
        await notify(nc, f"{p}.alice", "still here")
        assert texts(await got_a.count(2)) == ["for alice", "still here"]
        await got_a.items[1].ack()
        with pytest.raises(ng.NatsgateError) as info:  # Bob's grant does not cover Alice's
            await cb.js_subscribe(stream, lambda m: None, durable="other", filter=f"{p}.alice")
        assert info.value.code == "forbidden"
        with pytest.raises(ng.NatsgateError) as info:  # nor the whole stream
            await cb.js_subscribe(stream, lambda m: None, durable="whole")
        assert info.value.code == "forbidden"
    finally:
        await ca.close()
        await cb.close()


async def test_revocation_ends_the_binding_and_keeps_the_durable(
    gateway: Restartable, nc: NATS
) -> None:
    stream, p = await notify_stream(nc)
    user = await user_of(gateway, stream, f"{p}.>")
    assert gateway.gw is not None
    client = await open_client(gateway.ws_url, user)
    try:
        async with asyncio.timeout(3 * T):
            lost = await client.js_subscribe(stream, lambda m: None, durable="a", filter=f"{p}.a")
            kept = await client.js_subscribe(stream, lambda m: None, durable="b", filter=f"{p}.b")
        update = expect(client, "cap_update", lambda u: u.revoked)
        await gateway.gw.set_caps(user, {"streams": {stream: [f"{p}.b"]}})
        upd = await within(update)
        assert upd.ended == [lost] and lost.state is ng.SubState.REVOKED
        assert kept.state is ng.SubState.ACTIVE and client.subscriptions == [kept]
        assert [d.name for d in await client.durables(stream)] == ["a", "b"]
    finally:
        await client.close()
