"""JetStream ops: ``js_sub`` (ordered delivery from a sequence or a time) and
``js_unsub``."""

from __future__ import annotations

from .. import protocol as p
from ..capabilities import Kind
from . import subs
from .context import Conn
from .feeds import open_feed


async def js_sub(conn: Conn, op: p.JsSub) -> None:
    await open_feed(
        conn, op, Kind.JS, op.opts.filter or "", lambda: conn.services.js.open(conn.outbox, op)
    )


async def js_unsub(conn: Conn, op: p.JsUnsub) -> None:
    subs.unsub(conn, Kind.JS, op.target, op.filter or "")
    conn.ack(op)
