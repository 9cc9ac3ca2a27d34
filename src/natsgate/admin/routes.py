"""The administrators' HTTP side (protocol.md §7): ``/admin`` (the console's files) and
``/admin/api/*``.

Who: a token (the ``jwt`` cookie of ``/auth/login``, or ``Authorization: Bearer``) of a
user whose capabilities, read now, carry ``"admin": true``: no token 401, any other user
403. Routes that change something take JSON only (415) and pass the Origin check of the
WebSocket (403), as ``/auth/login`` does: a cookie must not let another site disconnect
anyone. Every change is an audit event of kind ``admin``.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from nats.js.errors import KeyNotFoundError

from ..addresses import client_address
from ..audit import Kind as AuditKind
from ..auth import AuthError, Identity, token_from, valid_user_id
from ..capabilities import Capabilities, CapabilitiesError
from ..capstore import ensure_bucket
from ..edge import origin_allowed
from ..gateway import Gateway

MAX_BODY = 64 * 1024
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
    "X-Frame-Options": "DENY",  # nobody frames the console to click its buttons
    # the console's own files only: an injected script or style could act as the admin
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def console_dir() -> Path:
    """The console's files: ``admin/`` of a checkout, else the wheel's copy."""
    root = Path(__file__).resolve().parents[3]
    if (root / "admin" / "index.html").is_file():
        return root / "admin"
    return Path(sysconfig.get_path("purelib")) / "natsgate_web" / "admin"


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = web.json_response({"error": message}, status=status)


class _Disconnect(msgspec.Struct, forbid_unknown_fields=True):
    user: str | None = None
    conn: str | None = None


_key: list[web.AppKey[Gateway]] = []  # the app's key for its gateway (server.py's)


def _gw(request: web.Request) -> Gateway:
    return request.app[_key[0]]


def _remote(request: web.Request, gw: Gateway) -> str:
    return client_address(
        request.remote or "?",
        request.headers.getall("X-Forwarded-For", []),
        gw.config.trusted_proxies,
    )


async def _admin(request: web.Request, *, changes: bool = False) -> Identity:
    """The administrator making this request, or :class:`_Refused`."""
    gw = _gw(request)
    if changes:
        if request.content_type != "application/json":
            raise _Refused(415, "send Content-Type: application/json")
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.host, gw.config.allowed_origins):
            raise _Refused(403, "origin not allowed")
    try:
        ident = await gw.verifier.check(token_from(request.headers, request.cookies, {}) or "")
    except AuthError as exc:
        raise _Refused(401, str(exc)) from None
    if not gw.ready.is_set():
        raise _Refused(503, "NATS is not reachable yet")
    if gw.revocations.revoked(ident):
        raise _Refused(401, "token revoked")
    caps = await gw.capstore.read(ident.user)  # now, not as of some connection's start
    if not caps.admin:
        raise _Refused(403, "administrators only")
    return ident


async def _body(request: web.Request) -> bytes:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise _Refused(413, "body too large")
    return raw


def _user_param(request: web.Request) -> str:
    user = request.match_info["user"]
    if not valid_user_id(user):
        raise _Refused(400, "not a user id")
    return user


def _refusals(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
        except _Refused as r:
            resp = r.response
        resp.headers.update(_HEADERS)
        return resp

    return wrapped


# ------------------------------------------------------------------ the API


@_refusals
async def connections(request: web.Request) -> web.Response:
    await _admin(request)
    conns, gateways, missing = await _gw(request).admin.all_connections()
    return web.json_response({"connections": conns, "gateways": gateways, "missing": missing})


@_refusals
async def disconnect(request: web.Request) -> web.Response:
    ident = await _admin(request, changes=True)
    try:
        body = msgspec.json.decode(await _body(request), type=_Disconnect)
    except msgspec.DecodeError as exc:
        raise _Refused(400, f"bad request: {exc}") from None
    if (body.user is None) == (body.conn is None):
        raise _Refused(400, 'send {"user": ...} or {"conn": ...}')
    gw = _gw(request)
    closed, missing = await gw.admin.disconnect_everywhere(body.user, body.conn)
    target = {"user": body.user} if body.user is not None else {"conn": body.conn}
    gw.audit.emit(
        AuditKind.ADMIN,
        ident.user,
        _remote(request, gw),
        action="disconnect",
        target=target,
        closed=closed,
        missing=missing,
    )
    return web.json_response({"closed": closed, "missing": missing})


async def _caps_bucket(gw: Gateway) -> Any:
    return await ensure_bucket(gw.upstream, gw.config.auth_bucket)


@_refusals
async def get_caps(request: web.Request) -> web.Response:
    await _admin(request)
    user = _user_param(request)
    kv = await _caps_bucket(_gw(request))
    try:
        entry = await kv.get(user, validate_keys=False)
    except KeyNotFoundError:
        return web.json_response({"user": user, "caps": None, "revision": 0})
    raw = entry.value or b""
    try:
        doc = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        doc = raw.decode(errors="replace")  # shown as it is stored, to be fixed
    return web.json_response({"user": user, "caps": doc, "revision": entry.revision or 0})


@_refusals
async def put_caps(request: web.Request) -> web.Response:
    ident = await _admin(request, changes=True)
    user = _user_param(request)
    raw = await _body(request)
    try:
        caps = Capabilities.validate(raw)
    except CapabilitiesError as exc:
        raise _Refused(400, f"capabilities: {exc}") from None
    gw = _gw(request)
    kv = await _caps_bucket(gw)
    revision = await kv.put(user, raw, validate_keys=False)
    gw.audit.emit(
        AuditKind.ADMIN,
        ident.user,
        _remote(request, gw),
        action="caps",
        target={"user": user},
        caps=caps.to_json(),
    )
    return web.json_response({"user": user, "caps": caps.to_json(), "revision": revision})


@_refusals
async def metrics(request: web.Request) -> web.Response:
    """This gateway's Prometheus metrics as JSON, one number per sample."""
    await _admin(request)
    gw = _gw(request)
    gw.metrics.nats_subscriptions.set(len(gw.hub))
    gw.export_traffic()
    samples: dict[str, float] = {}
    for family in gw.metrics.registry.collect():
        for s in family.samples:
            if s.name.endswith(("_created", "_bucket")):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return web.json_response({"gateway": gw.gateway_id, "metrics": samples})


# ------------------------------------------------------------------ the console


async def console(request: web.Request) -> web.StreamResponse:
    """``/admin`` and its files (no listings, nothing outside the folder)."""
    root = console_dir()
    rel = request.match_info.get("path", "") or "index.html"
    try:
        path = (root / rel).resolve()
        path.relative_to(root.resolve())
    except (ValueError, OSError):
        raise web.HTTPNotFound() from None
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=_HEADERS)


async def no_route(request: web.Request) -> web.Response:
    return web.json_response({"error": "no such admin route"}, status=404, headers=_HEADERS)


def add_routes(app: web.Application, key: web.AppKey[Gateway]) -> None:
    if not _key:
        _key.append(key)
    r = app.router
    r.add_get("/admin/api/connections", connections)
    r.add_post("/admin/api/disconnect", disconnect)
    r.add_get("/admin/api/caps/{user}", get_caps)
    r.add_put("/admin/api/caps/{user}", put_caps)
    r.add_get("/admin/api/metrics", metrics)
    r.add_route("*", "/admin/api/{tail:.*}", no_route)  # the gateway's, even with --proxy
    r.add_get("/admin", console)
    r.add_get("/admin/{path:.*}", console)
