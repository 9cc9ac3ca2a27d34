"""Tokens, passwords and login throttling.

Pure apart from the clock: no NATS, no HTTP.  The HTTP handlers in ``server`` call these.
The identity provider's key set is fetched by :mod:`.jwks`; :class:`Verifier` only looks
keys up in it (and asks it to refetch when a token names a key it does not hold).
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from jwt import PyJWK

ALGORITHM = "HS256"
# What an identity provider's key may sign with: asymmetric only. Each key is pinned to its
# own algorithm (from its ``alg``, else its type and curve); the token's ``alg`` never picks.
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_TOKEN_BYTES = 8192
# A user id is one subject token (it names KV keys and subjects such as ``notify.<user>``)
# and travels in a NATS header: 1-128 characters, no '.', '*', '>', whitespace or control
# character (security.md). A '.' would let user "alice.x" inside "user.alice.>".
USER_ID_RULE = "1-128 characters, no '.', '*', '>', whitespace or control character"
USER_ID_RE = re.compile(r"^[^.*>\s\x00-\x1f\x7f-\x9f]{1,128}$")


class AuthError(Exception):
    """The token is missing, malformed, forged, of the wrong algorithm, expired or revoked.

    The message is safe to show: it never contains the token.
    """


class UnknownKey(AuthError):
    """The token names a key (``kid``) that the identity provider's set does not hold."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    exp: float  # seconds since the epoch
    iat: float | None = None  # when it was issued, if the token says
    jti: str | None = None  # the token's id, if it has one (ours always do)


def valid_user_id(user: object) -> bool:
    return isinstance(user, str) and USER_ID_RE.match(user) is not None


def verify_token(token: str, secret: str, *, now: float | None = None) -> Identity:
    """Check signature, algorithm (pinned: ``alg: none`` and others refused), ``exp``
    (required, a number) and the user id."""
    if not token:
        raise AuthError("no token")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError("token too long")
    if not secret:  # no JWT_SECRET (a JWKS-only gateway): no HS256 token is valid
        raise AuthError("invalid token")
    claims = _decode(
        token, secret, ALGORITHM, options={"require": ["sub", "exp"], "verify_aud": False}
    )
    return _identity(claims, "sub", now)


def _decode(token: str, key: Any, algorithm: str, **checks: Any) -> dict[str, Any]:
    """PyJWT's decode with one algorithm and no leeway; its errors as the reasons a client
    is told (one table for HS256 tokens and the identity provider's)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[algorithm], leeway=0, **checks)
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidIssuerError:
        raise AuthError("token issuer is not accepted") from None
    except jwt.InvalidAudienceError:
        raise AuthError("token audience is not accepted") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    return claims


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class Keys(Protocol):
    """The identity provider's key set, as :class:`Verifier` sees it (the real one is
    :class:`~natsgate.jwks.KeySet`)."""

    def find(self, kid: str | None) -> PyJWK | None: ...
    def holds(self, kid: str) -> bool: ...
    async def refetch(self) -> bool: ...  # False: not now (fetched within the last 30 s)


@dataclass(frozen=True, slots=True)
class Verifier:
    """Every token check of the gateway: HS256 with ``secret`` (tokens it mints, and your
    backend's), and, with ``keys``, tokens signed by the identity provider's keys.

    The two never mix: an HS256 token is checked with the secret alone (and refused when
    it names a key of the provider: algorithm confusion), an asymmetric one with the key
    its ``kid`` names, pinned to that key's algorithm; any other ``alg`` (``none``,
    HS384...) is refused. ``issuer``, ``audience`` and ``user_claim`` apply to the
    provider's tokens; HS256 tokens carry the user in ``sub``."""

    secret: str = ""
    keys: Keys | None = None
    issuer: str | None = None
    audience: str | None = None
    user_claim: str = "sub"

    def verify(self, token: str, *, now: float | None = None) -> Identity:
        """The token's identity, or :class:`AuthError` (:class:`UnknownKey` when a
        refetch of the key set might help: see :meth:`check`)."""
        if not token:
            raise AuthError("no token")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("invalid token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("invalid token")
        if alg == ALGORITHM:
            if kid is not None and self.keys is not None and self.keys.holds(kid):
                raise AuthError("an HS256 token may not name a key of the identity provider")
            return verify_token(token, self.secret, now=now)
        if alg not in ASYMMETRIC or self.keys is None:
            raise AuthError("invalid token")
        key = self.keys.find(kid)
        if key is None:
            raise UnknownKey("unknown signing key")
        return self._provider_token(token, key, now)

    def _provider_token(self, token: str, key: PyJWK, now: float | None) -> Identity:
        claims = _decode(
            token,
            key.key,
            key.algorithm_name,  # the key's, whatever the header says
            issuer=self.issuer,
            audience=self.audience,
            options={
                "require": ["exp"],
                "verify_aud": self.audience is not None,
                "verify_iss": self.issuer is not None,
                "verify_iat": False,  # the provider's clock may run ahead of ours
            },
        )
        return _identity(claims, self.user_claim, now)

    async def check(self, token: str) -> Identity:
        """:meth:`verify`, refetching the key set once for an unknown ``kid`` (at most one
        fetch per 30 s for everyone: a flood of made-up kids costs nothing more)."""
        try:
            return self.verify(token)
        except UnknownKey:
            if self.keys is None or not await self.keys.refetch():
                raise
        return self.verify(token)

    def identify(
        self, headers: Mapping[str, str], cookies: Mapping[str, str], query: Mapping[str, str]
    ) -> Identity:
        """Who a request is, from its token (first found wins, see :func:`token_from`)."""
        return self.verify(token_from(headers, cookies, query) or "")


def _identity(claims: Mapping[str, Any], user_claim: str, now: float | None) -> Identity:
    user = claims.get(user_claim)
    if not valid_user_id(user):
        raise AuthError(f"token {user_claim!r} is not a valid user id")
    assert isinstance(user, str)
    exp, iat, jti = _number(claims.get("exp")), _number(claims.get("iat")), claims.get("jti")
    if exp is None:
        raise AuthError("token exp is not a number")
    if exp <= (time.time() if now is None else now):
        raise AuthError("token expired")
    return Identity(user=user, exp=exp, iat=iat, jti=jti if isinstance(jti, str) and jti else None)


def mint_token(user: str, secret: str, ttl_s: float) -> str:
    """A token for ``user`` valid ``ttl_s`` seconds (``natsgate token``, ``/auth/login``).
    It carries a ``jti`` so that it can be revoked alone (``/auth/logout``), and ``iat`` in
    milliseconds so that ``natsgate user revoke`` can tell tokens issued after it."""
    if not valid_user_id(user):
        raise ValueError(f"invalid user id {user!r}")
    now = time.time()
    claims = {
        "sub": user,
        # milliseconds, rounded down: never after the clock that checks it (PyJWT refuses
        # an iat ahead of its whole second; x.9996 rounded up was refused for 0.4 ms)
        "iat": math.floor(now * 1000) / 1000,
        "exp": int(now + ttl_s),
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, secret, ALGORITHM)


def token_from(
    headers: Mapping[str, str], cookies: Mapping[str, str], query: Mapping[str, str]
) -> str | None:
    """First found wins: bearer header, cookie ``jwt``, query ``token`` (protocol.md §2)."""
    header = headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return cookies.get("jwt") or query.get("token") or None


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
    past that, refuse until the window has passed (protocol.md §2: 5 per 60 s, then 429).

    An attempt is counted when it starts (:meth:`take`), before its password is checked,
    and taken back if it succeeds (:meth:`forgive`): concurrent attempts cannot all pass
    the check before the first failure is recorded (security.md)."""

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

    def take(self, *keys: str, now: float | None = None) -> bool:
        """Count an attempt against every key, unless one of them is at the limit (then
        nothing is counted and the answer is False)."""
        now = time.monotonic() if now is None else now
        if self.blocked(*keys, now=now):
            return False
        self.fail(*keys, now=now)
        return True

    def forgive(self, *keys: str) -> None:
        """Take back the newest attempt of each key (it succeeded, or was never checked)."""
        for k in keys:
            q = self._fails.get(k)
            if q:
                q.pop()
                if not q:
                    del self._fails[k]

    def fail(self, *keys: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._fails) >= self._max_keys:  # bound memory under a spray of addresses
            for k in list(self._fails)[: self._max_keys // 10]:
                self._recent(k, now)
        for k in keys:
            self._fails.setdefault(k, deque()).append(now)

    def clear(self, key: str) -> None:
        self._fails.pop(key, None)
