"""KV ops: ``kv_sub`` (current values, then changes) and ``kv_unsub``."""

from __future__ import annotations

from .. import protocol as p
from ..capabilities import Kind
from . import subs
from .context import Conn
from .feeds import open_feed


async def kv_sub(conn: Conn, op: p.KvSub) -> None:
    pattern = op.pattern
    await open_feed(
        conn, op, Kind.KV, pattern, pattern, lambda: conn.services.kv.open(conn.outbox, op)
    )


async def kv_unsub(conn: Conn, op: p.KvUnsub) -> None:
    subs.unsub(conn, Kind.KV, op.target, op.pattern)
    conn.ack(op)
