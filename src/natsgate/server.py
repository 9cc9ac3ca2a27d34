"""The HTTP side of the port (protocol.md §2, deploy.md and security.md): ``/auth/*``, ``/healthz``,
``/metrics``, the browser library, and the front end (built-in static files or, with
``--proxy``, a dev server). ``/ws`` is upgraded before aiohttp sees it (:mod:`.edge`)."""

from __future__ import annotations

import asyncio
import logging
import sysconfig
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import ClientSession, ClientTimeout, web
from nats.js.errors import KeyNotFoundError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .addresses import client_address
from .admin.routes import add_routes as add_admin_routes
from .audit import Kind as AuditKind
from .auth import AuthError, mint_token, token_from, valid_user_id
from .edge import one_request, origin_allowed
from .gateway import Gateway
from .hashpool import PoolFull

log = logging.getLogger("natsgate.http")

GATEWAY_KEY = web.AppKey("gateway", Gateway)
LOGIN_TTL_S = 12 * 3600
COOKIE = "jwt"


# ------------------------------------------------------------------ where files live


def web_dir() -> tuple[Path, Path]:
    """(the browser library's folder, the demo folder): from the source tree when running
    from a checkout (so edits show at once), else from the wheel's ``natsgate_web`` folder.
    The library's folder holds the entry ``natsgate.js`` and its modules ``natsgate/*.js``."""
    root = Path(__file__).resolve().parents[2]
    if (root / "client" / "natsgate.js").is_file():
        return root / "client", root / "demo"
    packaged = Path(sysconfig.get_path("purelib")) / "natsgate_web"
    return packaged, packaged / "demo"


# ------------------------------------------------------------------ /auth


class _Login(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str


BODY_TIMEOUT_S = 10.0  # a login body trickled in slower than this is refused


def _secure(request: web.Request, gw: Gateway) -> bool:
    return gw.config.cookie_secure or request.secure


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _remote(request: web.Request, gw: Gateway) -> str:
    return client_address(
        request.remote or "?",
        request.headers.getall("X-Forwarded-For", []),
        gw.config.trusted_proxies,
    )


def _token(request: web.Request) -> str:
    """The request's token (header, cookie, query: first found wins), or ``""``."""
    return token_from(request.headers, request.cookies, request.query) or ""


def _form_refusal(request: web.Request, gw: Gateway) -> web.Response | None:
    """``/auth/login`` and ``/auth/logout`` change the session cookie: JSON only (a form
    or ``text/plain`` post from another site is not a CORS "simple" request then) and the
    WebSocket's Origin check (security.md: no login CSRF)."""
    if request.content_type != "application/json":
        return _error(415, "send Content-Type: application/json")
    if not origin_allowed(request.headers.get("Origin"), request.host, gw.config.allowed_origins):
        return _error(403, "origin not allowed")
    return None


async def login(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    refused = _form_refusal(request, gw)
    if refused is not None:
        return refused
    if not gw.config.jwt_secret:  # JWKS only: the identity provider does the logins
        return _error(
            404,
            "password login is off: this gateway takes tokens from its identity provider "
            "(JWT_JWKS_URL) and has no JWT_SECRET to sign its own",
        )
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            raw = await request.read()
        body = msgspec.json.decode(raw, type=_Login)
    except TimeoutError:
        return _error(408, "request body too slow")
    except msgspec.DecodeError as exc:
        return _error(400, f"bad request: {exc}")
    user = body.username
    # A name that is no user id shares one key: it can never log in, and a 60 KB name per
    # attempt must not become a 60 KB throttle key
    keys = (f"ip:{_remote(request, gw)}", f"user:{user}" if valid_user_id(user) else "user:")
    # Counted as a failure before the hash is checked, so concurrent attempts cannot pass
    # the limit; forgiven on success.
    who = user if valid_user_id(user) else None  # any other name is not repeated (60 KB?)
    if not gw.throttle.take(*keys):
        gw.metrics.logins.labels("throttled").inc()
        gw.audit.emit(AuditKind.LOGIN, who, _remote(request, gw), outcome="throttled")
        gw.audit.note(
            log,
            "login throttled",
            "login throttled user=%s address=%s",
            who or "-",
            _remote(request, gw),
        )
        return _error(
            429,
            "too many failed logins; try again later",
            **{"Retry-After": str(int(gw.throttle.window_s))},
        )
    if gw.creds is None:
        gw.throttle.forgive(*keys)
        return _error(503, "NATS is not reachable yet", **{"Retry-After": "1"})
    stored: str | None = None
    if valid_user_id(user) and len(body.password) <= 1024:
        try:
            entry = await gw.creds.get(user, validate_keys=False)
            stored = entry.value.decode() if entry.value else None
        except KeyNotFoundError:
            stored = None
        except Exception:  # NATS trouble: the user cannot be checked now
            gw.throttle.forgive(*keys)
            return _error(503, "cannot check passwords right now", **{"Retry-After": "1"})
    # argon2 is slow on purpose: in a bounded pool off the event loop, and the same cost
    # with or without the user
    try:
        ok = await gw.hasher.verify(stored, body.password[:1024])
    except PoolFull:
        gw.throttle.forgive(*keys)
        gw.metrics.logins.labels("busy").inc()
        return _error(503, "too many logins at once; try again", **{"Retry-After": "1"})
    if not ok:
        gw.metrics.logins.labels("failed").inc()
        gw.audit.emit(AuditKind.LOGIN, who, _remote(request, gw), outcome="failed")
        gw.audit.note(
            log, "login failed", "login failed user=%s address=%s", who or "-", _remote(request, gw)
        )
        return _error(401, "wrong user name or password")
    gw.throttle.forgive(*keys)
    gw.metrics.logins.labels("ok").inc()
    gw.audit.emit(AuditKind.LOGIN, user, _remote(request, gw), outcome="ok")
    log.info("login ok user=%s address=%s", user, _remote(request, gw))
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
    """Clears the cookie and revokes the token it held (or the bearer token) until its
    ``exp``, on every gateway: connections opened with it are closed too."""
    gw = request.app[GATEWAY_KEY]
    refused = _form_refusal(request, gw)
    if refused is not None:
        return refused
    revoked = False
    try:
        ident = await gw.verifier.check(_token(request))
    except AuthError:
        ident = None  # nothing valid to revoke: clearing the cookie is all there is
    if ident is not None and ident.jti is not None:
        if not gw.ready.is_set():
            return _error(503, "NATS is not reachable yet", **{"Retry-After": "1"})
        await gw.revocations.revoke_token(ident)
        revoked = True
    gw.audit.emit(
        AuditKind.LOGOUT, ident.user if ident else None, _remote(request, gw), revoked=revoked
    )
    resp = web.json_response({"ok": True, "revoked": revoked})
    resp.del_cookie(COOKIE, path="/", secure=_secure(request, gw), samesite="Lax")
    return resp


async def me(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    try:
        ident = await gw.verifier.check(_token(request))
    except AuthError as exc:
        return _error(401, str(exc))
    if not gw.ready.is_set():
        return _error(503, "NATS is not reachable yet")
    if gw.revocations.revoked(ident):
        return _error(401, "token revoked")
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
_UTF8_TYPES = frozenset(
    ("application/javascript", "application/json", "application/manifest+json", "image/svg+xml")
)


async def utf8_files(request: web.Request, response: web.StreamResponse) -> None:
    """The files the gateway serves (the demo, ``STATIC_DIR``, the library, the admin
    console) say their text is UTF-8: without a charset a browser decodes a page that has
    no ``<meta charset>`` in its locale's encoding ("connecting…" as mojibake). What a
    ``--proxy`` dev server sends is left as it is."""
    if isinstance(response, web.FileResponse) and response.charset is None:
        kind = response.content_type
        if kind.startswith("text/") or kind in _UTF8_TYPES:
            response.charset = "utf-8"


async def library(request: web.Request) -> web.StreamResponse:
    """``/natsgate.js`` and the modules it imports, ``/natsgate/<name>.js``: ES modules as
    they are, no bundler; the entry's ``./natsgate/wire.js`` resolves against its URL."""
    lib, _ = web_dir()
    name = request.match_info.get("name")
    folder = lib / "natsgate" if name else lib
    try:
        path = (folder / (name or "natsgate.js")).resolve()
        path.relative_to(folder.resolve())
    except (ValueError, OSError):
        raise web.HTTPNotFound() from None
    if path.suffix != ".js" or not path.is_file():
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
    """A file under ``STATIC_DIR`` (else the demo's folder): ``index.html`` for a folder, no
    listings, nothing outside the folder, not through ``..`` nor through a symlink."""
    config = request.app[GATEWAY_KEY].config
    root = config.static_dir or web_dir()[1]
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
    app.on_response_prepare.append(one_request)
    app.on_response_prepare.append(utf8_files)
    app.router.add_post("/auth/login", login)
    app.router.add_post("/auth/logout", logout)
    app.router.add_get("/auth/me", me)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    add_admin_routes(app, GATEWAY_KEY)  # /admin (the console) and /admin/api/*
    if gw.config.proxy or gw.config.serve_static:  # the dev server does not have the library
        app.router.add_get("/natsgate.js", library)
        app.router.add_get("/natsgate/{name}", library)
    if gw.config.proxy:
        handler = proxy(gw.config.proxy)
        app.on_cleanup.append(handler.cleanup)
        app.router.add_route("*", "/{path:.*}", handler)
    elif gw.config.serve_static:  # STATIC_DIR=none / --no-static: no files at all
        app.router.add_get("/{path:.*}", static)
    return app
