"""The systems under test: which targets there are, how each is started and made ready
(natsgate with the bench user's token and capabilities, nats-server's own WebSocket
listener, the python-socketio bridge), and a fingerprint of the natsgate source a cell
runs.

Not ``bench/targets/__init__.py``: the Socket.IO bridge runs as
``bench.targets.socketio_bridge``, and its package's ``__init__`` would load all this into
the process whose memory is measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import ChildDied, Server, free_port, wait_for_line
from bench.settings import COMPRESSION, ROOT

BENCH_USER = "bench"
SECRET = "bench-secret-not-for-production-0123456789abcdef"


@dataclass(frozen=True)
class Target:
    name: str
    proto: str  # the load generator's client protocol
    kind: str  # how to start it
    workers: int = 1
    label: str = ""
    # COMPRESSION for this target's cells (natsgate's variable; for nats-server, its
    # listener's compression and the clients' offer); None: the run's (bench/settings.py)
    compression: str | None = None

    @property
    def compressing(self) -> str:
        return COMPRESSION if self.compression is None else self.compression

    @property
    def deflate(self) -> bool:
        return self.compressing != "off"


TARGETS = {
    "natsgate": Target("natsgate", "natsgate", "natsgate", 1, "natsgate (1 process)"),
    "natsgate-w2": Target("natsgate-w2", "natsgate", "natsgate", 2, "natsgate --workers 2"),
    "nats-server": Target("nats-server", "nats", "nats", 1, "nats-server WebSocket"),
    "socketio": Target("socketio", "socketio", "socketio", 1, "python-socketio bridge"),
    # compression on, whatever COMPRESSION says: beside the plain targets in one run
    "natsgate-z": Target("natsgate-z", "natsgate", "natsgate", 1, "natsgate (1 process)", "auto"),
    "nats-server-z": Target("nats-server-z", "nats", "nats", 1, "nats-server WebSocket", "on"),
}


@dataclass
class Sut:
    url: str
    headers: dict[str, str]
    server: Server | None  # None: nats-server is the target itself


def natsgate_code(src: Path | None) -> str:
    """A fingerprint of the natsgate source a cell runs (``src``: the tree holding the
    package, None for this checkout's src/): sha256 of every .py file under the package,
    so a table never silently mixes two versions of the gateway (the code changes under a
    long run)."""
    import hashlib

    base = (src or ROOT / "src") / "natsgate"
    h = hashlib.sha256()
    for f in sorted(base.rglob("*.py")):
        h.update(str(f.relative_to(base)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def natsgate_argv() -> list[str]:
    exe = Path(sys.executable).parent / "natsgate"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "natsgate"]


def workers_supported() -> tuple[bool, str]:
    try:
        out = subprocess.run(
            [*natsgate_argv(), "serve", "--help"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"natsgate serve --help failed: {exc}"
    if "--workers" not in out:
        return False, "natsgate serve has no --workers option"
    return True, ""


def mint(user: str) -> str:
    try:
        from natsgate.auth import mint_token

        return mint_token(user, SECRET, 6 * 3600)
    except Exception:  # the gateway's source is changing under us: sign it ourselves
        import jwt

        now = int(time.time())
        return jwt.encode({"sub": user, "iat": now, "exp": now + 6 * 3600}, SECRET, "HS256")


async def caps_bucket(nc: Any, wait_s: float = 20) -> Any:
    """The gateway's ``auth_users`` bucket, once the gateway has made it at start."""
    from nats.js.errors import BucketNotFoundError, NotFoundError

    js = nc.jetstream()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await js.key_value("auth_users")
        except (BucketNotFoundError, NotFoundError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def grant(nats_url: str) -> None:
    """Store the bench user's capabilities in ``auth_users`` (made by the gateway)."""
    import nats

    nc = await nats.connect(nats_url, name="bench-setup", max_reconnect_attempts=0)
    try:
        kv = await caps_bucket(nc)
        await kv.put(BENCH_USER, json.dumps({"subjects": ["bench.>"]}).encode())
    finally:
        await nc.close()


async def http_ok(url: str, wait_s: float) -> None:
    import aiohttp

    deadline = time.monotonic() + wait_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise ChildDied(f"{url} did not answer 200 within {wait_s:.0f}s")


async def start_target(
    t: Target,
    nats: Any,
    run_dir: Path,
    stack: contextlib.ExitStack,
    gc_probe: bool = False,
    natsgate_src: Path | None = None,
) -> Sut:
    """Start ``t`` against the cell's nats-server and wait until it serves; its stop goes
    on ``stack``. ``natsgate_src``: run that tree's natsgate, not this checkout's."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    if t.kind == "nats":
        return Sut(f"ws://127.0.0.1:{nats.websocket_port}/", {}, None)
    if t.kind == "socketio":
        argv = [
            sys.executable,
            "-m",
            "bench.targets.socketio_bridge",
            "--nats",
            nats.url,
            "--port",
            "0",
        ]
        srv = Server("socketio", argv, run_dir / "socketio.log", env, ROOT)
        stack.callback(srv.stop)
        line = await wait_for_line(srv, r"listening on (http://\S+)", 1, 30)
        url = line.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        return Sut(url, {}, srv)
    # natsgate; its working directory is the run folder so no developer's .env applies
    port = free_port()
    exe = [sys.executable, "-m", "bench.gcprobe"] if gc_probe else natsgate_argv()
    argv = [*exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--log", "warn"]
    if t.workers > 1:
        argv += ["--workers", str(t.workers)]
    # every load-generator client is BENCH_USER: the per-user connection limit is off
    env.update(
        JWT_SECRET=SECRET, NATS_URL=nats.url, MAX_CONNS_PER_USER="0", COMPRESSION=t.compressing
    )
    if natsgate_src is not None:
        env["PYTHONPATH"] = f"{natsgate_src}{os.pathsep}{ROOT}"
    srv = Server(t.name, argv, run_dir / f"{t.name}.log", env, run_dir)
    stack.callback(srv.stop)
    # each worker says it; tolerate two such lines run together in the shared log
    await wait_for_line(srv, r"natsgate listening on (http://[0-9.]+:[0-9]+)", t.workers, 30)
    for _ in range(3 * t.workers):  # SO_REUSEPORT spreads these over the workers
        await http_ok(f"http://127.0.0.1:{port}/healthz", 30)
    await grant(nats.url)
    return Sut(f"ws://127.0.0.1:{port}/ws", {"Authorization": f"Bearer {mint(BENCH_USER)}"}, srv)
