"""Presence ops: ``join``, ``leave``, ``presence_sub`` and ``presence_unsub``.

Joining needs a ``presence`` grant covering the subject, reading its members a
``subjects`` grant (a ``presence_sub`` is a feed like a KV watch and counts toward
``MAX_FEEDS``). A second ``join`` of the same subject by the same connection replaces its
info. The members themselves are in :mod:`..bridges.presence`.
"""

from __future__ import annotations

import msgspec
from msgspec import Raw

from .. import protocol as p
from ..bridges.presence import PresenceFeed
from ..capabilities import Capabilities, Kind
from ..errors import ErrorCode, ProtocolError
from ..members import MAX_INFO
from . import subs
from .context import Conn, forbidden
from .feeds import open_feed


def _info(op: p.Join) -> Raw:
    """The info as compact JSON (one line, whatever spacing it came with)."""
    raw = bytes(op.data)
    if not raw:
        return Raw(b"null")
    info = msgspec.json.encode(msgspec.json.decode(raw))
    if len(info) > MAX_INFO:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"info is {len(info)} bytes as JSON; at most {MAX_INFO}"
        )
    return Raw(info)


async def join(conn: Conn, op: p.Join) -> None:
    info = _info(op)
    reserved, presence = conn.services.reserved, conn.services.presence
    if not conn.caps.can_join(op.target, reserved):
        raise forbidden(f"joining {op.target!r}")
    joined, limit = presence.joins(conn.conn_id), conn.config.max_joins
    if op.target not in joined and len(joined) >= limit:
        raise ProtocolError(ErrorCode.LIMIT, f"at most {limit} joins per connection")
    await presence.join(conn.user, conn.conn_id, op.target, info)
    if not conn.caps.can_join(op.target, reserved):  # revoked while NATS stored it
        await presence.leave(conn.conn_id, op.target)
        raise forbidden(f"joining {op.target!r}")
    conn.ack(op)


async def leave(conn: Conn, op: p.Leave) -> None:
    await conn.services.presence.leave(conn.conn_id, op.target)
    conn.ack(op)


async def presence_sub(conn: Conn, op: p.PresenceSub) -> None:
    if not conn.caps.can_subscribe(op.target, conn.services.reserved):
        raise forbidden(f"the presence of {op.target!r}")

    async def opener() -> tuple[PresenceFeed, list[str]]:
        return conn.services.presence.open(conn.outbox, op.target), [op.target]

    await open_feed(conn, op, Kind.PRESENCE, op.target, op.target, opener)


async def presence_unsub(conn: Conn, op: p.PresenceUnsub) -> None:
    subs.unsub(conn, Kind.PRESENCE, op.target, op.target)
    conn.ack(op)


def revoke(conn: Conn, caps: Capabilities) -> list[dict[str, str]]:
    """Leave what ``caps`` no longer let this connection join; how ``cap_update`` names it."""
    presence, reserved = conn.services.presence, conn.services.reserved
    lost = [s for s in presence.joins(conn.conn_id) if not caps.can_join(s, reserved)]
    presence.leave_all(conn.conn_id, lost)
    return [{"op": "join", "target": s} for s in lost]
