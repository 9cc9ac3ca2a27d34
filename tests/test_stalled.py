"""A client that stops reading, on real sockets (protocol.md §6, natsgate.edge).

The gateway bounds what the kernel takes for a WebSocket that has not been sent yet
(``TCP_NOTSENT_LOWAT``, ``NOTSENT_LOWAT_BYTES``), so a stalled client fills its outbox,
and is cut off with 1013, after a bounded amount of kernel memory rather than after
Linux's autotuned send buffer (several MiB). bench/stalled.py measures it.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import socket
import struct
import sys
import termios
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from natsgate import edge
from natsgate import wsframe as wf
from natsgate.auth import mint_token
from natsgate.session import Session, State
from tests.conftest import SECRET, Gw, connect, unique
from tests.helpers import Closed, T, eventually
from tests.test_wsframe import client_frame

pytestmark = pytest.mark.skipif(
    edge.TCP_NOTSENT_LOWAT is None, reason="no TCP_NOTSENT_LOWAT on this platform"
)

LINUX = sys.platform.startswith("linux")


def server_socket(session: Session) -> Any:
    """The gateway's side of a connection: the socket its ``WsConnection`` writes to."""
    return session.transport._transport.get_extra_info("socket")  # type: ignore[attr-defined]


def unacked(sock: Any) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged (Linux SIOCOUTQ)."""
    out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", out)[0])


class Stalled:
    """A client that subscribes and then never reads; its receive buffer is set small
    before connecting (it fixes the window the handshake offers): a stuck tab."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    @classmethod
    async def open(cls, gw: Gw, user: str, subject: str) -> Stalled:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key}\r\n"
                f"Authorization: Bearer {mint_token(user, SECRET, 600)}\r\n\r\n"
            ).encode(),
        )
        c = cls(sock)
        await c._read_until(b"\r\n\r\n")
        head, _, rest = bytes(c.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        c.buf[:] = rest
        sub = {"op": "sub", "target": subject, "inbox": "s"}
        await loop.sock_sendall(sock, client_frame(wf.OP_TEXT, json.dumps(sub).encode()))
        await c._read_until(b'"inbox":"s"')  # its reply; from here on nothing is read
        return c

    async def _read_until(self, marker: bytes) -> None:
        loop = asyncio.get_running_loop()
        while marker not in self.buf:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), T)
            assert data, "the gateway hung up"
            self.buf += data

    async def read_to_end(self) -> list[tuple[int, bytes]]:
        """Everything the gateway sent until it closed the connection, as frames."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 262144), T)
            except ConnectionResetError:
                break
            if not data:
                break
            self.buf += data
        frames, buf = [], self.buf
        while len(buf) >= 2:
            n, at = buf[1] & 0x7F, 2
            if n == 126:
                n, at = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + n:
                break  # cut off mid-frame
            frames.append((buf[0] & 0x0F, bytes(buf[at : at + n])))
            del buf[: at + n]
        return frames

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("lowat", [0, 65536])
async def test_the_option_is_set_on_the_accepted_socket(make_gw: Any, lowat: int) -> None:
    g: Gw = await make_gw(notsent_lowat_bytes=lowat)
    c = await connect(g, unique("u"))
    await eventually(lambda: len(g.gateway.sessions) == 1, timeout=T)
    (session,) = g.gateway.sessions
    got = server_socket(session).getsockopt(socket.IPPROTO_TCP, edge.TCP_NOTSENT_LOWAT)
    if lowat or LINUX:  # 0: left alone (Linux reports 0: the sysctl applies)
        assert got == lowat
    await c.close()


async def test_a_stalled_client_is_cut_off_a_healthy_one_gets_everything(
    make_gw: Any, nc: NATS
) -> None:
    g: Gw = await make_gw(outbox_bytes=65536)
    lowat = g.gateway.config.notsent_lowat_bytes
    assert lowat > 0
    subject = unique("busy.")
    await g.set_caps("reader", {"subjects": ["busy.>"]})

    stalled = await Stalled.open(g, "reader", subject)
    await eventually(lambda: len(g.gateway.sessions) == 1, timeout=T)
    (stalled_session,) = g.gateway.sessions
    sock = server_socket(stalled_session)

    healthy = await connect(g, "reader")
    await healthy.ok("sub", subject)
    got: list[int] = []

    async def read() -> None:
        try:
            while True:
                env = await healthy.recv(timeout=3600)
                if env["op"] == "msg":
                    got.append(env["data"]["s"])
        except Closed:
            pass

    reader = asyncio.create_task(read())
    pad = "x" * 1000
    sent = 0
    most_unacked = 0

    async def publish(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            await nc.publish(subject, json.dumps({"s": sent, "p": pad}).encode())
            sent += 1
        await nc.flush()

    # ~1 KiB messages until the gateway gives up on the stalled one: bounded in count
    # (20 MiB), far more than kernel + outbox hold either way
    while stalled_session.state is State.OPEN and sent < 20_000:
        await publish(50)
        if LINUX and stalled_session.state is State.OPEN:
            most_unacked = max(most_unacked, unacked(sock))
    assert stalled_session.state is not State.OPEN, "the stalled client was never cut off"
    drained = asyncio.create_task(stalled.read_to_end())  # at once: see below
    await publish(200)  # and after the verdict

    await eventually(lambda: len(got) == sent, timeout=2 * T)
    assert got == list(range(sent))  # the healthy one: everything, in order
    await eventually(lambda: stalled_session not in g.gateway.sessions, timeout=2 * T)
    assert len(g.gateway.sessions) == 1  # the healthy one is still there
    async with aiohttp.ClientSession() as s, s.get(f"{g.url}/metrics") as r:
        metrics = await r.text()
    assert "natsgate_backpressure_closes_total 1.0" in metrics  # the 1013 verdict, once
    if LINUX:
        # the kernel held at most the bound plus what one send may add beyond it (one
        # segment of up to 64 KiB) and the 4 KiB window the client offered: not the
        # autotuned buffer of several MiB (bench/stalled.py: 2.7 MiB without the bound)
        assert 0 < most_unacked <= lowat + 64 * 1024 + 4096, most_unacked

    # what reached the stalled client (read from the verdict on) ends with the gateway
    # hanging up; the error and the close frame (1013) are there when they got past the
    # jam before the gateway stopped waiting for the client's answer (1 s), which this
    # test does not time
    frames = await drained
    closes = [wf.parse_close(p)[0] for op, p in frames if op == wf.OP_CLOSE]
    assert closes in ([], [1013]), closes
    if closes:
        last = frames[-2][1].split(b"\n")[-1]
        assert json.loads(last)["data"]["code"] == "backpressure", last

    stalled.close()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await healthy.close()
