"""permessage-deflate on a real gateway and nats-server, byte by byte on a raw socket:
what is agreed for each COMPRESSION setting, RSV1 on what leaves, inflation of what
arrives, the limits, and a fan-out deflated once for all its sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import zlib
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsgate import deflate as df
from natsgate import wsconn
from natsgate import wsframe as wf
from natsgate.auth import mint_token
from natsgate.wsconn import PARTIAL_INPUT
from tests.conftest import SECRET, Gw, unique
from tests.helpers import T, eventually
from tests.test_wsframe import client_frame

OFFER = "permessage-deflate; client_max_window_bits"
AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def chat(n: int) -> dict[str, Any]:
    """A chat message of about 250 bytes, accents and an emoji included."""
    return {
        "id": f"m{n:06d}",
        "user": "zoë",
        "room": "général",
        "text": f"message {n}: the meeting moved to three, see you there 👋 " * 3,
        "ts": 1764470000000 + n,
    }


class Client:
    """A hand-made client that offers permessage-deflate (or not) and inflates RSV1 frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.extensions: str | None = None
        self.envelopes: list[tuple[bool, dict[str, Any]]] = []  # (came compressed, envelope)

    @classmethod
    async def open(cls, gw: Gw, user: str, offer: str | None = OFFER) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        c = cls(reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            f"Authorization: Bearer {mint_token(user, SECRET, 600)}\r\n{ext}\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 101 "), head
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-extensions":
                c.extensions = value.strip()
        _, first = await c.envelope()
        assert first["op"] == "cap_update"
        return c

    async def frame(self) -> tuple[int, bool, bytes]:
        """(opcode, RSV1, payload inflated as a client without context takeover does)."""

        async def read() -> tuple[int, bool, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            body = await self.reader.readexactly(n)
            rsv1 = bool(b0 & wf.RSV1)
            if rsv1:
                assert self.extensions, "RSV1 without an agreed extension"
                body = zlib.decompressobj(-15).decompress(body + wf.TAIL)
            return b0 & 0x0F, rsv1, body

        return await asyncio.wait_for(read(), T)

    async def envelope(self) -> tuple[bool, dict[str, Any]]:
        while not self.envelopes:
            op, rsv1, payload = await self.frame()
            assert op == wf.OP_TEXT, (op, payload)
            self.envelopes += [(rsv1, json.loads(line)) for line in payload.split(b"\n")]
        return self.envelopes.pop(0)

    async def expect(self, op: str) -> tuple[bool, dict[str, Any]]:
        while True:
            rsv1, env = await self.envelope()
            if env["op"] == op:
                return rsv1, env

    def send(self, env: dict[str, Any], *, compress: bool = True) -> None:
        raw = json.dumps(env).encode()
        if compress:
            z = zlib.compressobj(6, zlib.DEFLATED, -15)
            raw = (z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
        self.writer.write(client_frame(wf.OP_TEXT, raw, rsv=wf.RSV1 if compress else 0))

    async def close_code(self) -> int | None:
        while True:
            op, _, payload = await self.frame()
            if op == wf.OP_CLOSE:
                return wf.parse_close(payload)[0]

    def close(self) -> None:
        self.writer.close()


async def subscribed(gw: Gw, subject: str, offer: str | None = OFFER) -> Client:
    user = unique("u")
    await gw.set_caps(user, {"subjects": [f"{subject}.>"], "publish": [f"{subject}.>"]})
    c = await Client.open(gw, user, offer)
    c.send({"op": "sub", "target": f"{subject}.>", "inbox": "s"}, compress=bool(c.extensions))
    _, reply = await c.expect("reply")
    assert reply["data"] == {"ok": True}, reply
    return c


async def test_auto_deflates_large_frames_both_ways_and_leaves_small_ones(gw: Gw, nc: NATS) -> None:
    assert gw.gateway.config.compression == "auto"
    p = unique("s")
    c = await subscribed(gw, p)
    assert c.extensions == AGREED
    got: list[Msg] = []

    async def on_msg(m: Msg) -> None:
        got.append(m)

    await nc.subscribe(f"{p}.in", cb=on_msg)
    # in: a compressed pub (unicode, 2 KB) reaches NATS as sent
    big = {"messages": [chat(i) for i in range(8)]}
    c.send({"op": "pub", "target": f"{p}.in", "data": big, "inbox": "p"})
    _, reply = await c.expect("reply")
    assert reply["data"] == {"ok": True}
    await eventually(lambda: len(got) == 1, timeout=T)
    assert json.loads(got[0].data) == big
    # out: a frame of COMPRESSION_MIN_BYTES or more is deflated, a smaller one is not
    await nc.publish(f"{p}.out", json.dumps(chat(1)).encode())
    rsv1, msg = await c.expect("msg")
    assert rsv1 and msg["data"] == chat(1)
    await nc.publish(f"{p}.out", b'{"n":1}')
    rsv1, msg = await c.expect("msg")
    assert not rsv1 and msg["data"] == {"n": 1}
    c.close()


async def test_on_deflates_every_data_frame_and_off_agrees_nothing(make_gw: Any, nc: NATS) -> None:
    on = await make_gw(compression="on")
    c = await subscribed(on, unique("s"))
    c.send({"op": "ping", "inbox": "x"})
    rsv1, pong = await c.expect("pong")
    assert rsv1 and pong["inbox"] == "x"  # 29 bytes, deflated all the same
    c.close()
    off = await make_gw(compression="off")
    p = unique("s")
    c = await subscribed(off, p)
    assert c.extensions is None
    await nc.publish(f"{p}.x", json.dumps(chat(2)).encode())
    rsv1, msg = await c.expect("msg")
    assert not rsv1 and msg["data"] == chat(2)
    c.send({"op": "ping", "inbox": "y"})  # compressed though nothing was agreed
    assert await c.close_code() == 1002
    c.close()


async def test_a_client_without_an_offer_gets_plain_frames(gw: Gw, nc: NATS) -> None:
    p = unique("s")
    c = await subscribed(gw, p, offer=None)
    assert c.extensions is None
    await nc.publish(f"{p}.x", json.dumps(chat(3)).encode())
    rsv1, msg = await c.expect("msg")
    assert not rsv1 and msg["data"] == chat(3)
    c.close()


async def test_a_zip_bomb_closes_1009_and_the_gateway_goes_on(make_gw: Any) -> None:
    g = await make_gw(max_frame_bytes=64 << 10)
    p = unique("s")
    bystander = await subscribed(g, p)
    c = await subscribed(g, unique("s"))
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = (z.compress(b" " * (64 << 20)) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]  # 64 MiB in 64 KiB
    assert len(bomb) < 128 << 10
    c.writer.write(client_frame(wf.OP_TEXT, bomb, rsv=wf.RSV1))
    assert await c.close_code() == 1009
    c.close()
    bystander.send({"op": "ping", "inbox": "still"})
    _, pong = await bystander.expect("pong")
    assert pong["inbox"] == "still"
    bystander.close()


async def test_rsv1_on_a_control_frame_is_1002(gw: Gw) -> None:
    c = await subscribed(gw, unique("s"))
    c.writer.write(client_frame(wf.OP_PING, b"", rsv=wf.RSV1))
    assert await c.close_code() == 1002
    c.close()


async def test_a_fan_out_is_deflated_once_for_every_socket(gw: Gw, nc: NATS) -> None:
    """30 subscribers of one subject, 3 messages of 2.5 KB each: 3 deflations (or fewer,
    when messages leave together as one batch), not 90; every socket gets them intact."""
    p = unique("s")
    clients = [await subscribed(gw, p) for _ in range(30)]
    d = df.deflater(15)
    before, hits = d.deflated, d.hits
    sent = [{"batch": [chat(i * 10 + k) for k in range(10)]} for i in range(3)]
    for m in sent:
        await nc.publish(f"{p}.room", json.dumps(m).encode())
        await nc.flush()
    for c in clients:
        for m in sent:
            rsv1, msg = await c.expect("msg")
            assert rsv1 and msg["data"] == m
    made = d.deflated - before
    print(f"\n30 sockets x 3 messages: {made} deflated, {d.hits - hits} taken from the cache")
    assert 1 <= made <= 3 and d.hits - hits >= 30 * made - made
    for c in clients:
        c.close()


async def test_an_unfinished_compressed_message_is_timed_and_budgeted(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte of deflate data holds an inflater: the budget counts it and the message
    clock runs, then 1013; the budget gets it all back."""
    monkeypatch.setattr(wsconn, "MESSAGE_TIMEOUT_S", 0.3)
    base = PARTIAL_INPUT.used
    c = await subscribed(gw, unique("s"))
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = z.compress(b'{"op":"ping","inbox":"x"}') + z.flush(zlib.Z_SYNC_FLUSH)
    c.writer.write(client_frame(wf.OP_TEXT, body[:1], fin=False, rsv=wf.RSV1))
    await eventually(lambda: PARTIAL_INPUT.used >= base + wf.INFLATER_BYTES, timeout=T)
    assert await c.close_code() == 1013
    await eventually(lambda: PARTIAL_INPUT.used == base, timeout=T)
    c.close()
