"""A client that reads slowly on a busy subject (issue 6, item 2c).

A real ``natsgate serve`` process; 100 clients read a busy subject as fast as they can,
one more reads it slowly through a socket with a small receive buffer. The slow one must
be cut off (``backpressure``, close 1013) while the others lose nothing and keep their
latency, and the gateway's memory must stay bounded. Latency is measured for the same
100 clients before the slow one comes (baseline) and while it is there, in one run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import time
from typing import Any

import nats
import psutil
import pytest

from natsgate.auth import mint_token
from natsgate.natsrunner import NatsServer

from ..conftest import SECRET, unique
from ..helpers import T, WsClient, eventually
from .conftest import GatewayProc, percentile, record

pytestmark = pytest.mark.slow


def send_queue(peer_port: int) -> int | None:
    """Send-Q (bytes the kernel holds, not yet read by the peer) of the socket talking to
    ``peer_port``, from ``ss``; None when ``ss`` is missing or the socket is gone."""
    try:
        out = subprocess.run(
            ["ss", "-tnH", "state", "established", f"( dport = :{peer_port} )"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            return int(parts[1])
    return None


class SlowReader:
    """A WebSocket client on a raw socket whose receive buffer is small and which reads
    ``chunk`` bytes every ``every`` seconds: a phone on a bad network, or a stuck tab."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.read_bytes = 0
        self.eof = False
        self.tail = b""  # what came last: holds the error and close frames

    @classmethod
    async def open(cls, port: int, token: str, rcvbuf: int = 4096) -> SlowReader:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, env: dict[str, Any]) -> None:
        """One masked text frame (RFC 6455 section 5.3: clients mask)."""
        data = json.dumps(env).encode()
        mask = os.urandom(4)
        head = bytes([0x81])
        n = len(data)
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    async def read_slowly(self, chunk: int, every: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            data = await self.reader.read(chunk)
            if not data:
                self.eof = True
                return
            self.read_bytes += len(data)
            await asyncio.sleep(every)

    async def drain(self, timeout: float) -> None:
        """Read the rest fast (after the verdict), keeping the last bytes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), 1.0)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            if not data:
                self.eof = True
                break
            self.read_bytes += len(data)
            self.tail = (self.tail + data)[-65536:]

    def close_code(self) -> int | None:
        """The code of a close frame (0x88) at the end of what was read, if any."""
        i = self.tail.rfind(b"\x88")
        while i >= 0:
            if i + 4 <= len(self.tail) and 2 <= self.tail[i + 1] <= 125:
                return int(struct.unpack("!H", self.tail[i + 2 : i + 4])[0])
            i = self.tail.rfind(b"\x88", 0, i)
        return None

    def close(self) -> None:
        self.writer.close()


async def test_slow_reader_is_cut_off_others_keep_latency_memory_bounded(
    nats_server: NatsServer, gateway_procs: Any
) -> None:
    # 50 messages a second of ~6 KB: enough for the slow reader to fill the kernel's socket
    # buffers (several MB on Linux, see docs/reliability.md) within seconds
    n_fast, rate, pad = 100, 50, 6000
    outbox = 64 * 1024
    gw: GatewayProc = gateway_procs(
        nats_server.url,
        # 101 connections of one user: MAX_CONNS_PER_USER has a test of its own
        env={"OUTBOX_BYTES": str(outbox), "BACKPRESSURE_MS": "250", "MAX_CONNS_PER_USER": "0"},
    )
    await gw.astart()
    await gw.wait_healthy()
    nc = await nats.connect(nats_server.url)
    p = unique("busy")
    kv = await nc.jetstream().key_value(gw.env["AUTH_BUCKET"])
    await kv.put("reader", json.dumps({"subjects": [f"{p}.>"]}).encode())
    token = mint_token("reader", SECRET, 3600)

    fast = [await WsClient.open(gw.ws_url, token=token) for _ in range(n_fast)]
    for c in fast:
        assert (await c.recv())["op"] == "cap_update"
        await c.ok("sub", f"{p}.feed")
    got = [0] * n_fast
    lat: dict[str, list[float]] = {
        "warmup": [],
        "baseline": [],
        "with_slow": [],
        "after_cut": [],
    }
    phase = "warmup"

    async def read(i: int, c: WsClient) -> None:
        while True:
            env = await c.recv(timeout=6 * T)
            if env["op"] == "msg":
                got[i] += 1
                lat[env["data"]["phase"]].append(time.monotonic() - env["data"]["t"])

    readers = [asyncio.create_task(read(i, c)) for i, c in enumerate(fast)]

    rss: list[int] = []
    sampling = asyncio.Event()

    async def sample() -> None:
        proc = psutil.Process(gw.pid)
        while not sampling.is_set():
            try:
                rss.append(proc.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    sent = 0
    filler = "x" * pad

    async def publish_for(seconds: float, until: Any = None) -> None:
        nonlocal sent
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds and not (until and until()):
            body = {"phase": phase, "t": time.monotonic(), "pad": filler}
            await nc.publish(f"{p}.feed", json.dumps(body).encode())
            sent += 1
            n += 1
            await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
        await nc.flush()

    await publish_for(1.0)
    phase = "baseline"
    await publish_for(5.0)  # the 100 alone
    baseline_rss = max(rss)

    phase = "with_slow"
    slow = await SlowReader.open(gw.port, token)
    slow.send({"op": "sub", "target": f"{p}.feed", "inbox": "s1"})
    stop_slow = asyncio.Event()
    slow_task = asyncio.create_task(slow.read_slowly(512, 0.2, stop_slow))  # ~2.5 KB/s
    added = time.monotonic()

    async def cut() -> bool:
        return (await gw.metrics()).get("natsgate_backpressure_closes_total", 0) >= 1

    cut_flag = False

    async def watch_cut() -> None:
        nonlocal cut_flag
        await eventually(cut, timeout=12 * T, every=0.1)
        cut_flag = True

    watcher = asyncio.create_task(watch_cut())
    local_port = slow.writer.get_extra_info("sockname")[1]
    kernel: list[int] = []

    async def sample_kernel() -> None:  # the gateway socket's unread bytes, in the kernel
        while not cut_flag:
            q = await asyncio.to_thread(send_queue, local_port)
            if q is not None:
                kernel.append(q)
            await asyncio.sleep(0.5)

    kernel_task = asyncio.create_task(sample_kernel())
    await publish_for(40.0, until=lambda: cut_flag)
    await watcher
    await kernel_task
    cut_after_s = time.monotonic() - added
    phase = "after_cut"
    await publish_for(3.0)
    stop_slow.set()
    await slow_task
    await slow.drain(2 * T)

    await eventually(lambda: all(n == sent for n in got), timeout=4 * T)
    sampling.set()
    await sampler
    for t in readers:
        t.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    m = await gw.metrics()
    losses = sum(sent - n for n in got)
    assert losses == 0
    assert m["natsgate_backpressure_closes_total"] == 1  # the slow one, nobody else
    assert m["natsgate_open_connections"] == n_fast
    assert slow.eof  # the gateway hung up on it
    code = slow.close_code()
    assert code in (1013, None), code  # 1013 when the close frame got through the jam
    peak = max(rss)
    assert peak < 512 * 2**20, f"gateway RSS peaked at {peak / 2**20:.0f} MiB"

    def ms(values: list[float], q: float) -> float:
        return round(percentile(values, q) * 1000, 2)

    b50, b99 = ms(lat["baseline"], 0.5), ms(lat["baseline"], 0.99)
    s50, s99 = ms(lat["with_slow"], 0.5), ms(lat["with_slow"], 0.99)
    record(
        "test_slow_reader_is_cut_off_others_keep_latency_memory_bounded",
        fast_clients=n_fast,
        rate_per_s=rate,
        payload_bytes=pad + 60,
        messages=sent,
        deliveries=sum(got),
        losses=losses,
        outbox_bytes=outbox,
        slow_reader="512 B every 200 ms, SO_RCVBUF 4 KiB",
        slow_cut_after_s=round(cut_after_s, 2),
        slow_close_code=code,
        slow_bytes_read=slow.read_bytes,
        slow_kernel_send_queue_max_kb=round(max(kernel, default=0) / 1024),
        latency_ms={
            "baseline_p50": b50,
            "baseline_p99": b99,
            "with_slow_p50": s50,
            "with_slow_p99": s99,
            "after_cut_p50": ms(lat["after_cut"], 0.5),
            "after_cut_p99": ms(lat["after_cut"], 0.99),
        },
        p50_ratio=round(s50 / b50, 2) if b50 else None,
        p99_ratio=round(s99 / b99, 2) if b99 else None,
        rss_mb={
            "baseline": round(baseline_rss / 2**20, 1),
            "peak": round(peak / 2**20, 1),
            "end": round(rss[-1] / 2**20, 1),
        },
    )
    slow.close()
    for c in fast:
        await c.close()
    await nc.close()
