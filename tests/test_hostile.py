"""Hostile peers (security.md), each finding of the attack on the gateway as a test on
real processes: a real nats-server, real gateways on port 0, real sockets. Nothing mocked.

The numbers in the test names are the findings' numbers in docs/security.md.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from nats.aio.client import Client as NATS

from natsgate import edge
from natsgate import wsframe as wf
from natsgate.auth import mint_token

from .conftest import SECRET, connect, unique
from .helpers import Closed, Gw, T, WsClient, eventually
from .test_auth import add_user, status_of
from .test_websocket import Raw


async def answer(c: WsClient, inbox: str) -> dict[str, Any]:
    """The answer to the op sent with ``inbox``: reply, error or pong."""
    return await c.expect(lambda e: e.get("inbox") == inbox and e["op"] != "msg")


async def alive(c: WsClient) -> None:
    assert (await answer(c, await c.send("ping")))["op"] == "pong"


# ----------------------------------------------------------------- 1: bytes that are not UTF-8


async def test_01_a_publisher_of_invalid_utf8_reaches_no_one_as_invalid_text(
    gw: Gw, nc: NATS
) -> None:
    """Bytes that are not UTF-8 inside a JSON string, published straight to NATS: every
    subscriber gets them as base64 (with ``enc``), on core, KV and a stream, and stays
    connected; the stream has no gap."""
    user, room = unique("u"), unique("room")
    stream, bucket = unique("S"), unique("b")
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{room}.>"])
    kv = await js.create_key_value(bucket=bucket)
    await gw.set_caps(
        user,
        {"subjects": [f"{room}.>"], "streams": {stream: [">"]}, "buckets": {bucket: [">"]}},
    )
    c = await connect(gw, user)
    await c.ok("sub", f"{room}.>")
    await c.ok("js_sub", stream, {"start_seq": 1})
    await c.ok("kv_sub", bucket)
    bad = b'"\xff"'
    await js.publish(f"{room}.x", bad)
    await kv.put("k", bad)
    await js.publish(f"{room}.x", b'{"after": 1}')
    got = [await c.expect(op="msg") for _ in range(5)]
    core = [e for e in got if e["target"].startswith(room)]
    assert core[0]["data"] == base64.b64encode(bad).decode() and core[0]["enc"] == "base64"
    streamed = [e["data"] for e in got if e["target"] == f"js:{stream}"]
    assert [m["seq"] for m in streamed] == [1, 2]  # not skipped: no gap
    assert streamed[0]["enc"] == "base64" and streamed[1]["payload"] == {"after": 1}
    watched = next(e["data"] for e in got if e["target"] == f"kv:{bucket}")
    assert watched["value"] == base64.b64encode(bad).decode() and watched["enc"] == "base64"
    await alive(c)  # still connected
    await c.close()


async def test_01_a_client_sending_invalid_utf8_is_closed_alone(gw: Gw) -> None:
    """The attack: a ``pub`` whose text frame holds a raw 0xff. The sender is closed with
    1007 before anything is published; the room's other members see nothing of it. The
    same bytes in a binary frame are a ``bad_request``, not published either."""
    sender, member, room = unique("s"), unique("m"), unique("room")
    for u in (sender, member):
        await gw.set_caps(u, {"subjects": [f"{room}.>"], "publish": [f"{room}.>"]})
    m = await connect(gw, member)
    await m.ok("sub", f"{room}.>")
    bad = b'{"op":"pub","target":"' + room.encode() + b'.x","data":"\xff","inbox":"p"}'
    s = await Raw.open(gw)
    await s.upgrade(sender)  # reads the cap_update
    s.send(wf.OP_TEXT, bad)
    op, payload = await s.frame()
    assert op == wf.OP_CLOSE and wf.parse_close(payload)[0] == 1007
    s.close()
    b = await connect(gw, sender)
    await b.send_raw(bad)  # a binary frame
    assert (await b.reply("p"))["data"]["code"] == "bad_request"
    assert await m.quiet(0.3) == []
    await b.ok("pub", f"{room}.x", {"fine": True})
    assert (await m.expect(op="msg"))["data"] == {"fine": True}
    await b.close()
    await m.close()


# ------------------------------------------------------------------ 2: login throttle and pool


async def _login(s: aiohttp.ClientSession, url: str, user: str, pw: str, **headers: str) -> Any:
    async with s.post(
        f"{url}/auth/login", json={"username": user, "password": pw}, headers=headers
    ) as r:
        return r.status, r.headers.get("Retry-After")


async def test_02_concurrent_wrong_logins_cannot_pass_the_throttle(gw: Gw) -> None:
    user = unique("u")
    await add_user(gw, user, "right")
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(_login(s, gw.url, user, "wrong") for _ in range(30)))
    statuses = [status for status, _ in results]
    assert statuses.count(401) + statuses.count(503) <= 5, statuses
    assert statuses.count(429) >= 25, statuses
    checked = gw.gateway.metrics.logins.labels("failed")._value.get()
    assert checked <= 5  # argon2 ran at most 5 times, not 30


async def test_02_hash_checks_run_in_a_bounded_pool(make_gw: Any) -> None:
    """Fresh addresses (believed from a trusted proxy) and user names, so the throttle never
    bites: beyond the pool's capacity the answer is 503 with Retry-After, at once."""
    gw: Gw = await make_gw(trusted_proxies=(ipaddress.ip_network("127.0.0.1"),))
    capacity = gw.gateway.hasher.capacity
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(
                _login(s, gw.url, unique("u"), "pw", **{"X-Forwarded-For": f"10.0.{i}.1"})
                for i in range(capacity + 20)
            )
        )
    busy = [r for r in results if r[0] == 503]
    assert len(busy) >= 20 - 1, results  # at most `capacity` were checked
    assert all(retry == "1" for _, retry in busy)
    assert {status for status, _ in results} <= {401, 503}


async def test_02_the_throttle_counts_the_forwarded_client_not_the_proxy(make_gw: Any) -> None:
    gw: Gw = await make_gw(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            status, _ = await _login(s, gw.url, unique("u"), "x", **{"X-Forwarded-For": "10.9.9.9"})
            assert status == 401
        # the same client, whatever it puts in front of the list itself
        spoofed = {"X-Forwarded-For": "1.2.3.4, 10.9.9.9"}
        assert (await _login(s, gw.url, unique("u"), "x", **spoofed))[0] == 429
        # another client behind the same proxy is not throttled
        other = {"X-Forwarded-For": "10.8.8.8"}
        assert (await _login(s, gw.url, unique("u"), "x", **other))[0] == 401


# ------------------------------------------------------------- 3: the gateway's own buckets


async def test_03_no_grant_reads_the_password_hashes(gw: Gw, nc: NATS) -> None:
    user, victim = unique("u"), unique("v")
    await add_user(gw, victim, "pw")
    cfg = gw.gateway.config
    creds, caps_bucket = cfg.auth_creds_bucket, cfg.auth_bucket
    await gw.set_caps(
        user,
        {
            "subjects": [">", "$KV.>", "$JS.>"],
            "commands": ["$JS.API.>", "$KV.>"],
            "buckets": {"*": [">"], creds: [">"]},
            "streams": {"*": [">"], f"KV_{creds}": [">"]},
        },
    )
    c = await connect(gw, user)
    assert (await c.error("kv_sub", creds))["code"] == "forbidden"
    assert (await c.error("js_sub", f"KV_{creds}", {"start_seq": 1}))["code"] == "forbidden"
    assert (await c.error("sub", f"$KV.{creds}.>"))["code"] == "forbidden"
    assert (await c.error("sub", "$KV.*.>"))["code"] == "forbidden"
    get = f"$JS.API.DIRECT.GET.KV_{creds}.$KV.{creds}.{victim}"
    assert (await c.error("cmd", get))["code"] == "forbidden"
    # the capabilities bucket: not through "*" ...
    assert (await c.error("kv_sub", caps_bucket))["code"] == "forbidden"
    await c.close()
    # ... only through a grant that names it
    await gw.set_caps(user, {"buckets": {caps_bucket: [user]}})
    c = await connect(gw, user)
    await c.ok("kv_sub", caps_bucket, {"pattern": user})
    assert (await c.expect(op="msg"))["data"]["key"] == user
    text = json.dumps(list(c.inbox)) + json.dumps(await c.quiet(0.2))
    assert "argon2" not in text
    await c.close()


# ------------------------------------------------------------------- 4: slow request heads


@pytest.mark.parametrize("path", ["/healthz", "/auth/me", "/", "/ws"])
async def test_04_a_trickled_head_is_cut_on_every_path(gw: Gw, monkeypatch: Any, path: str) -> None:
    monkeypatch.setattr(edge, "HEAD_TIMEOUT_S", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    started = time.monotonic()
    closed = False
    for i in range(40):  # one header line every 0.1 s, for up to 4 s
        try:
            writer.write(f"X-Slow-{i}: 1\r\n".encode())
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed = True
            break
    assert closed and time.monotonic() - started < 3
    writer.close()


async def test_04_a_head_over_16_kib_is_431_on_every_path(gw: Gw) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n")
    head = await asyncio.wait_for(reader.read(1024), T)
    assert head.startswith(b"HTTP/1.1 431 ")
    writer.close()


async def test_04_plain_http_answers_once_then_closes(gw: Gw) -> None:
    """No keep-alive: the next request head on this port is read by the bounded reader
    again, and ``/ws`` has one way in."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), T)  # until EOF: the server closes
    head = data.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200 ") and b"connection: close" in head
    writer.close()


# --------------------------------------------------------------------- 5: login CSRF


async def test_05_login_and_logout_take_json_from_allowed_origins_only(gw: Gw) -> None:
    user = unique("u")
    await add_user(gw, user, "pw")
    body = json.dumps({"username": user, "password": "pw"})
    async with aiohttp.ClientSession() as s:
        for path in ("/auth/login", "/auth/logout"):
            for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {"Content-Type": ctype} if ctype else {}
                async with s.post(f"{gw.url}{path}", data=body, headers=headers) as r:
                    assert r.status == 415, (path, ctype)
            evil = {"Origin": "https://evil.example", "Content-Type": "application/json"}
            async with s.post(f"{gw.url}{path}", data=body, headers=evil) as r:
                assert r.status == 403 and "jwt" not in r.cookies
        own = {"Origin": gw.url, "Content-Type": "application/json"}
        async with s.post(f"{gw.url}/auth/login", data=body, headers=own) as r:
            assert r.status == 200


# --------------------------------------------------------------------- 6: exp is required


@pytest.mark.parametrize(
    "claims",
    [{"sub": "x"}, {"sub": "x", "exp": "9999999999"}, {"sub": "x", "exp": None}],
    ids=["no exp", "exp a string", "exp null"],
)
async def test_06_tokens_without_a_numeric_exp_are_refused(gw: Gw, claims: dict[str, Any]) -> None:
    token = jwt.encode(claims, SECRET, "HS256")
    assert await status_of(gw.ws_url, headers={"Authorization": f"Bearer {token}"}) == 401
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {token}"}
        async with s.get(f"{gw.url}/auth/me", headers=headers) as r:
            assert r.status == 401
    c = await connect(gw, unique("u"))
    assert (await c.error("auth", data={"token": token}))["code"] == "unauthorized"
    await c.close()


# ------------------------------------------------------------- 8: logout revokes the token


async def _login_cookie(gw: Gw, user: str) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.url}/auth/login", json={"username": user, "password": "pw"}) as r,
    ):
        assert r.status == 200
        return r.cookies["jwt"].value


async def test_08_logout_revokes_the_token_on_every_gateway(make_gw: Any) -> None:
    a: Gw = await make_gw()
    b: Gw = await make_gw()  # same NATS, same buckets
    user = unique("u")
    await add_user(a, user, "pw")
    token = await _login_cookie(a, user)
    ca = await WsClient.open(a.ws_url, token=token)
    cb = await WsClient.open(b.ws_url, token=token)
    for c in (ca, cb):
        assert (await c.recv())["op"] == "cap_update"
    other = await _login_cookie(a, user)  # another device of the same user
    co = await WsClient.open(b.ws_url, token=other)
    await co.recv()
    started = time.monotonic()
    async with aiohttp.ClientSession() as s:
        headers = {"Cookie": f"jwt={token}"}
        async with s.post(f"{a.url}/auth/logout", json={}, headers=headers) as r:
            assert r.status == 200 and (await r.json())["revoked"] is True
    for c in (ca, cb):
        with pytest.raises(Closed) as closed:
            env = await c.expect(op="error", timeout=T)
            assert env["data"]["code"] == "unauthorized"
            await c.recv()
        assert closed.value.code == 4001
    assert time.monotonic() - started < 1.0 + T / 10
    for g in (a, b):
        assert await status_of(g.ws_url, headers={"Authorization": f"Bearer {token}"}) == 401
    await alive(co)  # the other device's token still holds
    for c in (ca, cb, co):
        await c.close()


async def test_08_a_revoked_token_cannot_refresh_a_connection(gw: Gw) -> None:
    user = unique("u")
    await add_user(gw, user, "pw")
    keep, drop = await _login_cookie(gw, user), await _login_cookie(gw, user)
    c = await WsClient.open(gw.ws_url, token=keep)
    await c.recv()
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.url}/auth/logout", json={}, headers={"Authorization": f"Bearer {drop}"}) as r,
    ):
        assert r.status == 200
    assert (await c.error("auth", data={"token": drop}))["code"] == "unauthorized"
    await c.ok("auth", data={"token": keep})
    await c.close()


async def test_08_revocations_survive_a_gateway_restart(make_gw: Any) -> None:
    a: Gw = await make_gw()
    user = unique("u")
    await add_user(a, user, "pw")
    token = await _login_cookie(a, user)
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {token}"}
        async with s.post(f"{a.url}/auth/logout", json={}, headers=headers) as r:
            assert r.status == 200
    b: Gw = await make_gw()  # a gateway started after the logout reads it at start
    assert await status_of(b.ws_url, headers={"Authorization": f"Bearer {token}"}) == 401


# ------------------------------------------------------------------ 9: user ids are one token


@pytest.mark.parametrize("sub", ["alice.x", "a*", "a>", "a b", "a\tb", "a\x7f", "", "x" * 129])
async def test_09_user_ids_that_are_not_one_subject_token_are_refused(gw: Gw, sub: str) -> None:
    token = jwt.encode({"sub": sub, "exp": time.time() + 60}, SECRET, "HS256")
    assert await status_of(gw.ws_url, headers={"Authorization": f"Bearer {token}"}) == 401
    with pytest.raises(ValueError):
        mint_token(sub, SECRET, 60)


async def test_09_unusual_but_safe_user_ids_work(gw: Gw) -> None:
    for user in ("auth0|5f1c", "alice@example", "ü-ser", "a:b"):
        await gw.set_caps(user, {"subjects": [f"notify.{user}"]})
        c = await connect(gw, user)
        assert c.first["data"]["caps"]["subjects"] == [f"notify.{user}"]
        await c.ok("sub", f"notify.{user}")
        await c.close()


# ----------------------------------------------------------------- 10: control characters


@pytest.mark.parametrize("subject", ["chat.a\x00", "chat.\x1b[2J", "chat.a\x7f", "chat.\u2028"])
async def test_10_subjects_with_control_characters_are_bad_requests(gw: Gw, subject: str) -> None:
    user = unique("u")
    await gw.set_caps(user, {"subjects": ["chat.>"], "publish": ["chat.>"]})
    c = await connect(gw, user)
    for op in ("sub", "pub"):
        assert (await c.error(op, subject))["code"] == "bad_request"
    await c.close()


# ---------------------------------------------------------------- 11: feeds and connections


async def test_11_kv_watches_and_stream_reads_per_connection_are_limited(
    make_gw: Any, nc: NATS
) -> None:
    gw: Gw = await make_gw(max_feeds=8)
    user, bucket = unique("u"), unique("b")
    await nc.jetstream().create_key_value(bucket=bucket)
    await gw.set_caps(user, {"buckets": {bucket: [">"]}})
    c = await connect(gw, user)
    frame = "\n".join(
        json.dumps(
            {"op": "kv_sub", "target": bucket, "data": {"pattern": f"k{i}"}, "inbox": f"{i}"}
        )
        for i in range(30)
    )
    await c.send_raw(frame)
    answers = [await c.reply(str(i)) for i in range(30)]
    assert [a["op"] for a in answers].count("reply") == 8
    assert all(a["data"]["code"] == "limit" for a in answers[8:])
    info = await nc.jetstream().stream_info(f"KV_{bucket}")
    assert info.state.consumer_count == 8
    await c.close()


async def test_11_connections_per_user_are_limited(make_gw: Any) -> None:
    gw: Gw = await make_gw(max_conns_per_user=3)
    user = unique("u")
    clients = [await connect(gw, user) for _ in range(3)]
    token = mint_token(user, SECRET, 60)
    assert await status_of(gw.ws_url, headers={"Authorization": f"Bearer {token}"}) == 429
    other = await connect(gw, unique("u"))  # someone else is not affected
    await clients[0].close()
    await eventually(lambda: len(gw.gateway.by_user.get(user, ())) == 2)
    clients[0] = await connect(gw, user)
    for c in (*clients, other):
        await c.close()


async def test_11_the_envelope_rate_is_limited_by_default(make_gw: Any) -> None:
    gw: Gw = await make_gw(rate_per_s=200.0, rate_burst=400)
    c = await connect(gw, unique("u"))
    frame = "\n".join(json.dumps({"op": "ping", "inbox": str(i)}) for i in range(600))
    await c.send_raw(frame)
    answers = [await answer(c, str(i)) for i in range(600)]
    limited = [a for a in answers if a["op"] == "error"]
    assert limited and all(a["data"]["code"] == "limit" for a in limited)
    assert 400 <= 600 - len(limited) < 450  # the burst, plus what refilled meanwhile
    await asyncio.sleep(0.02)  # a few tokens come back (200 a second)
    await alive(c)  # still connected
    await c.close()
