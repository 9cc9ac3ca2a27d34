"""The rest of the HTTP edge: /healthz, /metrics, the library, static files, --proxy."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from aiohttp import web
from nats.aio.client import Client as NATS

from .conftest import connect, unique
from .helpers import Gw


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_healthz(gw: Gw) -> None:
    status, _, body = await get(f"{gw.url}/healthz")
    assert status == 200 and '"ok"' in body


async def test_metrics_count_what_happens(gw: Gw, nc: NATS) -> None:
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, {"subjects": [f"{p}.>"], "commands": [f"{p}.svc"]})
    c = await connect(gw, user)
    await c.ok("sub", f"{p}.a")
    await c.error("sub", "forbidden.thing")
    await c.error("cmd", f"{p}.svc", 1)  # no responders
    await nc.publish(f"{p}.a", b"1")
    await c.expect(op="msg")
    status, ctype, text = await get(f"{gw.url}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    for line in (
        "natsgate_open_connections 1.0",
        'natsgate_subscriptions{kind="sub"} 1.0',
        'natsgate_errors_total{code="forbidden"} 1.0',
        'natsgate_errors_total{code="no_responders"} 1.0',
        'natsgate_command_seconds_count{outcome="no_responders"} 1.0',
        "natsgate_hub_subjects 1.0",
        "natsgate_nats_connected 1.0",
    ):
        assert line in text, line
    assert "natsgate_bytes_out_total" in text
    # the client sent 3 frames (sub, sub, cmd) through the one /ws path: counted
    assert "natsgate_frames_in_total 3.0" in text, text
    bytes_in = re.search(r"^natsgate_bytes_in_total (\S+)$", text, re.M)
    assert bytes_in and float(bytes_in.group(1)) > 50
    await c.close()


async def test_browser_library_and_static_files(gw: Gw) -> None:
    status, ctype, body = await get(f"{gw.url}/natsgate.js")
    assert status == 200 and "javascript" in ctype and "export function connect" in body
    status, ctype, _ = await get(f"{gw.url}/")
    assert status == 200 and ctype.startswith("text/html")
    assert (await get(f"{gw.url}/../pyproject.toml"))[0] == 404
    assert (await get(f"{gw.url}/%2e%2e/pyproject.toml"))[0] == 404
    assert (await get(f"{gw.url}/no-such-file.css"))[0] == 404


async def test_proxy_forwards_all_but_the_gateway_paths(make_gw: Any) -> None:
    async def dev(request: web.Request) -> web.Response:
        return web.Response(text=f"dev:{request.method}:{request.path_qs}")

    app = web.Application()
    app.router.add_route("*", "/{p:.*}", dev)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        gw: Gw = await make_gw(proxy=f"http://127.0.0.1:{port}")
        assert await get(f"{gw.url}/app/page?x=1") == (
            200,
            "text/plain; charset=utf-8",
            "dev:GET:/app/page?x=1",
        )
        status, _, body = await get(f"{gw.url}/healthz")
        assert status == 200 and "ok" in body
        assert (await get(f"{gw.url}/metrics"))[2].startswith("# HELP")
    finally:
        await runner.cleanup()
