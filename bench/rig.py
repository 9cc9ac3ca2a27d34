"""One cell's processes, started from scratch: a nats-server (JetStream on, a temporary
store), the target, the publisher and the load generators, and the file of delivery
counters they share; what the phases of ``bench/cell.py`` measure and talk to."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import Counters
from bench.procs import REGISTRY, Child, free_port
from bench.settings import CellOptions
from bench.sut import Sut, Target, start_target


@dataclass
class Rig:
    """One cell's running processes: nats-server, the target, the publisher, the load
    generators, and the delivery counters they share."""

    sut: Sut
    nats_procs: list[psutil.Process]
    pub: Child
    lgs: list[Child]
    counters: Counters
    sut_procs: list[psutil.Process] = field(init=False)
    server_procs: list[psutil.Process] = field(init=False)
    lg_procs: list[psutil.Process] = field(init=False)
    pub_procs: list[psutil.Process] = field(init=False)

    def __post_init__(self) -> None:
        self.refresh()
        self.lg_procs = [psutil.Process(c.pid) for c in self.lgs]
        self.pub_procs = [psutil.Process(self.pub.pid)]

    def refresh(self) -> None:
        """The target's processes (nats-server when it is the target), and the server
        side's: the target's process tree plus the nats-server behind it."""
        self.sut_procs = self.sut.server.tree() if self.sut.server else self.nats_procs
        self.server_procs = self.sut_procs + (self.nats_procs if self.sut.server else [])

    async def loadgens_latency(self, on: bool) -> None:
        for c in self.lgs:
            await c.ask({"cmd": "mode", "latency": on}, 30)

    async def collect(self) -> list[dict[str, Any]]:
        return [await c.ask({"cmd": "collect"}, 60) for c in self.lgs]


def nats_websocket(target: bool, deflate: bool) -> tuple[int | None, str]:
    """nats-server's WebSocket listener when it is the target: ``(-1, "")`` for the
    runner's own block, or, with compression (the target's), a port of ours and a
    block of ours that says ``compression: true`` (the runner's block has no such line)."""
    if not target:
        return None, ""
    if not deflate:
        return -1, ""
    port = free_port()
    block = (
        f'websocket {{\n  host: "127.0.0.1"\n  port: {port}\n  no_tls: true\n'
        "  compression: true\n}"
    )
    return port, block


async def start_rig(
    t: Target,
    n: int,
    opts: CellOptions,
    cell_dir: Path,
    stack: contextlib.ExitStack,
    children: list[Child],
    gc_probe: bool,
) -> Rig:
    """Start the cell's processes; each one's stop goes on ``stack`` or into ``children``
    as soon as it runs, so a failure half-way stops what did start."""
    from natsgate.natsrunner import NatsServer

    k = max(1, min(opts.loadgens, n))
    ws_port, ws_block = nats_websocket(t.kind == "nats", t.deflate)
    nats = NatsServer(
        store_dir=cell_dir / "js",
        port=-1,
        http_port=None,
        websocket_port=-1 if ws_port == -1 else None,
        extra_config=ws_block,
        log_file=cell_dir / "nats-server.log",
    ).start()
    if ws_block:
        nats.websocket_port = ws_port
    stack.callback(nats.stop)
    REGISTRY.add(nats.proc.pid)  # type: ignore[union-attr]
    nats_procs = [psutil.Process(nats.proc.pid)]  # type: ignore[union-attr]
    sut = await start_target(
        t, nats, cell_dir, stack, gc_probe and t.kind == "natsgate", opts.natsgate_src
    )
    counters_file = cell_dir / "counters"
    counters = Counters(counters_file, k, create=True)
    stack.callback(counters.close)
    pub = await Child.start(
        "publisher",
        [sys.executable, "-m", "bench.publisher", nats.url, str(counters_file), str(k)],
        cell_dir,
    )
    children.append(pub)
    lgs: list[Child] = []
    for i in range(k):
        lgs.append(
            await Child.start(
                f"loadgen{i}",
                [sys.executable, "-m", "bench.loadgen", str(i), str(counters_file), str(k)],
                cell_dir,
                env={"COMPRESSION": t.compressing},  # whether its clients offer deflate
            )
        )
        children.append(lgs[-1])
    for c in children:
        ev = await c.recv(30)
        assert ev["ev"] == "ready", ev
    return Rig(sut, nats_procs, pub, lgs, counters)
