"""Durable subscriptions and acknowledgements (docs/protocol.md, "Durable subscriptions"),
on a real nats-server and real gateways: the position lives on the server, messages not
acked come again, acked ones never, and no user reaches another's durable."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from nats.aio.client import Client as NATS

from natsgate import protocol as p
from natsgate.durables import consumer_name, durable_of
from natsgate.errors import ProtocolError

from .conftest import connect, unique
from .helpers import Gw, T, WsClient


async def _stream(nc: NATS) -> tuple[str, str]:
    """A fresh stream ``S`` on subjects ``<prefix>.>``."""
    name, prefix = unique("D"), unique("n")
    await nc.jetstream().add_stream(name=name, subjects=[f"{prefix}.>"])
    return name, prefix


async def _user(gw: Gw, stream: str) -> str:
    user = unique("u")
    await gw.set_caps(user, {"streams": {stream: [">"]}})
    return user


async def _publish(nc: NATS, subject: str, n: int, start: int = 0) -> None:
    js = nc.jetstream()
    for i in range(start, start + n):
        await js.publish(subject, json.dumps({"n": i}).encode())


async def _msgs(c: WsClient, n: int, timeout: float = T) -> list[dict[str, Any]]:
    return [await c.expect(op="msg", timeout=timeout) for _ in range(n)]


async def _ack(c: WsClient, stream: str, durable: str, seq: int) -> None:
    """Fire and forget, as a browser acks (no inbox: no reply, no flush per ack)."""
    env = {"op": "js_ack", "target": stream, "data": {"durable": durable, "seq": seq}}
    await c.send_raw(json.dumps(env))


# ------------------------------------------------------------------------------- pure


def test_ops_decode_and_conflicts_are_bad_requests() -> None:
    ok = list(p.decode_frame(b'{"op":"js_ack","target":"S","data":{"durable":"d","seq":3}}'))
    assert isinstance(ok[0], p.JsAck) and ok[0].data.seq == 3
    for bad in (
        '{"op":"js_sub","target":"S","data":{"ack":"explicit"}}',
        '{"op":"js_sub","target":"S","data":{"durable":"a.b"}}',
        '{"op":"js_sub","target":"S","data":{"durable":"' + "x" * 33 + '"}}',
        '{"op":"js_sub","target":"S","data":{"durable":"d","ack_wait_ms":10}}',
        '{"op":"js_ack","target":"S","data":{"durable":"d","seq":1,"nak":true,"term":true}}',
        '{"op":"js_ack","target":"S","data":{"durable":"d","seq":1,"delay_ms":5}}',
        '{"op":"js_unsub","target":"S","data":{"delete":true}}',
    ):
        (err,) = list(p.decode_frame(bad.encode()))
        assert isinstance(err, ProtocolError) and err.code.value == "bad_request", bad


def test_consumer_names_cannot_collide_across_users() -> None:
    a, b = consumer_name("alice", "inbox"), consumer_name("bob", "inbox")
    assert a != b and durable_of("alice", a) == "inbox" and durable_of("bob", a) is None
    # a user id that ends like another's prefix cannot reach it either
    assert durable_of("alice_", consumer_name("alice", "_x")) is None
    assert all(ch not in consumer_name("a/b\\c", "d") for ch in "./\\*> ")


# ------------------------------------------------------------------------- end to end


async def test_unacked_messages_come_again_and_acked_ones_never(gw: Gw, nc: NATS) -> None:
    stream, prefix = await _stream(nc)
    user = await _user(gw, stream)
    sub = {"durable": "inbox", "ack": "explicit", "start_seq": 1, "ack_wait_ms": 1000}
    c = await connect(gw, user)
    reply = await c.ok("js_sub", stream, sub)
    assert reply["data"]["durable"] == "inbox" and reply["data"]["ack_pending"] == 0
    await _publish(nc, f"{prefix}.a", 3)
    got = await _msgs(c, 3)
    assert [m["data"]["seq"] for m in got] == [1, 2, 3]
    assert all(m["durable"] == "inbox" and m["data"]["delivery"] == 1 for m in got)
    for seq in (1, 3):
        await c.ok("js_ack", stream, {"durable": "inbox", "seq": seq})
    err = await c.error("js_ack", stream, {"durable": "inbox", "seq": 1})  # acked already
    assert err["code"] == "bad_request"
    await c.close()  # killed before acking 2

    c = await connect(gw, user)  # another connection, same durable: no start position
    reply = await c.ok("js_sub", stream, {"durable": "inbox", "ack": "explicit"})
    again = await c.expect(op="msg", timeout=3 * T)  # after the disconnect, or ack_wait
    assert again["data"]["seq"] == 2 and again["data"]["delivery"] >= 2
    await c.ok("js_ack", stream, {"durable": "inbox", "seq": 2})
    await _publish(nc, f"{prefix}.a", 1, start=3)
    nxt = await c.expect(op="msg")
    assert nxt["data"]["seq"] == 4 and nxt["data"]["delivery"] == 1  # 1 and 3 never again
    await c.close()


async def test_nak_with_delay_redelivers_and_term_never(gw: Gw, nc: NATS) -> None:
    stream, prefix = await _stream(nc)
    user = await _user(gw, stream)
    c = await connect(gw, user)
    await c.ok("js_sub", stream, {"durable": "d", "ack": "explicit", "start_seq": 1})
    await _publish(nc, f"{prefix}.a", 2)
    first = await _msgs(c, 2)
    assert [m["data"]["seq"] for m in first] == [1, 2]
    await c.ok("js_ack", stream, {"durable": "d", "seq": 1, "nak": True, "delay_ms": 200})
    await c.ok("js_ack", stream, {"durable": "d", "seq": 2, "term": True})
    back = await c.expect(op="msg", timeout=3 * T)
    assert back["data"]["seq"] == 1 and back["data"]["delivery"] == 2
    await c.ok("js_ack", stream, {"durable": "d", "seq": 1})
    assert [e for e in await c.quiet(0.5) if e["op"] == "msg"] == []  # 2 terminated
    await c.close()


async def test_ack_none_counts_a_message_written_to_the_socket(gw: Gw, nc: NATS) -> None:
    stream, prefix = await _stream(nc)
    user = await _user(gw, stream)
    c = await connect(gw, user)
    await c.ok("js_sub", stream, {"durable": "feed", "start_seq": 1})
    await _publish(nc, f"{prefix}.a", 5)
    got = await _msgs(c, 5)
    assert all("delivery" not in m["data"] for m in got)
    assert (await c.error("js_ack", stream, {"durable": "feed", "seq": 1}))["code"] == (
        "bad_request"
    )
    await asyncio.sleep(0.2)  # the gateway's acks reach NATS
    await c.close()
    c = await connect(gw, user)
    reply = await c.ok("js_sub", stream, {"durable": "feed"})
    assert reply["data"]["pending"] == 0 and reply["data"]["ack_pending"] == 0
    await _publish(nc, f"{prefix}.a", 1, start=5)
    assert (await c.expect(op="msg"))["data"]["seq"] == 6
    await c.close()


async def test_users_never_reach_each_others_durables(gw: Gw, nc: NATS) -> None:
    stream, prefix = await _stream(nc)
    alice, bob = await _user(gw, stream), await _user(gw, stream)
    a, b = await connect(gw, alice), await connect(gw, bob)
    await a.ok("js_sub", stream, {"durable": "inbox", "ack": "explicit", "start_seq": 1})
    await _publish(nc, f"{prefix}.a", 2)
    assert [m["data"]["seq"] for m in await _msgs(a, 2)] == [1, 2]
    await a.ok("js_ack", stream, {"durable": "inbox", "seq": 1})
    # bob's "inbox" is his own, from its own start: alice's position is not his
    await b.ok("js_sub", stream, {"durable": "inbox", "ack": "explicit", "start_seq": 2})
    assert (await b.expect(op="msg"))["data"]["seq"] == 2
    # bob cannot ack, list or delete alice's
    assert (await b.error("js_ack", stream, {"durable": "other", "seq": 1}))["code"] == (
        "bad_request"
    )
    listed = (await b.ok("js_durables", stream))["data"]["durables"]
    assert [d["name"] for d in listed] == ["inbox"] and listed[0]["ack_pending"] == 1
    await b.ok("js_unsub", stream, {"durable": "inbox", "delete": True})
    listed = (await a.ok("js_durables", stream))["data"]["durables"]
    assert [d["name"] for d in listed] == ["inbox"]  # alice's is still there
    assert listed[0]["ack_pending"] == 1  # seq 2 delivered to alice, not acked
    info = await nc.jetstream().consumer_info(stream, consumer_name(alice, "inbox"))
    assert info.config.metadata["natsgate_user"] == alice
    for c in (a, b):
        await c.close()


async def test_a_filter_is_fixed_unless_reset(gw: Gw, nc: NATS) -> None:
    stream, prefix = await _stream(nc)
    user = await _user(gw, stream)
    c = await connect(gw, user)
    await c.ok("js_sub", stream, {"durable": "d", "filter": f"{prefix}.a", "start_seq": 1})
    await c.ok("js_unsub", stream, {"durable": "d"})
    err = await c.error("js_sub", stream, {"durable": "d", "filter": f"{prefix}.b"})
    assert err["code"] == "bad_request" and "reset" in err["message"]
    await _publish(nc, f"{prefix}.b", 1)
    await c.ok(
        "js_sub", stream, {"durable": "d", "filter": f"{prefix}.b", "reset": True, "start_seq": 1}
    )
    assert (await c.expect(op="msg"))["data"]["subject"] == f"{prefix}.b"
    await c.close()


async def test_revocation_ends_the_binding_and_keeps_the_durable(gw: Gw, nc: NATS) -> None:
    stream, prefix = await _stream(nc)
    user = await _user(gw, stream)
    c = await connect(gw, user)
    await c.ok("js_sub", stream, {"durable": "d", "ack": "explicit", "start_seq": 1})
    await gw.set_caps(user, {})
    update = await c.expect(op="cap_update")
    assert update["data"]["revoked"] == [{"op": "js_sub", "target": stream, "durable": "d"}]
    await _publish(nc, f"{prefix}.a", 1)
    assert [e for e in await c.quiet(0.3) if e["op"] == "msg"] == []
    info = await nc.jetstream().consumer_info(stream, consumer_name(user, "d"))
    # kept, with the message not acked: waiting, or (taken by a pull the binding left
    # open) back after ack_wait
    assert info.num_pending + info.num_ack_pending == 1 and info.ack_floor.stream_seq == 0
    await c.close()


async def test_durables_per_user_are_limited(make_gw: Any, nc: NATS) -> None:
    gw: Gw = await make_gw(max_durables_per_user=2)
    stream, _ = await _stream(nc)
    user = await _user(gw, stream)
    c = await connect(gw, user)
    for name in ("a", "b"):
        await c.ok("js_sub", stream, {"durable": name})
    assert (await c.error("js_sub", stream, {"durable": "c"}))["code"] == "limit"
    await c.ok("js_sub", stream, {"durable": "a"})  # an existing one binds again
    await c.close()


async def test_durables_past_the_first_page_of_consumers_count(make_gw: Any, nc: NATS) -> None:
    """JetStream lists consumers a page at a time (256 infos, 1,024 names): a user's
    durables behind 1,100 other consumers are still listed and still count towards the
    limit (read from the first page only, they were neither)."""
    gw: Gw = await make_gw(max_durables_per_user=2)
    stream, prefix = unique("D"), unique("n")
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{prefix}.>"], max_consumers=2000)
    # names that sort before every "ng_..." consumer, so the user's come last
    for i in range(1100):
        await js.add_consumer(stream, durable_name=f"a{i:04d}")
    user = await _user(gw, stream)
    c = await connect(gw, user)
    for name in ("x", "y"):
        await c.ok("js_sub", stream, {"durable": name})
    assert (await c.error("js_sub", stream, {"durable": "z"}))["code"] == "limit"
    listed = (await c.ok("js_durables", stream))["data"]["durables"]
    assert [d["name"] for d in listed] == ["x", "y"]
    await c.close()


async def test_many_js_durables_at_once_share_listings(gw: Gw, nc: NATS) -> None:
    """20 connections of one user asking js_durables 10 times each (a connection's ops
    run one after another): every one answered with the durables made before it, by far
    fewer listings and consumer infos than one each per request (one at a time, shared
    by everyone waiting)."""
    stream, _ = await _stream(nc)
    user = await _user(gw, stream)
    conns = [await connect(gw, user) for _ in range(20)]
    names = ["d0", "d1", "d2", "d3", "d4"]
    for name in names:
        await conns[0].ok("js_sub", stream, {"durable": name})
    asked = infos = 0

    async def count(msg: Any) -> None:
        nonlocal asked
        asked += 1

    async def count_info(msg: Any) -> None:
        nonlocal infos
        infos += 1

    # LIST or NAMES: a listing of the stream's consumers; INFO: one consumer's
    sub = await nc.subscribe(f"$JS.API.CONSUMER.*.{stream}", cb=count)
    sub_info = await nc.subscribe(f"$JS.API.CONSUMER.INFO.{stream}.*", cb=count_info)
    await nc.flush()
    frame = "\n".join(
        json.dumps({"op": "js_durables", "target": stream, "inbox": f"q{i}"}) for i in range(10)
    )
    await asyncio.gather(*(c.send_raw(frame) for c in conns))
    for c in conns:
        replies = [await c.expect(op="reply") for _ in range(10)]
        assert [r["inbox"] for r in replies] == [f"q{i}" for i in range(10)]
        assert all([d["name"] for d in r["data"]["durables"]] == names for r in replies)
    await nc.flush()
    assert 1 <= asked <= 100, asked  # one listing per request: 200
    assert 5 <= infos <= 500, infos  # five per request: 1,000
    await sub.unsubscribe()
    await sub_info.unsubscribe()
    for c in conns:
        await c.close()


async def test_another_device_on_another_gateway_continues(make_gw: Any, nc: NATS) -> None:
    """Connection A reads 10 of 20 and closes; connection B, on another gateway,
    continues at 11."""
    a_gw: Gw = await make_gw()
    b_gw: Gw = await make_gw()
    stream, prefix = await _stream(nc)
    user = await _user(a_gw, stream)
    await _publish(nc, f"{prefix}.a", 20)
    sub = {"durable": "phone", "ack": "explicit", "batch": 10, "start_seq": 1}
    a = await connect(a_gw, user)
    await a.ok("js_sub", stream, sub)
    for m in await _msgs(a, 10):
        await a.ok("js_ack", stream, {"durable": "phone", "seq": m["data"]["seq"]})
    await a.close()
    b = await connect(b_gw, user)
    await b.ok("js_sub", stream, {"durable": "phone", "ack": "explicit", "batch": 10})
    # what A was handed and never acked comes back at once (order within it is not kept)
    assert sorted(m["data"]["seq"] for m in await _msgs(b, 10)) == list(range(11, 21))
    await b.close()


async def test_1000_messages_through_a_client_that_keeps_disconnecting(gw: Gw, nc: NATS) -> None:
    """Every message acked exactly once as the client sees it, none lost, and nothing
    acked ever delivered again, while the client drops its connection at random points
    (with messages delivered and not yet acked)."""
    stream, prefix = await _stream(nc)
    user = await _user(gw, stream)
    total = 1000
    await _publish(nc, f"{prefix}.a", total)
    rng = random.Random(11)
    acked: set[int] = set()
    redelivered_after_ack = 0
    sub = {"durable": "d", "ack": "explicit", "batch": 50, "start_seq": 1, "ack_wait_ms": 5000}
    rounds = stalls = 0
    while len(acked) < total and rounds < 200:
        rounds += 1
        c = await connect(gw, user)
        await c.ok("js_sub", stream, sub)
        budget = rng.randint(1, 120)  # how many messages before this connection dies
        try:
            while budget > 0 and len(acked) < total:
                try:
                    m = await c.expect(op="msg", timeout=T)
                except TimeoutError:
                    stalls += 1  # held by a pull that died with a connection: ack_wait
                    break
                seq = m["data"]["seq"]
                budget -= 1
                if seq in acked:
                    redelivered_after_ack += 1
                    continue
                if budget == 0 and rng.random() < 0.5:
                    break  # dies holding this one, not acked
                await _ack(c, stream, "d", seq)
                acked.add(seq)
        finally:
            await c.close()
    assert acked == set(range(1, total + 1)), f"missing {total - len(acked)}"
    assert redelivered_after_ack == 0


async def test_a_refused_durable_is_never_made_nor_reset(gw: Gw, nc: NATS) -> None:
    """The capability check comes before anything is made or deleted on NATS: a durable
    the user may not read (no filter, while only one subject is granted) leaves nothing
    behind, and a refused ``reset`` keeps the durable there is."""
    stream, prefix = await _stream(nc)
    user = unique("u")
    await gw.set_caps(user, {"streams": {stream: [f"{prefix}.mine"]}})
    c = await connect(gw, user)
    assert (await c.error("js_sub", stream, {"durable": "whole"}))["code"] == "forbidden"
    flt = {"durable": "d", "filter": f"{prefix}.mine", "start_seq": 1}
    await c.ok("js_sub", stream, flt)
    await c.ok("js_unsub", stream, {"durable": "d"})
    err = await c.error("js_sub", stream, {"durable": "d", "reset": True})
    assert err["code"] == "forbidden"
    names = [d["name"] for d in (await c.ok("js_durables", stream))["data"]["durables"]]
    assert names == ["d"]
    await c.close()
