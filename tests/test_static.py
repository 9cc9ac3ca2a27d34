"""Your own front end at ``/`` (``STATIC_DIR`` / ``serve --static DIR``), or no files at all
(``STATIC_DIR=none`` / ``--no-static``), over real HTTP: index.html at ``/``, no listings,
nothing outside the folder (``..``, ``%2f``, symlinks pointing out)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from natsgate.natsrunner import NatsServer

from .conftest import SECRET
from .helpers import T
from .test_cli import NATSGATE, free_port, run, wait_healthy


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """An app folder, a secret beside it, and symlinks: one inside, two pointing out."""
    root = tmp_path / "site"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<h1>my app</h1>")
    (root / "assets" / "app.js").write_text("console.log('mine')")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("docs index")
    (root / "empty").mkdir()
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (root / "inside.js").symlink_to(root / "assets" / "app.js")
    (root / "out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "outdir").symlink_to(tmp_path)
    return root


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """One GET with the request target exactly as given (no client normalises it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(T):
        data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_static_dir_serves_the_app_and_nothing_outside(make_gw: Any, site: Path) -> None:
    g = await make_gw(static_dir=site)
    async with aiohttp.ClientSession() as s:
        for path, body in (
            ("/", "<h1>my app</h1>"),
            ("/index.html", "<h1>my app</h1>"),
            ("/assets/app.js", "console.log('mine')"),
            ("/docs/", "docs index"),
            ("/inside.js", "console.log('mine')"),  # a symlink that stays inside
        ):
            async with s.get(g.url + path) as r:
                assert (r.status, await r.text()) == (200, body), path
                assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with s.get(g.url + "/natsgate.js") as r:  # the library beside your app
            assert r.status == 200 and "javascript" in r.headers["Content-Type"]
        async with s.get(g.url + "/demo.js") as r:  # the demo's files are not there
            assert r.status == 404
    refused = [
        "/empty/",  # a folder without index.html: no listing
        "/assets/",
        "/missing.html",
        "/../secret.txt",
        "/..%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "//etc/passwd",
        "/out.txt",  # symlinks pointing out of the folder
        "/outdir/secret.txt",
    ]
    for target in refused:
        status, body = await raw_get(g.port, target)
        assert status in (400, 404), (target, status)
        assert b"TOP SECRET" not in body and b"root:" not in body, target


async def test_no_static_serves_no_files(make_gw: Any, site: Path) -> None:
    g = await make_gw(serve_static=False, static_dir=None)
    async with aiohttp.ClientSession() as s:
        for path in ("/", "/index.html", "/natsgate.js", "/app.js"):
            async with s.get(g.url + path) as r:
                assert r.status == 404, path
        async with s.get(g.url + "/healthz") as r:
            assert r.status == 200  # the gateway itself is all there


def _serve(nats_server: NatsServer, *flags: str, env: dict[str, str] | None = None) -> Any:
    port = free_port()
    proc = subprocess.Popen(
        [*NATSGATE, "serve", "--host", "127.0.0.1", "--port", str(port), *flags],
        env={**os.environ, "JWT_SECRET": SECRET, "NATS_URL": nats_server.url, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/tmp",
    )
    assert proc.stdout is not None
    assert "natsgate listening on" in proc.stdout.readline()
    return proc, port


def _stop(proc: Any) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10 * T)
    return str(err)


async def test_serve_flags_static_and_no_static(nats_server: NatsServer, site: Path) -> None:
    """``--static DIR`` and ``--no-static`` on the command line, and the start-up log that
    says what is served at /."""
    proc, port = _serve(nats_server, "--static", str(site))
    try:
        await wait_healthy(port)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as r:
            assert (r.status, await r.text()) == (200, "<h1>my app</h1>")
    finally:
        log = _stop(proc)
    assert f"front end at http://127.0.0.1:{port}/: the files of {site}" in log, log
    assert "buckets: capabilities auth_users" in log and "NATS: nats://127.0.0.1:" in log
    assert f"WebSocket at ws://127.0.0.1:{port}/ws" in log

    proc, port = _serve(nats_server, "--no-static", env={"STATIC_DIR": str(site)})
    try:
        await wait_healthy(port)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 404
    finally:
        log = _stop(proc)
    assert "front end at" in log and "none (STATIC_DIR=none or --no-static" in log

    r = await asyncio.to_thread(
        run, ["serve", "--static", "/no/such/folder"], {"JWT_SECRET": SECRET, "NATS_URL": "x:1"}
    )
    assert r.returncode == 2 and "STATIC_DIR names a folder that does not exist" in r.stderr
