"""The listening port: WebSocket upgrades at ``/ws`` are ours, every other request is
aiohttp's (``/auth/*``, ``/healthz``, ``/metrics``, static files, the dev proxy).

Why not aiohttp's WebSocket for ``/ws`` too: an idle connection there costs ~11 KiB of
HTTP parser, request and reader state that lives as long as the socket; after our own
upgrade a connection is a :class:`~natsgate.wsconn.WsConnection` of a few slots.

Each new connection starts as a :class:`Front`, which reads the whole request head, within
``HEAD_TIMEOUT_S`` and ``MAX_HEAD`` bytes whatever the path (a peer trickling header lines
is cut, security.md): ``GET /ws`` is upgraded here, anything else is handed, with
the bytes read so far, to aiohttp's protocol for that one request. aiohttp then closes the
connection after its response (no keep-alive, see :func:`one_request`), so every request
head on this port passes through a ``Front``, and ``/ws`` has one way in.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

from aiohttp import web

from .addresses import client_address
from .audit import Kind as AuditKind
from .auth import AuthError, Identity, UnknownKey
from .deflate import compression
from .gateway import Gateway
from .handshake import (
    MAX_HEAD,
    HeadError,
    check_upgrade,
    negotiate_deflate,
    parse_head,
    refusal,
    routes_here,
    switching,
)
from .session import Session
from .wsconn import WsConnection

log = logging.getLogger("natsgate.http")

HEAD_TIMEOUT_S = 10.0  # a connection that has not sent a whole request head by then goes
BACKLOG = 128
# a socket option; Linux's number (25) where Python's socket module does not name it
TCP_NOTSENT_LOWAT: int | None = getattr(
    socket, "TCP_NOTSENT_LOWAT", 25 if sys.platform.startswith("linux") else None
)


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """protocol.md §2: a present Origin must be allowed; by default, the request's own host.
    Without this, cookie auth is open to cross-site WebSocket hijacking."""
    if origin is None:
        return True  # not a browser: nothing to hijack
    origin = origin.strip().rstrip("/").lower()
    if allowed:
        return "*" in allowed or origin in allowed
    netloc = urlsplit(origin).netloc
    return bool(host) and netloc == (host or "").lower()


def admit(
    gw: Gateway,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str],
    host: str | None,
    remote: str,
    *,
    refetched: bool = False,
) -> Identity:
    """Who may open a WebSocket (protocol.md §2), or :class:`HeadError` with the status.

    :class:`UnknownKey` when the token names a key the identity provider's set may hold
    after a refetch (not yet ``refetched``, and one is allowed now): the caller fetches
    and asks again."""
    cfg = gw.config
    if gw.stopping:
        raise HeadError(503, "gateway is stopping")
    if not origin_allowed(headers.get("Origin"), host, cfg.allowed_origins):
        raise HeadError(403, "origin not allowed")
    try:
        ident = gw.verifier.identify(headers, cookies, query)
    except UnknownKey as exc:
        if refetched or gw.keys is None or not gw.keys.may_refetch():
            raise HeadError(401, str(exc)) from None
        raise
    except AuthError as exc:
        raise HeadError(401, str(exc)) from None
    if not gw.ready.is_set() or not gw.upstream.connected:
        raise HeadError(503, "NATS is not reachable yet")
    if gw.revocations.revoked(ident):
        raise HeadError(401, "token revoked")
    if len(gw.sessions) >= gw.max_conns:
        raise HeadError(503, "this gateway is full (open-file limit); reconnect elsewhere")
    if cfg.max_conns_per_ip and gw.conns_by_ip[remote] >= cfg.max_conns_per_ip:
        raise HeadError(429, "too many connections from this address")
    if cfg.max_conns_per_user and len(gw.by_user.get(ident.user, ())) >= cfg.max_conns_per_user:
        raise HeadError(429, "too many connections of this user")
    return ident


async def one_request(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp's ``on_response_prepare``: close the connection after this response, so
    that the next request head on it is read by a :class:`Front` again (bounded in time
    and size) rather than by aiohttp, which would wait for it without a limit."""
    response.force_close()
    response.headers["Connection"] = "close"  # the hook runs after aiohttp wrote its own


def bound_unsent(t: asyncio.BaseTransport, limit: int) -> None:
    """Let the kernel take at most ``limit`` bytes not yet sent on this socket (Linux,
    macOS: ``TCP_NOTSENT_LOWAT``); past them, send() says EAGAIN and the rest waits in
    the connection's outbox, where a stalled client is seen (protocol.md §6).

    Without it Linux grows the send buffer up to ``net.ipv4.tcp_wmem``'s maximum (4 MiB
    by default): kernel memory per stalled client on top of ``OUTBOX_BYTES``, and a
    verdict that comes only after it filled. Bytes in flight are not counted, so the
    buffer is still autotuned for them (unlike ``SO_SNDBUF``, which fixes its size).
    See docs/benchmarks.md, "A stalled client's kernel buffer"."""
    sock = t.get_extra_info("socket")
    if not limit or TCP_NOTSENT_LOWAT is None or sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, limit)
    except OSError as exc:  # not TCP (a Unix socket), or a kernel without the option
        log.debug("TCP_NOTSENT_LOWAT not set: %s", exc)


class Front(asyncio.Protocol):
    """A new connection until its first request line says where it goes."""

    __slots__ = ("_edge", "_head", "_timer", "_transport")

    def __init__(self, edge: Edge) -> None:
        self._edge = edge
        self._head = bytearray()  # grows in place: a trickled head is not copied per read
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, t.abort)
        self._edge.fronts.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def _done(self) -> None:
        self._edge.fronts.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def cut(self) -> None:
        """The gateway is stopping and this connection has not said what it wants yet."""
        self._done()
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        head = self._head
        start = max(0, len(head) - 3)
        head += data
        end = head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(head) >= MAX_HEAD:
                self._refuse(HeadError(431, "request head larger than 16 KiB"))
            return
        if end > MAX_HEAD:
            self._refuse(HeadError(431, "request head larger than 16 KiB"))
            return
        if not routes_here(bytes(head[: head.find(b"\r\n")])):
            self._hand_to_aiohttp(bytes(head))
            return
        self._upgrade(bytes(head[:end]), bytes(head[end + 4 :]))

    def _hand_to_aiohttp(self, data: bytes) -> None:
        self._done()
        t = self._transport
        assert t is not None
        proto = self._edge.http()
        t.set_protocol(proto)
        proto.connection_made(t)
        proto.data_received(data)

    def _refuse(self, err: HeadError, remote: str | None = None) -> None:
        self._done()
        t = self._transport
        assert t is not None
        gw = self._edge.gw
        if remote is None:
            peer = t.get_extra_info("peername")
            remote = str(peer[0]) if peer else "?"
        gw.audit.note(
            log,
            "upgrade refused",
            "upgrade refused status=%d reason=%r address=%s",
            err.status,
            err.reason,
            remote,
        )
        gw.metrics.refused.labels(str(err.status)).inc()
        t.write(refusal(err.status, err.reason))
        t.close()

    def _upgrade(self, raw: bytes, rest: bytes, *, refetched: bool = False) -> None:
        self._done()
        gw = self._edge.gw
        t = self._transport
        assert t is not None
        peer = t.get_extra_info("peername")
        remote = str(peer[0]) if peer else "?"
        try:
            head = parse_head(raw)
            remote = client_address(
                str(peer[0]) if peer else "?",
                head.headers.getall("X-Forwarded-For", []),
                gw.config.trusted_proxies,
            )
            ident = admit(
                gw,
                head.headers,
                head.cookies,
                head.query,
                head.headers.get("Host"),
                remote,
                refetched=refetched,
            )
            accept = check_upgrade(head)
        except HeadError as err:
            gw.audit.emit(
                AuditKind.UPGRADE_REFUSED, None, remote, status=err.status, reason=err.reason
            )
            self._refuse(err, remote)
            return
        except UnknownKey:  # the identity provider may have a new key: fetch, then again
            t.pause_reading()
            gw.track(asyncio.create_task(self._after_refetch(raw, rest), name="upgrade-keys"))
            return
        cfg = gw.config
        agreed = negotiate_deflate(head.headers, cfg.compression)
        bound_unsent(t, cfg.notsent_lowat_bytes)
        t.write(switching(accept, agreed))
        deflate = compression(agreed, cfg.compression, cfg.compression_min_bytes)
        conn = WsConnection(t, cfg.max_frame_bytes, deflate)
        t.set_protocol(conn)
        session = Session(gw, conn, ident, remote)
        conn.session = session
        gw.attach(session)
        session.begin()
        if rest:  # frames sent right behind the head (the client did not wait for 101)
            conn.data_received(rest)

    async def _after_refetch(self, raw: bytes, rest: bytes) -> None:
        """The upgrade again once the key set is fetched (one fetch shared by all)."""
        t = self._transport
        assert t is not None and self._edge.gw.keys is not None
        try:
            await self._edge.gw.keys.refetch()
        except asyncio.CancelledError:
            t.abort()  # the gateway is stopping
            raise
        if t.is_closing():
            return
        t.resume_reading()
        self._upgrade(raw, rest, refetched=True)


class Edge:
    """The gateway's one port."""

    def __init__(self, gw: Gateway, app: web.Application) -> None:
        self.gw = gw
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        self._server: asyncio.Server | None = None
        self.fronts: set[Front] = set()  # connections still sending their request head
        self.port = 0

    def http(self) -> asyncio.Protocol:
        """aiohttp's protocol for one connection (its server tracks it for shutdown)."""
        server = self._runner.server
        assert server is not None
        return server()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen; the port actually bound (``port`` 0 picks a free one)."""
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Front(self),
            host or None,
            port,
            backlog=BACKLOG,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
        for front in list(self.fronts):
            front.cut()

    async def cleanup(self) -> None:
        """After the gateway has closed its sessions: aiohttp's connections and app."""
        self.stop_listening()
        await self._runner.cleanup()
