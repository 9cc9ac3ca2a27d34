"""Tokens, passwords and login throttling (contract section 2).

Pure apart from the clock: no NATS, no HTTP.  The HTTP handlers in ``server`` call these.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ALGORITHM = "HS256"
MAX_TOKEN_BYTES = 8192
# A user id is a KV key (contract §4) and travels in a NATS header: keep it to KV key syntax.
USER_ID_RE = re.compile(r"^[-_=a-zA-Z0-9@][-_=.a-zA-Z0-9@]{0,127}$")


class AuthError(Exception):
    """The token is missing, malformed, forged, of the wrong algorithm or expired.

    The message is safe to show: it never contains the token.
    """


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    exp: float | None  # seconds since the epoch; None: the token does not expire


def verify_token(token: str, secret: str, *, now: float | None = None) -> Identity:
    """Check signature, algorithm (pinned: ``alg: none`` and others refused) and ``exp``."""
    if not token:
        raise AuthError("no token")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError("token too long")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub"], "verify_aud": False},
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    user = claims.get("sub")
    if not isinstance(user, str) or not USER_ID_RE.match(user):
        raise AuthError("token subject is not a valid user id")
    exp = claims.get("exp")
    exp_f = float(exp) if isinstance(exp, int | float) else None
    if exp_f is not None and exp_f <= (time.time() if now is None else now):
        raise AuthError("token expired")
    return Identity(user=user, exp=exp_f)


def mint_token(user: str, secret: str, ttl_s: float) -> str:
    """A token for ``user`` valid ``ttl_s`` seconds (``natsgate token``, ``/auth/login``)."""
    if not USER_ID_RE.match(user):
        raise ValueError(f"invalid user id {user!r}")
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + int(ttl_s)}, secret, ALGORITHM)


def token_from(
    headers: Mapping[str, str], cookies: Mapping[str, str], query: Mapping[str, str]
) -> str | None:
    """First found wins: bearer header, cookie ``jwt``, query ``token`` (contract §2)."""
    header = headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return cookies.get("jwt") or query.get("token") or None


def identify(
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str],
    secret: str,
) -> Identity:
    """Who a request is (the upgrade, ``/auth/me``), or :class:`AuthError`."""
    token = token_from(headers, cookies, query)
    if token is None:
        raise AuthError("no token")
    return verify_token(token, secret)


class Passwords:
    """argon2id hashes with an optional pepper (``WEB_HASH_SALT``)."""

    def __init__(self, pepper: str = "") -> None:
        self._hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self._pepper = pepper
        # Verified against when the user does not exist, so both paths cost the same.
        self._dummy = self._hasher.hash(pepper + "natsgate-no-such-user")

    def hash(self, password: str) -> str:
        return self._hasher.hash(self._pepper + password)

    def verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, self._pepper + password) and (
                stored is not None
            )
        except (VerificationError, InvalidHashError):
            return False


class Throttle:
    """At most ``limit`` failures per ``window_s`` for one key (an address or a user name);
    past that, refuse until the window has passed (contract §2: 5 per 60 s, then 429)."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self._max_keys = max_keys
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        q = self._fails.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._fails[key]
            return None
        return q

    def blocked(self, *keys: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return any((q := self._recent(k, now)) is not None and len(q) >= self.limit for k in keys)

    def fail(self, *keys: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._fails) >= self._max_keys:  # bound memory under a spray of addresses
            for k in list(self._fails)[: self._max_keys // 10]:
                self._recent(k, now)
        for k in keys:
            self._fails.setdefault(k, deque()).append(now)

    def clear(self, key: str) -> None:
        self._fails.pop(key, None)
