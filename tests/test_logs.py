"""Info-level log lines: connect and disconnect (user, conn id, address, close code,
duration, frames and bytes), logins (ok, failed, throttled) and refused upgrades; a storm
of refusals is a bounded number of lines that still accounts for every refusal; no
password or token text in any line."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from typing import Any

import aiohttp
import pytest

from natsgate.audit import BURST, EVERY_S
from natsgate.auth import mint_token

from .conftest import SECRET, connect, unique
from .helpers import Gw, T, WsClient, eventually

STORM = 1000


async def add_user(gw: Gw, user: str, password: str) -> None:
    creds = await gw.gateway.upstream.js.key_value(gw.gateway.config.auth_creds_bucket)
    await creds.put(user, gw.gateway.passwords.hash(password).encode())


def lines(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    """Every captured line (any logger, any level) whose message starts with ``start``."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=('[^']*'|\S+)", line))


def one(found: list[str]) -> dict[str, str]:
    assert len(found) == 1, found
    return fields(found[0])


def assert_secret_free(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    for r in caplog.records:
        text = r.getMessage() + (r.exc_text or "")
        for secret in secrets:
            assert secret not in text, (secret, text)


async def test_connect_and_disconnect_by_the_client(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = unique("alice")
    c = await connect(gw, user)
    (session,) = gw.gateway.by_user[user]
    conn_id = session.conn_id
    frame = '{"op":"pub","target":"not.allowed","data":1}'
    await c.send_raw(frame)
    await c.expect(lambda e: e["op"] == "error")
    await asyncio.sleep(0.2)  # a duration above zero
    await c.close()
    await eventually(lambda: lines(caplog, "disconnect "))

    assert one(lines(caplog, "connect ")) == {
        "user": user,
        "conn": conn_id,
        "address": "127.0.0.1",
    }
    d = one(lines(caplog, "disconnect "))
    assert (d["user"], d["conn"], d["address"], d["by"]) == (user, conn_id, "127.0.0.1", "client")
    assert "code" not in d  # the client's own close: its code is the client's
    assert 0.2 <= float(d["duration"].removesuffix("s")) < 10 * T
    assert (int(d["frames_in"]), int(d["bytes_in"])) == (1, len(frame))
    assert int(d["envelopes_out"]) == 2  # cap_update, then the error
    assert int(d["bytes_out"]) > 0
    assert all(r.levelno == logging.INFO for r in caplog.records if "connect " in r.getMessage())


async def test_a_disconnect_by_the_gateway_names_its_code_and_reason(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user = unique("bob")
    tok = mint_token(user, SECRET, 1)
    c = await WsClient.open(gw.ws_url, token=tok)
    await c.recv()
    assert await c.wait_closed(3 * T) == 4001
    await eventually(lambda: lines(caplog, "disconnect "))
    d = one(lines(caplog, "disconnect "))
    assert (d["user"], d["code"], d["reason"]) == (user, "4001", "'token expired'")
    assert "by" not in d
    assert_secret_free(caplog, tok, tok.split(".")[2])


async def test_logins_ok_failed_throttled_without_the_password(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user, password = unique("carol"), "correct-horse-battery-staple-42"
    await add_user(gw, user, password)
    async with aiohttp.ClientSession() as s:

        async def login(pw: str) -> int:
            body = {"username": user, "password": pw}
            async with s.post(f"{gw.url}/auth/login", json=body) as r:
                return r.status

        assert await login(password) == 200
        for _ in range(5):
            assert await login("wrong-" + password) == 401
        assert await login(password) == 429  # 5 failures from this address: throttled

    assert one(lines(caplog, "login ok ")) == {"user": user, "address": "127.0.0.1"}
    failed = lines(caplog, "login failed ")
    assert len(failed) == 5 and all(
        fields(f) == {"user": user, "address": "127.0.0.1"} for f in failed
    )
    assert one(lines(caplog, "login throttled ")) == {"user": user, "address": "127.0.0.1"}
    assert_secret_free(caplog, password)


async def test_refused_upgrades_name_status_reason_and_address(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tok = "leaky-token-text-0123456789"
    for headers in ({"Authorization": f"Bearer {tok}"}, {}):
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await WsClient.open(gw.ws_url, headers=headers)
    found = [fields(line) for line in lines(caplog, "upgrade refused ")]
    assert found == [
        {"status": "401", "reason": "'invalid token'", "address": "127.0.0.1"},
        {"status": "401", "reason": "'no token'", "address": "127.0.0.1"},
    ]
    assert_secret_free(caplog, tok)


async def refuse(url: str, n: int, token: str) -> list[int]:
    """``n`` upgrades with a bad token, each from another address (X-Forwarded-For from
    a trusted proxy), 50 at a time; their HTTP statuses."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    gate = asyncio.Semaphore(50)

    async def once(i: int) -> int:
        address = ipaddress.ip_address("10.0.0.0") + i
        head = (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"X-Forwarded-For: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        async with gate:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(head.encode())
                status = await reader.readline()
                return int(status.split()[1])
            finally:
                writer.close()

    return await asyncio.gather(*(once(i) for i in range(n)))


def suppressed_in(line: str) -> int:
    """What a line says was cut: ``(N more ... suppressed before it)`` or ``N more lines
    suppressed``."""
    m = re.search(r"(\d+) more (?:upgrade refused )?lines suppressed", line)
    return int(m.group(1)) if m else 0


async def test_a_storm_of_refusals_is_a_few_lines_that_count_them_all(
    make_gw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gw = await make_gw(trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    tok = "storm-token-text-9876543210"
    t0 = time.monotonic()
    statuses = await refuse(gw.ws_url, STORM, tok)
    elapsed = time.monotonic() - t0
    assert statuses == [401] * STORM

    def told() -> int:
        return sum(1 + suppressed_in(x) for x in lines(caplog, "upgrade refused ")) + sum(
            suppressed_in(x) for x in lines(caplog, "upgrade refused: ")
        )

    # the last cut ones are told by a line of their own, EVERY_S after the first cut
    await eventually(lambda: told() == STORM, timeout=3 * T)
    refused = lines(caplog, "upgrade refused")
    print(f"{STORM} refusals in {elapsed:.2f} s: {len(refused)} log lines")
    # a burst, then per EVERY_S one line that passes and one "suppressed" line
    assert len(refused) <= BURST + 2 * (math.ceil(elapsed / EVERY_S) + 2), refused
    assert lines(caplog, "upgrade refused: ")  # the tail, in a line of its own
    addresses = [fields(x)["address"] for x in lines(caplog, "upgrade refused ")]
    storm_net = ipaddress.ip_network("10.0.0.0/22")  # each from its own address
    assert len(set(addresses)) == len(addresses)
    assert all(ipaddress.ip_address(a) in storm_net for a in addresses), addresses
    assert_secret_free(caplog, tok)


async def test_a_storm_of_logins_is_a_few_lines(gw: Gw, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "never-in-the-log-" + unique()
    await add_user(gw, "dave", "another-" + password)
    async with aiohttp.ClientSession() as s:

        async def login(i: int) -> int:
            body = {"username": "dave" if i % 2 else f"user{i}", "password": password}
            async with s.post(f"{gw.url}/auth/login", json=body) as r:
                return r.status

        t0 = time.monotonic()
        statuses = [await login(i) for i in range(STORM)]
        elapsed = time.monotonic() - t0
    assert set(statuses) == {401, 429}

    def told() -> int:
        return sum(
            1 + int(m.group(1)) if (m := re.search(r"\((\d+) more", x)) else 1
            for x in lines(caplog, "login failed ") + lines(caplog, "login throttled ")
        ) + sum(
            int(x.split()[2])
            for x in lines(caplog, "login failed: ") + lines(caplog, "login throttled: ")
        )

    await eventually(lambda: told() == STORM, timeout=3 * T)
    logged = lines(caplog, "login ")
    print(f"{STORM} refused logins in {elapsed:.2f} s: {len(logged)} log lines")
    assert len(logged) <= 2 * (BURST + 2 * (math.ceil(elapsed / EVERY_S) + 2)), logged
    assert_secret_free(caplog, password)
