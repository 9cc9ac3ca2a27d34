"""What a newcomer following the README and docs met, on real processes: ``check`` takes
``serve``'s flags and fetches the JWKS, every command survives a closed stdout, text files
say their charset, ``--proxy`` still serves the browser library, an authorization error
says where credentials come from, ``--help`` reads well in a terminal, the start-up log
says when password login is off, and the example environment lists every variable."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from natsgate.cli.envhelp import names
from natsgate.natsrunner import Credentials, NatsServer
from natsgate.server import web_dir

from .conftest import SECRET, unique
from .helpers import T
from .test_cli import NATSGATE, free_port, wait_healthy
from .test_local_nats import clean_env

ROOT = Path(__file__).resolve().parents[1]
SIGPIPE_EXIT = 128 + signal.SIGPIPE


def env_of(**extra: str) -> dict[str, str]:
    """The test's environment without any natsgate variable (the shell's must not leak
    into the command under test), plus ``extra``."""
    scrub = set(names()) | {"DEMO_PASSWORD"}
    return {**{k: v for k, v in clean_env().items() if k not in scrub}, **extra}


def cli(
    args: list[str], cwd: Path, stdout: int = subprocess.PIPE, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NATSGATE, *args],
        env=env_of(**env),
        stdout=stdout,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=10 * T,
        cwd=cwd,
    )


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone (``| head`` once it quit)."""
    r, w = os.pipe()
    os.close(r)
    return w


# ------------------------------------------------------------------ check = serve's flags


def options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", help_text))


def test_check_takes_the_same_flags_as_serve(tmp_path: Path) -> None:
    serve = cli(["serve", "--help"], tmp_path)
    check = cli(["check", "--help"], tmp_path)
    assert serve.returncode == check.returncode == 0
    serve_flags = options(serve.stdout.split("environment (also")[0])
    assert {"--local", "--data-dir", "--static", "--no-static", "--proxy"} <= serve_flags
    assert options(check.stdout) == serve_flags

    # --local without a running serve --local: what serve --local would start; no secret needed
    data = tmp_path / "data"
    r = cli(
        ["check", "--local", "--data-dir", str(data), "--host", "127.0.0.1", "--port", "9123"],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config: ok; would listen on 127.0.0.1:9123\n" in r.stdout
    assert "NATS: serve --local would start " in r.stdout
    assert str(data.resolve() / "jetstream") in r.stdout
    assert r.stdout.strip().endswith("ok")

    r = cli(["check", "--local", "--no-static", "--data-dir", str(data)], tmp_path)
    assert r.returncode == 0 and "front end: none" in r.stdout, r.stdout + r.stderr
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>mine</p>")
    r = cli(["check", "--local", "--static", str(site), "--data-dir", str(data)], tmp_path)
    assert f"front end: the files of {site.resolve()}" in r.stdout, r.stdout + r.stderr
    r = cli(["check", "--local", "--proxy", "--data-dir", str(data)], tmp_path)
    assert "front end: forwarded to the dev server at http://127.0.0.1:1234" in r.stdout
    # a bad flag value is a configuration error, as for serve
    r = cli(["check", "--local", "--static", str(tmp_path / "nope")], tmp_path)
    assert r.returncode == 2 and "STATIC_DIR names a folder that does not exist" in r.stderr


def test_check_with_flags_against_nats(nats_server: NatsServer, tmp_path: Path) -> None:
    r = cli(
        ["check", "--port", "8099", "--proxy", "http://127.0.0.1:5173"],
        tmp_path,
        JWT_SECRET=SECRET,
        NATS_URL=nats_server.url,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config: ok; would listen on 0.0.0.0:8099" in r.stdout
    assert "front end: forwarded to the dev server at http://127.0.0.1:5173" in r.stdout
    assert f"NATS: connected to NATS at {nats_server.url}" in r.stdout


# ------------------------------------------------------------------ check fetches the JWKS


@pytest.fixture
def jwks_url() -> Iterator[str]:
    """An identity provider's key set (one RSA signing key) on a real socket."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/certs" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    server.shutdown()
    server.server_close()


def test_check_fetches_the_key_set(tmp_path: Path, jwks_url: str) -> None:
    local = ["check", "--local", "--data-dir", str(tmp_path / "data")]
    r = cli(local, tmp_path, JWT_JWKS_URL=jwks_url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"JWKS: 1 signing key from {jwks_url}\n" in r.stdout

    for url, why in (
        (f"http://127.0.0.1:{free_port()}/certs", "Cannot connect to host"),
        (jwks_url.replace("/certs", "/nothing"), "HTTP 404"),
    ):
        r = cli(local, tmp_path, JWT_JWKS_URL=url)
        assert r.returncode == 1, r.stdout + r.stderr
        [line] = [x for x in r.stdout.splitlines() if x.startswith("JWKS:")]
        assert line.startswith(f"JWKS: cannot fetch the key set from {url}: ") and why in line
        assert r.stdout.strip().endswith("1 problem")


def test_check_gives_up_on_a_silent_key_set(tmp_path: Path) -> None:
    """A provider that takes the connection and never answers: a few seconds, then 1."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/certs"
        r = cli(["check", "--local", "--data-dir", str(tmp_path)], tmp_path, JWT_JWKS_URL=url)
    assert r.returncode == 1
    assert f"JWKS: cannot fetch the key set from {url}: no answer within 4 s" in r.stdout


# ------------------------------------------------------------------ a closed stdout


def test_every_command_survives_a_closed_stdout(nats_server: NatsServer, tmp_path: Path) -> None:
    token = cli(["token", "ada"], tmp_path, JWT_SECRET=SECRET).stdout.strip()
    data = str(tmp_path / "data")
    nats = {"NATS_URL": nats_server.url, "JWT_SECRET": SECRET, "AUTH_BUCKET": unique("caps_")}
    caps = tmp_path / "ada.json"
    caps.write_text('{"subjects": ["chat.>"]}')
    assert cli(["user", "caps", "ada", str(caps)], tmp_path, **nats).returncode == 0
    piped = SIGPIPE_EXIT
    for args, env, code in (
        (["check", "--local", "--data-dir", data], {}, piped),
        (["check"], nats, piped),
        (["user", "list"], nats, piped),
        (["user", "show", "ada"], nats, piped),
        (["token", "ada"], {"JWT_SECRET": SECRET}, piped),
        (["token", "--verify", token], {"JWT_SECRET": SECRET}, piped),
        (["serve", "--help"], {}, 0),  # argparse drops what it cannot write, and exits 0
        (["--version"], {}, 0),
    ):
        w = closed_pipe()
        try:
            r = cli(args, tmp_path, stdout=w, **env)
        finally:
            os.close(w)
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, (args, r.stderr)
        assert r.stderr == "", (args, r.stderr)
        assert r.returncode == code, (args, r.returncode)


def serve_without_stdout(port: int, err: Path, cwd: Path, **env: str) -> subprocess.Popen[bytes]:
    w = closed_pipe()
    try:
        return subprocess.Popen(
            [*NATSGATE, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env_of(**env),
            stdout=w,
            stderr=err.open("w"),
            cwd=cwd,
        )
    finally:
        os.close(w)


async def test_serve_goes_on_without_stdout_and_says_password_login_is_off(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """JWT_JWKS_URL without JWT_SECRET: the log says password login is off, not where it
    is; and a stdout closed at once (``| head -0``) costs serve nothing."""
    port = free_port()
    err = tmp_path / "serve.err"
    proc = serve_without_stdout(
        port, err, tmp_path, NATS_URL=nats_server.url, JWT_JWKS_URL=f"http://127.0.0.1:{port}/c"
    )
    try:
        await wait_healthy(port)
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{port}/auth/login", json={}) as resp,
        ):
            assert resp.status == 404  # as the log says
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10 * T)
    log = err.read_text()
    assert code == 0, log
    assert "Traceback" not in log and "BrokenPipe" not in log
    assert "password login is off (JWT_JWKS_URL without JWT_SECRET" in log
    assert "/auth/login" not in log


# ------------------------------------------------------------------ charset of text files


async def head(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.head(url) as r:
        return r.status, r.headers.get("Content-Type", "")


async def test_text_files_say_utf8(make_gw: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    files = {
        "index.html": "text/html",
        "app.js": "text/javascript",
        "style.css": "text/css",
        "logo.svg": "image/svg+xml",
        "data.json": "application/json",
        "notes.txt": "text/plain",
    }
    for name in files:
        (site / name).write_text("connecting…")
    (site / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    gw = await make_gw(static_dir=site)
    assert await head(f"{gw.url}/") == (200, "text/html; charset=utf-8")
    for name, kind in files.items():
        got = await head(f"{gw.url}/{name}")
        if name.endswith(".js"):  # the system's mime.types may say the older name
            got = (got[0], got[1].replace("application/javascript", "text/javascript"))
        assert got == (200, f"{kind}; charset=utf-8"), name
    assert await head(f"{gw.url}/pic.png") == (200, "image/png")  # not text: no charset
    for path in ("/natsgate.js", "/natsgate/wire.js"):
        assert await head(f"{gw.url}{path}") == (200, "text/javascript; charset=utf-8")
    status, kind = await head(f"{gw.url}/admin")
    assert (status, kind) == (200, "text/html; charset=utf-8")

    demo = await make_gw()  # no STATIC_DIR: the built-in demo
    assert await head(f"{demo.url}/") == (200, "text/html; charset=utf-8")
    for name in sorted(p.name for p in web_dir()[1].iterdir() if p.suffix in (".js", ".css")):
        status, kind = await head(f"{demo.url}/{name}")
        assert status == 200 and kind.endswith("; charset=utf-8"), (name, kind)


# ------------------------------------------------------------------ --proxy and the library


async def test_proxy_serves_the_browser_library_itself(make_gw: Any) -> None:
    """The dev server has no /natsgate.js; the gateway answers it, and the rest goes on."""
    seen: list[str] = []

    async def dev(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/":
            return web.Response(text="dev page", content_type="text/html")
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dev)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        gw = await make_gw(proxy=f"http://127.0.0.1:{port}")
        lib = web_dir()[0]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{gw.url}/natsgate.js") as r:
                assert r.status == 200
                assert await r.read() == (lib / "natsgate.js").read_bytes()
            async with s.get(f"{gw.url}/natsgate/wire.js") as r:
                assert r.status == 200
                assert await r.read() == (lib / "natsgate" / "wire.js").read_bytes()
            async with s.get(f"{gw.url}/natsgate/nope.js") as r:
                assert r.status == 404
            async with s.get(f"{gw.url}/") as r:
                assert r.status == 200 and await r.text() == "dev page"
            async with s.get(f"{gw.url}/src/main.js") as r:
                assert r.status == 404
        assert seen == ["/", "/src/main.js"]  # the library never reached the dev server
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ an authorization error


def test_authorization_violation_says_where_credentials_come_from(tmp_path: Path) -> None:
    """A server that takes only its own user (as the one of serve --local), reached
    without credentials: the one line says where they come from."""
    server = NatsServer(
        store_dir=tmp_path / "js", port=-1, credentials=Credentials.generate()
    ).start()
    try:
        r = cli(["user", "list"], tmp_path, NATS_URL=server.url)
    finally:
        server.stop()
    assert r.returncode == 1
    [line] = r.stderr.splitlines()
    assert line.startswith(f"natsgate: cannot connect to NATS at {server.url}: ")
    assert "Authorization Violation" in line
    for needle in ("NATS_USER + NATS_PASSWORD", "NATS_CREDS", "--data-dir", "<data-dir>/nats.env"):
        assert needle in line, needle


# ------------------------------------------------------------------ --help


def test_help_reads_well_in_a_terminal(tmp_path: Path) -> None:
    r = cli(["serve", "--help"], tmp_path)
    assert r.returncode == 0
    assert "``" not in r.stdout and not re.search(r"\bNone\b", r.stdout)
    [static] = [x for x in r.stdout.splitlines() if x.strip().startswith("STATIC_DIR")]
    assert "unset: the demo's" in static
    assert "required 'iss', when set" in r.stdout
    r = cli(["token", "--help"], tmp_path)
    text = " ".join(r.stdout.split())
    assert "90s, 15m, 1h, 7d" in text and "default 1h" in text


# ------------------------------------------------------------------ the example environment


def test_env_example_lists_every_variable() -> None:
    """Every variable of config.py (the list serve --help prints) is in
    deploy/natsgate.env.example, set or commented out."""
    every = names()
    assert {"JWT_SECRET", "STATIC_DIR", "NATS_USER", "NATS_PASSWORD", "MAX_JOINS"} <= set(every)
    source = (ROOT / "src" / "natsgate" / "config.py").read_text()
    read = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', source[source.index("def load(") :]))
    assert read <= set(every), sorted(read - set(every))
    example = (ROOT / "deploy" / "natsgate.env.example").read_text()
    missing = [n for n in every if not re.search(rf"^#?{n}=", example, re.MULTILINE)]
    assert not missing, f"not in deploy/natsgate.env.example: {missing}"
