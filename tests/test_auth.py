"""Authentication at the HTTP edge (protocol.md §2): tokens, origin, login, logout, me."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest

from natsgate.auth import AuthError, Passwords, Throttle, token_from, verify_token

from .conftest import SECRET, connect, unique
from .helpers import Gw, WsClient


def b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


BAD_TOKENS = {
    "forged": jwt.encode(
        {"sub": "x", "exp": time.time() + 60}, "another-secret-of-sufficient-len", "HS256"
    ),
    "expired": jwt.encode({"sub": "x", "exp": int(time.time()) - 10}, SECRET, "HS256"),
    "alg none": b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "x"}) + ".",
    "wrong alg": jwt.encode({"sub": "x"}, SECRET, "HS512"),
    "no sub": jwt.encode({"exp": int(time.time()) + 60}, SECRET, "HS256"),
    "bad sub": jwt.encode({"sub": "a b"}, SECRET, "HS256"),
    "over-long": jwt.encode({"sub": "x", "pad": "p" * 9000}, SECRET, "HS256"),
    "garbage": "not.a.jwt",
}


async def status_of(url: str, **kw: Any) -> int:
    async with aiohttp.ClientSession() as s:
        try:
            ws = await s.ws_connect(url, **kw)
        except aiohttp.WSServerHandshakeError as e:
            return e.status
        await ws.close()
        return 101


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_401(gw: Gw, name: str) -> None:
    token = BAD_TOKENS[name]
    status = await status_of(gw.ws_url, headers={"Authorization": f"Bearer {token}"})
    assert status == 401
    with pytest.raises(AuthError):
        verify_token(token, SECRET)


async def test_a_request_head_over_16_kib_is_refused_with_431(gw: Gw) -> None:
    token = jwt.encode({"sub": "x", "pad": "p" * 17000}, SECRET, "HS256")
    status = await status_of(gw.ws_url, headers={"Authorization": f"Bearer {token}"})
    assert status == 431


async def test_no_token_is_401(gw: Gw) -> None:
    assert await status_of(gw.ws_url) == 401


async def test_token_sources_in_order(gw: Gw, token: Any) -> None:
    good = token("alice")
    assert await status_of(gw.ws_url, headers={"Authorization": f"Bearer {good}"}) == 101
    assert await status_of(f"{gw.ws_url}?token={good}") == 101
    assert await status_of(gw.ws_url, headers={"Cookie": f"jwt={good}"}) == 101
    # first found wins: a bad bearer header is not rescued by a good cookie
    assert (
        await status_of(gw.ws_url, headers={"Authorization": "Bearer bad", "Cookie": f"jwt={good}"})
        == 401
    )
    assert token_from({"Authorization": "bearer T"}, {"jwt": "C"}, {"token": "Q"}) == "T"
    assert token_from({}, {"jwt": "C"}, {"token": "Q"}) == "C"
    assert token_from({}, {}, {"token": "Q"}) == "Q"


async def test_foreign_origin_is_refused_even_with_a_valid_cookie(gw: Gw, token: Any) -> None:
    """Cross-site WebSocket hijacking: the browser sends the cookie, Origin gives it away."""
    cookie = {"Cookie": f"jwt={token('alice')}"}
    host = f"127.0.0.1:{gw.port}"
    assert await status_of(gw.ws_url, headers={**cookie, "Origin": "https://evil.example"}) == 403
    assert await status_of(gw.ws_url, headers={**cookie, "Origin": f"http://{host}"}) == 101


async def test_allowed_origins_config(make_gw: Any, token: Any) -> None:
    gw: Gw = await make_gw(allowed_origins=("https://app.example",))
    h = {"Authorization": f"Bearer {token('a')}"}
    assert await status_of(gw.ws_url, headers={**h, "Origin": "https://app.example"}) == 101
    assert await status_of(gw.ws_url, headers={**h, "Origin": f"http://127.0.0.1:{gw.port}"}) == 403


async def add_user(gw: Gw, user: str, password: str) -> None:
    creds = await gw.gateway.upstream.js.key_value(gw.gateway.config.auth_creds_bucket)
    await creds.put(user, gw.gateway.passwords.hash(password).encode())


async def test_login_me_logout(gw: Gw) -> None:
    user = unique("u")
    await add_user(gw, user, "s3cret")
    await gw.set_caps(user, {"subjects": ["x.>"]})
    # unsafe: aiohttp keeps no cookies for IP-address hosts otherwise
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.post(
            f"{gw.url}/auth/login", json={"username": user, "password": "s3cret"}
        ) as r:
            assert r.status == 200
            assert await r.json() == {"user": user}
            cookie = r.cookies["jwt"]
            assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
        async with s.get(f"{gw.url}/auth/me") as r:
            assert r.status == 200
            body = await r.json()
            assert body["user"] == user and body["caps"]["subjects"] == ["x.>"]
        # the cookie authenticates the socket too
        ws = await s.ws_connect(gw.ws_url)
        first = json.loads((await ws.receive()).data)
        assert first["op"] == "cap_update"
        await ws.close()
        async with s.post(f"{gw.url}/auth/logout", json={}) as r:
            assert r.status == 200
        async with s.get(f"{gw.url}/auth/me") as r:
            assert r.status == 401


async def test_wrong_credentials_and_throttling(gw: Gw) -> None:
    user = unique("u")
    await add_user(gw, user, "right")
    async with aiohttp.ClientSession() as s:

        async def login(name: str, pw: str) -> int:
            async with s.post(f"{gw.url}/auth/login", json={"username": name, "password": pw}) as r:
                body = await r.json()
                assert "right" not in json.dumps(body)
                return r.status

        assert await login(user, "wrong") == 401
        assert await login("no-such-user", "x") == 401
        for _ in range(3):
            assert await login(user, "wrong") == 401
        # 5 failures from this address within 60 s: refused until the window passes
        assert await login(user, "right") == 429
        async with s.post(
            f"{gw.url}/auth/login", data="nope", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400


def test_throttle_window() -> None:
    t = Throttle(limit=5, window_s=60)
    for i in range(5):
        assert not t.blocked("ip", now=i)
        t.fail("ip", now=i)
    assert t.blocked("ip", now=10)
    assert not t.blocked("ip", now=61)  # the first failure left the window
    assert not t.blocked("other", now=10)


def test_unknown_user_costs_the_same() -> None:
    """Equal timing: an unknown user is verified against a dummy hash, not skipped."""
    pw = Passwords()
    stored = pw.hash("x")

    def cost(stored_hash: str | None) -> float:
        # the least of several tries: robust to a busy machine (argon2 dominates each)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            pw.verify(stored_hash, "guess")
            times.append(time.perf_counter() - t0)
        return min(times)

    known, unknown = cost(stored), cost(None)
    assert not pw.verify(None, "natsgate-no-such-user")
    # a skipped check would be ~1000x cheaper; the same argon2 work is within noise
    assert 0.33 < unknown / known < 3.0


async def test_secrets_never_reach_the_log(
    gw: Gw, caplog: pytest.LogCaptureFixture, token: Any
) -> None:
    caplog.set_level("DEBUG")
    user, password = unique("u"), "hunter2-very-secret"
    await add_user(gw, user, password)
    tok = token(user)
    async with aiohttp.ClientSession() as s:
        for pw in (password, "wrong-" + password):
            async with s.post(f"{gw.url}/auth/login", json={"username": user, "password": pw}):
                pass
    c = await WsClient.open(gw.ws_url, token=tok)
    await c.recv()
    await c.send("auth", data={"token": tok})
    await c.send("auth", data={"token": tok + "x"})
    await c.quiet(0.2)
    await c.close()
    assert await status_of(gw.ws_url, headers={"Authorization": f"Bearer {tok}x"}) == 401
    text = caplog.text
    assert password not in text
    assert tok not in text and tok.split(".")[2] not in text


async def test_me_requires_auth(gw: Gw) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/auth/me") as r:
        assert r.status == 401
    c = await connect(gw, unique("u"))
    await c.close()
