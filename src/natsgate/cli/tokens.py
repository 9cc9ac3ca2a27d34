"""``natsgate token ID`` prints a JWT; ``natsgate token --verify TOKEN`` says what one
claims and whether this gateway's secret takes it now. No connection to NATS: the
revocations are not checked here (``natsgate user show`` lists a user's)."""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from ..auth import USER_ID_RE, USER_ID_RULE, AuthError, mint_token, verify_token
from ..config import ConfigError, check_secret
from .connect import jwt_secret
from .output import fail

_TTL = re.compile(r"^(\d+)([smhd]?)$")


def parse_ttl(text: str) -> int:
    m = _TTL.match(text.strip())
    if not m:
        raise ConfigError(f"--ttl must look like 90s, 15m, 1h or 7d, got {text!r}")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def cmd_token(args: argparse.Namespace) -> int:
    try:
        secret = jwt_secret(Path(args.data_dir))
    except ConfigError as exc:
        return fail(str(exc))
    if not secret:
        return fail(
            "JWT_SECRET is required to sign or check a token (or run it beside "
            "serve --local with the same --data-dir)"
        )
    if args.verify is not None:
        return _verify(args.verify.strip(), secret, args.id)
    if args.id is None:
        return fail("give the user id (natsgate token ID) or --verify TOKEN")
    try:
        check_secret(secret)
        ttl = parse_ttl(args.ttl)
    except ConfigError as exc:
        return fail(str(exc))
    if not USER_ID_RE.match(args.id):
        return fail(f"invalid user id {args.id!r}: {USER_ID_RULE}")
    print(mint_token(args.id, secret, ttl))
    return 0


def _when(t: object) -> str:
    if not isinstance(t, int | float) or isinstance(t, bool):
        return repr(t)
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _verify(token: str, secret: str, user: str | None) -> int:
    """The claims on one line (read without trusting them), then ``valid: ...`` and exit 0,
    or ``invalid: <the reason the gateway would give>`` and exit 1."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        print("invalid: not a JWT")
        return 1
    print(json.dumps(claims, ensure_ascii=False, sort_keys=True))
    try:
        ident = verify_token(token, secret)
    except AuthError as exc:
        why = str(exc)
        if why == "token expired":
            why += f" at {_when(claims.get('exp'))}"
        elif why == "invalid token":
            why += " (not signed with this JWT_SECRET, or not HS256)"
        print(f"invalid: {why}")
        return 1
    if user is not None and ident.user != user:
        print(f"invalid: the token is {ident.user}'s, not {user}'s")
        return 1
    left = int(ident.exp - time.time())
    print(
        f"valid: user {ident.user}, expires {_when(ident.exp)} (in {left // 60} min "
        f"{left % 60} s); revocations not checked"
    )
    return 0
