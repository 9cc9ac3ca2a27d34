"""natsgate.client against a real nats-server and real gateways (and its pure rules).

Gateways that must go away and come back on the same port are started here by hand, so a
test can stop one and start the next. Every wait is for an event, bounded by ``T``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StorageType

from natsgate import client as ng
from natsgate.auth import mint_token
from natsgate.client.durable import DurableSubscription
from natsgate.client.registry import Registry
from natsgate.client.subscriptions import CoreSubscription, JsSubscription, KvSubscription
from natsgate.client.wire import RevokedWire, decode_durables, decode_envelope
from natsgate.config import Config
from natsgate.natsrunner import NatsServer

from .conftest import SECRET, unique
from .helpers import Gw, T, eventually, nats_subscriptions, start_gateway

X = TypeVar("X")

FAST: dict[str, Any] = {"min_backoff": 0.05, "max_backoff": 0.5}  # reconnect quickly


def tok(user: str, ttl: float = 3600) -> str:
    return mint_token(user, SECRET, ttl)


class Collect(Generic[X]):
    """A handler that keeps what it is given, and waits for more of it."""

    def __init__(self) -> None:
        self.items: list[X] = []
        self._changed = asyncio.Event()

    def __call__(self, item: X) -> None:
        self.items.append(item)
        self._changed.set()

    async def until(self, pred: Callable[[list[X]], bool], limit: float = T) -> list[X]:
        async with asyncio.timeout(limit):
            while not pred(self.items):
                self._changed.clear()
                await self._changed.wait()
        return self.items

    async def count(self, n: int, limit: float = T) -> list[X]:
        return await self.until(lambda items: len(items) >= n, limit)


def expect(
    client: ng.Client, event: str, pred: Callable[[Any], bool] = lambda _: True
) -> asyncio.Future[Any]:
    """A future for the next ``event`` that satisfies ``pred``; register before acting."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on(arg: Any) -> None:
        if not fut.done() and pred(arg):
            fut.set_result(arg)
            remove()

    remove = client.on(event, on)  # type: ignore[call-overload]
    return fut


async def within(fut: asyncio.Future[X] | asyncio.Task[X], limit: float = T) -> X:
    async with asyncio.timeout(limit):
        return await fut


class Restartable:
    """A gateway that can be stopped and started again on the same port."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.gw: Gw | None = None
        self.port = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> Gw:
        self.gw = await start_gateway(dataclasses.replace(self.config, port=self.port))
        self.port = self.gw.port
        return self.gw

    async def stop(self) -> None:
        gw, self.gw = self.gw, None
        if gw is not None:
            await gw.stop()


@pytest_asyncio.fixture
async def gateway(config: Config) -> AsyncIterator[Restartable]:
    r = Restartable(config)
    await r.start()
    yield r
    await r.stop()


async def open_client(url: str, user: str, **kw: Any) -> ng.Client:
    if "token_provider" not in kw:
        kw.setdefault("token", tok(user))
    return await ng.connect(url, **FAST, **kw)


# --------------------------------------------------------------------------- pure


def test_backoff_full_jitter_capped() -> None:
    assert ng.backoff_delay(0, 0.25, 10.0, rand=0.0) == 0.25
    assert ng.backoff_delay(0, 0.25, 10.0, rand=0.999) < 0.5
    assert ng.backoff_delay(3, 0.25, 10.0, rand=0.5) == 0.25 + 0.5 * 2.0
    assert ng.backoff_delay(50, 0.25, 10.0, rand=0.999) == 10.0
    assert all(0.25 <= ng.backoff_delay(n, 0.25, 10.0) <= 10.0 for n in range(40))


def test_gateway_url() -> None:
    from natsgate.client.connection import gateway_url

    assert gateway_url("http://h:8080") == "ws://h:8080/ws"
    assert gateway_url("https://h/") == "wss://h/ws"
    assert gateway_url("ws://h:1/custom?x=1") == "ws://h:1/custom?x=1"


def test_close_codes() -> None:
    assert ng.close_action(1012) is ng.CloseAction.PROMPT
    assert ng.close_action(1013) is ng.CloseAction.BACKOFF
    assert ng.close_action(1000) is ng.CloseAction.BACKOFF
    assert ng.close_action(4001) is ng.CloseAction.AUTH
    assert ng.close_action(1008) is ng.CloseAction.STOP
    assert ng.close_action(None) is ng.CloseAction.BACKOFF
    assert ng.close_action(4002) is ng.CloseAction.BACKOFF


async def test_js_resume_position() -> None:
    """Where a re-subscribe starts: after the last sequence handed over, or after the
    stream's end at first subscribe for "new messages only" (protocol.md §3)."""
    c = ng.Client("ws://127.0.0.1:1/ws")

    def js(**kw: Any) -> JsSubscription:
        opts: dict[str, Any] = {"start_seq": None, "start_time": None, "batch": None}
        opts.update(kw)
        opts.setdefault("filter", None)
        return JsSubscription(c, "S", lambda m: None, **opts)

    s = js(start_seq=5, filter="a.*")
    assert s.wire().data == {"start_seq": 5, "filter": "a.*"}
    assert not s._accept(4) and s._accept(5) and not s._accept(5) and s._accept(7)
    assert s.last_seq == 7 and s.wire().data == {"start_seq": 8, "filter": "a.*"}

    new_only = js(batch=10)
    assert new_only.wire().data == {"batch": 10}
    new_only._on_reply({"ok": True, "first_seq": 1, "last_seq": 41})
    assert new_only.wire().data == {"start_seq": 42, "batch": 10}

    by_time = js(start_time="2026-01-02T03:04:05+00:00")
    by_time._on_reply({"ok": True, "last_seq": 9})
    assert by_time.wire().data == {"start_time": "2026-01-02T03:04:05+00:00"}
    assert by_time._accept(3) and by_time.wire().data == {"start_seq": 4}


async def test_frames_are_split_and_routed_without_a_socket() -> None:
    """A batched frame: each ``msg`` to the subscription its ``sub`` names (core pattern,
    KV key pattern, JetStream filter or none), revisions and sequences only going up,
    markers, base64 payloads; frames without ``sub`` (an older gateway) by matching."""
    c = ng.Client("ws://127.0.0.1:1/ws")
    core: Collect[ng.Message] = Collect()
    wide: Collect[ng.KvEvent] = Collect()
    narrow: Collect[ng.KvEvent] = Collect()
    room: Collect[ng.JsMessage] = Collect()
    every: Collect[ng.JsMessage] = Collect()
    c._subs.add(CoreSubscription(c, "a.*", core))
    c._subs.add(KvSubscription(c, "b", None, wide))
    c._subs.add(KvSubscription(c, "b", "k.x.>", narrow))
    opts: dict[str, Any] = {"start_seq": None, "start_time": None, "batch": None}
    c._subs.add(JsSubscription(c, "S", room, filter="s.1", **opts))
    c._subs.add(JsSubscription(c, "S", every, filter=None, **opts))

    def kv(sub: str | None, key: str, rev: int, **more: Any) -> dict[str, Any]:
        env = {"op": "msg", "target": "kv:b", "data": {"key": key, "revision": rev, **more}}
        return env if sub is None else {**env, "sub": sub}

    def js(sub: str | None, seq: int, subject: str) -> dict[str, Any]:
        env = {"op": "msg", "target": "js:S", "data": {"seq": seq, "subject": subject}}
        return env if sub is None else {**env, "sub": sub}

    lines = [
        {"op": "msg", "target": "a.b", "sub": "a.*", "data": {"n": 1}},
        {"op": "msg", "target": "a.b", "sub": "a.>", "data": "not ours"},
        {"op": "msg", "target": "a.c", "sub": "a.*", "data": "/wA=", "enc": "base64"},
        kv("k.x.>", "k.x.1", 5, op="PUT", value=1, snapshot=True),
        kv(">", "k.x.1", 5, op="PUT", value=1, snapshot=True),
        kv(">", "k.x.1", 5, op="PUT", value=1, snapshot=True),  # not again
        kv(">", "k.y", 6, op="DEL", value=None),
        {
            "op": "msg",
            "target": "kv:b",
            "sub": "k.x.>",
            "data": {"op": "RESYNC", "pattern": "k.x.>"},
        },
        kv("k.x.>", "k.x.1", 5, op="PUT", value="AQ==", enc="base64", snapshot=True),
        kv(None, "k.x.2", 7, op="PUT", value=2),
        js("s.1", 3, "s.1"),
        js("s.1", 3, "s.1"),  # not again
        js(None, 3, "s.1"),
        js(None, 4, "s.2"),
        js("s.1", 5, "s.1"),
        {"op": "future_op"},
    ]
    c._on_frame("\n".join(json.dumps(x) for x in lines).encode() + b"\n")
    assert [(m.subject, m.data) for m in core.items] == [("a.b", {"n": 1}), ("a.c", b"\xff\x00")]
    assert [(e.op, e.key, e.revision) for e in wide.items] == [
        ("PUT", "k.x.1", 5),
        ("DEL", "k.y", 6),
        ("PUT", "k.x.2", 7),
    ]
    assert [(e.op, e.key, e.value, e.snapshot) for e in narrow.items] == [
        ("PUT", "k.x.1", 1, True),
        ("RESYNC", "", None, False),
        ("PUT", "k.x.1", b"\x01", True),
        ("PUT", "k.x.2", 2, False),
    ]
    assert [m.seq for m in room.items] == [3, 5]
    assert [m.seq for m in every.items] == [3, 4]


class AckOwner:
    """What a durable needs from its client, without a socket: acks are recorded."""

    def __init__(self) -> None:
        self.acks: list[tuple[str, str, int, dict[str, Any]]] = []

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        return asyncio.create_task(coro, name=name)

    async def unsubscribe(self, sub: Any, *, delete: bool = False) -> None:
        pass

    async def js_ack(self, stream: str, durable: str, seq: int, **how: Any) -> None:
        self.acks.append((stream, durable, seq, how))


def durable_sub(owner: Any, handler: Any, **kw: Any) -> DurableSubscription:
    kw.setdefault("durable", "inbox")
    return DurableSubscription(owner, "S", handler, **kw)


async def test_durable_wire_and_checks() -> None:
    """A durable's js_sub names it, with no sequence bookkeeping; what makes it (start,
    reset) goes only until the first reply, so a rebind after a reconnect continues the
    durable (protocol: durable subscriptions)."""
    owner = AckOwner()
    s = durable_sub(
        owner, print, ack="explicit", ack_wait_ms=5000, filter="n.a", batch=10, start_seq=1
    )
    first = {
        "durable": "inbox",
        "ack": "explicit",
        "ack_wait_ms": 5000,
        "start_seq": 1,
        "batch": 10,
        "filter": "n.a",
    }
    assert s.wire().op == "js_sub" and s.wire().data == first
    assert s.key == ("js_durable", "S", "inbox")
    s._on_reply({"ok": True, "durable": "inbox", "pending": 3, "ack_pending": 0})
    del first["start_seq"]
    assert s.wire().data == first  # a rebind
    again = durable_sub(owner, print, reset=True, start_time="2026-01-02T03:04:05+00:00")
    made = {"durable": "inbox", "start_time": "2026-01-02T03:04:05+00:00", "reset": True}
    assert again.wire().data == made
    again._resending()  # the first reply never came: still to be made afresh
    assert again.wire().data == made
    again._on_reply({"ok": True, "durable": "inbox", "pending": 3, "ack_pending": 0})
    assert again.wire().data == {"durable": "inbox"}  # a rebind keeps the position
    assert again.unwire().data == {"durable": "inbox"}
    assert again.unwire(delete=True).data == {"durable": "inbox", "delete": True}

    for bad in ({"durable": ""}, {"durable": "a.b"}, {"durable": "x" * 33}):
        with pytest.raises(ng.NatsgateError) as info:
            durable_sub(owner, print, **bad)
        assert info.value.code == "bad_request"
    wrong: list[dict[str, Any]] = [{"ack": "all"}, {"ack_wait_ms": 999}, {"ack_wait_ms": 600_001}]
    for bad in wrong:
        with pytest.raises(ng.NatsgateError):
            durable_sub(owner, print, **bad)
    c = ng.Client("ws://127.0.0.1:1/ws")
    for plain in ({"ack": "explicit"}, {"ack_wait_ms": 5000}, {"reset": True}):
        with pytest.raises(ng.NatsgateError) as info:
            await c.js_subscribe("S", print, **plain)
        assert info.value.code == "bad_request"


async def test_durable_frames_are_routed_and_acked_without_a_socket() -> None:
    """A frame naming a durable goes to that durable only (not to a plain subscription
    with the same filter), redeliveries included; each message is settled once, and only
    while the connection it came on lasts."""
    owner = AckOwner()
    subs = Registry()
    inbox: Collect[ng.JsMessage] = Collect()
    other: Collect[ng.JsMessage] = Collect()
    plain: Collect[ng.JsMessage] = Collect()
    quiet: Collect[ng.JsMessage] = Collect()
    opts: dict[str, Any] = {"start_seq": None, "start_time": None, "batch": None}
    sub = subs.add(durable_sub(owner, inbox, ack="explicit", filter="n.a"))
    subs.add(durable_sub(owner, other, durable="other", ack="explicit", filter="n.a"))
    subs.add(durable_sub(owner, quiet, durable="quiet"))
    subs.add(JsSubscription(owner, "S", plain, filter="n.a", **opts))
    with pytest.raises(ng.NatsgateError):
        subs.add(durable_sub(owner, inbox))  # the same durable twice

    def msg(seq: int, delivery: int | None, durable: str | None = "inbox") -> None:
        data: dict[str, Any] = {"seq": seq, "subject": "n.a", "payload": {"n": seq}}
        if delivery is not None:
            data["delivery"] = delivery
        env: dict[str, Any] = {"op": "msg", "target": "js:S", "sub": "n.a", "data": data}
        if durable is not None:
            env["durable"] = durable
        subs.route(decode_envelope(json.dumps(env).encode()))

    msg(1, 1)
    msg(2, 1)
    msg(1, 2)  # redelivered: a durable drops nothing by sequence
    msg(1, 1, None)
    msg(3, 1, "other")
    msg(4, None, "quiet")
    msg(5, 1, "gone")  # a durable this client is not bound to
    assert [(m.seq, m.delivery, m.payload) for m in inbox.items] == [
        (1, 1, {"n": 1}),
        (2, 1, {"n": 2}),
        (1, 2, {"n": 1}),
    ]
    assert [m.seq for m in other.items] == [3] and [m.seq for m in plain.items] == [1]
    assert [(m.seq, m.delivery) for m in quiet.items] == [(4, None)]
    assert sub.last_seq == 2

    one, two, again = inbox.items
    await one.ack()
    await two.nak(delay_ms=5000)
    await again.term()
    await other.items[0].nak()
    assert owner.acks == [
        ("S", "inbox", 1, {}),
        ("S", "inbox", 2, {"nak": True, "delay_ms": 5000}),
        ("S", "inbox", 1, {"term": True}),
        ("S", "other", 3, {"nak": True}),
    ]
    for settle in (one.ack(), one.nak(), two.term()):  # each message once
        with pytest.raises(ng.NatsgateError) as info:
            await settle
        assert info.value.code == "bad_request"
    with pytest.raises(ng.NatsgateError) as info:
        await quiet.items[0].ack()  # ack "none": nothing to settle
    assert info.value.code == "bad_request"
    assert one == ng.JsMessage(1, "n.a", {"n": 1}, None, None, 1)  # acks are not compared

    msg(6, 1)
    sub._pause()  # the socket dropped: the gateway forgot what it delivered on it
    with pytest.raises(ng.NatsgateError) as info:
        await inbox.items[-1].ack()
    assert info.value.code == "disconnected" and len(owner.acks) == 4
    sub._resending()
    msg(6, 2)
    await inbox.items[-1].ack()
    assert owner.acks[-1] == ("S", "inbox", 6, {})
    msg(7, 1)
    subs.forget(sub)
    sub._end(ng.SubState.ENDED, None)
    with pytest.raises(ng.NatsgateError) as info:
        await inbox.items[-1].ack()
    assert info.value.code == "closed"


async def test_durables_reply_and_revocation() -> None:
    """``js_durables`` decodes to DurableInfo; a revocation naming a durable ends it, one
    naming only a stream and filter ends every subscription with them."""
    body = b'{"durables":[{"name":"inbox","filter":"n.a","pending":2,"ack_pending":1},'
    body += b'{"name":"all","pending":0,"ack_pending":0}]}'
    got = [(d.name, d.filter, d.pending, d.ack_pending) for d in decode_durables(body).durables]
    assert got == [("inbox", "n.a", 2, 1), ("all", None, 0, 0)]

    owner = AckOwner()
    subs = Registry()
    opts: dict[str, Any] = {"start_seq": None, "start_time": None, "batch": None}
    named = subs.add(durable_sub(owner, print, durable="a", filter="n.a"))
    same_filter = subs.add(durable_sub(owner, print, durable="b", filter="n.b"))
    plain = subs.add(JsSubscription(owner, "S", print, filter="n.b", **opts))
    kept = subs.add(durable_sub(owner, print, durable="c", filter="n.c"))
    revoked = [
        RevokedWire("js_sub", "S", filter="n.a", durable="a"),
        RevokedWire("js_sub", "S", filter="n.b"),
    ]
    update = subs.revoke({}, revoked)
    assert update.revoked == [
        {"op": "js_sub", "target": "S", "filter": "n.a", "durable": "a"},
        {"op": "js_sub", "target": "S", "filter": "n.b"},
    ]
    assert update.ended == [named, plain, same_filter]
    assert all(s.state is ng.SubState.REVOKED for s in update.ended)
    assert list(subs) == [kept] and subs.durable("S", "c") is kept


# --------------------------------------------------------------------------- live


async def test_refused_upgrade_is_an_error_from_connect(gateway: Restartable) -> None:
    with pytest.raises(ng.NatsgateError) as info:
        await ng.connect(gateway.ws_url, token="not-a-jwt", **FAST)
    assert info.value.code == "unauthorized"


async def test_subscribe_publish_roundtrip(gateway: Restartable, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    assert gateway.gw is not None
    caps = {"subjects": [f"{p}.>"], "publish": [f"{p}.>"]}
    await gateway.gw.set_caps(user, caps)
    client = await open_client(gateway.ws_url, user)
    try:
        assert client.state is ng.ClientState.OPEN
        assert client.caps["subjects"] == [f"{p}.>"]
        got: Collect[ng.Message] = Collect()
        sub = await client.subscribe(f"{p}.*", got)
        assert sub.state is ng.SubState.ACTIVE

        seen: list[ng.Message] = []

        async def slow(m: ng.Message) -> None:  # async handlers run on their own worker
            await asyncio.sleep(0)
            seen.append(m)

        await client.subscribe(f"{p}.>", slow)
        await client.publish(f"{p}.room", {"text": "hi"})
        await nc.publish(f"{p}.bin", b"\xff\x00", headers={"X-Trace": "t1"})
        await got.count(2)
        identity: ng.Headers = {"Natsgate-User": user}  # the gateway sets it on all it sends
        assert got.items[0] == ng.Message(f"{p}.room", f"{p}.*", {"text": "hi"}, identity)
        assert got.items[1].data == b"\xff\x00"
        assert got.items[1].headers == {"X-Trace": "t1"}
        await eventually(lambda: len(seen) == 2)
        assert [m.pattern for m in seen] == [f"{p}.>", f"{p}.>"]

        await sub.unsubscribe()
        assert sub.state is ng.SubState.ENDED
        with pytest.raises(ng.NatsgateError) as info:
            await client.publish("elsewhere.x", 1)
        assert info.value.code == "forbidden"
    finally:
        await client.close()
    assert client.state is ng.ClientState.CLOSED


async def test_command_result_and_error_codes(gateway: Restartable, nc: NATS) -> None:
    user, p = unique("u"), unique("svc")
    assert gateway.gw is not None
    await gateway.gw.set_caps(user, {"commands": [f"{p}.>"]})

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    silent: asyncio.Queue[Msg] = asyncio.Queue()

    async def never(msg: Msg) -> None:
        await silent.put(msg)

    await nc.subscribe(f"{p}.echo", cb=echo)
    await nc.subscribe(f"{p}.silent", cb=never)
    await nc.flush()
    client = await open_client(gateway.ws_url, user)
    try:
        assert await client.command(f"{p}.echo", {"n": 1}) == {"n": 1}
        with pytest.raises(ng.NatsgateError) as info:
            await client.command(f"{p}.silent", "x", timeout=0.2)
        assert info.value.code == "timeout"
        with pytest.raises(ng.NatsgateError) as info:
            await client.command(f"{p}.nobody", "x")
        assert info.value.code == "no_responders"
        with pytest.raises(ng.NatsgateError) as info:
            await client.command("other.echo", "x")
        assert info.value.code == "forbidden"
        assert await client.command(f"{p}.echo", None) is None  # null in, null out
    finally:
        await client.close()


async def test_kv_hydration_then_live_changes(gateway: Restartable, nc: NATS) -> None:
    user, bucket = unique("u"), unique("todos")
    assert gateway.gw is not None
    kv = await nc.jetstream().create_key_value(bucket=bucket, storage=StorageType.MEMORY)
    await kv.put("user.alice.a", b'{"t": "a"}')
    await kv.put("user.alice.b", b"plain text")
    await kv.put("user.bob.c", b"{}")
    await gateway.gw.set_caps(user, {"buckets": {bucket: ["user.alice.>"]}})
    client = await open_client(gateway.ws_url, user)
    try:
        events: Collect[ng.KvEvent] = Collect()
        async with asyncio.timeout(3 * T):  # hydration
            sub = await client.kv_subscribe(bucket, "user.alice.>", events)
        # the current values arrived before kv_subscribe returned
        assert sorted((e.key, e.value, e.op, e.snapshot) for e in events.items) == [
            ("user.alice.a", {"t": "a"}, "PUT", True),
            ("user.alice.b", "plain text", "PUT", True),
        ]
        await kv.put("user.alice.a", b'{"t": "A"}')
        await kv.put("user.bob.c", b"1")  # outside the pattern
        await kv.delete("user.alice.b")
        live = (await events.count(4))[2:]
        assert [(e.op, e.key, e.value, e.snapshot) for e in live] == [
            ("PUT", "user.alice.a", {"t": "A"}, False),
            ("DEL", "user.alice.b", None, False),
        ]
        assert live[0].revision < live[1].revision
        await sub.unsubscribe()
        with pytest.raises(ng.NatsgateError) as info:
            await client.kv_subscribe(bucket, "user.bob.>", events)
        assert info.value.code == "forbidden"
    finally:
        await client.close()


async def test_js_subscribe_from_start_seq_and_gap(gateway: Restartable, nc: NATS) -> None:
    user, p, stream = unique("u"), unique("c"), unique("S")
    assert gateway.gw is not None
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{p}.>"], storage=StorageType.MEMORY)
    for i in range(1, 6):
        await js.publish(f"{p}.room", json.dumps({"i": i}).encode())
    await gateway.gw.set_caps(user, {"streams": {stream: [f"{p}.>"]}})
    client = await open_client(gateway.ws_url, user)
    try:
        got: Collect[ng.JsMessage] = Collect()
        async with asyncio.timeout(3 * T):
            sub = await client.js_subscribe(stream, got, start_seq=3, batch=2)
        assert sub.reply_data["first_seq"] == 1 and sub.reply_data["last_seq"] == 5
        assert not sub.gap
        await js.publish(f"{p}.other", b"\xff\x01")
        await got.count(4)
        assert [m.seq for m in got.items] == [3, 4, 5, 6]
        assert [m.payload for m in got.items[:3]] == [{"i": 3}, {"i": 4}, {"i": 5}]
        assert got.items[3].payload == b"\xff\x01" and got.items[3].subject == f"{p}.other"
        assert got.items[0].time and sub.last_seq == 6
        # an overlapping subscription on the same stream gets its own copy, in its order
        room: Collect[ng.JsMessage] = Collect()
        room_sub = await client.js_subscribe(stream, room, start_seq=1, filter=f"{p}.room")
        assert [m.seq for m in await room.count(5)] == [1, 2, 3, 4, 5]
        await js.publish(f"{p}.room", b"8")
        await room.count(6)
        await got.count(5)
        assert [m.seq for m in room.items] == [1, 2, 3, 4, 5, 7]
        assert [m.seq for m in got.items] == [3, 4, 5, 6, 7]
        with pytest.raises(ng.NatsgateError) as info:
            await client.js_subscribe(stream, got, filter=f"{p}.room")
        assert info.value.code == "bad_request"  # the same one twice
        await sub.unsubscribe()
        await room_sub.unsubscribe()

        await js.purge_stream(stream)
        await js.publish(f"{p}.room", b"7")
        gaps = expect(client, "gap")
        after: Collect[ng.JsMessage] = Collect()
        sub2 = await client.js_subscribe(stream, after, start_seq=1, filter=f"{p}.room")
        first = (await js.stream_info(stream)).state.first_seq
        assert sub2.gap and sub2.reply_data["first_seq"] == first == 8
        assert await within(gaps) is sub2
        assert [m.seq for m in await after.count(1)] == [8]
    finally:
        await client.close()


async def test_reconnect_resubscribes_and_resumes_without_gap_or_duplicate(
    gateway: Restartable, nc: NATS
) -> None:
    """The gateway goes away and a new one starts on the same port: the client
    reconnects with a fresh token, its core subscription works again, its JetStream
    subscription continues at last_seq + 1, and its KV watch re-hydrates between
    RESYNC and SYNCED, without what was deleted meanwhile."""
    user, p, stream, bucket = unique("u"), unique("r"), unique("S"), unique("kv")
    assert gateway.gw is not None
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{p}.js.>"], storage=StorageType.MEMORY)
    kv = await js.create_key_value(bucket=bucket, storage=StorageType.MEMORY)
    await kv.put("k.gone", b"1")
    await kv.put("k.stay", b"2")
    await gateway.gw.set_caps(
        user,
        {
            "subjects": [f"{p}.core.>"],
            "streams": {stream: [f"{p}.js.>"]},
            "buckets": {bucket: ["k.>"]},
        },
    )
    tokens: list[str] = []

    async def provider() -> str:
        tokens.append(tok(user))
        return tokens[-1]

    client = await open_client(gateway.ws_url, user, token_provider=provider)
    try:
        core: Collect[ng.Message] = Collect()
        seqs: Collect[ng.JsMessage] = Collect()
        keys: Collect[ng.KvEvent] = Collect()
        core_sub = await client.subscribe(f"{p}.core.*", core)
        async with asyncio.timeout(3 * T):
            js_sub = await client.js_subscribe(stream, seqs, start_seq=1, batch=3)
            kv_sub = await client.kv_subscribe(bucket, "k.>", keys)
        for i in range(5):
            await js.publish(f"{p}.js.a", str(i).encode())
        await seqs.count(5)
        await nc.publish(f"{p}.core.x", b"before")
        await core.count(1)

        disconnected = expect(client, "disconnect")
        reconnected = expect(client, "reconnect")
        await gateway.stop()
        info = await within(disconnected)
        assert info.code == 1012 and info.delay is not None
        assert client.state is ng.ClientState.RECONNECTING
        for i in range(5, 12):  # stored while the client is away
            await js.publish(f"{p}.js.b", str(i).encode())
        await kv.delete("k.gone")
        await kv.put("k.new", b"3")

        await gateway.start()
        await within(reconnected, 3 * T)
        assert len(tokens) >= 2  # a fresh token for the reconnect
        await eventually(
            lambda: all(s.state is ng.SubState.ACTIVE for s in (core_sub, js_sub, kv_sub)),
            3 * T,  # the KV watch re-hydrates
        )
        for i in range(12, 15):
            await js.publish(f"{p}.js.a", str(i).encode())
        await seqs.count(14)
        assert [m.seq for m in seqs.items] == list(range(1, 15))
        assert [m.payload for m in seqs.items] == list(range(14))
        assert js_sub.last_seq == 14

        await nc.publish(f"{p}.core.y", b"after")
        await core.count(2)
        assert [m.data for m in core.items] == ["before", "after"]

        # KV: the fresh snapshot between RESYNC and SYNCED is the whole truth
        marks = [i for i, e in enumerate(keys.items) if e.op in ("RESYNC", "SYNCED")]
        assert [keys.items[i].op for i in marks] == ["RESYNC", "SYNCED"]
        fresh = keys.items[marks[0] + 1 : marks[1]]
        assert sorted((e.key, e.value) for e in fresh) == [("k.new", 3), ("k.stay", 2)]
        assert all(e.snapshot for e in fresh)
    finally:
        await client.close()


async def test_revoked_subscription_is_not_restored(
    gateway: Restartable, nc: NATS, nats_server: NatsServer
) -> None:
    user, p = unique("u"), unique("v")
    assert gateway.gw is not None
    await gateway.gw.set_caps(user, {"subjects": [f"{p}.>"]})
    client = await open_client(gateway.ws_url, user)
    try:
        lost = await client.subscribe(f"{p}.lost", lambda m: None)
        kept = await client.subscribe(f"{p}.kept", lambda m: None)
        update = expect(client, "cap_update", lambda u: u.revoked)
        await gateway.gw.set_caps(user, {"subjects": [f"{p}.kept"]})
        upd = await within(update)
        assert upd.revoked == [{"op": "sub", "target": f"{p}.lost"}]
        assert upd.ended == [lost] and lost.state is ng.SubState.REVOKED
        assert kept.state is ng.SubState.ACTIVE

        # grant it again: a client that re-sent the revoked subscription would get it
        regrant = expect(client, "cap_update")
        await gateway.gw.set_caps(user, {"subjects": [f"{p}.>"]})
        await within(regrant)
        reconnected = expect(client, "reconnect")
        await gateway.stop()
        await gateway.start()
        await within(reconnected, 3 * T)
        await client.subscribe(f"{p}.sentinel", lambda m: None)  # after any re-sent sub
        assert kept.state is ng.SubState.ACTIVE
        assert lost.state is ng.SubState.REVOKED and lost not in client.subscriptions
        url = nats_server.monitor_url
        assert nats_subscriptions(url, f"{p}.kept") == 1
        assert nats_subscriptions(url, f"{p}.lost") == 0
    finally:
        await client.close()


async def test_inflight_command_fails_when_the_gateway_stops(
    gateway: Restartable, nc: NATS
) -> None:
    """A stopping gateway answers every command in flight (``internal``: may or may not
    have run) before it closes; the client never hangs."""
    user, p = unique("u"), unique("svc")
    assert gateway.gw is not None
    await gateway.gw.set_caps(user, {"commands": [f"{p}.>"]})
    arrived = asyncio.Event()

    async def hold(msg: Msg) -> None:
        arrived.set()  # and never answer

    await nc.subscribe(f"{p}.hold", cb=hold)
    await nc.flush()
    client = await open_client(gateway.ws_url, user)
    try:
        call = asyncio.create_task(client.command(f"{p}.hold", {}, timeout=20 * T))
        await within(asyncio.ensure_future(arrived.wait()))
        await gateway.stop()
        with pytest.raises(ng.NatsgateError) as info:
            await within(call)
        assert info.value.code == "internal"
    finally:
        await client.close()


async def test_expired_token_reconnects_with_provider(gateway: Restartable, nc: NATS) -> None:
    """Close code 4001 (token expired): reconnect with the provider's fresh token; without
    a provider the client is CLOSED and says why."""
    user, p = unique("u"), unique("x")
    assert gateway.gw is not None
    await gateway.gw.set_caps(user, {"subjects": [f"{p}.>"]})
    calls: list[int] = []

    async def provider() -> str:
        calls.append(1)
        return tok(user, ttl=2 if len(calls) == 1 else 3600)

    client = await open_client(gateway.ws_url, user, token_provider=provider, refresh_before=None)
    plain = await open_client(gateway.ws_url, user, token=tok(user, ttl=2))
    try:
        got: Collect[ng.Message] = Collect()
        await client.subscribe(f"{p}.a", got)
        errors = expect(plain, "error")
        reconnected = expect(client, "reconnect")
        await within(reconnected, 3 * T)
        err = await within(errors, 3 * T)
        assert err.code == "unauthorized"
        await eventually(lambda: plain.state is ng.ClientState.CLOSED)
        await eventually(lambda: all(s.state is ng.SubState.ACTIVE for s in client.subscriptions))
        await nc.publish(f"{p}.a", b"1")
        await got.count(1)
        with pytest.raises(ng.NatsgateError) as info:
            await plain.ready()
        assert info.value.code == "unauthorized"
    finally:
        await client.close()
        await plain.close()


async def test_token_is_refreshed_before_it_expires(gateway: Restartable, nc: NATS) -> None:
    """With a provider, the client sends a fresh token (the ``auth`` op) ahead of ``exp``:
    no 4001, no reconnect, the subscription keeps delivering."""
    user, p = unique("u"), unique("x")
    assert gateway.gw is not None
    await gateway.gw.set_caps(user, {"subjects": [f"{p}.>"]})
    calls: list[int] = []
    refreshed = asyncio.Event()

    async def provider() -> str:
        calls.append(1)
        if len(calls) > 1:
            refreshed.set()
        return tok(user, ttl=3 if len(calls) == 1 else 3600)

    client = await open_client(gateway.ws_url, user, token_provider=provider, refresh_before=2)
    reconnects: Collect[Any] = Collect()
    client.on("reconnect", reconnects)
    try:
        got: Collect[ng.Message] = Collect()
        await client.subscribe(f"{p}.a", got)
        await within(refreshed.wait(), 3 * T)
        await asyncio.sleep(3)  # past the first token's exp: the refresh must have held
        assert client.state is ng.ClientState.OPEN
        await nc.publish(f"{p}.a", b"1")
        await got.count(1)
        assert reconnects.items == []
    finally:
        await client.close()


async def test_refresh_token(gateway: Restartable) -> None:
    user = unique("u")
    client = await open_client(gateway.ws_url, user)
    try:
        await client.refresh_token(tok(user))
        with pytest.raises(ng.NatsgateError) as info:
            await client.refresh_token(tok(unique("other")))
        assert info.value.code == "forbidden"
        assert await client.ping() >= 0
    finally:
        await client.close()


async def test_close_fails_what_waits(gateway: Restartable, nc: NATS) -> None:
    user, p = unique("u"), unique("svc")
    assert gateway.gw is not None
    await gateway.gw.set_caps(user, {"commands": [f"{p}.>"]})
    arrived = asyncio.Event()

    async def hold(msg: Msg) -> None:
        arrived.set()

    await nc.subscribe(f"{p}.hold", cb=hold)
    await nc.flush()
    client = await open_client(gateway.ws_url, user)
    states = Collect[ng.ClientState]()
    client.on("state", states)
    call = asyncio.create_task(client.command(f"{p}.hold", {}, timeout=20 * T))
    await within(asyncio.ensure_future(arrived.wait()))
    await client.close()
    with pytest.raises(ng.NatsgateError) as info:
        await within(call)
    assert info.value.code == "closed"
    assert states.items == [ng.ClientState.CLOSED]
    for op in (client.ready(), client.subscribe(f"{p}.x", lambda m: None), client.ping()):
        with pytest.raises(ng.NatsgateError) as info:
            await within(asyncio.ensure_future(op))
        assert info.value.code == "closed"


async def test_connect_gives_up_after_connect_timeout() -> None:
    with pytest.raises(ng.NatsgateError) as info:  # nothing listens on port 1
        await ng.connect("ws://127.0.0.1:1/ws", token=tok("u"), connect_timeout=0.5, **FAST)
    assert info.value.code == "disconnected"
