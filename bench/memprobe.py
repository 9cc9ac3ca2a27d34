"""Where an idle, subscribed natsgate connection's memory goes, by source file:
``python -m bench.memprobe [N]`` (default 2,000 connections).

Starts nats-server and a gateway in this process, lets N clients (aiohttp, in another
process) connect and subscribe to one subject, and prints the allocations made meanwhile
(tracemalloc) per connection, grouped by the file that made them. Allocations in C
extensions that are made from a callback of the event loop (uvloop's transports) are
attributed to the line that runs the loop, ``asyncio/runners.py``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import tracemalloc
from collections import defaultdict
from pathlib import Path

import uvloop

from natsgate.auth import mint_token
from natsgate.config import Config
from natsgate.edge import Edge
from natsgate.gateway import Gateway
from natsgate.natsrunner import NatsServer
from natsgate.server import make_app

CLIENT = r"""
import asyncio, json, sys
import aiohttp, uvloop

async def main(port, token, n):
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    held = []
    for _ in range(n):
        ws = await session.ws_connect(
            f"ws://127.0.0.1:{port}/ws", headers={"Authorization": "Bearer " + token}
        )
        await ws.receive()  # cap_update
        await ws.send_str(json.dumps({"op": "sub", "target": "probe.x", "inbox": "s"}))
        await ws.receive()  # reply: subscribed
        held.append(ws)
    print("ok", flush=True)
    await asyncio.sleep(3600)

uvloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def _where(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3.", "src/"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return filename


async def _clients(port: int, token: str, n: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), token, str(n), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    assert line.strip() == b"ok", line
    return proc


async def main(n: int) -> None:
    nats = NatsServer(store_dir=Path(tempfile.mkdtemp(prefix="natsgate-memprobe-"))).start()
    cfg = Config(
        host="127.0.0.1",
        port=0,
        nats_urls=(nats.client_url,),
        jwt_secret="p" * 32,
        max_conns_per_user=0,  # every probe client is one user
    )
    gw = Gateway(cfg)
    await gw.start()
    await gw.ready.wait()
    kv = await gw.upstream.js.key_value(cfg.auth_bucket)
    await kv.put("probe", b'{"subjects": ["probe.>"]}')
    edge = Edge(gw, make_app(gw))
    port = await edge.start("127.0.0.1", 0)
    token = mint_token("probe", cfg.jwt_secret, 3600)
    procs = [await _clients(port, token, 20)]  # one-off allocations happen here, uncounted
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    procs.append(await _clients(port, token, n))
    await asyncio.sleep(1)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    by_file: dict[str, int] = defaultdict(int)
    for stat in after.compare_to(before, "filename"):
        by_file[_where(stat.traceback[0].filename)] += stat.size_diff
    print(f"{n} idle subscribed connections: {sum(by_file.values()) / n:,.0f} bytes each")
    for where, size in sorted(by_file.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {size / n:8,.0f}  {where}")
    for proc in procs:
        proc.kill()
        await proc.wait()
    edge.stop_listening()
    await gw.stop()
    await edge.cleanup()
    nats.stop()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
