"""The audit trail (protocol.md §7): every kind on ``<AUDIT_PREFIX>.<kind>`` with the
protocol's fields, no secret in any of it, a flood cut per kind and user, the prefix out
of reach of ordinary grants, and ``natsgate audit`` following it in a terminal."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsgate.audit import BURST, Kind
from natsgate.auth import mint_token

from .conftest import SECRET, connect, unique
from .helpers import Gw, T, eventually
from .test_stalled import Stalled

PASSWORD = "hunter2-but-longer-and-secret"
FIELDS = {"time", "gateway", "kind", "user", "address", "detail"}


class Trail:
    """Every audit event of one gateway, as published on NATS (raw bytes kept)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.raw: list[bytes] = []
        self.events: list[dict[str, Any]] = []

    async def on_msg(self, msg: Msg) -> None:
        self.raw.append(msg.data)
        event = json.loads(msg.data)
        assert msg.subject == f"{self.prefix}.{event['kind']}"
        self.events.append(event)

    def of(self, kind: Kind, **detail: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["kind"] == kind.value and all(e["detail"].get(k) == v for k, v in detail.items())
        ]

    async def one(self, kind: Kind, **detail: Any) -> dict[str, Any]:
        found = await eventually(lambda: self.of(kind, **detail))
        return found[-1]  # type: ignore[no-any-return]


async def audited(make_gw: Any, nc: NATS, **config: Any) -> tuple[Gw, Trail]:
    prefix = f"{unique('audit')}.trail"
    g: Gw = await make_gw(audit_prefix=prefix, **config)
    trail = Trail(prefix)
    await nc.subscribe(f"{prefix}.>", cb=trail.on_msg)
    await nc.flush()
    return g, trail


async def post(g: Gw, path: str, body: Any, cookies: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(cookies=cookies) as s,
        s.post(f"{g.url}{path}", json=body) as r,
    ):
        return r.status, (r.cookies.get("jwt").value if r.cookies.get("jwt") else None)


async def set_password(g: Gw, user: str) -> bytes:
    stored = g.gateway.passwords.hash(PASSWORD).encode()
    creds = await g.gateway.upstream.js.key_value(g.gateway.config.auth_creds_bucket)
    await creds.put(user, stored)
    return stored


async def test_every_kind_with_its_fields_and_no_secret(make_gw: Any, nc: NATS) -> None:
    g, trail = await audited(make_gw, nc, outbox_bytes=16384)
    alice, root, bob = unique("alice"), unique("root"), unique("bob")
    stored = await set_password(g, alice)
    await g.set_caps(root, {"admin": True})
    await g.set_caps(alice, {"subjects": ["chat.>", "news.>"]})
    secrets: list[bytes] = [PASSWORD.encode(), stored, SECRET.encode()]

    # login ok (its cookie is a token: never audited), logout with it
    status, cookie = await post(g, "/auth/login", {"username": alice, "password": PASSWORD})
    assert status == 200 and cookie
    secrets.append(cookie.encode())
    assert (await post(g, "/auth/logout", {}, {"jwt": cookie}))[0] == 200
    ok = await trail.one(Kind.LOGIN, outcome="ok")
    assert (ok["user"], ok["address"]) == (alice, "127.0.0.1")
    out = await trail.one(Kind.LOGOUT)
    assert out["user"] == alice and out["detail"] == {"revoked": True}

    # failed, then throttled (5 failures a minute from one address)
    for _ in range(5):
        assert (await post(g, "/auth/login", {"username": alice, "password": "wrong"}))[0] == 401
    assert (await post(g, "/auth/login", {"username": alice, "password": PASSWORD}))[0] == 429
    failed = await trail.one(Kind.LOGIN, outcome="failed")
    throttled = await trail.one(Kind.LOGIN, outcome="throttled")
    assert failed["user"] == throttled["user"] == alice
    # a name that is no user id is not repeated (it could be anything: a 60 KB name)
    await post(g, "/auth/login", {"username": "no such name " * 100, "password": "x"})
    await eventually(lambda: len(trail.of(Kind.LOGIN, outcome="throttled")) == 2)
    assert trail.of(Kind.LOGIN, outcome="throttled")[-1]["user"] is None

    # refused upgrade: a bad token
    bad = mint_token(alice, "another-secret-0123456789-abcdefghijkl", 60)
    secrets.append(bad.encode())
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await s.ws_connect(g.ws_url, headers={"Authorization": f"Bearer {bad}"})
    refused = await trail.one(Kind.UPGRADE_REFUSED)
    assert refused["detail"]["status"] == 401 and refused["address"] == "127.0.0.1"

    # forbidden op, then a revocation
    ws = await connect(g, alice)
    assert (await ws.error("sub", "secret.plans"))["code"] == "forbidden"
    forbidden = await trail.one(Kind.FORBIDDEN)
    assert forbidden["user"] == alice and forbidden["detail"]["target"] == "secret.plans"
    await ws.ok("sub", "news.today")
    await g.set_caps(alice, {"subjects": ["chat.>"]})
    revocation = await trail.one(Kind.REVOCATION)
    assert revocation["detail"]["revoked"] == [{"op": "sub", "target": "news.today"}]

    # administrator action: disconnect alice
    admin_token = mint_token(root, SECRET, 600)
    secrets.append(admin_token.encode())
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{g.url}/admin/api/disconnect",
            json={"user": alice},
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as r,
    ):
        assert r.status == 200
    action = await trail.one(Kind.ADMIN)
    assert action["user"] == root
    assert action["detail"] == {
        "action": "disconnect",
        "target": {"user": alice},
        "closed": 1,
        "missing": [],
    }
    assert await ws.wait_closed() == 4003

    # slow client: stops reading while a subject it subscribed to is busy
    await g.set_caps(bob, {"subjects": ["busy.>"]})
    stalled = await Stalled.open(g, bob, "busy.x")
    try:
        chunk = b"x" * 60_000
        for _ in range(200):
            await nc.publish("busy.x", chunk)
            await nc.flush()
            if trail.of(Kind.SLOW_CLIENT):
                break
        slow = await trail.one(Kind.SLOW_CLIENT)
        assert slow["user"] == bob and slow["detail"]["conn"]
    finally:
        stalled.close()

    kinds = {e["kind"] for e in trail.events}
    assert kinds == {k.value for k in Kind}, kinds
    for e in trail.events:
        assert set(e) == FIELDS, e
        assert e["gateway"] == g.gateway.gateway_id
        assert e["time"].endswith("Z")
    for raw in trail.raw:
        for secret in secrets:
            assert secret not in raw, (secret, raw)
    # each event once: one login ok, one logout, one admin action
    assert len(trail.of(Kind.LOGIN, outcome="ok")) == len(trail.of(Kind.LOGOUT)) == 1
    assert len(trail.of(Kind.ADMIN)) == 1


async def test_a_forbidden_storm_is_cut(make_gw: Any, nc: NATS) -> None:
    g, trail = await audited(make_gw, nc)
    mallory, other = unique("mallory"), unique("other")
    ws, ws2 = await connect(g, mallory), await connect(g, other)
    try:
        for i in range(100):
            await ws.send("sub", f"no.{i}")
        for _ in range(100):
            await ws.expect(op="error")
        assert (await ws2.error("sub", "no.x"))["code"] == "forbidden"  # others still heard
        await eventually(lambda: trail.of(Kind.FORBIDDEN) and trail.events[-1]["user"] == other)
        theirs = [e for e in trail.of(Kind.FORBIDDEN) if e["user"] == mallory]
        assert len(theirs) <= BURST + 2, len(theirs)  # 100 refusals, a burst of events
        await asyncio.sleep(1.1)  # the cut lets one event a second through
        await ws.error("sub", "no.more")
        last = await eventually(
            lambda: [e for e in trail.of(Kind.FORBIDDEN) if e["detail"].get("suppressed")]
        )
        assert last[-1]["user"] == mallory
        assert last[-1]["detail"]["suppressed"] == 100 - len(theirs)
        print(f"100 forbidden ops: {len(theirs)} events, then one saying {100 - len(theirs)} cut")
    finally:
        await ws.close()
        await ws2.close()


async def test_the_trail_is_out_of_reach_of_ordinary_grants(make_gw: Any, nc: NATS) -> None:
    g, trail = await audited(make_gw, nc)
    p = trail.prefix
    broad, auditor = unique("broad"), unique("auditor")
    await g.set_caps(broad, {"subjects": [">"], "publish": [">"], "commands": [">"]})
    await g.set_caps(auditor, {"subjects": [f"{p}.>"]})
    wide, reader = await connect(g, broad), await connect(g, auditor)
    try:
        await wide.ok("sub", ">")  # allowed; never delivers the trail
        for op, target in (("sub", f"{p}.>"), ("sub", f"{p}.login"), ("pub", f"{p}.login")):
            err = await wide.error(op, target, {"forged": True} if op == "pub" else None)
            assert err["code"] == "forbidden", (op, target)
        await reader.ok("sub", f"{p}.>")  # a grant that names the prefix
        assert (await reader.error("sub", "elsewhere"))["code"] == "forbidden"
        got = await reader.expect(op="msg", timeout=T)
        assert got["target"].startswith(f"{p}.") and got["data"]["user"] == auditor
        seen = await wide.quiet(0.3)
        assert not [e for e in seen if e.get("target", "").startswith(p)], seen
    finally:
        await wide.close()
        await reader.close()


async def test_the_audit_command_prints_a_line_per_event(make_gw: Any, nc: NATS) -> None:
    g, trail = await audited(make_gw, nc)
    alice, eve = unique("alice"), unique("eve")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "AUDIT_"))}
    env.update(NATS_URL=g.gateway.config.nats_url, AUDIT_PREFIX=trail.prefix)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "natsgate",
        "audit",
        "--kind",
        "forbidden",
        "--user",
        alice,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready = await asyncio.wait_for(proc.stderr.readline(), 3 * T)
        assert ready.startswith(f"following {trail.prefix}.forbidden on ".encode()), ready
        a, e = await connect(g, alice), await connect(g, eve)
        await e.error("sub", "eve.nope")  # another user: not printed
        await a.error("sub", "first.nope")
        await a.error("sub", "second.nope")
        lines = [await asyncio.wait_for(proc.stdout.readline(), T) for _ in range(2)]
        for line, target in zip(lines, ("first.nope", "second.nope"), strict=True):
            text = line.decode()
            assert f" forbidden user={alice} address=127.0.0.1 " in text, text
            assert f'"target":"{target}"' in text and g.gateway.gateway_id in text, text
        await a.close()
        await e.close()
    finally:
        proc.terminate()
        code = await asyncio.wait_for(proc.wait(), T)
    assert code == 0
