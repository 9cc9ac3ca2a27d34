"""The Socket.IO comparison target: a plain python-socketio server (aiohttp, uvloop) that
bridges NATS subjects to Socket.IO rooms.

One NATS subscription (``bench.>``) for the whole process; a client joins a room named after
a subject by emitting ``join`` (acknowledged once it is in the room); every NATS message is
``sio.emit("msg", payload, room=subject)``, which python-socketio encodes once and queues
to every member of the room. This is what a reasonable team would write with Socket.IO.

    python -m bench.targets.socketio_bridge --nats nats://127.0.0.1:4222 --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import nats
import socketio
from aiohttp import web

from bench.common import install_uvloop, raise_nofile


async def serve(nats_url: str, host: str, port: int, pattern: str) -> None:
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins="*",
        ping_interval=20,
        ping_timeout=20,
        logger=False,
        engineio_logger=False,
        transports=["websocket", "polling"],
    )
    app = web.Application()
    sio.attach(app)

    @sio.on("join")
    async def join(sid: str, subject: str) -> dict[str, bool]:
        await sio.enter_room(sid, subject)
        return {"ok": True}

    @sio.on("leave")
    async def leave(sid: str, subject: str) -> dict[str, bool]:
        await sio.leave_room(sid, subject)
        return {"ok": True}

    nc = await nats.connect(nats_url, name="socketio-bridge")

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            data = msg.data.decode(errors="replace")
        await sio.emit("msg", data, room=msg.subject)

    await nc.subscribe(pattern, cb=on_msg)
    await nc.flush()

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)  # the default backlog, as natsgate
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"socketio bridge listening on http://{host}:{bound}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await site.stop()
    await runner.cleanup()
    await nc.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nats", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--pattern", default="bench.>")
    args = ap.parse_args()
    raise_nofile()
    install_uvloop()
    asyncio.run(serve(args.nats, args.host, args.port, args.pattern))
    return 0


if __name__ == "__main__":
    sys.exit(main())
