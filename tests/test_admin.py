"""The admin API (protocol.md §7): connections of every gateway on one NATS,
disconnect by user or connection (4003), the capabilities editor, who may use it, and that
no grant reaches the gateways' admin subjects."""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import re
import signal
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import nats.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgate.admin.bus import prefix
from natsgate.auth import mint_token
from natsgate.bridges.core import USER_HEADER
from natsgate.capabilities import Capabilities, Reserved
from natsgate.subjects import covers, is_valid, match

from .conftest import SECRET, connect, gateway_env, unique
from .helpers import Gw, T, WsClient, eventually
from .test_cli import NATSGATE, free_port, wait_healthy
from .test_http import raw_status

ADMIN = {"admin": True}
FIELDS = {
    "gateway",
    "conn",
    "user",
    "since",
    "address",
    "subs",
    "feeds",
    "queued_bytes",
    "bytes_in",
    "bytes_out",
}


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(user, SECRET, 3600)}"}


async def call(
    gw: Gw,
    method: str,
    path: str,
    user: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    h = dict(bearer(user) if user else {})
    h.update(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{gw.url}{path}", data=data, headers=h) as r,
    ):
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except json.JSONDecodeError:
            return r.status, text


async def alive(ws: WsClient) -> None:
    inbox = await ws.send("ping")
    await ws.expect(op="pong", inbox=inbox)


@pytest.fixture
async def two(make_gw: Any) -> tuple[Gw, Gw]:
    """Two gateways on one NATS, one deployment (the same auth bucket)."""
    return await make_gw(), await make_gw()


async def test_connections_of_both_gateways_on_either(two: tuple[Gw, Gw]) -> None:
    a, b = two
    root, bob, carol = unique("root"), unique("bob"), unique("carol")
    await a.set_caps(root, ADMIN)
    await a.set_caps(bob, {"subjects": ["chat.>"], "buckets": {"todos": [">"]}})
    on_a = await connect(a, bob)
    on_b = await connect(b, carol)
    await on_a.ok("sub", "chat.room.1")
    await on_a.ok("sub", "chat.room.2")
    try:
        for asked in (a, b):
            status, body = await call(asked, "GET", "/admin/api/connections", root)
            assert status == 200, body
            mine = {c["user"]: c for c in body["connections"] if c["user"] in (bob, carol)}
            assert set(mine) == {bob, carol}, body
            assert all(set(c) >= FIELDS for c in mine.values())
            assert mine[bob]["gateway"] == a.gateway.gateway_id
            assert mine[carol]["gateway"] == b.gateway.gateway_id
            assert mine[bob]["subs"] == 2 and mine[bob]["feeds"] == 0
            assert mine[bob]["bytes_in"] > 0 and mine[bob]["bytes_out"] > 0
            assert mine[bob]["since"].endswith("Z")
            assert mine[bob]["address"] == "127.0.0.1"
            assert set(body["gateways"]) == {a.gateway.gateway_id, b.gateway.gateway_id}
            session = next(iter(a.gateway.by_user[bob]))
            assert mine[bob]["conn"] == session.conn_id
    finally:
        await on_a.close()
        await on_b.close()


async def test_disconnect_by_user_closes_on_both_with_4003(two: tuple[Gw, Gw]) -> None:
    a, b = two
    root, bob, carol = unique("root"), unique("bob"), unique("carol")
    await a.set_caps(root, ADMIN)
    bobs = [await connect(a, bob), await connect(b, bob), await connect(b, bob)]
    other = await connect(b, carol)
    try:
        status, body = await call(b, "POST", "/admin/api/disconnect", root, {"user": bob})
        assert (status, body) == (200, {"closed": 3, "missing": []})
        for ws in bobs:
            assert await ws.wait_closed() == 4003
        await eventually(lambda: not a.gateway.by_user.get(bob) and not b.gateway.by_user.get(bob))
        await alive(other)  # nobody else
        status, body = await call(a, "POST", "/admin/api/disconnect", root, {"user": bob})
        assert (status, body) == (200, {"closed": 0, "missing": []})
    finally:
        for ws in [*bobs, other]:
            await ws.close()


async def test_disconnect_by_connection(two: tuple[Gw, Gw]) -> None:
    a, b = two
    root, bob = unique("root"), unique("bob")
    await a.set_caps(root, ADMIN)
    one, two_ = await connect(b, bob), await connect(b, bob)
    try:
        _, body = await call(a, "GET", "/admin/api/connections", root)
        conns = [c["conn"] for c in body["connections"] if c["user"] == bob]
        assert len(conns) == 2
        status, body = await call(a, "POST", "/admin/api/disconnect", root, {"conn": conns[0]})
        assert (status, body) == (200, {"closed": 1, "missing": []})
        codes = await asyncio.gather(
            *(ws.wait_closed(0.5 * T) for ws in (one, two_)), return_exceptions=True
        )
        assert sorted(c for c in codes if isinstance(c, int)) == [4003], codes
        _, body = await call(a, "GET", "/admin/api/connections", root)
        assert [c["conn"] for c in body["connections"] if c["user"] == bob] == conns[1:]
    finally:
        await one.close()
        await two_.close()


async def test_who_may_use_it(gw: Gw) -> None:
    root, bob = unique("root"), unique("bob")
    await gw.set_caps(root, ADMIN)
    await gw.set_caps(bob, {"subjects": [">"], "publish": [">"], "admin": "yes"})  # not true
    for method, path, body in (
        ("GET", "/admin/api/connections", None),
        ("GET", f"/admin/api/caps/{bob}", None),
        ("POST", "/admin/api/disconnect", {"user": root}),
        ("GET", "/admin/api/metrics", None),
        ("PUT", f"/admin/api/caps/{bob}", {"admin": True}),  # last: bob is an admin then
    ):
        assert (await call(gw, method, path, None, body))[0] == 401, path
        assert (await call(gw, method, path, bob, body))[0] == 403, path
        assert (await call(gw, method, path, root, body))[0] == 200, path
    status, body = await call(gw, "GET", f"/admin/api/caps/{bob}", root)
    assert body["caps"]["admin"] is True  # root's PUT above made bob an admin
    # changes: JSON only, and the Origin check of the WebSocket
    evil = {"Origin": "https://evil.example"}
    status, _ = await call(gw, "POST", "/admin/api/disconnect", root, {"user": "x"}, evil)
    assert status == 403
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _ = await call(gw, "POST", "/admin/api/disconnect", root, "user=x", form)
    assert status == 415
    status, _ = await call(gw, "POST", "/admin/api/disconnect", root, {})
    assert status == 400
    # the console's page is there for anyone (it asks the API, which decides)
    status, page = await call(gw, "GET", "/admin")
    assert status == 200 and "<title>" in page


async def test_caps_editor_validates_and_the_revocation_follows(gw: Gw) -> None:
    root, bob = unique("root"), unique("bob")
    await gw.set_caps(root, ADMIN)
    await gw.set_caps(bob, {"subjects": ["chat.>", "news.>"]})
    ws = await connect(gw, bob)
    try:
        await ws.ok("sub", "news.today")
        status, body = await call(gw, "GET", f"/admin/api/caps/{bob}", root)
        assert status == 200 and body["caps"] == {"subjects": ["chat.>", "news.>"]}
        for bad in ('{"subjets": ["x"]}', '{"subjects": "chat.>"}', "not json", "[]"):
            status, body = await call(gw, "PUT", f"/admin/api/caps/{bob}", root, bad)
            assert status == 400 and body["error"].startswith("capabilities: "), (bad, body)
        status, body = await call(
            gw, "PUT", f"/admin/api/caps/{bob}", root, {"subjects": ["chat.>"]}
        )
        assert status == 200 and body["revision"] > 0
        update = await ws.expect(op="cap_update")
        assert update["data"]["revoked"] == [{"op": "sub", "target": "news.today"}]
        status, body = await call(gw, "GET", f"/admin/api/caps/{unique('nobody')}", root)
        assert (status, body["caps"]) == (200, None)
        status, _ = await call(gw, "GET", "/admin/api/caps/a.b", root)
        assert status == 400
    finally:
        await ws.close()


async def test_metrics_at_a_glance(gw: Gw) -> None:
    root = unique("root")
    await gw.set_caps(root, ADMIN)
    ws = await connect(gw, root)
    try:
        status, body = await call(gw, "GET", "/admin/api/metrics", root)
        assert status == 200 and body["gateway"] == gw.gateway.gateway_id
        assert body["metrics"]["natsgate_open_connections"] == 1
    finally:
        await ws.close()


async def test_broad_grants_do_not_reach_the_admin_subjects(gw: Gw, nc: Any) -> None:
    """A user granted everything, ``$`` subjects literally too, can neither list nor
    disconnect anyone through NATS: the prefix is hidden from every grant."""
    root, mallory = unique("root"), unique("mallory")
    await gw.set_caps(root, ADMIN)
    everything = [">", "$NATSGATE.>", "$NATSGATE.admin.>", "_INBOX.>"]
    await gw.set_caps(
        mallory, {"subjects": everything, "publish": everything, "commands": everything}
    )
    subjects = prefix(gw.gateway.config.auth_bucket)
    victim = await connect(gw, root)
    ws = await connect(gw, mallory)
    try:
        for op in ("sub", "pub", "cmd"):
            for target in (f"{subjects}.connections", f"{subjects}.disconnect"):
                err = await ws.error(op, target, {"user": root} if op != "sub" else None)
                assert err["code"] == "forbidden", (op, target, err)
        for pattern in ("$NATSGATE.>", "$NATSGATE.*.*.connections", "$NATSGATE.admin.>"):
            assert (await ws.error("sub", pattern))["code"] == "forbidden", pattern
        await ws.ok("sub", ">")  # allowed, and never delivers the admin requests (a `$`)
        status, body = await call(gw, "GET", "/admin/api/connections", root)
        assert status == 200 and len(body["connections"]) == 2
        seen = await ws.quiet(0.3)
        assert not [e for e in seen if "NATSGATE" in e.get("target", "")], seen
        # a request that came through a gateway for a user is never answered
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(
                f"{subjects}.disconnect",
                json.dumps({"user": root}).encode(),
                timeout=0.5,
                headers={USER_HEADER: mallory},
            )
        await alive(victim)
    finally:
        await ws.close()
        await victim.close()


async def test_the_console_is_served_and_shipped(make_gw: Any) -> None:
    """``/admin`` and every file the page loads (followed from its imports), with or without
    ``--proxy``; nothing outside ``admin/``; the wheel carries the folder."""
    root = Path(__file__).parents[1]
    for g in (await make_gw(), await make_gw(proxy="http://127.0.0.1:9")):  # 9: nobody there
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{g.url}/admin") as r:
                assert r.status == 200 and r.headers["X-Frame-Options"] == "DENY"
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
                page = await r.text()
            todo = re.findall(r'(?:src|href)="(/admin/[^"]+)"', page)
            seen: set[str] = set()
            while todo:
                path = todo.pop()
                if path in seen:
                    continue
                seen.add(path)
                async with s.get(f"{g.url}{path}") as r:
                    assert r.status == 200, path
                    body = await r.text()
                assert body == (root / path[1:]).read_text(), path
                base = path.rsplit("/", 1)[0]
                for spec in re.findall(r'from "(\.{1,2}/[^"]+)"', body):
                    todo.append(posixpath.normpath(f"{base}/{spec}"))
        assert seen >= {"/admin/console.js", "/admin/js/api.js", "/admin/style.css"}
        assert {p.name for p in (root / "admin" / "js").glob("*.js")} == {
            p.rsplit("/", 1)[1] for p in seen if p.startswith("/admin/js/")
        }
        for target in ("/admin/../pyproject.toml", "/admin/%2e%2e/pyproject.toml", "/admin/api/x"):
            assert await raw_status(g, target) == 404, target
    wheel = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert wheel["targets"]["wheel"]["force-include"]["admin"] == "natsgate_web/admin"


# ------------------------------------------------------------------ pure: the reserved prefixes

TOKENS = st.sampled_from(["natsgate", "audit", "admin", "$NATSGATE", "b", "x", "*", ">"])
RESERVED = Reserved(
    hidden_subjects=frozenset({"$NATSGATE.admin.b"}), literal_subjects=frozenset({"natsgate.audit"})
)
BROAD = Capabilities(
    subjects=[">", "natsgate.>", "*.audit.>", "$NATSGATE.>", "$NATSGATE.admin.>", "_INBOX.>"],
    publish=[">", "natsgate.>", "$NATSGATE.>"],
)


def patterns() -> st.SearchStrategy[str]:
    return (
        st.lists(TOKENS, min_size=1, max_size=5)
        .map(".".join)
        .filter(lambda p: is_valid(p, wildcards=True))
    )


@given(patterns(), st.lists(st.sampled_from(["login", "x", "admin", "b"]), min_size=1, max_size=3))
def test_no_pattern_a_broad_grant_allows_delivers_a_reserved_subject(
    pattern: str, rest: list[str]
) -> None:
    """Whatever a user granted everything but the audit prefix by name subscribes to, the
    hub never hands it a subject under a reserved prefix, and it can publish on none."""
    for reserved in ("natsgate.audit", "$NATSGATE.admin.b"):
        subject = ".".join([reserved, *rest])
        assert not BROAD.can_publish(subject, RESERVED)
        if BROAD.can_subscribe(pattern, RESERVED) and match(pattern, subject):
            assert subject.startswith(RESERVED.unnamed(pattern)), (pattern, subject)


@given(patterns())
def test_a_grant_naming_the_audit_prefix_reaches_it(pattern: str) -> None:
    auditor = Capabilities(subjects=["natsgate.audit.>"])
    allowed = auditor.can_subscribe(pattern, RESERVED)
    assert allowed == (
        pattern.startswith("natsgate.audit.") and covers("natsgate.audit.>", pattern)
    )
    if allowed:
        assert RESERVED.unnamed(pattern) == ()


async def test_a_busy_gateway_is_waited_for_and_a_stopped_one_named(
    make_gw: Any, config: Any, nats_server: Any, tmp_path: Path
) -> None:
    """The gateways greet each other, so a gather waits for every one it knows: one that
    is stopped (SIGSTOP) for 0.6 s is still listed (waiting for answers to go quiet for
    250 ms left it out), one that stays stopped is named as missing, and one that stopped
    cleanly is not waited for."""
    a = await make_gw()
    root, bob = unique("root"), unique("bob")
    await a.set_caps(root, ADMIN)
    port = free_port()
    env = {
        **os.environ,
        **gateway_env(nats_server.url),
        "AUTH_BUCKET": config.auth_bucket,  # the same deployment as a
        "AUTH_CREDS_BUCKET": config.auth_creds_bucket,
        "AUTH_REVOKED_BUCKET": config.auth_revoked_bucket,
    }
    with (tmp_path / "b.log").open("w") as log:
        b = await asyncio.create_subprocess_exec(
            *NATSGATE,
            *("serve", "--host", "127.0.0.1", "--port", str(port), "--log", "warn"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            cwd="/tmp",
        )
    try:
        await wait_healthy(port)
        on_b = await WsClient.open(f"ws://127.0.0.1:{port}/ws", token=mint_token(bob, SECRET, 3600))
        await on_b.expect(op="cap_update")

        async def both() -> Any:
            _, body = await call(a, "GET", "/admin/api/connections", root)
            return body if len(body["gateways"]) == 2 else None

        b_id = (await eventually(both))["gateways"][1]
        loop = asyncio.get_running_loop()

        b.send_signal(signal.SIGSTOP)
        loop.call_later(0.6, b.send_signal, signal.SIGCONT)
        status, body = await call(a, "GET", "/admin/api/connections", root)
        assert status == 200 and body["missing"] == [], body
        assert bob in {c["user"] for c in body["connections"]}

        b.send_signal(signal.SIGSTOP)
        t0 = loop.time()
        _, body = await call(a, "GET", "/admin/api/connections", root)
        assert body["missing"] == [b_id] and body["gateways"] == [body["gateways"][0]], body
        assert loop.time() - t0 < 4
        _, body = await call(a, "POST", "/admin/api/disconnect", root, {"user": bob})
        assert body == {"closed": 0, "missing": [b_id]}
        b.send_signal(signal.SIGCONT)
        # the request b did not answer in time is still carried out when it catches up
        assert await on_b.wait_closed() == 4003
        _, body = await call(a, "POST", "/admin/api/disconnect", root, {"user": bob})
        assert body == {"closed": 0, "missing": []}

        b.terminate()  # says bye: not waited for from now on
        async with asyncio.timeout(T):
            assert await b.wait() == 0
        t0 = loop.time()
        _, body = await call(a, "GET", "/admin/api/connections", root)
        assert body["missing"] == [] and len(body["gateways"]) == 1, body
        assert loop.time() - t0 < 1.5
    finally:
        if b.returncode is None:
            b.send_signal(signal.SIGCONT)
            b.kill()
            await b.wait()


async def test_a_flood_of_greetings_is_bounded(gw: Gw, nc: Any, config: Any) -> None:
    """Whoever may publish on the admin subjects (a NATS user, never a client of the
    gateway) greeting as 3,000 made-up gateways: the gateway remembers MAX_PEERS of them
    at most and greets back as many times at most."""
    from natsgate.admin.bus import MAX_PEERS

    subject = f"{prefix(config.auth_bucket)}.hello"
    ours = gw.gateway.gateway_id
    answered = 0

    async def count(msg: Any) -> None:
        nonlocal answered
        if json.loads(msg.data)["gateway"] == ours:
            answered += 1

    sub = await nc.subscribe(subject, cb=count)
    for i in range(3000):
        await nc.publish(subject, json.dumps({"gateway": f"fake-{i}"}).encode())
    await nc.publish(subject, b"not json")
    await nc.flush()
    await eventually(lambda: len(gw.gateway.admin.peers()) == MAX_PEERS)
    await asyncio.sleep(0.2)
    await nc.flush()
    assert len(gw.gateway.admin.peers()) == MAX_PEERS
    assert MAX_PEERS <= answered <= MAX_PEERS + 2  # plus its own periodic greeting
    await sub.unsubscribe()
