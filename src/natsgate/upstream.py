"""The gateway's own NATS connection: connect (retrying until NATS is there), follow its
reconnects, and tell interested parts when it comes back.

One connection per gateway process; every session shares it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client, RawCredentials
from nats.js import JetStreamContext

from .config import Config
from .directsub import Client as DirectClient
from .metrics import Metrics

log = logging.getLogger("natsgate.nats")

Listener = Callable[[], Awaitable[None]]
WARN_EVERY_S = 2.0


def _creds(jwt: str, seed: str) -> RawCredentials:
    """A .creds document from NATS_JWT + NATS_NKEY, in the format nats-py reads."""
    return RawCredentials(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
    )


async def flush(nc: Client, within: float = 5.0) -> None:
    """Return once the NATS server has processed everything sent so far.

    nats-py's own ``flush()`` writes its PING straight to the socket, ahead of the
    commands still waiting in its pending buffer (nats-py 2.16), so the PONG can come back
    before a SUB or PUB queued just before it was even sent: a subscription acknowledged as
    live missed the first message in ~3% of tries here. Have nats-py's flusher write the
    pending buffer first (it resolves the future it takes from its queue), then PING.
    """
    queue = getattr(nc, "_flush_queue", None)
    if nc.is_connected and queue is not None:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await queue.put(written)  # nats-py's flusher writes the pending buffer, then sets it
        async with asyncio.timeout(within):
            await written
    await nc.flush(timeout=within)  # type: ignore[arg-type]


def credentials(c: Config) -> dict[str, Any]:
    """nats-py options for NATS_CREDS, or NATS_JWT + NATS_NKEY (deploy.md), or
    NATS_USER + NATS_PASSWORD (the embedded server's one user, security.md)."""
    if c.nats_creds:
        return {"user_credentials": str(c.nats_creds)}
    if c.nats_jwt and c.nats_nkey:
        return {"user_credentials": _creds(c.nats_jwt, c.nats_nkey)}
    if c.nats_user and c.nats_password:
        return {"user": c.nats_user, "password": c.nats_password}
    return {}


class Upstream:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.nc: DirectClient = DirectClient()
        self._js: JetStreamContext | None = None
        self._ready = asyncio.Event()
        self._on_reconnect: list[Listener] = []
        self._on_disconnect: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_warning = -WARN_EVERY_S

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("NATS is not connected yet")
        return self._js

    def on_reconnect(self, listener: Listener) -> None:
        self._on_reconnect.append(listener)

    def on_disconnect(self, listener: Callable[[], None]) -> None:
        self._on_disconnect.append(listener)

    def start(self) -> None:
        """Connect in the background; :meth:`wait_ready` waits for the first success."""
        self._task = asyncio.create_task(self._connect_forever(), name="nats-connect")

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _connect_forever(self) -> None:
        delay = 0.25
        attempt = 0
        while not self._closing:
            attempt += 1
            try:
                await self._connect()
            except Exception as exc:  # any failure to reach NATS: log it, retry
                log.warning(
                    "cannot connect to NATS at %s (attempt %d): %s; retrying in %.1fs",
                    self.config.nats_url,
                    attempt,
                    exc or type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            url = self.nc.connected_url
            log.info("connected to NATS at %s", url.netloc if url else "?")
            self.metrics.nats_connected.set(1)
            self._js = self.nc.jetstream()
            self._ready.set()
            return

    async def connect_once(self) -> None:
        """One connection attempt with the configured credentials and no retries, for
        short-lived commands (``natsgate user``)."""
        c = self.config
        nc = DirectClient()
        await nc.connect(
            servers=list(c.nats_urls),
            name=f"{c.nats_name}-cli",
            connect_timeout=3,
            allow_reconnect=False,
            # nats-py 2.16 retries a refused server forever with 0 (it only counts above
            # 0); with 1 it tries twice and gives up, so a server that is down fails fast
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,  # type: ignore[arg-type]  # seconds; nats-py says int
            **credentials(c),
        )
        self.nc = nc
        self._js = self.nc.jetstream()
        self._ready.set()

    async def _connect(self) -> None:
        c = self.config
        opts = credentials(c)
        nc = DirectClient()
        await nc.connect(
            servers=list(c.nats_urls),
            name=c.nats_name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; nats-py says int
            connect_timeout=2,
            ping_interval=5,
            max_outstanding_pings=3,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            closed_cb=self._closed,
            **opts,
        )
        self.nc = nc

    async def _disconnected(self) -> None:
        if self._closing:
            return
        log.warning("NATS connection lost; reconnecting")
        self.metrics.nats_connected.set(0)
        for listener in self._on_disconnect:
            listener()

    async def _reconnected(self) -> None:
        url = self.nc.connected_url
        log.info("NATS reconnected to %s", url.netloc if url else "?")
        self.metrics.nats_connected.set(1)
        self.metrics.nats_reconnects.inc()
        for listener in list(self._on_reconnect):
            try:
                await listener()
            except Exception:
                log.exception("reconnect listener failed")

    async def _error(self, exc: Exception) -> None:
        """nats-py retries on its own, at start-up too; say what fails, naming the URL, at
        most every few seconds."""
        if self._closing:
            return
        if self.nc.is_connected:
            log.debug("NATS client error: %r", exc)
            return
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "cannot reach NATS at %s: %s; retrying",
                self.config.nats_url,
                str(exc) or type(exc).__name__,
            )

    async def _closed(self) -> None:
        self.metrics.nats_connected.set(0)

    async def close(self) -> None:
        """Drain: deliver what is in flight, then disconnect."""
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()  # still connecting: stop trying
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.nc.is_connected:
            try:
                async with asyncio.timeout(5):
                    await self.nc.drain()
            except Exception as exc:
                log.debug("NATS drain: %r", exc)
        if self._ready.is_set() and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()
