"""The HTTP edge (contract sections 1, 2, 6): ``/ws``, ``/auth/*``, ``/healthz``,
``/metrics``, the browser library, and the front end (built-in static files or, with
``--proxy``, a dev server)."""

from __future__ import annotations

import asyncio
import logging
import sysconfig
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import ClientSession, ClientTimeout, WSMsgType, web
from nats.js.errors import KeyNotFoundError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .auth import AuthError, identify, mint_token
from .edge import admit
from .errors import CloseCode
from .gateway import Gateway
from .handshake import HeadError
from .session import Session
from .wsframe import OP_TEXT, header

log = logging.getLogger("natsgate.http")

GATEWAY_KEY = web.AppKey("gateway", Gateway)
LOGIN_TTL_S = 12 * 3600
COOKIE = "jwt"


# ------------------------------------------------------------------ where files live


def web_dir() -> tuple[Path, Path]:
    """(the browser library, the demo folder): from the source tree when running from a
    checkout (so edits show at once), else from the wheel's ``natsgate_web`` folder."""
    root = Path(__file__).resolve().parents[2]
    if (root / "client" / "natsgate.js").is_file():
        return root / "client" / "natsgate.js", root / "demo"
    packaged = Path(sysconfig.get_path("purelib")) / "natsgate_web"
    return packaged / "natsgate.js", packaged / "demo"


# ------------------------------------------------------------------ the socket


class AiohttpTransport:
    """The session's view of an aiohttp WebSocket.

    Text frames are written straight to the asyncio transport (server frames are not
    masked, and compression is off): synchronous, so the flusher can write to every ready
    socket in one pass without a task per connection. Pings and the close handshake still
    go through aiohttp, which writes whole frames to the same transport.
    """

    __slots__ = ("_protocol", "_transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self._transport = request.transport
        self._protocol = request.protocol

    def write(self, frame: bytes) -> bool:
        t = self._transport
        if t is None or t.is_closing():
            raise ConnectionResetError("the socket is closed")
        t.write(header(OP_TEXT, len(frame)) + frame)
        return not self._protocol.writing_paused

    async def drained(self) -> None:
        await self._protocol._drain_helper()

    async def ping(self) -> None:
        await self.ws.ping()

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])

    def pause_reading(self) -> None:
        """Not needed: the read loop awaits each frame, so aiohttp's own reader limits."""

    def resume_reading(self) -> None:
        """See :meth:`pause_reading`."""


async def websocket(request: web.Request) -> web.StreamResponse:
    """``/ws`` on a connection that aiohttp already serves (a keep-alive connection that
    carried another request first); fresh connections are upgraded by :mod:`.edge`."""
    gw = request.app[GATEWAY_KEY]
    remote = request.remote or "?"
    try:
        ident = admit(gw, request.headers, request.cookies, request.query, request.host, remote)
    except HeadError as err:
        gw.metrics.refused.labels(str(err.status)).inc()
        return web.json_response({"error": err.reason}, status=err.status)
    ws = web.WebSocketResponse(
        max_msg_size=gw.config.max_frame_bytes, autoping=False, compress=False, decode_text=False
    )
    await ws.prepare(request)
    session = Session(gw, AiohttpTransport(ws, request), ident, remote)
    gw.attach(session)
    try:
        await session.open()
        await _read(ws, session, gw)
    except Exception:
        log.exception("connection of %s failed", ident.user)
        await session.close(CloseCode.INTERNAL)
    finally:
        session.disconnected()
        await session.wait_closed()
    return ws


async def _read(ws: web.WebSocketResponse, session: Session, gw: Gateway) -> None:
    frames_in, bytes_in = gw.metrics.frames_in, gw.metrics.bytes_in
    while True:
        msg = await ws.receive()
        t = msg.type
        if t is WSMsgType.TEXT or t is WSMsgType.BINARY:
            frames_in.inc()
            bytes_in.inc(len(msg.data))
            await session.on_frame(msg.data)
        elif t is WSMsgType.PING:
            session.seen()
            await ws.pong(msg.data)
        elif t is WSMsgType.PONG:
            session.seen()
        else:  # CLOSE, CLOSING, CLOSED, ERROR (e.g. frame over MAX_FRAME_BYTES: 1009)
            if t is WSMsgType.ERROR:
                log.info("socket of %s: %s", session.user, ws.exception())
            return


# ------------------------------------------------------------------ /auth


class _Login(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str


def _secure(request: web.Request, gw: Gateway) -> bool:
    return gw.config.cookie_secure or request.secure


async def login(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    try:
        body = msgspec.json.decode(await request.read(), type=_Login)
    except msgspec.DecodeError as exc:
        return web.json_response({"error": f"bad request: {exc}"}, status=400)
    user = body.username
    keys = (f"ip:{request.remote}", f"user:{user}")
    if gw.throttle.blocked(*keys):
        gw.metrics.logins.labels("throttled").inc()
        return web.json_response(
            {"error": "too many failed logins; try again later"},
            status=429,
            headers={"Retry-After": str(int(gw.throttle.window_s))},
        )
    if gw.creds is None:
        return web.json_response({"error": "NATS is not reachable yet"}, status=503)
    stored: str | None = None
    if len(user) <= 128 and len(body.password) <= 1024:
        try:
            entry = await gw.creds.get(user)
            stored = entry.value.decode() if entry.value else None
        except KeyNotFoundError:
            stored = None
        except Exception:  # invalid key syntax and the like: the user does not exist
            stored = None
    # argon2 is slow on purpose: off the event loop, and the same cost with or without user
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(None, gw.passwords.verify, stored, body.password[:1024])
    if not ok:
        gw.throttle.fail(*keys)
        gw.metrics.logins.labels("failed").inc()
        return web.json_response({"error": "wrong user name or password"}, status=401)
    gw.metrics.logins.labels("ok").inc()
    resp = web.json_response({"user": user})
    resp.set_cookie(
        COOKIE,
        mint_token(user, gw.config.jwt_secret, LOGIN_TTL_S),
        max_age=LOGIN_TTL_S,
        httponly=True,
        samesite="Lax",
        secure=_secure(request, gw),
        path="/",
    )
    return resp


async def logout(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    resp = web.json_response({"ok": True})
    resp.del_cookie(COOKIE, path="/", secure=_secure(request, gw), samesite="Lax")
    return resp


async def me(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    try:
        ident = identify(request.headers, request.cookies, request.query, gw.config.jwt_secret)
    except AuthError as exc:
        return web.json_response({"error": str(exc)}, status=401)
    if not gw.ready.is_set():
        return web.json_response({"error": "NATS is not reachable yet"}, status=503)
    caps = await gw.capstore.read(ident.user)
    return web.json_response({"user": ident.user, "caps": caps.to_json()})


# ------------------------------------------------------------------ operations


async def healthz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    if gw.ready.is_set() and gw.upstream.connected and not gw.stopping:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "unavailable"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    gw.metrics.nats_subscriptions.set(len(gw.hub))
    gw.export_traffic()
    body = generate_latest(gw.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ------------------------------------------------------------------ front end

_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


async def library(request: web.Request) -> web.StreamResponse:
    path, _ = web_dir()
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(
        path,
        headers={
            **_SECURITY_HEADERS,
            "Content-Type": "text/javascript; charset=utf-8",
            "Cache-Control": "no-cache",
        },
    )


async def static(request: web.Request) -> web.StreamResponse:
    _, root = web_dir()
    rel = request.match_info.get("path", "") or "index.html"
    try:
        target = (root / rel).resolve()
        target.relative_to(root.resolve())
    except (ValueError, OSError):
        raise web.HTTPNotFound() from None
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(target, headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})


_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}


def proxy(upstream: str) -> Any:
    """Forward everything else to the front-end dev server (``--proxy``)."""
    client: dict[str, ClientSession] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        if "s" not in client:
            client["s"] = ClientSession(timeout=ClientTimeout(total=60), auto_decompress=False)
        url = upstream.rstrip("/") + request.rel_url.path_qs
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        try:
            async with client["s"].request(
                request.method,
                url,
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as up:
                resp = web.StreamResponse(
                    status=up.status,
                    headers={k: v for k, v in up.headers.items() if k.lower() not in _HOP},
                )
                if "Content-Encoding" in up.headers:
                    resp.headers["Content-Encoding"] = up.headers["Content-Encoding"]
                await resp.prepare(request)
                async for chunk in up.content.iter_chunked(65536):
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except OSError as exc:
            return web.Response(
                status=502, text=f"dev server at {upstream} is not reachable: {exc}"
            )

    async def cleanup(app: web.Application) -> None:
        if "s" in client:
            await client["s"].close()

    handler.cleanup = cleanup  # type: ignore[attr-defined]
    return handler


def make_app(gw: Gateway) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[GATEWAY_KEY] = gw
    app.router.add_get("/ws", websocket)
    app.router.add_post("/auth/login", login)
    app.router.add_post("/auth/logout", logout)
    app.router.add_get("/auth/me", me)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if gw.config.proxy:
        handler = proxy(gw.config.proxy)
        app.on_cleanup.append(handler.cleanup)
        app.router.add_route("*", "/{path:.*}", handler)
    else:
        app.router.add_get("/natsgate.js", library)
        app.router.add_get("/{path:.*}", static)
    return app
