"""What KV watches and stream subscriptions share: the capability check before and after
NATS is asked, the ``MAX_FEEDS`` limit, the feed's start and its delivery task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .. import protocol as p
from ..bridges.feed import Feed
from ..capabilities import Kind
from ..errors import ErrorCode, ProtocolError
from ..outbox import OutboxClosed
from ..subscriptions import Subscription, feeds
from . import subs
from .context import Conn, forbidden

log = logging.getLogger("natsgate.session")

Opener = Callable[[], Awaitable[tuple[Feed, list[str]]]]


async def open_feed(
    conn: Conn,
    op: p.KvSub | p.JsSub | p.PresenceSub,
    kind: Kind,
    key: str,
    pattern: str,
    opener: Opener,
) -> None:
    """``key`` tells this subscription from others of the same target (the KV pattern, the
    filter, a durable's name); ``pattern`` is what the grant must cover ("" for a whole
    stream). ``opener`` looks the bucket or stream up (``not_found``, ``bad_request``) and
    makes the feed; it returns what the capability check must cover."""
    caps, reserved, limit = conn.caps, conn.services.reserved, conn.config.max_feeds
    what = "bucket" if kind is Kind.KV else "stream"
    denied = forbidden(f"{what} {op.target!r} with {pattern or 'no filter'!r}")
    # Check what is known before touching NATS, so a refusal says nothing about whether
    # the bucket or stream exists.
    if pattern and not caps.allows(kind, op.target, [pattern], reserved):
        raise denied
    if not pattern and not caps.has_stream(op.target, reserved):
        raise denied
    if (kind, op.target, key) not in conn.subs and feeds(conn.subs) >= limit:
        raise ProtocolError(
            ErrorCode.LIMIT, f"at most {limit} KV watches and stream subscriptions per connection"
        )
    feed, checked = await opener()
    if not conn.caps.allows(kind, op.target, checked, reserved):
        raise denied
    sub = subs.admit(conn, kind, op.target, key, checked)
    if sub is None:
        return conn.ack(op)
    sub.feed = feed
    try:
        extra = await feed.start()
    except BaseException:
        subs.forget(conn, sub)
        conn.spawn_detached(feed.stop())
        raise
    if not sub.active:
        conn.spawn_detached(feed.stop())
        raise forbidden(f"{op.target!r}")
    conn.ack(op, **extra)
    sub.task = conn.spawn(_run(conn, sub, feed), f"{kind.value}:{op.target}")


async def _run(conn: Conn, sub: Subscription, feed: Feed) -> None:
    try:
        await feed.run()
    except ProtocolError as err:
        err.target = err.target or sub.target
        conn.send_error(err)
    except (asyncio.CancelledError, OutboxClosed):
        raise
    except Exception:
        log.exception("%s feed %s of %s failed", sub.kind.value, sub.target, conn.user)
        conn.send_error(ProtocolError(ErrorCode.INTERNAL, "subscription failed", target=sub.target))
    finally:
        if sub.active:  # ended by itself: forget it so it can be made again
            subs.forget(conn, sub)
        conn.spawn_detached(feed.stop())
