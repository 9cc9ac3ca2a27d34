"""LOG_FORMAT=json: every line ``natsgate serve`` writes is one JSON object (time, level,
logger, message, and the exception's text when there is one)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from natsgate.auth import mint_token
from natsgate.cli.logs import JsonFormatter
from natsgate.natsrunner import NatsServer

from .conftest import SECRET, gateway_env
from .helpers import T, WsClient, eventually
from .test_cli import NATSGATE, free_port, run

KEYS = ("time", "level", "logger", "message")


def parse(lines: list[str]) -> list[dict[str, Any]]:
    """Each line as JSON with the four keys; fails naming the first line that is not."""
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(obj, dict) and all(isinstance(obj.get(k), str) for k in KEYS), line
        out.append(obj)
    return out


def test_the_formatter_keeps_a_traceback_on_one_line() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        record = logging.getLogger("natsgate.x").makeRecord(
            "natsgate.x", logging.ERROR, __file__, 1, "sum of %s", ("é\nnext",), None
        )
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    (obj,) = parse([line])
    assert (obj["level"], obj["logger"], obj["message"]) == (
        "error",
        "natsgate.x",
        "sum of é\nnext",
    )
    assert obj["time"].endswith("+00:00") and "T" in obj["time"]
    assert "ZeroDivisionError" in obj["exception"] and "Traceback" in obj["exception"]


def test_a_config_error_is_one_json_line() -> None:
    r = run(["serve"], {"JWT_SECRET": "x", "LOG_FORMAT": "json", "NATS_URL": "nats://127.0.0.1:1"})
    assert r.returncode == 2
    (obj,) = parse(r.stderr.strip().splitlines())
    assert obj["level"] == "error" and "JWT_SECRET is 1 bytes" in obj["message"]


@pytest.fixture
def json_gateway(nats_server: NatsServer) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {
        **os.environ,
        **gateway_env(nats_server.url),
        "LOG_FORMAT": "json",
        # a key set nobody serves: the gateway warns (and keeps trying) in the log
        "JWT_JWKS_URL": f"http://127.0.0.1:{free_port()}/certs",
    }
    proc = subprocess.Popen(
        [*NATSGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--log", "debug"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/tmp",
    )
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_serve_writes_only_json_lines(
    json_gateway: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = json_gateway
    try:
        assert proc.stdout is not None
        (listening,) = parse([proc.stdout.readline()])
        assert f"listening on http://127.0.0.1:{port}" in listening["message"]

        async def healthy() -> bool:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
                return r.status == 200

        await eventually(healthy, 3 * T, every=0.1)
        c = await WsClient.open(f"ws://127.0.0.1:{port}/ws", token=_token("zoe"))
        await c.recv()
        await c.send_raw("{not json")  # an error envelope, logged at debug
        await c.recv()
        await c.close()
        await asyncio.sleep(1.2)  # the key set's start-up loop retries after 1 s: two warnings
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=6 * T)
    assert proc.returncode == 0
    records = parse([line for line in err.splitlines() if line])
    messages = [r["message"] for r in records]
    assert any("gateway ready" in m for m in messages), messages
    assert messages[-1] == "stopped"
    jwks = [r for r in records if r["logger"] == "natsgate.jwks"]
    assert jwks and jwks[0]["level"] == "warning"
    assert "cannot load the key set" in jwks[0]["message"]
    print(f"{len(records)} JSON log lines, levels {sorted({r['level'] for r in records})}")


def _token(user: str) -> str:
    return mint_token(user, SECRET, 600)
