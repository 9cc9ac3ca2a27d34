"""Ops about the connection itself: ``ping`` and ``auth`` (a token refresh)."""

from __future__ import annotations

from .. import frames
from .. import protocol as p
from ..auth import AuthError
from ..errors import ErrorCode, ProtocolError
from .context import Conn


async def ping(conn: Conn, op: p.Ping) -> None:
    conn.outbox.push(frames.encode_pong(op.inbox))


async def auth(conn: Conn, op: p.Auth) -> None:
    """A fresh token for the same user extends the connection: HS256 or, with
    ``JWT_JWKS_URL``, the identity provider's (a new ``kid`` may refetch its keys)."""
    try:
        ident = await conn.services.verifier.check(op.data.token)
    except AuthError as exc:
        # The current token still holds; the connection stays until it expires.
        raise ProtocolError(ErrorCode.UNAUTHORIZED, str(exc)) from None
    if ident.user != conn.user:
        raise ProtocolError(ErrorCode.FORBIDDEN, "the new token is for another user")
    if conn.services.revocations.revoked(ident):
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "token revoked")
    conn.refresh(ident)
    conn.ack(op, exp=ident.exp)
