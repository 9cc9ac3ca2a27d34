"""The open-file limit as the ceiling of connections: ``serve`` raises its soft limit to
the hard one and says so; at the ceiling an upgrade is refused with 503 and a reason (a
process out of descriptors would leave clients hanging in the listen backlog, silently),
and a connection is taken again once one has closed."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from natsgate.auth import mint_token
from natsgate.fdlimit import RESERVE
from natsgate.natsrunner import NatsServer

from .conftest import SECRET, gateway_env
from .helpers import WsClient
from .test_cli import NATSGATE, free_port, wait_healthy


def limit(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def serve(
    nats_server: NatsServer, preexec: Callable[[], None], log: Path
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {
        **os.environ,
        **gateway_env(nats_server.url),
        "MAX_CONNS_PER_USER": "0",
    }
    proc = subprocess.Popen(
        [*NATSGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--log", "info"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),  # a file: a full pipe would stop the gateway's loop
        text=True,
        cwd="/tmp",
        preexec_fn=preexec,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "natsgate listening on" in line, line
    return proc, port


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.terminate()
        proc.wait(10)


def log_line(log: Path, needle: str) -> str:
    for line in log.read_text().splitlines():  # written before "listening"
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r}")


async def test_the_soft_limit_is_raised_to_the_hard_one(
    nats_server: NatsServer, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 4096  # lowering a hard limit is always allowed
    soft = min(256, hard // 2)  # below any hard limit a test suite of sockets runs under
    proc, _ = serve(nats_server, limit(soft, hard), tmp_path / "log")
    procs.append(proc)
    line = log_line(tmp_path / "log", "open files:")
    assert f"open files: {hard} (raised from {soft})" in line, line


async def test_at_the_ceiling_an_upgrade_is_refused_with_a_reason(
    nats_server: NatsServer, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    files = 400  # hard limit too: the gateway cannot raise it
    ceiling = max(files - RESERVE, files // 2)
    proc, port = serve(nats_server, limit(files, files), tmp_path / "log")
    procs.append(proc)
    assert f"at most {ceiling} WebSockets" in log_line(tmp_path / "log", "open files:")
    await wait_healthy(port)
    url = f"ws://127.0.0.1:{port}/ws"
    token = mint_token("fd", SECRET, 600)
    clients = [await WsClient.open(url, token=token) for _ in range(ceiling)]
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
        assert refused.value.status == 503
        async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200  # plain HTTP still answered: the reserve
    await clients.pop().close()
    for _ in range(50):  # the gateway learns of the close a moment later
        try:
            clients.append(await WsClient.open(url, token=token))
            break
        except aiohttp.WSServerHandshakeError:
            await asyncio.sleep(0.05)
    assert len(clients) == ceiling
    for c in clients:
        await c.close()
