"""``natsgate serve --local`` and ``natsgate demo`` (security.md): the embedded nats-server
accepts only the user made at start; the gateway writes its URL and credentials to
``<data-dir>/nats.env`` (mode 0600) for the operator's tools and natsgate's own commands.

Real processes only: the CLI as a subprocess, its embedded nats-server, nats-py clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import psutil
import pytest
from nats.aio.client import Client as NATS

from natsgate.auth import mint_token
from natsgate.natsrunner import read_env_file

from .conftest import SECRET
from .helpers import T, WsClient, eventually
from .test_cli import NATSGATE, free_port, run, wait_healthy

# what the tests' own shell may have set, and must not leak into the CLI under test
_SCRUB = (
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_CREDS",
    "NATS_JWT",
    "NATS_NKEY",
    "JWT_SECRET",
    "AUTH_BUCKET",
    "AUTH_CREDS_BUCKET",
    "DEMO_PASSWORD",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    return {**env, **extra}


@dataclass
class Local:
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path
    err: Path
    stdout_lines: list[str]

    @property
    def env_file(self) -> Path:
        return self.data_dir / "nats.env"

    def nats(self) -> dict[str, str]:
        return read_env_file(self.env_file)

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # this process only, not its nats-server
        try:
            return self.proc.wait(timeout=6 * T)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_local(tmp_path: Path, command: list[str], lines: int = 1, **env: str) -> Local:
    """Start ``natsgate <command> --data-dir ...`` and wait for ``lines`` lines on stdout
    (``natsgate listening``, then ``demo ready`` for the demo)."""
    port = free_port()
    data_dir = tmp_path / "data"
    err = tmp_path / "natsgate.err"
    proc = subprocess.Popen(
        [*NATSGATE, *command, "--host", "127.0.0.1", "--port", str(port), "--data-dir", data_dir],
        env=clean_env(**env),
        stdout=subprocess.PIPE,
        stderr=err.open("w"),
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    got = [proc.stdout.readline() for _ in range(lines)]
    assert got[-1], f"natsgate exited early: {err.read_text()}"
    return Local(proc, port, data_dir, err, got)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    gw = start_local(tmp_path, ["serve", "--local"])
    yield gw
    gw.stop()


async def connect_refused(url: str, **opts: str) -> Exception:
    try:
        nc = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=T, **opts
        )
    except Exception as exc:
        return exc
    await nc.close()
    raise AssertionError(f"connected to {url} with {sorted(opts)}")


async def test_other_processes_cannot_connect(local: Local) -> None:
    url = local.nats()["NATS_URL"]
    exc = await connect_refused(url)
    assert "Authorization Violation" in str(exc)
    exc = await connect_refused(url, user="natsgate", password="guess")
    assert "Authorization Violation" in str(exc)
    # nor with the gateway's own process environment, which names no credentials
    r = await asyncio.to_thread(
        run, ["user", "add", "mallory"], clean_env(NATS_URL=url), stdin="pw\n"
    )
    assert r.returncode == 1 and "Authorization Violation" in r.stderr, r.stderr


async def test_credentials_file_connects_and_reads_the_auth_buckets(local: Local) -> None:
    await wait_healthy(local.port)  # the gateway has made its buckets
    creds = local.nats()
    assert set(creds) == {"NATS_URL", "NATS_USER", "NATS_PASSWORD"}
    assert len(creds["NATS_PASSWORD"]) >= 40  # 32 random bytes
    nc: NATS = await nats.connect(
        creds["NATS_URL"], user=creds["NATS_USER"], password=creds["NATS_PASSWORD"]
    )
    try:
        kv = await nc.jetstream().key_value("auth_users")
        await kv.put("erin", json.dumps({"subjects": ["x.>"]}).encode())
        assert json.loads((await kv.get("erin")).value or b"") == {"subjects": ["x.>"]}
        await nc.jetstream().key_value("auth_creds")
    finally:
        await nc.close()


def test_credentials_file_is_private_named_and_not_on_any_command_line(local: Local) -> None:
    mode = stat.S_IMODE(local.env_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert f"it accepts only the user in {local.env_file.resolve()}" in local.stderr()
    password = local.nats()["NATS_PASSWORD"]
    procs = [psutil.Process(local.proc.pid), *psutil.Process(local.proc.pid).children(True)]
    assert any("nats-server" in " ".join(p.cmdline()) for p in procs)
    for p in procs:
        assert password not in " ".join(p.cmdline())
    assert password not in local.stderr()


def test_credentials_file_goes_when_the_server_stops(local: Local) -> None:
    assert local.env_file.is_file()
    assert local.stop() == 0
    assert not local.env_file.exists()
    assert (local.data_dir / "jetstream").is_dir()  # the data stays


def test_the_embedded_server_goes_with_a_killed_gateway(local: Local) -> None:
    """SIGKILL leaves the gateway no chance to stop its nats-server: the kernel does it
    (the server would otherwise hold port 4222 and the JetStream store for the next start)."""
    servers = [c for c in psutil.Process(local.proc.pid).children() if "nats-server" in c.name()]
    assert len(servers) == 1, servers
    local.proc.kill()
    local.proc.wait()
    _, alive = psutil.wait_procs(servers, timeout=3 * T)
    assert alive == [], "the embedded nats-server outlived its killed gateway"


async def test_user_add_finds_the_embedded_server_by_data_dir(local: Local, tmp_path: Path) -> None:
    await wait_healthy(local.port)
    url = local.nats()["NATS_URL"]
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"subjects": ["chat.>"]}))
    data = ["--data-dir", str(local.data_dir)]
    r = await asyncio.to_thread(
        run, ["user", "add", "carol", "--caps", str(caps), *data], clean_env(), stdin="pw-c\n"
    )
    assert r.returncode == 0, r.stderr
    where = f"on the embedded nats-server at {url} (credentials in {local.env_file})"
    assert r.stdout.splitlines() == [
        f"user carol added {where}",
        f"capabilities of carol set {where}",
    ]
    caps.write_text(json.dumps({"subjects": ["news.>"]}))
    r = await asyncio.to_thread(run, ["user", "caps", "carol", str(caps), *data], clean_env())
    assert r.returncode == 0 and f"set {where}" in r.stdout, r.stderr
    # what it wrote is what the gateway serves
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        login = {"username": "carol", "password": "pw-c"}
        async with s.post(f"http://127.0.0.1:{local.port}/auth/login", json=login) as resp:
            assert resp.status == 200
        async with s.get(f"http://127.0.0.1:{local.port}/auth/me") as resp:
            assert (await resp.json())["caps"]["subjects"] == ["news.>"]
    # another --data-dir has no file: the default NATS_URL, named in the error
    other = ["--data-dir", str(tmp_path / "elsewhere")]
    r = await asyncio.to_thread(
        run, ["user", "add", "dan", *other], clean_env(NATS_URL="nats://127.0.0.1:1"), stdin="p\n"
    )
    assert r.returncode == 1 and "cannot connect to NATS at nats://127.0.0.1:1" in r.stderr


async def test_workers_all_use_the_credentials(tmp_path: Path) -> None:
    gw = start_local(tmp_path, ["serve", "--local", "--workers", "2"], lines=2)
    try:
        assert all("natsgate listening" in line for line in gw.stdout_lines)
        await wait_healthy(gw.port)
        await eventually(lambda: gw.stderr().count("gateway ready") == 2, 3 * T)
        err = gw.stderr()
        assert err.count("gateway ready") == 2, err
        assert "Authorization Violation" not in err
        assert gw.nats()["NATS_PASSWORD"] not in err
    finally:
        assert gw.stop() == 0


async def test_demo_services_connect_with_the_credentials(tmp_path: Path) -> None:
    gw = start_local(tmp_path, ["demo"], lines=2, JWT_SECRET=SECRET, DEMO_PASSWORD="pw-demo-1")
    try:
        assert "log in as alice or bob with password pw-demo-1" in gw.stdout_lines[1]
        base = f"http://127.0.0.1:{gw.port}"
        async with aiohttp.ClientSession() as s:
            login = {"username": "alice", "password": "pw-demo-1"}
            async with s.post(f"{base}/auth/login", json=login) as resp:
                assert resp.status == 200
        c = await WsClient.open(
            f"ws://127.0.0.1:{gw.port}/ws", token=mint_token("alice", SECRET, 60)
        )
        try:
            r = await c.ok("cmd", "svc.echo", {"hi": 1})
            assert r["data"] == {"hi": 1}
            r = await c.ok("cmd", "svc.todos.add", {"text": "buy milk"})
            assert r["data"]["ok"] is True and r["data"]["todo"]["text"] == "buy milk"
        finally:
            await c.close()
    finally:
        assert gw.stop() == 0
