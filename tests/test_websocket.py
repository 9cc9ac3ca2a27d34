"""The WebSocket layer on a real socket, byte by byte: what a browser or a broken client
can send at the edge (natsgate.edge, natsgate.wsconn), beyond what aiohttp's client does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from natsgate import edge, wsconn
from natsgate import wsframe as wf
from natsgate.auth import mint_token
from natsgate.wsconn import PARTIAL_INPUT, WsConnection
from tests.conftest import SECRET, Gw, unique
from tests.helpers import T, eventually
from tests.test_wsframe import client_frame

KEY = base64.b64encode(os.urandom(16)).decode()


def upgrade_head(token: str, *, version: str = "13", path: str = "/ws") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: {version}\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


class Raw:
    """A hand-made client: writes what the test says, reads server frames one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.envelopes: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, gw: Gw) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        return cls(reader, writer)

    async def upgrade(self, user: str, then: bytes = b"") -> None:
        self.writer.write(upgrade_head(mint_token(user, SECRET, 600)) + then)
        status = await self.response_head()
        assert status.startswith(b"HTTP/1.1 101 "), status
        first = await self.envelope()
        assert first["op"] == "cap_update"

    async def response_head(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), T)

    async def frame(self) -> tuple[int, bytes]:
        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "server frames are never masked"
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return b0 & 0x0F, await self.reader.readexactly(n)

        return await asyncio.wait_for(read(), T)

    async def envelope(self) -> dict[str, Any]:
        while not self.envelopes:
            op, payload = await self.frame()
            assert op == wf.OP_TEXT, (op, payload)
            self.envelopes += [json.loads(line) for line in payload.split(b"\n")]
        return self.envelopes.pop(0)

    def send(self, op: int, payload: bytes, **kw: Any) -> None:
        self.writer.write(client_frame(op, payload, **kw))

    def send_env(self, **env: Any) -> None:
        self.send(wf.OP_TEXT, json.dumps(env).encode())

    async def close_code(self) -> int | None:
        """The code of the server's close frame, skipping what came before it."""
        while True:
            op, payload = await self.frame()
            if op == wf.OP_CLOSE:
                return wf.parse_close(payload)[0]

    async def eof(self) -> bool:
        """True once the server has closed the connection (whatever it sent before)."""
        try:
            await asyncio.wait_for(self.reader.read(), T)
        except ConnectionResetError:
            return True
        return self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


async def test_fragments_are_joined_and_pings_answered_between_them(gw: Gw) -> None:
    c = await Raw.open(gw)
    await c.upgrade(unique("u"))
    msg = json.dumps({"op": "ping", "inbox": "frag"}).encode()
    c.send(wf.OP_TEXT, msg[:5], fin=False)
    c.send(wf.OP_PING, b"are you there")
    c.send(wf.OP_CONT, msg[5:9], fin=False)
    c.send(wf.OP_CONT, msg[9:])
    assert await c.frame() == (wf.OP_PONG, b"are you there")
    assert await c.envelope() == {"op": "pong", "inbox": "frag"}
    c.close()


async def test_frames_sent_behind_the_head_wait_for_cap_update(gw: Gw) -> None:
    c = await Raw.open(gw)
    early = client_frame(wf.OP_TEXT, b'{"op":"ping","inbox":"early"}')
    await c.upgrade(unique("u"), then=early)  # asserts cap_update came first
    assert await c.envelope() == {"op": "pong", "inbox": "early"}
    c.close()


async def test_a_close_is_echoed_and_frees_the_session(gw: Gw) -> None:
    c = await Raw.open(gw)
    await c.upgrade(unique("u"))
    await eventually(lambda: len(gw.gateway.sessions) == 1, timeout=T)
    c.send(wf.OP_CLOSE, wf.close_payload(1000, "bye"))
    op, payload = await c.frame()
    assert op == wf.OP_CLOSE and wf.parse_close(payload)[0] == 1000
    assert await c.eof()  # the server closes the TCP connection (RFC 6455 §7.1.1)
    await eventually(lambda: not gw.gateway.sessions and not gw.gateway.conns_by_ip, timeout=T)
    c.close()


@pytest.mark.parametrize("ending", ["close frame", "TCP reset", "protocol error"])
async def test_what_a_client_sent_before_leaving_still_happens(
    gw: Gw, nc: NATS, ending: str
) -> None:
    """``ws.send(pub); ws.close()``: the publish goes out though the socket is gone before
    the gateway gets to it (it waits behind a subscription NATS has to confirm first)."""
    subject = unique("last.")
    await gw.set_caps("leaver", {"subjects": ["last.>"], "publish": ["last.>"]})
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await got.put(msg.data)

    sub = await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    c = await Raw.open(gw)
    await c.upgrade("leaver")
    frames = [
        client_frame(wf.OP_TEXT, json.dumps({"op": "sub", "target": f"{subject}.x"}).encode()),
        client_frame(wf.OP_TEXT, json.dumps({"op": "pub", "target": subject, "data": 1}).encode()),
    ]
    if ending == "close frame":
        frames.append(client_frame(wf.OP_CLOSE, wf.close_payload(1000)))
    elif ending == "protocol error":  # in the same write: the frames before still count
        frames.append(client_frame(wf.OP_TEXT, b"{}", mask=b""))
    c.writer.write(b"".join(frames))
    await c.writer.drain()
    if ending == "TCP reset":
        c.writer.transport.abort()
    assert await asyncio.wait_for(got.get(), T) == b"1"
    await eventually(lambda: not gw.gateway.sessions, timeout=T)
    await eventually(lambda: gw.gateway.hub.receivers(f"{subject}.x") == 0, timeout=T)
    await sub.unsubscribe()
    c.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(wf.OP_TEXT, b'{"op":"ping"}', mask=b""), 1002),
        (client_frame(wf.OP_TEXT, b'{"op":"ping"}', rsv=0x40), 1002),
        (client_frame(wf.OP_CONT, b"x"), 1002),
        (client_frame(wf.OP_CLOSE, b"\x03"), 1002),
        (client_frame(wf.OP_TEXT, b'{"op":"ping","inbox":"\xff"}'), 1007),
        (client_frame(wf.OP_TEXT, b"\xce\xba", fin=False) + client_frame(0, b"\xed\xa0\x80"), 1007),
        (client_frame(wf.OP_CLOSE, wf.close_payload(1000) + b"\xff"), 1007),
        (client_frame(wf.OP_CLOSE, b"\x03\xed"), 1002),  # 1005 may not be sent
    ],
)
async def test_protocol_errors_close_with_their_code(gw: Gw, frame: bytes, code: int) -> None:
    c = await Raw.open(gw)
    await c.upgrade(unique("u"))
    c.writer.write(frame)
    op, payload = await c.frame()
    assert op == wf.OP_CLOSE and wf.parse_close(payload)[0] == code
    assert await c.eof()
    await eventually(lambda: not gw.gateway.sessions, timeout=T)
    c.close()


async def test_a_burst_of_frames_is_handled_in_order(make_gw: Any) -> None:
    """More frames at once than the session queues before it stops reading the socket."""
    gw: Gw = await make_gw(rate_per_s=0)
    c = await Raw.open(gw)
    await c.upgrade(unique("u"))
    n = 1000
    c.writer.write(
        b"".join(client_frame(wf.OP_TEXT, b'{"op":"ping","inbox":"%d"}' % i) for i in range(n))
    )
    got = [(await c.envelope())["inbox"] for _ in range(n)]
    assert got == [str(i) for i in range(n)]
    c.close()


async def test_large_frames_in_a_burst_are_handled_in_order(gw: Gw, monkeypatch: Any) -> None:
    """Past 64 KiB waiting the gateway stops reading the socket, then resumes."""
    pauses = []
    pause = WsConnection.pause_reading
    monkeypatch.setattr(WsConnection, "pause_reading", lambda self: pauses.append(pause(self)))
    await gw.set_caps("big", {"publish": ["big.>"]})
    c = await Raw.open(gw)
    await c.upgrade("big")
    pad = "x" * 100_000
    c.writer.write(
        b"".join(
            client_frame(
                wf.OP_TEXT,
                json.dumps({"op": "pub", "target": "big.a", "data": pad, "inbox": str(i)}).encode(),
            )
            for i in range(20)
        )
    )
    got = [(await c.envelope())["inbox"] for _ in range(20)]
    assert got == [str(i) for i in range(20)]
    assert pauses  # the bound in bytes was reached (each frame is over 64 KiB)
    c.close()


async def test_wrong_version_is_426_and_no_socket(gw: Gw) -> None:
    c = await Raw.open(gw)
    c.writer.write(upgrade_head(mint_token("u", SECRET, 60), version="8"))
    head = await c.response_head()
    assert head.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13" in head
    assert await c.eof()
    c.close()


async def test_a_head_that_never_ends_is_cut_off(gw: Gw, monkeypatch: Any) -> None:
    monkeypatch.setattr(edge, "HEAD_TIMEOUT_S", 0.2)
    c = await Raw.open(gw)
    c.writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert await c.eof()
    c.close()


async def test_stopping_cuts_connections_still_sending_their_head(gw: Gw) -> None:
    c = await Raw.open(gw)
    c.writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await eventually(lambda: len(gw.edge.fronts) == 1, timeout=T)
    gw.edge.stop_listening()
    assert await c.eof()
    assert not gw.edge.fronts
    c.close()


async def test_garbage_at_the_websocket_layer_never_hurts_the_gateway(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    """Random bytes, truncated and corrupted frames after a real upgrade, 300 connections:
    each one ends with a close code of RFC 6455 (or stays usable), none leaves anything
    behind, and the gateway logs no error and serves the next client as before."""
    rng = random.Random(6455)
    await gw.set_caps("fz", {"subjects": ["fz.>"]})
    good = [
        client_frame(wf.OP_TEXT, b'{"op":"sub","target":"fz.a","inbox":"s"}'),
        client_frame(wf.OP_TEXT, b'{"op":"ping","inbox":"p"}'),
        client_frame(wf.OP_PING, b"x"),
    ]
    codes: dict[int | None, int] = {}
    for _ in range(300):
        c = await Raw.open(gw)
        await c.upgrade("fz")
        parts = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.4:
                parts.append(rng.choice(good))
            elif kind < 0.7:
                f = bytearray(rng.choice(good))
                f[rng.randrange(len(f))] = rng.randrange(256)  # one corrupted byte
                parts.append(bytes(f))
            else:
                parts.append(rng.randbytes(rng.randint(1, 40)))
        c.writer.write(b"".join(parts))
        code: int | None = None
        with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            while True:  # read until the server closes, or stays quiet (then we leave)
                op, payload = await asyncio.wait_for(c.frame(), 0.1)
                if op == wf.OP_CLOSE:
                    code = wf.parse_close(payload)[0]
                    break
        assert code in (None, 1002, 1007, 1009), code
        codes[code] = codes.get(code, 0) + 1
        c.close()
    assert codes.get(1002, 0) > 50 and codes.get(None, 0) > 10, codes  # both paths were hit
    await eventually(lambda: not gw.gateway.sessions and not gw.gateway.conns_by_ip, timeout=T)
    await eventually(lambda: gw.gateway.hub.receivers("fz.a") == 0, timeout=T)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    c = await Raw.open(gw)
    await c.upgrade("fz")
    c.send_env(op="ping", inbox="after")
    assert await c.envelope() == {"op": "pong", "inbox": "after"}
    c.close()


def only_conn(gw: Gw) -> WsConnection:
    (session,) = gw.gateway.sessions
    assert isinstance(session.transport, WsConnection)
    return session.transport


async def test_an_unfinished_message_is_closed_after_its_time(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message begun must be complete within MESSAGE_TIMEOUT_S: a partial frame is given
    a timer (none exists while nothing is held), a completed message restarts it for the
    next one, and pings between fragments do not; then 1013 and the bytes held go back."""
    monkeypatch.setattr(wsconn, "MESSAGE_TIMEOUT_S", 0.5 * T)  # long enough not to fire here
    base = PARTIAL_INPUT.used
    c = await Raw.open(gw)
    await c.upgrade(unique("u"))
    await eventually(lambda: len(gw.gateway.sessions) == 1, timeout=T)
    conn = only_conn(gw)
    one = client_frame(wf.OP_TEXT, b'{"op":"ping","inbox":"one"}')
    two = client_frame(wf.OP_TEXT, b'{"op":"ping","inbox":"two"}')
    c.writer.write(one[:9])
    await eventually(lambda: conn._deadline is not None, timeout=T)
    first = conn._deadline
    assert PARTIAL_INPUT.used == base + 9
    c.writer.write(one[9:] + two[:5])  # one is done, two has begun: a new clock
    assert await c.envelope() == {"op": "pong", "inbox": "one"}
    assert conn._deadline is not None and conn._deadline is not first
    c.writer.write(two[5:])
    assert await c.envelope() == {"op": "pong", "inbox": "two"}
    assert conn._deadline is None and PARTIAL_INPUT.used == base  # nothing held, no timer
    c.close()

    monkeypatch.setattr(wsconn, "MESSAGE_TIMEOUT_S", 0.3)
    c = await Raw.open(gw)
    await c.upgrade(unique("u"))
    c.send(wf.OP_TEXT, b'{"op":"ping",', fin=False)
    pongs = 0
    code = None
    while code is None:  # a client that pings while it never finishes is still cut off
        c.send(wf.OP_PING, b"still here")
        op, payload = await c.frame()
        if op == wf.OP_CLOSE:
            code = wf.parse_close(payload)[0]
        elif op == wf.OP_PONG:
            pongs += 1
            await asyncio.sleep(0.05)
    assert code == 1013 and pongs > 1
    assert await c.eof()
    await eventually(lambda: not gw.gateway.sessions and PARTIAL_INPUT.used == base, timeout=T)
    c.close()


async def test_unfinished_input_of_all_connections_is_bounded(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One budget for the partial input of every connection: the connection whose bytes
    would take it over the limit is closed with 1013; the others go on unharmed."""
    monkeypatch.setattr(PARTIAL_INPUT, "limit", PARTIAL_INPUT.used + 300_000)
    base = PARTIAL_INPUT.used
    await gw.set_caps("big", {"publish": ["big.>"]})

    def pub(inbox: str) -> bytes:
        env = {"op": "pub", "target": "big.a", "data": "x" * 200_000, "inbox": inbox}
        return client_frame(wf.OP_TEXT, json.dumps(env).encode())

    a, b = await Raw.open(gw), await Raw.open(gw)
    await a.upgrade("big")
    await b.upgrade("big")
    fa, fb = pub("a"), pub("b")
    a.writer.write(fa[:180_000])  # held by a: 180 KB of 300
    await eventually(lambda: PARTIAL_INPUT.used == base + 180_000, timeout=T)
    b.writer.write(fb[:180_000])  # b's bytes do not fit
    assert await b.close_code() == 1013
    assert await b.eof()
    await eventually(lambda: PARTIAL_INPUT.used == base + 180_000, timeout=T)
    a.writer.write(fa[180_000:])
    assert (await a.envelope())["inbox"] == "a"  # a was never touched
    assert PARTIAL_INPUT.used == base
    a.writer.write(fb)  # and the budget is free again: a whole message of 200 KB passes
    assert (await a.envelope())["inbox"] == "b"
    a.close()
    b.close()
    await eventually(lambda: not gw.gateway.sessions and PARTIAL_INPUT.used == base, timeout=T)
