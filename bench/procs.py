"""The benchmark's processes: servers that write a log, children spoken to in JSON lines,
the registry of every pid started (killed whatever happens), and what psutil tells about
a group of processes (CPU seconds, RSS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import die_with_parent
from bench.settings import ROOT


class ChildDied(RuntimeError):
    pass


def tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class Registry(set[int]):
    """Every pid started here; killed by :func:`kill_leftovers` whatever happens."""


REGISTRY = Registry()


def kill_leftovers() -> None:
    for pid in list(REGISTRY):
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            for c in p.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c.kill()
            p.kill()
        REGISTRY.discard(pid)


class Server:
    """A long-running process whose output goes to a log file (SUT, nats-server)."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str], cwd: Path):
        self.name = name
        self.log = log
        self._f = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            preexec_fn=die_with_parent,
        )
        REGISTRY.add(self.proc.pid)

    def tree(self) -> list[psutil.Process]:
        try:
            p = psutil.Process(self.proc.pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 10.0) -> None:
        procs = self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for p in procs[1:]:  # workers that outlived their supervisor
            with contextlib.suppress(psutil.Error):
                p.kill()
        REGISTRY.discard(self.proc.pid)
        self._f.close()


def _open_log(path: Path) -> Any:
    return open(path, "wb")  # the caller closes it


class Child:
    """A benchmark process spoken to in JSON lines (load generator, publisher)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, err: Path):
        self.name = name
        self.proc = proc
        self.err = err

    @classmethod
    async def start(
        cls, name: str, argv: list[str], run_dir: Path, env: dict[str, str] | None = None
    ) -> Child:
        err = run_dir / f"{name}.err"
        with _open_log(err) as f:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=f,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                preexec_fn=die_with_parent,
                limit=1 << 26,
            )
        REGISTRY.add(proc.pid)
        return cls(name, proc, err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.proc.stdin.drain()

    async def recv(self, wait_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), wait_s)
        except TimeoutError:
            raise ChildDied(f"{self.name}: no answer within {wait_s:.0f}s") from None
        if not line:
            raise ChildDied(f"{self.name} exited: {tail(self.err)}")
        return json.loads(line)

    async def ask(self, obj: dict[str, Any], wait_s: float) -> dict[str, Any]:
        await self.send(obj)
        return await self.recv(wait_s)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send({"cmd": "exit"})
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.terminate()
                try:
                    await asyncio.wait_for(self.proc.wait(), 3)
                except TimeoutError:
                    self.proc.kill()
                    await self.proc.wait()
        REGISTRY.discard(self.proc.pid)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss_bytes(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_line(server: Server, pattern: str, count: int, wait_s: float) -> str:
    """Wait until the server's log holds ``count`` lines matching ``pattern``."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        text = server.log.read_text(errors="replace") if server.log.exists() else ""
        found = rx.findall(text)
        if len(found) >= count:
            return found[-1]
        if server.proc.poll() is not None:
            raise ChildDied(
                f"{server.name} exited with {server.proc.returncode}: {tail(server.log)}"
            )
        await asyncio.sleep(0.05)
    raise ChildDied(f"{server.name} not ready within {wait_s:.0f}s: {tail(server.log)}")
