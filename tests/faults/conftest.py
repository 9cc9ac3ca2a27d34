"""Fault tests with real processes: nats-server nodes (alone or as a 3-node cluster) and
``natsgate serve`` processes, killed, restarted and starved on purpose.

Nothing is mocked. Every wait is bounded by the suite's time unit ``T``. Each test hands
the figures it measured (clients, messages, faults, losses, latencies, memory) to
:func:`record`; they are printed at the end of the run and, when
``NATSGATE_FAULT_FIGURES`` names a file, written there as JSON (docs/reliability.md
quotes them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import pytest_asyncio

from natsgate.natsrunner import NatsServer

from ..conftest import SECRET, unique
from ..helpers import Closed, T, WsClient, monitor

NATSGATE = [sys.executable, "-m", "natsgate"]

# ------------------------------------------------------------------ figures

FIGURES: dict[str, dict[str, Any]] = {}


def record(test: str, **figures: Any) -> None:
    """Keep what a test measured, for the summary and docs/reliability.md."""
    FIGURES.setdefault(test, {}).update(figures)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault test figures")
    for test, figures in FIGURES.items():
        terminalreporter.write_line(f"{test}: {json.dumps(figures, sort_keys=True)}")
    path = os.environ.get("NATSGATE_FAULT_FIGURES")
    if path:
        old: dict[str, Any] = {}
        if Path(path).is_file():
            try:
                old = json.loads(Path(path).read_text())
            except json.JSONDecodeError:
                old = {}
        old.update(FIGURES)
        Path(path).write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------ raw clients


class Collector:
    """Reads every envelope of a raw client, in arrival order, until the socket closes
    or :meth:`stop`; ops are sent on ``client`` and their answers found in ``envs``."""

    def __init__(self, client: WsClient, name: str = "") -> None:
        self.client = client
        self.name = name
        self.envs: list[dict[str, Any]] = []
        self.arrived: list[float] = []  # time.monotonic() of each envelope
        self.close_code: int | None = None
        self.task = asyncio.create_task(self._run(), name=f"collect:{name}")

    async def _run(self) -> None:
        try:
            while True:
                env = await self.client.recv(timeout=3600)
                self.envs.append(env)
                self.arrived.append(time.monotonic())
        except Closed as exc:
            self.close_code = exc.code

    async def answer(self, inbox: str, timeout: float = 2 * T) -> dict[str, Any]:
        """The ``reply`` or ``error`` for ``inbox``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for env in self.envs[seen:]:
                if env.get("inbox") == inbox and env.get("op") in ("reply", "error"):
                    return env
            seen = len(self.envs)
            if self.task.done():
                raise Closed(self.close_code)
            await asyncio.sleep(0.01)
        raise TimeoutError(f"{self.name}: no answer for {inbox}")

    async def ok(self, op: str, target: str | None = None, data: Any = None, **kw: Any) -> Any:
        env = await self.answer(await self.client.send(op, target, data, **kw))
        assert env["op"] == "reply", (self.name, op, target, env)
        return env

    def js(self, stream: str) -> list[dict[str, Any]]:
        """The data of every JetStream ``msg`` of ``stream``, in order."""
        t = f"js:{stream}"
        return [e["data"] for e in self.envs if e.get("op") == "msg" and e.get("target") == t]

    def kv_state(self, bucket: str) -> dict[str, Any]:
        """The bucket as this client would hold it: RESYNC clears, PUT sets, DEL removes."""
        t = f"kv:{bucket}"
        state: dict[str, Any] = {}
        for e in self.envs:
            if e.get("op") != "msg" or e.get("target") != t:
                continue
            d = e["data"]
            if d["op"] == "RESYNC":
                state.clear()
            elif d["op"] == "PUT":
                state[d["key"]] = d["value"]
            elif d["op"] in ("DEL", "PURGE"):
                state.pop(d["key"], None)
        return state

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()


def gaps_and_duplicates(seqs: list[int], first: int = 1) -> tuple[list[int], list[int]]:
    """(missing, repeated) sequence numbers in ``seqs`` against first..max."""
    seen: set[int] = set()
    repeated = []
    for s in seqs:
        if s in seen:
            repeated.append(s)
        seen.add(s)
    top = max(seqs, default=first - 1)
    return [s for s in range(first, top + 1) if s not in seen], repeated


# ------------------------------------------------------------------ ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ natsgate serve


class GatewayProc:
    """One ``natsgate serve`` process on a fixed port, its stdout and stderr in files."""

    def __init__(
        self,
        workdir: Path,
        nats_url: str,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.args = args
        self.env = {
            **os.environ,
            "JWT_SECRET": SECRET,
            "NATS_URL": nats_url,
            "AUTH_BUCKET": unique("caps_"),
            "AUTH_CREDS_BUCKET": unique("creds_"),
            "AUTH_REVOKED_BUCKET": unique("revoked_"),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.out_path = workdir / "gateway.out"
        self.err_path = workdir / "gateway.err"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, listening: int = 1) -> GatewayProc:
        """Start and wait until ``listening`` processes said where they listen."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        marks = (
            self.out_path.read_text().count("natsgate listening") if self.out_path.exists() else 0
        )
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    *NATSGATE,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log",
                    "info",
                    *self.args,
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + 6 * T
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"natsgate exited with {self.proc.returncode}: {self.stderr()}")
            if self.out_path.read_text().count("natsgate listening") >= marks + listening:
                return self
            time.sleep(0.02)
        raise TimeoutError(f"natsgate did not listen within {6 * T}s: {self.stderr()}")

    async def astart(self, listening: int = 1) -> GatewayProc:
        """:meth:`start` off the event loop, so that clients in the test keep running."""
        return await asyncio.to_thread(self.start, listening)

    def stdout(self) -> str:
        return self.out_path.read_text() if self.out_path.exists() else ""

    def stderr(self) -> str:
        return self.err_path.read_text() if self.err_path.exists() else ""

    async def health(self) -> int:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r,
            ):
                return r.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0

    async def wait_healthy(self, timeout: float = 6 * T) -> float:
        """Seconds until /healthz answered 200."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if await self.health() == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise TimeoutError(f"gateway never became healthy: {self.stderr()[-2000:]}")

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` as {"name{labels}": value}."""
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/metrics") as r:
            text = await r.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def rss(self) -> int:
        """Resident memory of the process and its children, bytes."""
        try:
            p = psutil.Process(self.pid)
            return p.memory_info().rss + sum(
                c.memory_info().rss for c in p.children(recursive=True)
            )
        except psutil.Error:
            return 0

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers (fixture clean-up)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def gateway_procs(tmp_path: Path) -> Iterator[Any]:
    """Make ``natsgate serve`` processes; every one is stopped at the end."""
    made: list[GatewayProc] = []

    def make(nats_url: str, **kw: Any) -> GatewayProc:
        g = GatewayProc(tmp_path / f"gw{len(made)}", nats_url, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


# ------------------------------------------------------------------ a NATS cluster


class Cluster:
    """Three nats-server nodes with JetStream, routed to each other on loopback."""

    def __init__(self, root: Path, size: int = 3) -> None:
        name = unique("c")
        cports = [free_port() for _ in range(size)]
        routes = [f"nats-route://127.0.0.1:{p}" for p in cports]
        self.nodes = [
            NatsServer(
                store_dir=root / f"n{i}",
                cluster=name,
                cluster_port=cports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
                server_name=f"n{i}",
                log_file=root / f"n{i}.log",
            )
            for i in range(size)
        ]

    def start(self) -> Cluster:
        # one after the other: a node is "ready" before its routes are up, so none waits
        # for the others; the JetStream meta group forms afterwards (wait_jetstream)
        for node in self.nodes:
            node.start()
        return self

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def seeds(self, first: int) -> str:
        """NATS_URL naming every node, node ``first`` first."""
        order = [first] + [i for i in range(len(self.nodes)) if i != first]
        return ",".join(self.nodes[i].url for i in order)

    async def wait_jetstream(self, timeout: float = 6 * T) -> None:
        """Until every running node knows the JetStream meta leader, and the leader sees
        every other running node as current."""
        deadline = time.monotonic() + timeout
        running = [n for n in self.nodes if n.proc is not None]
        while time.monotonic() < deadline:
            try:
                metas = [monitor(n.monitor_url, "/jsz").get("meta_cluster") or {} for n in running]
            except OSError:
                metas = []
            leaders = {m.get("leader") for m in metas}
            if metas and len(leaders) == 1 and None not in leaders:
                (leader,) = leaders
                lm = next(
                    (m for n, m in zip(running, metas, strict=True) if n.server_name == leader),
                    None,
                )
                if lm is not None:
                    current = [r for r in lm.get("replicas") or [] if r.get("current")]
                    if len(current) >= len(running) - 1:
                        return
            await asyncio.sleep(0.1)
        raise TimeoutError("the JetStream meta group never formed")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path / "cluster").start()
    try:
        await c.wait_jetstream()
        yield c
    finally:
        c.stop()


__all__ = [
    "FIGURES",
    "Cluster",
    "Collector",
    "GatewayProc",
    "free_port",
    "gaps_and_duplicates",
    "percentile",
    "record",
]
