"""The rest of the HTTP edge: /healthz, /metrics, the library, static files, --proxy."""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

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
    assert status == 200 and "javascript" in ctype and "connect" in body
    status, ctype, _ = await get(f"{gw.url}/")
    assert status == 200 and ctype.startswith("text/html")
    assert (await get(f"{gw.url}/../pyproject.toml"))[0] == 404
    assert (await get(f"{gw.url}/%2e%2e/pyproject.toml"))[0] == 404
    assert (await get(f"{gw.url}/no-such-file.css"))[0] == 404


ROOT = Path(__file__).parents[1]
# `import ... from "./x.js"` and `export ... from "./x.js"`, over several lines too
RELATIVE_IMPORT = re.compile(r'^(?:import|export)\b[^;]*?\bfrom "(\.{1,2}/[^"]+)";', re.M)


async def raw_status(gw: Gw, target: str) -> int:
    """The status of ``GET target`` sent byte for byte, so that no client library
    normalizes ``..`` or percent-escapes away before the gateway sees them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return int((await reader.readline()).split()[1])
    finally:
        writer.close()


async def test_browser_library_modules(gw: Gw) -> None:
    """``/natsgate.js`` and every module it imports, followed as a browser follows them
    (each relative specifier against the importing module's URL), are served as JavaScript
    with the library's headers; every module on disk is reachable that way and is shipped
    in the wheel; nothing outside ``client/natsgate/`` or other than ``.js`` is served."""
    bodies: dict[str, str] = {}
    todo = [f"{gw.url}/natsgate.js"]
    async with aiohttp.ClientSession() as s:
        while todo:
            url = todo.pop()
            if url in bodies:
                continue
            async with s.get(url) as r:
                assert r.status == 200, url
                assert r.headers["Content-Type"] == "text/javascript; charset=utf-8", url
                assert r.headers["Cache-Control"] == "no-cache", url
                assert r.headers["X-Content-Type-Options"] == "nosniff", url
                bodies[url] = await r.text()
            todo += [urljoin(url, spec) for spec in RELATIVE_IMPORT.findall(bodies[url])]
    modules = sorted((ROOT / "client" / "natsgate").glob("*.js"))
    assert len(modules) > 3
    served = {urlsplit(url).path for url in bodies}
    assert served == {"/natsgate.js", *(f"/natsgate/{m.name}" for m in modules)}
    assert "export function connect" in bodies[f"{gw.url}/natsgate/client.js"]
    for url, body in bodies.items():
        assert body == (ROOT / "client" / urlsplit(url).path[1:]).read_text(), url

    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    shipped = wheel["targets"]["wheel"]["force-include"]
    assert shipped["client/natsgate.js"] == "natsgate_web/natsgate.js"
    assert shipped["client/natsgate"] == "natsgate_web/natsgate"

    for target in (
        "/natsgate/../pyproject.toml",
        "/natsgate/..%2f..%2fpyproject.toml",
        "/natsgate/%2e%2e/%2e%2e/pyproject.toml",
        "/natsgate/..%2Fnatsgate.js",  # a .js file, but outside the modules' folder
        "/natsgate/..%2F..%2Fsrc%2Fnatsgate%2F__init__.py",
        "/natsgate/",
        "/natsgate/wire.d.ts",
        "/natsgate/no-such-module.js",
    ):
        assert await raw_status(gw, target) == 404, target


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
