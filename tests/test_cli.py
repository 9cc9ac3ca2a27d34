"""The command line (deploy.md): configuration errors, serve, SIGTERM, user, token, demo."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from natsgate.auth import mint_token
from natsgate.config import ConfigError, Flags, load
from natsgate.natsrunner import NatsServer

from .conftest import SECRET, gateway_env
from .helpers import T, WsClient

NATSGATE = [sys.executable, "-m", "natsgate"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    args: list[str], env: dict[str, str], stdin: str = "", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        NATSGATE + args,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/tmp",
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"JWT_SECRET": ""}, "JWT_SECRET is required"),
        ({"JWT_SECRET": "change-me"}, "JWT_SECRET is a placeholder"),
        ({"JWT_SECRET": "x"}, "JWT_SECRET is 1 bytes; it must be at least 32"),
        ({"MAX_FEEDS": "0"}, "MAX_FEEDS must be between"),
        ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES has an invalid address"),
        ({"PORT": "eighty"}, "PORT must be an integer"),
        ({"PORT": "70000"}, "PORT must be between"),
        ({"BACKPRESSURE_MS": "-5"}, "BACKPRESSURE_MS must be between"),
        ({"PING_INTERVAL": "soon"}, "PING_INTERVAL must be a number"),
        ({"NATS_URL": "http://x:1"}, "NATS_URL has an invalid URL"),
        ({"NATS_CREDS": "/no/such/file.creds"}, "NATS_CREDS names a file that does not exist"),
        ({"NATS_JWT": "abc"}, "NATS_JWT and NATS_NKEY must be given together"),
        ({"NATS_USER": "u"}, "NATS_USER and NATS_PASSWORD must be given together"),
        ({"ALLOWED_ORIGINS": "not-an-origin"}, "ALLOWED_ORIGINS has an invalid origin"),
        ({"AUTH_BUCKET": "auth.users"}, "AUTH_BUCKET must be a KV bucket name"),
        ({"COOKIE_SECURE": "maybe"}, "COOKIE_SECURE must be 1 or 0"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of text, json"),
        ({"COMPRESSION": "max"}, "COMPRESSION must be one of off, on, auto"),
        ({"COMPRESSION_MIN_BYTES": "-1"}, "COMPRESSION_MIN_BYTES must be between"),
        ({"PRESENCE_BUCKET": "who.is"}, "PRESENCE_BUCKET must be a KV bucket name"),
        ({"PRESENCE_TTL": "0"}, "PRESENCE_TTL must be between"),
        ({"MAX_JOINS": "none"}, "MAX_JOINS must be an integer"),
        ({"AUDIT_PREFIX": "audit.>"}, "AUDIT_PREFIX must be a NATS subject without wildcards"),
        ({"JWT_JWKS_URL": "keys.json"}, "JWT_JWKS_URL must be an http(s) URL"),
        ({"STATIC_DIR": "/no/such/dir"}, "STATIC_DIR names a folder that does not exist"),
    ],
)
def test_bad_config_stops_startup_with_one_line(env: dict[str, str], needle: str) -> None:
    base = {"JWT_SECRET": SECRET, "NATS_URL": "nats://127.0.0.1:1"}
    r = run(["serve"], {**base, **env})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert lines[0].startswith("natsgate: ")


def test_config_defaults_and_flags() -> None:
    cfg = load(
        Flags(port=9000, host="::1"), {"JWT_SECRET": SECRET, "NATS_URL": "nats://a:1,nats://b:2"}
    )
    assert (cfg.port, cfg.host, cfg.nats_urls) == (9000, "::1", ("nats://a:1", "nats://b:2"))
    assert (cfg.backpressure_ms, cfg.max_frame_bytes, cfg.max_subs) == (250, 1048576, 1000)
    assert (cfg.ping_interval_s, cfg.ping_timeout_s, cfg.cmd_timeout_ms) == (20, 20, 5000)
    assert cfg.nats_name == "natsgate"
    assert (cfg.presence_bucket, cfg.presence_ttl_s, cfg.audit_prefix) == (
        "presence",
        30.0,
        "natsgate.audit",
    )
    assert (cfg.compression, cfg.compression_min_bytes, cfg.log_format) == ("auto", 256, "text")
    assert cfg.serve_static and cfg.static_dir is None
    jwks = load(Flags(), {"JWT_JWKS_URL": "https://id.example.com/jwks.json"})
    assert jwks.jwt_jwks_url and not jwks.jwt_secret  # a key set alone is enough
    assert not load(Flags(), {"JWT_SECRET": SECRET, "STATIC_DIR": "none"}).serve_static
    cfg = load(Flags(local=True), {"FLY_APP_NAME": "app", "PRIMARY_REGION": "ams"})
    assert cfg.jwt_secret_ephemeral and cfg.nats_name == "app-ams"
    with pytest.raises(ConfigError):
        load(Flags(port=-1), {"JWT_SECRET": SECRET})


def test_token_command() -> None:
    r = run(["token", "alice", "--ttl", "15m"], {"JWT_SECRET": SECRET})
    assert r.returncode == 0
    claims = jwt.decode(r.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and 840 <= claims["exp"] - time.time() <= 901
    assert run(["token", "alice"], {"JWT_SECRET": ""}).returncode == 2
    assert "--ttl" in run(["token", "a", "--ttl", "soon"], {"JWT_SECRET": SECRET}).stderr


@pytest.fixture
def gateway_proc(nats_server: NatsServer) -> Iterator[dict[str, Any]]:
    port = free_port()
    env = {
        **os.environ,
        **gateway_env(nats_server.url),
    }
    proc = subprocess.Popen(
        [*NATSGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--log", "info"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/tmp",
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "natsgate listening on" in line, line
    yield {"proc": proc, "port": port, "env": env}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 3 * T
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await __import__("asyncio").sleep(0.05)
    raise TimeoutError("gateway never became healthy")


async def test_user_commands_and_login(gateway_proc: dict[str, Any], tmp_path: Path) -> None:
    env = {k: gateway_proc["env"][k] for k in ("NATS_URL", "AUTH_BUCKET", "AUTH_CREDS_BUCKET")}
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"subjects": ["chat.>"]}))
    r = run(
        ["user", "add", "carol", "--caps", str(caps)], {**env, "JWT_SECRET": ""}, stdin="pw-carol\n"
    )
    assert r.returncode == 0, r.stderr
    caps.write_text(json.dumps({"subjects": ["news.>"]}))
    assert run(["user", "caps", "carol", str(caps)], env).returncode == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    r = run(["user", "caps", "carol", str(bad)], env)
    assert r.returncode == 2 and "not JSON" in r.stderr
    port = gateway_proc["port"]
    await wait_healthy(port)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.post(
            f"http://127.0.0.1:{port}/auth/login",
            json={"username": "carol", "password": "pw-carol"},
        ) as resp:
            assert resp.status == 200
        async with s.get(f"http://127.0.0.1:{port}/auth/me") as resp:
            assert (await resp.json())["caps"]["subjects"] == ["news.>"]


async def test_user_revoke_ends_every_token_issued_before(gateway_proc: dict[str, Any]) -> None:
    """``natsgate user revoke`` (security.md): open connections of the user close with
    4001, its old tokens are refused at the upgrade, a token issued afterwards works."""
    keys = ("NATS_URL", "AUTH_BUCKET", "AUTH_CREDS_BUCKET", "AUTH_REVOKED_BUCKET")
    env = {k: gateway_proc["env"][k] for k in keys}
    port = gateway_proc["port"]
    await wait_healthy(port)
    url = f"ws://127.0.0.1:{port}/ws"
    old = [mint_token("dave", SECRET, 600) for _ in range(2)]
    clients = [await WsClient.open(url, token=t) for t in old]
    for c in clients:
        await c.recv()
    r = run(["user", "revoke", "dave"], env)
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    for c in clients:
        assert await c.wait_closed(timeout=T) == 4001
        await c.close()
    for t in old:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await WsClient.open(url, token=t)
        assert refused.value.status == 401
    fresh = await WsClient.open(url, token=mint_token("dave", SECRET, 600))
    assert (await fresh.recv())["op"] == "cap_update"
    await fresh.close()


@pytest.mark.parametrize("user", ["alice.x", "a*", "a b", "x" * 129])
def test_user_ids_that_are_not_one_subject_token_are_refused(user: str) -> None:
    for argv in (["user", "add", user], ["user", "revoke", user], ["token", user]):
        r = run(argv, {"JWT_SECRET": SECRET, "NATS_URL": "nats://127.0.0.1:1"}, stdin="pw\n")
        assert r.returncode == 2 and "invalid user id" in r.stderr, (argv, r.stderr)


async def test_sigterm_tells_clients_to_reconnect_and_exits_0(gateway_proc: dict[str, Any]) -> None:
    port, proc = gateway_proc["port"], gateway_proc["proc"]
    await wait_healthy(port)
    tok = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, SECRET, "HS256")
    clients = [await WsClient.open(f"ws://127.0.0.1:{port}/ws", token=tok) for _ in range(3)]
    for c in clients:
        await c.recv()
    proc.send_signal(signal.SIGTERM)
    for c in clients:
        assert await c.wait_closed(timeout=3 * T) == 1012
        await c.close()
    assert proc.wait(timeout=3 * T) == 0


def test_demo_prints_where_to_open_it(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DEMO_PASSWORD": ""}
    env.pop("JWT_SECRET", None)
    proc = subprocess.Popen(
        [*NATSGATE, "demo", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert f"http://127.0.0.1:{port}" in lines[0]
        assert "log in as alice or bob with password " in lines[1]
        password = lines[1].rsplit(" ", 1)[1].strip()
        assert len(password) >= 8
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
