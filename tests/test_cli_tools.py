"""``natsgate --version``, ``serve --help``'s environment list, ``natsgate token --verify``,
``token --data-dir`` beside ``serve --local``, and ``natsgate check``: real processes."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import jwt
import pytest

from natsgate.auth import mint_token
from natsgate.natsrunner import NatsServer, find_binary

from .conftest import SECRET, gateway_env
from .helpers import T, WsClient
from .test_cli import free_port, run, wait_healthy
from .test_local_nats import clean_env, start_local

OTHER = "another-secret-0123456789-abcdefghijklmnop"


def test_version() -> None:
    r = run(["--version"], {})
    assert r.returncode == 0 and r.stdout.strip() == f"natsgate {version('natsgate')}"


def test_serve_help_lists_every_environment_variable_with_its_default() -> None:
    """Every name config.load reads is in ``serve --help``, from config.py's comments."""
    source = Path(__import__("natsgate.config").config.__file__).read_text()
    load = source[source.index("def load(") :]
    names = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', load))
    assert {"JWT_SECRET", "NATS_URL", "STATIC_DIR", "MAX_SUBS", "LOG_LEVEL"} <= names
    r = run(["serve", "--help"], {})
    assert r.returncode == 0
    listed = r.stdout.split("environment", 1)[1]
    missing = {n for n in names if not re.search(rf"\b{n}\b", listed)}
    assert not missing, f"not in serve --help: {sorted(missing)}"
    rows = {line.split()[0]: line.split()[1] for line in listed.splitlines()[1:] if line.strip()}
    assert rows["PORT"] == "8080" and rows["MAX_FRAME_BYTES"] == "1048576"
    assert rows["NATS_URL"] == "nats://127.0.0.1:4222" and rows["PING_INTERVAL"] == "20"


def test_token_verify() -> None:
    env = {"JWT_SECRET": SECRET}
    r = run(["token", "ivy", "--ttl", "10m"], env)
    assert r.returncode == 0 and r.stderr == ""  # no PyJWT warning
    token = r.stdout.strip()
    r = run(["token", "--verify", token], env)
    assert r.returncode == 0, r.stderr
    claims, verdict = r.stdout.strip().splitlines()
    assert json.loads(claims)["sub"] == "ivy"
    assert verdict.startswith("valid: user ivy, expires ") and "(in 9 min" in verdict
    assert run(["token", "ivy", "--verify", token], env).returncode == 0
    r = run(["token", "jo", "--verify", token], env)
    assert r.returncode == 1 and "invalid: the token is ivy's, not jo's" in r.stdout
    r = run(["token", "--verify", token], {"JWT_SECRET": OTHER})
    assert (
        r.returncode == 1 and "invalid: invalid token (not signed with this JWT_SECRET" in r.stdout
    )
    expired = jwt.encode({"sub": "ivy", "exp": int(time.time()) - 60}, SECRET, "HS256")
    r = run(["token", "--verify", expired], env)
    assert r.returncode == 1 and "invalid: token expired at " in r.stdout
    r = run(["token", "--verify", "garbage"], env)
    assert r.returncode == 1 and r.stdout.strip() == "invalid: not a JWT"
    none = jwt.encode({"sub": "ivy", "exp": int(time.time()) + 60}, None, "none")
    r = run(["token", "--verify", none], env)
    assert r.returncode == 1 and "invalid: invalid token" in r.stdout
    r = run(["token"], env)
    assert r.returncode == 2 and "give the user id" in r.stderr


async def test_token_beside_serve_local(tmp_path: Path) -> None:
    """``serve --local`` without JWT_SECRET makes one up; ``token --data-dir`` signs with it
    (it is in <data-dir>/nats.env, mode 0600, while the server runs)."""
    local = start_local(tmp_path, ["serve", "--local"])
    try:
        await wait_healthy(local.port)
        data = ["--data-dir", str(local.data_dir)]
        r = await asyncio.to_thread(run, ["token", "kim", *data], clean_env())
        assert r.returncode == 0, r.stderr
        ws = await WsClient.open(f"ws://127.0.0.1:{local.port}/ws", token=r.stdout.strip())
        assert (await ws.recv())["op"] == "cap_update"
        await ws.close()
        r2 = await asyncio.to_thread(
            run, ["token", "--verify", r.stdout.strip(), *data], clean_env()
        )
        assert r2.returncode == 0 and "valid: user kim" in r2.stdout
        r = await asyncio.to_thread(run, ["check", *data], clean_env())
        assert r.returncode == 0, r.stdout + r.stderr
        assert (
            f"NATS: connected to the embedded nats-server at {local.nats()['NATS_URL']}" in r.stdout
        )
        # without the file (another --data-dir) and without JWT_SECRET: one line
        other = ["--data-dir", str(tmp_path / "elsewhere")]
        r = await asyncio.to_thread(run, ["token", "kim", *other], clean_env())
        assert r.returncode == 2 and "JWT_SECRET is required" in r.stderr
    finally:
        assert local.stop() == 0
    assert not local.env_file.exists()


def test_check_against_a_server_with_jetstream(nats_server: NatsServer, tmp_path: Path) -> None:
    env = {
        **gateway_env(nats_server.url),
    }
    r = run(["check"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "config: ok; would listen on 0.0.0.0:8080" in out
    assert f"NATS: connected to NATS at {nats_server.url} (nats-server 2." in out
    assert "JetStream: on" in out
    assert f"bucket {env['AUTH_BUCKET']} (capabilities): missing; serve creates it" in out
    assert "front end: the built-in demo" in out and out.strip().endswith("ok")
    good = tmp_path / "good.json"
    good.write_text('{"subjects": ["chat.>"]}')
    assert run(["user", "caps", "lou", str(good)], env).returncode == 0
    r = run(["check"], env)
    assert r.returncode == 0 and "capabilities: 1 documents, all valid" in r.stdout
    assert f"bucket {env['AUTH_BUCKET']} (capabilities): exists, 1 entries" in r.stdout

    async def store_bad() -> None:  # as another tool might: not through the validator
        import nats

        nc = await nats.connect(nats_server.url)
        kv = await nc.jetstream().key_value(env["AUTH_BUCKET"])
        await kv.put("mo", b'{"subjets": ["chat.>"]}')
        await nc.close()

    asyncio.run(store_bad())
    r = run(["check"], env)
    assert r.returncode == 1
    assert "capabilities: 1 of 2 documents do not validate" in r.stdout
    assert "mo: unknown field 'subjets' (did you mean 'subjects'?)" in r.stdout
    assert r.stdout.strip().endswith("1 problem")
    r = run(["check"], {**env, "JWT_SECRET": ""})
    assert r.returncode == 2 and "JWT_SECRET is required" in r.stderr


@pytest.fixture
def plain_nats() -> Iterator[str]:
    """A nats-server without JetStream."""
    port = free_port()
    proc = subprocess.Popen(
        [find_binary(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 3 * T
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=T).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


def test_check_without_jetstream(plain_nats: str) -> None:
    r = run(["check"], {"JWT_SECRET": SECRET, "NATS_URL": plain_nats})
    assert r.returncode == 1
    assert "JetStream: not available" in r.stdout, r.stdout + r.stderr


def test_token_minted_by_the_library_is_what_the_cli_checks() -> None:
    token = mint_token("nel", SECRET, 60)
    r = run(["token", "--verify", token], {"JWT_SECRET": SECRET})
    claims = json.loads(r.stdout.splitlines()[0])
    assert set(claims) == {"sub", "iat", "exp", "jti"} and r.returncode == 0
