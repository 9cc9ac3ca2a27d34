"""An echo server built on natsgate's own WebSocket layer, for the Autobahn TestSuite.

The upgrade is :mod:`natsgate.handshake`'s and every connection a
:class:`natsgate.wsconn.WsConnection` (with its :class:`~natsgate.wsframe.FrameReader`,
timer and input budget): what the suite tests is the gateway's code, with an echo standing
where the session goes. Text comes back as text, binary as binary. A permessage-deflate
offer is agreed as the gateway agrees it (``COMPRESSION=on``: every message deflated).

By hand (then point the ``kosoku`` CLI at it)::

    .venv/bin/python -m tests.autobahn.echo --port 9001
    .venv/bin/kosoku 127.0.0.1:9001 -i '1.*' -i '9.*' -p 2 -o /tmp/autobahn
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import cast

from natsgate.deflate import compression
from natsgate.handshake import (
    MAX_HEAD,
    HeadError,
    check_upgrade,
    negotiate_deflate,
    parse_head,
    refusal,
    switching,
)
from natsgate.wsconn import WsConnection

MAX_MESSAGE_BYTES = 64 << 20  # Autobahn 9.x sends messages of up to 16 MiB


class EchoConnection(WsConnection):
    """A :class:`WsConnection` whose messages are written back with their own opcode."""

    __slots__ = ()

    def deliver(self, op: int, payload: bytes) -> bool:
        with contextlib.suppress(ConnectionError):  # the peer left: nothing to echo to
            self.write_message(op, payload)
        return True


class Echo:
    """Stands where the session goes: the connection tells it of pings and its end."""

    user = "echo"

    def receive(self, payload: bytes) -> bool:
        raise AssertionError("EchoConnection.deliver handles messages")

    def seen(self) -> None:
        pass

    def disconnected(self) -> None:
        pass


class Upgrade(asyncio.Protocol):
    """A new connection until its request head is read: then 101 and an echo, or a
    refusal (the checks of natsgate's own upgrade, without authentication)."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._head = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        t = self._transport
        assert t is not None
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) >= MAX_HEAD:
                t.write(refusal(431, "request head larger than 16 KiB"))
                t.close()
            self._head = head
            return
        try:
            parsed = parse_head(head[:end])
            accept = check_upgrade(parsed)
        except HeadError as err:
            t.write(refusal(err.status, err.reason))
            t.close()
            return
        agreed = negotiate_deflate(parsed.headers, "on")
        t.write(switching(accept, agreed))
        conn = EchoConnection(t, self._max, compression(agreed, "on", 0))
        conn.session = Echo()  # type: ignore[assignment]
        t.set_protocol(conn)
        if rest := head[end + 4 :]:
            conn.data_received(rest)


async def serve(
    host: str = "127.0.0.1", port: int = 0, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Upgrade(max_message_bytes), host, port)


async def _main(host: str, port: int) -> None:
    server = await serve(host, port)
    print(f"echo on ws://{host}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
