"""Browser tests of the demo page: real headless Chromium, a real gateway process, a real
nats-server.

The gateway runs as a subprocess (``natsgate serve``) so that a test can SIGKILL it and start
it again on the same port; the demo's services and data run on this test's event loop.
Waits are for events (a line on stdout, ``/healthz``, Playwright's ``expect``), bounded by
the suite's time unit ``T`` (``NATSGATE_TEST_TIMEOUT_SCALE`` scales it).

Every page fails its test on a console error or an uncaught page error, unless the test
names the message it expects (a refused WebSocket while the gateway is down, the 401 of a
wrong password: the browser itself logs those).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from natsgate.demo import NOTIFY_STREAM, Services, demo_caps, seed
from natsgate.durables import user_prefix
from natsgate.natsrunner import NatsServer

from ..helpers import T

CHROMIUM = os.environ.get("NATSGATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery staple"
MS = int(4 * T * 1000)  # Playwright timeouts (ms): generous, they end on the event

try:
    from playwright.async_api import Browser, BrowserContext, Page, expect
    from playwright.async_api import async_playwright as _async_playwright
except ImportError:  # pragma: no cover - playwright is a dev dependency
    _async_playwright = None  # type: ignore[assignment]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            if _async_playwright is None:
                item.add_marker(pytest.mark.skip(reason="playwright is not installed"))
            elif not Path(CHROMIUM).exists():
                item.add_marker(pytest.mark.skip(reason=f"no Chromium at {CHROMIUM}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can screenshot a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ NATS side


@dataclass
class Backend:
    """The demo's data and services on the test nats-server, with this module's buckets."""

    nats_url: str
    secret: str
    auth_bucket: str
    creds_bucket: str
    nc: NATS

    async def set_caps(self, user: str, caps: dict[str, Any] | None) -> None:
        kv = await self.nc.jetstream().key_value(self.auth_bucket)
        if caps is None:
            await kv.delete(user)
        else:
            await kv.put(user, json.dumps(caps).encode())

    async def clear_notifications(self, user: str) -> None:
        """An empty inbox: the user's notifications purged, their durables deleted."""
        js = self.nc.jetstream()
        await js.purge_stream(NOTIFY_STREAM, subject=f"notify.{user}")
        for ci in await js.consumers_info(NOTIFY_STREAM):
            if ci.name.startswith(user_prefix(user)):
                await js.delete_consumer(NOTIFY_STREAM, ci.name)

    async def notify(self, user: str, text: str) -> int:
        """A notification for ``user``, published straight to NATS (as a service would)."""
        ack = await self.nc.jetstream().publish(
            f"notify.{user}", json.dumps({"text": text}).encode()
        )
        return int(ack.seq)

    async def chat(self, text: str, sender: str | None = None) -> int:
        """Publish a chat line straight to NATS (as a service or a bridge would); its seq."""
        headers = {"Natsgate-User": sender} if sender else None
        ack = await self.nc.jetstream().publish(
            "chat.room.lobby", json.dumps({"text": text}).encode(), headers=headers
        )
        return int(ack.seq)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(nats_server: NatsServer) -> AsyncIterator[Backend]:
    nc = await nats.connect(nats_server.url)
    services_nc = await nats.connect(nats_server.url, name="demo-services")
    b = Backend(
        nats_url=nats_server.url,
        secret=f"browser-{uuid.uuid4().hex}",
        auth_bucket=unique("caps_"),
        creds_bucket=unique("creds_"),
        nc=nc,
    )
    upstream: Any = SimpleNamespace(js=nc.jetstream())  # all that seed() uses of an Upstream
    await seed(upstream, b.auth_bucket, b.creds_bucket, PASSWORD, "")
    await Services(services_nc).start()
    yield b
    await services_nc.close()
    await nc.close()


# ------------------------------------------------------------------ the gateway process


@dataclass
class GatewayProcess:
    """``natsgate serve`` as a child process on a fixed port (so it can come back on it)."""

    backend: Backend
    port: int
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    _drain: asyncio.Task[None] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NATS_", "AUTH_", "JWT_", "WEB_HASH", "ALLOWED_ORIGINS", "PORT"))
        }
        env.update(
            NATS_URL=self.backend.nats_url,
            JWT_SECRET=self.backend.secret,
            AUTH_BUCKET=self.backend.auth_bucket,
            AUTH_CREDS_BUCKET=self.backend.creds_bucket,
            PYTHONUNBUFFERED="1",
        )
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts}\n".encode())
        log.flush()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "natsgate",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            env=env,
            cwd=str(self.log_path.parent),  # no stray .env from the checkout
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        log.close()
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(6 * T):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"gateway exited before listening:\n{self.log_tail()}")
                    if b"natsgate listening on" in line:
                        break
                await self._wait_healthy()
        except TimeoutError:
            raise RuntimeError(f"gateway did not become ready:\n{self.log_tail()}") from None
        self._drain = asyncio.create_task(self._drain_stdout())

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    async def _wait_healthy(self) -> None:
        """/healthz says 200 once the gateway's NATS connection is up (deploy.md)."""
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)  # poll the state, bounded by the caller's timeout

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the browsers, no drain."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self._drain:
            await self._drain

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 3 * T)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._drain:
            await self._drain

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest_asyncio.fixture(loop_scope="module")
async def gateway(backend: Backend, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    for user in ("alice", "bob"):  # every test starts from the demo's capabilities
        await backend.set_caps(user, demo_caps(user))
        await backend.clear_notifications(user)  # and an empty notification inbox
    g = GatewayProcess(backend, free_port(), tmp_path / "gateway.log")
    await g.start()
    yield g
    await g.stop()


# ------------------------------------------------------------------ the browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with _async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@dataclass
class Pages:
    """Opens pages on the demo and fails the test on console or page errors."""

    browser: Browser
    gateway: GatewayProcess
    test_name: str
    contexts: list[BrowserContext] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """A console error this test expects (logged by the browser itself)."""
        self.allowed.append(re.compile(pattern))

    async def context(self, **options: Any) -> BrowserContext:
        ctx = await self.browser.new_context(base_url=self.gateway.url, **options)
        ctx.set_default_timeout(MS)
        self.contexts.append(ctx)
        return ctx

    async def open(self, ctx: BrowserContext | None = None, **options: Any) -> Page:
        """A new page (in a new context unless one is given) on the demo's front page."""
        ctx = ctx or await self.context(**options)
        page = await ctx.new_page()
        n = len(self.pages)

        def on_console(msg: Any) -> None:
            if msg.type == "error":
                self.problems.append(f"page {n} console error: {msg.text} ({msg.location})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.problems.append(f"page {n} page error: {exc}"))
        self.pages.append(page)
        await page.goto("/")
        return page

    async def login(self, user: str, ctx: BrowserContext | None = None, **options: Any) -> Page:
        """A page logged in as ``user``, its connection open and its feeds live."""
        page = await self.open(ctx, **options)
        if await page.get_by_test_id("login").is_visible():
            await page.get_by_test_id("login-user").fill(user)
            await page.get_by_test_id("login-password").fill(PASSWORD)
            await page.get_by_test_id("login-submit").click()
        await expect(page.get_by_test_id("conn-badge")).to_have_attribute("data-state", "open")
        await expect(page.get_by_test_id("whoami")).to_have_text(user)
        for feed in ("chat", "todos", "notify"):
            await expect(page.get_by_test_id(f"{feed}-status")).to_have_attribute(
                "data-state", "live"
            )
        return page

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(a.search(p) for a in self.allowed)]

    async def close(self) -> None:
        for ctx in self.contexts:
            with contextlib.suppress(Exception):
                await ctx.close()


async def shot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save ``test-artifacts/screenshots/<name>.png``, from the top of the page."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


@pytest_asyncio.fixture(loop_scope="module")
async def pages(
    browser: Browser, gateway: GatewayProcess, request: pytest.FixtureRequest
) -> AsyncIterator[Pages]:
    expect.set_options(timeout=MS)
    p = Pages(browser, gateway, request.node.name)
    yield p
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for i, page in enumerate(p.pages):
            with contextlib.suppress(Exception):
                await shot(page, f"FAILED-{request.node.name}-{i}")
        print(f"gateway log ({gateway.log_path}):\n{gateway.log_tail()}")
        print("browser console errors:\n" + "\n".join(p.problems))
    await p.close()
    if os.environ.get("NATSGATE_SHOW_CONSOLE"):
        print("\n".join(p.problems))
    problems = p.unexpected()
    assert not problems, "errors in the browser:\n" + "\n".join(problems)


async def texts(page: Page, testid: str) -> list[str]:
    return await page.get_by_test_id(testid).all_inner_texts()


async def chat_lines(page: Page) -> list[dict[str, Any]]:
    """The rendered chat, in page order: seq, sender and text of every line."""
    return await page.eval_on_selector_all(  # type: ignore[no-any-return]
        '[data-testid="chat-line"]',
        """els => els.map(el => ({
            seq: Number(el.dataset.seq),
            sender: el.querySelector('[data-testid="chat-sender"]').textContent,
            text: el.querySelector('[data-testid="chat-text"]').textContent,
        }))""",
    )


__all__ = [
    "MS",
    "PASSWORD",
    "Backend",
    "GatewayProcess",
    "Pages",
    "T",
    "chat_lines",
    "expect",
    "shot",
    "texts",
    "unique",
]
