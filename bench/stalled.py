"""Stalled clients and the kernel's send buffer: ``python -m bench.stalled --label NAME``.

All on 127.0.0.1: a fresh nats-server, one ``natsgate serve`` process, ``--clients``
raw WebSocket clients that subscribe to one subject and then never read again (their
receive buffer set to ``--rcvbuf`` bytes before connecting: a stuck tab, a phone behind a
dead radio), one healthy client that reads everything, and a publisher sending
``--rate`` messages a second of ``--size`` bytes to that subject.

Every 100 ms ``ss -tnmi`` is read for the gateway's side of every connection: Send-Q
(bytes in the kernel the peer has not acknowledged), ``notsent`` (bytes not yet put on
the wire), ``skmem`` ``w`` (memory queued for sending, with overheads) and ``tb`` (the
send buffer's size); and the gateway's RSS (psutil) and the kernel's TCP memory
(``/proc/net/sockstat``, pages, for the whole machine). The verdict (``error`` backpressure, close
1013) is timed by ``natsgate_backpressure_closes_total``; a connection counts as closed
once the gateway's socket leaves ESTABLISHED (the gateway waits up to 1 s for the
client's close frame, which a stalled client never sends, then aborts). Publishing
stops ``--after`` seconds after the last stalled client was closed (or at
``--max-seconds``); the gateway's side of the closed connections is watched ``--linger``
seconds more (orphaned sockets keep their unsent data), then the stalled clients read
what reached them, to find the close frame (1013) if it got through.

Prints a table and writes ``bench/results/stalled-<label>.json``. ``--lowat N`` passes
``NOTSENT_LOWAT_BYTES=N`` to the gateway (``0``: the kernel's default, as before that
setting existed); ``--src DIR`` runs the natsgate package found under ``DIR`` (for
example a ``git archive`` of an older commit). Every wait is bounded; the gateway and
nats-server are stopped on the way out and die with this process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/stalled.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
import psutil

from bench.common import die_with_parent
from natsgate.auth import mint_token
from natsgate.natsrunner import NatsServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
USER = "stall"
SUBJECT = "stall.feed"
SAMPLE_S = 0.1

# ------------------------------------------------------------------ WebSocket by hand


def masked(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client frame (RFC 6455 §5.3: clients mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


class Frames:
    """Server frames (unmasked) out of a byte stream, split as it arrives."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 2:
            n = self.buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(self.buf) < 4:
                    break
                n, at = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    break
                n, at = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < at + n:
                break
            out.append((self.buf[0] & 0x0F, bytes(self.buf[at : at + n])))
            del self.buf[: at + n]
        return out


@dataclass
class Client:
    sock: socket.socket
    port: int  # its local port: the gateway's peer port in ss
    frames: Frames = field(default_factory=Frames)
    msgs: int = 0
    close_code: int | None = None
    backpressure_error: bool = False
    eof: bool = False
    expect: int | None = None  # messages it should get in all
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, frames: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
        """Count messages; keep the error and close frame; the other envelopes."""
        envs = []
        for op, payload in frames:
            if op == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                continue
            if op != 0x1:
                continue
            for line in payload.split(b"\n"):
                if line.startswith(b'{"op":"msg"'):
                    self.msgs += 1
                else:
                    env = json.loads(line)
                    if env.get("op") == "error" and env["data"].get("code") == "backpressure":
                        self.backpressure_error = True
                    envs.append(env)
        return envs


async def open_client(port: int, token: str, rcvbuf: int | None) -> Client:
    """Connect (SO_RCVBUF set first: it fixes the window the handshake offers), upgrade,
    subscribe to ``SUBJECT`` and return once the ``reply`` came."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    await loop.sock_sendall(sock, head.encode())
    c = Client(sock, sock.getsockname()[1])
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        if not chunk:
            raise ConnectionError("the gateway closed during the upgrade")
        data += chunk
    status, _, rest = data.partition(b"\r\n\r\n")
    if not status.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(status.decode(errors="replace"))
    await loop.sock_sendall(
        sock, masked(json.dumps({"op": "sub", "target": SUBJECT, "inbox": "s"}).encode())
    )
    envs = c.take(c.frames.feed(rest))
    while not any(e.get("inbox") == "s" for e in envs):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        if not chunk:
            raise ConnectionError("the gateway closed before the sub's reply")
        envs += c.take(c.frames.feed(chunk))
    reply = next(e for e in envs if e.get("inbox") == "s")
    if reply["op"] != "reply":
        raise RuntimeError(f"sub refused: {reply}")
    return c


async def read_all(c: Client, stop: asyncio.Event | None, idle_s: float) -> None:
    """Read until EOF, ``stop``, or ``idle_s`` without a byte."""
    loop = asyncio.get_running_loop()
    while stop is None or not stop.is_set():
        try:
            data = await asyncio.wait_for(loop.sock_recv(c.sock, 262144), idle_s)
        except TimeoutError:
            if stop is None:
                return
            continue
        except ConnectionError:
            c.eof = True
            return
        if not data:
            c.eof = True
            return
        c.take(c.frames.feed(data))
        if c.expect is not None and c.msgs >= c.expect:
            c.caught_up.set()


# ------------------------------------------------------------------ the gateway's sockets


@dataclass
class SockStat:
    state: str
    send_q: int
    notsent: int
    w: int  # skmem: wmem_queued
    tb: int  # skmem: sndbuf


_SKMEM = re.compile(r"skmem:\(([^)]*)\)")


def ss_gateway(gw_port: int) -> dict[int, SockStat]:
    """The gateway's side of every connection on ``gw_port``, by the peer's port."""
    try:
        out = subprocess.run(
            ["ss", "-tnmiH", "state", "all", f"sport = :{gw_port}"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[int, SockStat] = {}
    cur: SockStat | None = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            parts = line.split()
            if len(parts) < 5 or parts[0] == "LISTEN":
                cur = None
                continue
            cur = SockStat(parts[0], int(parts[2]), 0, 0, 0)
            found[int(parts[4].rsplit(":", 1)[1])] = cur
        elif cur is not None:
            if m := _SKMEM.search(line):
                fields = dict(re.findall(r"([a-z]+)(\d+)", m.group(1)))
                cur.w, cur.tb = int(fields.get("w", 0)), int(fields.get("tb", 0))
            if m := re.search(r"notsent:(\d+)", line):
                cur.notsent = int(m.group(1))
    return found


def tcp_mem_pages() -> int:
    """The kernel's TCP memory in pages (all sockets of the machine)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                f = line.split()
                return int(f[f.index("mem") + 1])
    return 0


@dataclass
class Track:
    """What was seen of one stalled connection on the gateway's side."""

    peer_port: int
    peak_send_q: int = 0
    peak_notsent: int = 0
    peak_w: int = 0
    tb_at_peak: int = 0
    closed_after_s: float | None = None  # since publishing began
    send_q_at_close: int | None = None
    orphan_send_q_end: int = 0  # still held when the watch ended
    close_code: int | None = None
    backpressure_error: bool = False
    eof: bool = False


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


def backpressure_closes(metrics: str) -> int:
    m = re.search(r"^natsgate_backpressure_closes_total (\S+)", metrics, re.M)
    return int(float(m.group(1))) if m else 0


async def grant(nats_url: str) -> None:
    """The stalled user may read ``stall.>`` (the gateway makes the bucket)."""
    from nats.js.errors import BucketNotFoundError, NotFoundError

    nc = await nats.connect(nats_url, max_reconnect_attempts=0)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                kv = await nc.jetstream().key_value("auth_users")
                break
            except (BucketNotFoundError, NotFoundError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await kv.put(USER, json.dumps({"subjects": ["stall.>"]}).encode())
    finally:
        await nc.close()


def start_gateway(
    args: argparse.Namespace, nats_url: str, secret: str, port: int, run_dir: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JWT_SECRET": secret, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [*([str(Path(args.src).resolve())] if args.src else []), str(ROOT)]
    )
    if args.lowat is not None:
        env["NOTSENT_LOWAT_BYTES"] = str(args.lowat)
    if args.outbox is not None:
        env["OUTBOX_BYTES"] = str(args.outbox)
    argv = [sys.executable, "-m", "natsgate", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(run_dir / "gateway.log", "wb") as log:
        return subprocess.Popen(
            [*argv, "--log", "info"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=run_dir,  # no developer's .env
            preexec_fn=die_with_parent,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def which_natsgate(args: argparse.Namespace) -> str:
    src = Path(args.src).resolve() if args.src else ROOT / "src"
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return f"{src} (checkout at {rev})" if not args.src else str(src)


# ------------------------------------------------------------------ the run


async def run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    server = NatsServer(store_dir=run_dir / "js").start()
    port = free_port()
    gw = start_gateway(args, server.url, secret, port, run_dir)
    nc = None
    clients: list[Client] = []
    try:
        deadline = time.monotonic() + 30
        while http_get(f"http://127.0.0.1:{port}/healthz")[0] != 200:
            if gw.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((run_dir / "gateway.log").read_text()[-2000:])
            await asyncio.sleep(0.1)
        await grant(server.url)
        token = mint_token(USER, secret, 3600)
        stalled = [await open_client(port, token, args.rcvbuf) for _ in range(args.clients)]
        healthy = await open_client(port, token, None)
        clients = [*stalled, healthy]
        tracks = {c.port: Track(c.port) for c in stalled}
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        proc = psutil.Process(gw.pid)
        rss_base = proc.memory_info().rss
        mem_base = tcp_mem_pages()
        rss_peak, mem_peak = rss_base, mem_base
        nc = await nats.connect(server.url)

        stop_reading = asyncio.Event()
        healthy_task = asyncio.create_task(read_all(healthy, stop_reading, 0.5))
        t0 = time.monotonic()
        published = 0
        all_closed_at: float | None = None
        verdicts: dict[str, float] = {}  # natsgate_backpressure_closes_total reached 1, all
        body = b'{"pad":"' + b"x" * max(0, args.size - 10) + b'"}'
        per_tick = max(1, round(args.rate * SAMPLE_S / 10))  # 10 publish ticks per sample

        async def sample() -> dict[int, SockStat]:
            nonlocal rss_peak, mem_peak
            seen = await asyncio.to_thread(ss_gateway, port)
            now = time.monotonic() - t0
            for pp, tr in tracks.items():
                s = seen.get(pp)
                if s is not None and s.state == "ESTAB":
                    if s.send_q > tr.peak_send_q:
                        tr.peak_send_q, tr.tb_at_peak = s.send_q, s.tb
                    tr.peak_notsent = max(tr.peak_notsent, s.notsent)
                    tr.peak_w = max(tr.peak_w, s.w)
                elif tr.closed_after_s is None:
                    tr.closed_after_s = round(now, 2)
                    tr.send_q_at_close = s.send_q if s else 0
            with contextlib.suppress(psutil.Error):
                rss_peak = max(rss_peak, proc.memory_info().rss)
            mem_peak = max(mem_peak, tcp_mem_pages())
            if "all" not in verdicts:
                n = backpressure_closes((await asyncio.to_thread(http_get, metrics_url))[1])
                if n >= 1:
                    verdicts.setdefault("first", round(now, 2))
                if n >= len(tracks):
                    verdicts["all"] = round(now, 2)
            return seen

        while True:
            elapsed = time.monotonic() - t0
            if elapsed > args.max_seconds:
                break
            if all_closed_at is not None and elapsed - all_closed_at > args.after:
                break
            for _ in range(10):
                for _ in range(per_tick):
                    await nc.publish(SUBJECT, body)
                published += per_tick
                await asyncio.sleep(max(0.0, t0 + published / args.rate - time.monotonic()))
            await sample()
            if all_closed_at is None and all(t.closed_after_s is not None for t in tracks.values()):
                all_closed_at = time.monotonic() - t0
        await nc.flush()
        publish_s = time.monotonic() - t0

        # what the kernel still holds for the closed ones (orphans keep unsent data)
        linger_end = time.monotonic() + args.linger
        seen: dict[int, SockStat] = {}
        while time.monotonic() < linger_end:
            seen = await sample()
            await asyncio.sleep(SAMPLE_S)
        for pp, tr in tracks.items():
            s = seen.get(pp)
            tr.orphan_send_q_end = s.send_q if s is not None and s.state != "ESTAB" else 0

        # the healthy one must have everything; then the stalled ones read what reached them
        healthy.expect = published
        if healthy.msgs >= published:
            healthy.caught_up.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(healthy.caught_up.wait(), 10)
        stop_reading.set()
        await healthy_task
        await asyncio.gather(*(read_all(c, None, 2.0) for c in stalled))
        for c in stalled:
            tr = tracks[c.port]
            tr.close_code, tr.backpressure_error, tr.eof = (
                c.close_code,
                c.backpressure_error,
                c.eof,
            )
        rows = [asdict(t) for t in tracks.values()]
        closed = [t.closed_after_s for t in tracks.values() if t.closed_after_s is not None]
        peaks = [t.peak_send_q for t in tracks.values()]
        return {
            "label": args.label,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "natsgate": which_natsgate(args),
            "settings": {
                "stalled_clients": args.clients,
                "client_rcvbuf": args.rcvbuf,
                "rate_per_s": args.rate,
                "message_bytes": len(body),
                "NOTSENT_LOWAT_BYTES": args.lowat,
                "OUTBOX_BYTES": args.outbox,
                "tcp_wmem": args.tcp_wmem,
                "kernel": os.uname().release,
            },
            "summary": {
                "published": published,
                "publish_s": round(publish_s, 1),
                "healthy_received": healthy.msgs,
                "healthy_lost": published - healthy.msgs,
                "closed": len(closed),
                "backpressure_closes": backpressure_closes(http_get(metrics_url)[1]),
                "verdict_first_s": verdicts.get("first"),
                "verdict_all_s": verdicts.get("all"),
                "send_q_peak_median_kib": round(statistics.median(peaks) / 1024, 1),
                "send_q_peak_max_kib": round(max(peaks) / 1024, 1),
                "send_q_peak_sum_mib": round(sum(peaks) / 2**20, 2),
                "closed_after_s_median": statistics.median(closed) if closed else None,
                "closed_after_s_max": max(closed) if closed else None,
                "orphan_send_q_sum_kib": round(
                    sum(t.orphan_send_q_end for t in tracks.values()) / 1024, 1
                ),
                "close_1013_seen": sum(t.close_code == 1013 for t in tracks.values()),
                "gateway_rss_mib": {
                    "before_publishing": round(rss_base / 2**20, 1),
                    "peak": round(rss_peak / 2**20, 1),
                },
                "kernel_tcp_mem_mib": {  # whole machine
                    "before_publishing": round(mem_base * 4096 / 2**20, 1),
                    "peak": round(mem_peak * 4096 / 2**20, 1),
                },
            },
            "connections": rows,
        }
    finally:
        for c in clients:
            c.sock.close()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        stop(gw)
        server.stop()


def table(result: dict[str, Any]) -> str:
    kib = 1024
    lines = [
        f"{result['label']}: {result['natsgate']}",
        json.dumps(result["settings"]),
        f"{'peer':>6} {'SendQ peak KiB':>14} {'notsent KiB':>11} {'skmem w KiB':>11} "
        f"{'tb KiB':>7} {'closed s':>8} {'orphan KiB':>10} {'code':>5}",
    ]
    for r in result["connections"]:
        lines.append(
            f"{r['peer_port']:>6} {r['peak_send_q'] / kib:>14.1f} {r['peak_notsent'] / kib:>11.1f} "
            f"{r['peak_w'] / kib:>11.1f} {r['tb_at_peak'] / kib:>7.0f} "
            f"{r['closed_after_s'] if r['closed_after_s'] is not None else '-':>8} "
            f"{r['orphan_send_q_end'] / kib:>10.1f} {r['close_code'] or '-':>5}"
        )
    lines.append(json.dumps(result["summary"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--label", required=True, help="names bench/results/stalled-LABEL.json")
    ap.add_argument("--clients", type=int, default=20, help="stalled clients")
    ap.add_argument("--rcvbuf", type=int, default=4096, help="their SO_RCVBUF, bytes")
    ap.add_argument("--rate", type=int, default=2000, help="messages per second")
    ap.add_argument("--size", type=int, default=1024, help="message bytes")
    ap.add_argument("--lowat", type=int, default=None, help="NOTSENT_LOWAT_BYTES for the gateway")
    ap.add_argument("--outbox", type=int, default=None, help="OUTBOX_BYTES for the gateway")
    ap.add_argument("--src", default=None, help="a directory holding the natsgate package")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="publishing at most")
    ap.add_argument("--after", type=float, default=1.0, help="publishing after the last close")
    ap.add_argument("--linger", type=float, default=3.0, help="watching orphans, seconds")
    args = ap.parse_args()
    args.tcp_wmem = Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()
    if not 1 <= args.clients <= 500 or not 1 <= args.rate <= 50_000:
        ap.error("--clients 1..500, --rate 1..50000")
    with tempfile.TemporaryDirectory(prefix="natsgate-stalled-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print(table(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"stalled-{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out.relative_to(ROOT))


if __name__ == "__main__":
    main()
