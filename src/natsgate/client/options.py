"""What a caller hands the client: its keyword options, and how the URL and the token
given are read (pure; no I/O here)."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import TypedDict
from urllib.parse import urlsplit, urlunsplit

TokenProvider = Callable[[], Awaitable[str | None]]


class ClientOptions(TypedDict, total=False):
    """The keyword options of ``Client`` (and :func:`natsgate.client.connect`); their
    defaults are in ``Connection.__init__`` alone."""

    token: str | None
    token_provider: TokenProvider | None
    headers: dict[str, str] | None
    min_backoff: float
    max_backoff: float
    stable_after: float
    connect_timeout: float
    heartbeat: float | None
    timeout_grace: float
    refresh_before: float | None


def token_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying (the gateway verifies)."""
    if not token or token.count(".") != 2:
        return None
    part = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


def gateway_url(url: str) -> str:
    """``http(s)`` becomes ``ws(s)``; a URL without a path gets the gateway's ``/ws``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, parts.fragment))
