"""RSS per idle WebSocket connection of candidate WebSocket layers, each as a minimal echo
server: ``python -m bench.wslayers [N]`` (default 5,000 connections).

This is the measurement behind natsgate's own upgrade path (``natsgate.edge``): aiohttp's
``WebSocketResponse``, picows with its defaults and lean settings, and a bare
``asyncio.Protocol`` that does the handshake itself. Server and clients run in separate
processes on uvloop; the figure is (RSS with N idle connections - RSS before) / N.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import subprocess
import sys
from typing import Any

import psutil
import uvloop

LAYERS = ("aiohttp", "picows-default", "picows-lean", "bare-protocol")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def serve(layer: str) -> None:
    loop = asyncio.get_running_loop()
    if layer == "aiohttp":
        from aiohttp import web

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(autoping=False, compress=False)
            await ws.prepare(request)
            async for _ in ws:
                await ws.send_str("ok")
            return ws

        app = web.Application()
        app.router.add_get("/ws", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    elif layer.startswith("picows"):
        import picows

        class Echo(picows.WSListener):
            def on_ws_frame(self, t: picows.WSTransport, frame: picows.WSFrame) -> None:
                if frame.msg_type == picows.WSMsgType.TEXT:
                    t.send(picows.WSMsgType.TEXT, b"ok")

        kw: dict[str, Any] = {}
        if layer == "picows-lean":
            kw = {"use_aiofastnet": False, "read_buffer_init_size": 1024}
        server = await picows.ws_create_server(lambda _: Echo(), "127.0.0.1", 0, **kw)
        port = server.sockets[0].getsockname()[1]
    else:

        class Bare(asyncio.Protocol):
            __slots__ = ("t",)

            def connection_made(self, t: asyncio.BaseTransport) -> None:
                self.t: Any = t

            def data_received(self, data: bytes) -> None:
                if data.startswith(b"GET"):
                    key = next(
                        line.split(b":", 1)[1].strip()
                        for line in data.split(b"\r\n")
                        if line.lower().startswith(b"sec-websocket-key")
                    )
                    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
                    self.t.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                    )
                else:
                    self.t.write(b"\x81\x02ok")

        server = await loop.create_server(Bare, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    proc = psutil.Process()
    print(port, proc.memory_info().rss, flush=True)
    while await loop.run_in_executor(None, sys.stdin.readline):
        gc.collect()
        print(proc.memory_info().rss, flush=True)


async def clients(port: int, n: int) -> None:
    import picows

    class Quiet(picows.WSListener):
        def on_ws_connected(self, t: picows.WSTransport) -> None:
            t.send(picows.WSMsgType.TEXT, b"hi")  # one round trip, then idle

    held = []
    gate = asyncio.Semaphore(50)

    async def one() -> None:
        async with gate:
            t, _ = await picows.ws_connect(Quiet, f"ws://127.0.0.1:{port}/ws")
            held.append(t)

    await asyncio.gather(*(one() for _ in range(n)))
    print("connected", flush=True)
    await asyncio.sleep(3600)


def measure(layer: str, n: int) -> float:
    me = [sys.executable, "-m", "bench.wslayers"]
    server = subprocess.Popen(
        [*me, "--serve", layer], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdin is not None and server.stdout is not None
    port, rss0 = (int(x) for x in server.stdout.readline().split())
    client = subprocess.Popen([*me, "--clients", str(port), str(n)], stdout=subprocess.PIPE)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == b"connected"
        server.stdin.write("x\n")
        server.stdin.flush()
        rss1 = int(server.stdout.readline())
        return (rss1 - rss0) / n
    finally:
        client.kill()
        server.kill()
        client.wait()
        server.wait()


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        uvloop.run(serve(sys.argv[2]))
    elif sys.argv[1:2] == ["--clients"]:
        uvloop.run(clients(int(sys.argv[2]), int(sys.argv[3])))
    else:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
        print(f"RSS per idle WebSocket connection, {n} connections, uvloop:")
        for layer in LAYERS:
            print(f"  {layer:15} {measure(layer, n) / 1024:6.2f} KiB", flush=True)


if __name__ == "__main__":
    main()
