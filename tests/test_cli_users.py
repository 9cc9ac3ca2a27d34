"""``natsgate user list | show | rm | passwd``, ``user add`` refusing to overwrite, against a
real nats-server and a real gateway process (``gateway_proc`` of test_cli); a NATS that
is down or a second NATS named on every answer."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from natsgate.auth import mint_token

from .conftest import SECRET
from .helpers import T, WsClient
from .test_cli import gateway_proc, run, wait_healthy

__all__ = ["gateway_proc"]  # the fixture, used here by name

KEYS = ("NATS_URL", "AUTH_BUCKET", "AUTH_CREDS_BUCKET", "AUTH_REVOKED_BUCKET")


def cli(args: list[str], env: dict[str, str], stdin: str = "") -> Any:
    return asyncio.to_thread(run, args, env, stdin)


async def login(port: int, user: str, password: str) -> int:
    async with aiohttp.ClientSession() as s:
        body = {"username": user, "password": password}
        async with s.post(f"http://127.0.0.1:{port}/auth/login", json=body) as resp:
            return resp.status


async def test_user_lifecycle(gateway_proc: dict[str, Any]) -> None:
    env = {k: gateway_proc["env"][k] for k in KEYS}
    port = gateway_proc["port"]
    where = f"on NATS at {env['NATS_URL']}"
    await wait_healthy(port)

    r = await cli(["user", "add", "gina"], env, "pw-1\n")
    assert r.returncode == 0 and r.stdout.strip() == f"user gina added {where}", r.stderr
    # a second add refuses, and the first password still logs in
    r = await cli(["user", "add", "gina"], env, "other\n")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"natsgate: user gina exists {where}; use natsgate user passwd gina (or user add --force)"
    )
    assert await login(port, "gina", "pw-1") == 200
    assert await login(port, "gina", "other") == 401

    r = await cli(["user", "list"], env)
    assert r.returncode == 0 and "gina\tpassword\tno capabilities" in r.stdout.splitlines()
    assert f"1 user {where}" in r.stderr
    r = await cli(["user", "show", "gina"], env)
    assert r.returncode == 0, r.stderr
    assert "password: set" in r.stdout and "capabilities: none" in r.stdout
    assert "argon2" not in r.stdout and "$" not in r.stdout  # never the hash

    # passwd: the new password works, the old does not, earlier tokens are revoked
    tok = mint_token("gina", SECRET, 600)
    ws = await WsClient.open(f"ws://127.0.0.1:{port}/ws", token=tok)
    await ws.recv()
    await asyncio.sleep(0.01)  # the revocation is "issued before now", in milliseconds
    r = await cli(["user", "passwd", "gina"], env, "pw-2\n")
    assert r.returncode == 0 and "every token issued before now is revoked" in r.stdout
    assert await ws.wait_closed(timeout=T) == 4001
    await ws.close()
    assert await login(port, "gina", "pw-2") == 200
    assert await login(port, "gina", "pw-1") == 401
    r = await cli(["user", "show", "gina"], env)
    assert "tokens issued before " in r.stdout and " UTC are revoked" in r.stdout

    r = await cli(["user", "add", "gina", "--force"], env, "pw-3\n")
    assert r.returncode == 0 and f"user gina replaced {where}" in r.stdout
    assert await login(port, "gina", "pw-3") == 200

    r = await cli(["user", "passwd", "nobody"], env, "x\n")
    assert r.returncode == 1 and "no user nobody" in r.stderr and "user add nobody" in r.stderr
    r = await cli(["user", "passwd", "gina"], env, "")
    assert r.returncode == 2 and "give the password on standard input" in r.stderr

    # rm: password, capabilities and tokens
    tok = mint_token("gina", SECRET, 600)
    ws = await WsClient.open(f"ws://127.0.0.1:{port}/ws", token=tok)
    await ws.recv()
    await asyncio.sleep(0.01)
    r = await cli(["user", "rm", "gina"], env)
    assert r.returncode == 0 and f"user gina removed {where}" in r.stdout, r.stderr
    assert await ws.wait_closed(timeout=T) == 4001
    await ws.close()
    assert await login(port, "gina", "pw-3") == 401
    for argv in (["user", "show", "gina"], ["user", "rm", "gina"]):
        r = await cli(argv, env)
        assert r.returncode == 1 and f"no user gina {where}" in r.stderr
    r = await cli(["user", "list"], env)
    assert r.returncode == 0 and r.stdout == "" and "0 users" in r.stderr


async def test_rm_ends_what_a_live_connection_had(
    gateway_proc: dict[str, Any], tmp_path: Path
) -> None:
    """A user with capabilities only (tokens from elsewhere): rm deletes the key and
    revokes the tokens, so the open connection ends."""
    env = {k: gateway_proc["env"][k] for k in KEYS}
    port = gateway_proc["port"]
    await wait_healthy(port)
    caps = tmp_path / "caps.json"
    caps.write_text('{"subjects": ["news.>"]}')
    r = await cli(["user", "caps", "hal", str(caps)], env)
    assert r.returncode == 0, r.stderr
    r = await cli(["user", "list"], env)
    assert "hal\tno password\tcapabilities" in r.stdout.splitlines()
    ws = await WsClient.open(f"ws://127.0.0.1:{port}/ws", token=mint_token("hal", SECRET, 600))
    assert (await ws.recv())["data"]["caps"]["subjects"] == ["news.>"]
    await asyncio.sleep(0.01)
    r = await cli(["user", "rm", "hal"], env)
    assert r.returncode == 0, r.stderr
    assert await ws.wait_closed(timeout=T) == 4001
    await ws.close()
    r = await cli(["user", "show", "hal"], env)
    assert r.returncode == 1


@pytest.mark.parametrize("url", ["nats://127.0.0.1:1", "notaurl:4222", "nats://10.255.255.1:4222"])
def test_nats_down_fails_fast_with_one_line(url: str) -> None:
    """Finding 1: a NATS that refuses, does not resolve or does not answer: one line, exit
    1, within seconds, no traceback."""
    for argv, stdin in ((["user", "add", "x"], "pw\n"), (["user", "list"], ""), (["check"], "")):
        start = time.monotonic()
        r = run(argv, {"NATS_URL": url, "JWT_SECRET": SECRET}, stdin, timeout=30)
        took = time.monotonic() - start
        assert r.returncode == 1, (argv, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("natsgate: cannot connect to NATS at")
        assert "Traceback" not in r.stderr and took < 20, (argv, took)


def _at_a_terminal(argv: list[str], env: dict[str, str], answers: list[str]) -> Any:
    """Run the CLI with a pseudo-terminal as its controlling terminal and standard input,
    answering each prompt (getpass flushes typed-ahead input, so one at a time)."""
    master, slave = pty.openpty()

    def own_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "natsgate", *argv],
        env={**os.environ, **env},
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=own_terminal,
        cwd="/tmp",
    )
    os.close(slave)
    seen = b""
    try:
        for prompt, answer in zip(("password for", "again:"), answers, strict=False):
            deadline = time.monotonic() + 10 * T
            while prompt.encode() not in seen:
                assert time.monotonic() < deadline, seen
                seen += os.read(master, 1024)
            seen = b""
            os.write(master, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(master)
    return proc.returncode, out, err


async def test_password_at_a_terminal_is_asked_twice(gateway_proc: dict[str, Any]) -> None:
    env = {k: gateway_proc["env"][k] for k in KEYS}
    port = gateway_proc["port"]
    await wait_healthy(port)
    code, out, err = await asyncio.to_thread(
        _at_a_terminal, ["user", "add", "ola"], env, ["pw-ola", "pw-ola"]
    )
    assert code == 0 and "user ola added" in out, err
    assert await login(port, "ola", "pw-ola") == 200
    code, out, err = await asyncio.to_thread(
        _at_a_terminal, ["user", "passwd", "ola"], env, ["new-1", "new-2"]
    )
    assert code == 2 and "the two passwords differ" in err
    assert await login(port, "ola", "pw-ola") == 200  # unchanged
