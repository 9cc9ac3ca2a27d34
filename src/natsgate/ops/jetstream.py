"""JetStream ops: ``js_sub`` (ordered delivery from a sequence or a time, or bound to a
durable kept on the NATS server), ``js_unsub``, ``js_ack`` and ``js_durables``."""

from __future__ import annotations

from .. import protocol as p
from ..bridges.durable import DurableFeed
from ..capabilities import Kind
from ..errors import ErrorCode, ProtocolError
from . import subs
from .context import Conn, forbidden
from .feeds import open_feed


async def js_sub(conn: Conn, op: p.JsSub) -> None:
    opts, gw = op.opts, conn.services
    flt = opts.filter or ""
    if opts.durable is None:
        await open_feed(conn, op, Kind.JS, flt, flt, lambda: gw.js.open(conn.outbox, op))
        return
    await open_feed(
        conn,
        op,
        Kind.DURABLE,
        opts.durable,
        flt,
        lambda: gw.durables.open(
            conn.outbox,
            conn.user,
            op.target,
            opts,
            lambda covered: conn.caps.allows(Kind.DURABLE, op.target, covered, gw.reserved),
        ),
    )


async def js_unsub(conn: Conn, op: p.JsUnsub) -> None:
    """Without ``durable``: ends that ``js_sub``. With it: unbinds this connection from the
    durable (its position stays), and with ``delete`` deletes the durable too."""
    durable = op.durable
    if durable is None:
        subs.unsub(conn, Kind.JS, op.target, op.filter or "")
        return conn.ack(op)
    subs.unsub(conn, Kind.DURABLE, op.target, durable)
    if op.data is not None and op.data.delete:
        _may_read(conn, op.target)
        await conn.services.durables.delete(conn.user, op.target, durable)
    conn.ack(op)


async def js_ack(conn: Conn, op: p.JsAck) -> None:
    d = op.data
    sub = conn.subs.get((Kind.DURABLE, op.target, d.durable))
    if sub is None or not isinstance(sub.feed, DurableFeed):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"this connection is not bound to durable {d.durable!r}"
        )
    if not sub.feed.explicit:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"durable {d.durable!r} is bound with ack none: no acks"
        )
    await sub.feed.ack(
        d.seq, nak=d.nak, delay_ms=d.delay_ms, term=d.term, confirm=op.inbox is not None
    )
    conn.ack(op)


async def js_durables(conn: Conn, op: p.JsDurables) -> None:
    _may_read(conn, op.target)
    durables = await conn.services.durables.list(conn.user, op.target)
    conn.ack(op, durables=durables)


def _may_read(conn: Conn, stream: str) -> None:
    """Listing or deleting durables needs some grant on the stream (say nothing about
    whether it exists otherwise)."""
    if not conn.caps.has_stream(stream, conn.services.reserved):
        raise forbidden(f"stream {stream!r}")
