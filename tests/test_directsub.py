"""Direct subscriptions (natsgate.directsub) against a real nats-server: the same
messages as nats-py's callbacks, in order, headers included; nothing after unsubscribe;
a failing handler never costs the connection."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from natsgate import directsub
from natsgate.directsub import Client
from natsgate.natsrunner import NatsServer

from .conftest import T, unique

Got = list[tuple[str, bytes, dict[str, str] | None]]


class Seen:
    """What a handler got, and a way to wait for the n-th of it."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self._more = asyncio.Event()

    def add(self, data: bytes) -> None:
        self.data.append(data)
        self._more.set()

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(T):
            while len(self.data) < n:
                self._more.clear()
                await self._more.wait()


async def connect(nats_server: NatsServer) -> Client:
    nc = Client()
    await nc.connect(nats_server.url)
    return nc


def test_this_nats_py_has_the_hook() -> None:
    """If nats-py changes its private reader hook, this fails (and direct subscriptions
    quietly take the slower callback path until directsub is brought up to date)."""
    assert directsub.supported()


@pytest.mark.parametrize("fallback", [False, True], ids=["direct", "callback"])
async def test_messages_arrive_in_order_with_headers(
    nats_server: NatsServer, nc: NATS, fallback: bool
) -> None:
    d = await connect(nats_server)
    p = unique("d")
    got: Got = []
    done = asyncio.Event()

    def deliver(subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        got.append((subject, data, headers))
        if len(got) == 1001:
            done.set()

    await d.subscribe_direct(f"{p}.>", deliver, fallback=fallback)
    await d.flush()
    for i in range(1000):
        await nc.publish(f"{p}.{i % 7}", str(i).encode())
    await nc.publish(f"{p}.h", b"with", headers={"Natsgate-User": "alice", "X": "1"})
    try:
        async with asyncio.timeout(T):
            await done.wait()
    except TimeoutError:  # say how far it got
        raise AssertionError(
            f"{len(got)} of 1001 arrived; sent {nc.stats['out_msgs']}, "
            f"read {d.stats['in_msgs']}, behind {d.behind}, reading {d._reading_task}"
        ) from None
    assert [int(data) for _, data, _ in got[:1000]] == list(range(1000))
    assert {s for s, _, _ in got[:1000]} == {f"{p}.{i}" for i in range(7)}
    assert got[0][2] is None
    assert got[1000] == (f"{p}.h", b"with", {"Natsgate-User": "alice", "X": "1"})
    assert d.stats["in_msgs"] == 1001
    await d.close()


async def test_nothing_arrives_after_unsubscribe_and_nothing_is_kept(
    nats_server: NatsServer, nc: NATS
) -> None:
    d = await connect(nats_server)
    p = unique("d")
    got = Seen()
    sub = await d.subscribe_direct(f"{p}.x", lambda s, data, h: got.add(data))
    other = await d.subscribe_direct(f"{p}.y", lambda s, data, h: got.add(data))
    await d.flush()
    await nc.publish(f"{p}.x", b"1")
    await nc.flush()
    await got.wait(1)
    await d.unsubscribe_direct(sub)
    await d.flush()
    await nc.publish(f"{p}.x", b"2")
    await nc.publish(f"{p}.y", b"3")  # a later message on a live one: "2" would be before it
    await nc.flush()
    await got.wait(2)
    assert got.data == [b"1", b"3"]
    assert list(d._direct) == [other._id]
    await d.close()


async def test_a_handler_that_raises_loses_that_message_only(
    nats_server: NatsServer, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    d = await connect(nats_server)
    p = unique("d")
    got = Seen()

    def deliver(subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        if data == b"boom":
            raise RuntimeError("handler bug")
        got.add(data)

    await d.subscribe_direct(f"{p}.x", deliver)
    await d.flush()
    for data in (b"a", b"boom", b"b"):
        await nc.publish(f"{p}.x", data)
    await nc.flush()
    await got.wait(2)
    assert got.data == [b"a", b"b"] and d.is_connected
    assert "delivering a message" in caplog.text
    await d.close()


async def test_drain_ends_with_direct_subscriptions(nats_server: NatsServer) -> None:
    d = await connect(nats_server)
    await d.subscribe_direct(unique("d"), lambda s, data, h: None)
    async with asyncio.timeout(T):
        await d.drain()
    assert d.is_closed


async def test_the_reader_takes_large_rounds_after_connect_and_reconnect(
    tmp_path: Path,
) -> None:
    """A backlog from NATS is read up to READ_LIMIT per event loop step (each connection
    then gets its share in one frame), also on the connection made after a reconnect."""
    server = NatsServer(store_dir=tmp_path / "js").start()
    server.port = int(server.url.rsplit(":", 1)[1])  # the same port again after the restart
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = Client()
    try:
        await nc.connect(server.url, reconnected_cb=on_reconnect, reconnect_time_wait=0.1)
        first = nc._transport._io_reader  # type: ignore[union-attr]
        assert first._limit == directsub.READ_LIMIT
        server.stop()
        server.start()
        async with asyncio.timeout(T):
            await reconnected.wait()
        second = nc._transport._io_reader  # type: ignore[union-attr]
        assert second is not first
        assert second._limit == directsub.READ_LIMIT
        got = Seen()
        await nc.subscribe_direct("after.>", lambda s, d, h: got.add(d))
        await nc.publish("after.x", b"1")
        await got.wait(1)
    finally:
        await nc.close()
        server.stop()


def test_widen_leaves_what_it_does_not_know() -> None:
    assert not directsub.widen(object())
    assert not directsub.widen(None)


async def test_a_backlog_from_nats_gives_the_event_loop_turns(
    nats_server: NatsServer, nc: NATS
) -> None:
    """40,000 messages piled up while the loop was blocked are read in slices of about
    READ_SLICE bytes, with the event loop's other callbacks run between them and the
    client saying it is behind meanwhile (the flusher holds fan-out then)."""
    d = await connect(nats_server)
    loop = asyncio.get_running_loop()
    p = unique("b")
    n, payload = 40_000, b"x" * 100
    wire = len(f"MSG {p}.99 1 100\r\n") + len(payload) + 2  # bytes a message takes
    done = asyncio.Event()
    got = stretch = longest = 0
    seen_behind = False

    def deliver(subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        nonlocal got, stretch, longest, seen_behind
        got += 1
        stretch += 1  # messages since the loop last ran something else
        longest = max(longest, stretch)
        seen_behind = seen_behind or d.behind
        if got == n:
            done.set()

    ticking = True

    def tick() -> None:
        nonlocal stretch
        stretch = 0
        if ticking:
            loop.call_soon(tick)

    await d.subscribe_direct(f"{p}.>", deliver)
    await d.flush()
    loop.call_soon(tick)
    for i in range(n):
        await nc.publish(f"{p}.{i % 100}", payload)
    await nc.flush()
    time.sleep(0.5)  # noqa: ASYNC251  # blocks the loop on purpose: the backlog piles up
    try:
        async with asyncio.timeout(T):
            await done.wait()
    finally:
        ticking = False
    assert seen_behind
    # one slice, plus the 32 KiB read that crossed it, plus what a tick may straddle
    assert longest <= 2 * (directsub.READ_SLICE + 32768) // wire, (longest, wire)
    assert not d.behind  # all read
    await d.close()
