"""Making and ending a connection's subscriptions (the table in :mod:`..subscriptions`)."""

from __future__ import annotations

from ..capabilities import Capabilities, Kind
from ..errors import ErrorCode, ProtocolError
from ..subscriptions import Subscription
from .context import Conn


def admit(
    conn: Conn, kind: Kind, target: str, pattern: str, checked: list[str]
) -> Subscription | None:
    """Register a new subscription, or None when the same one exists already."""
    subs, limit = conn.subs, conn.config.max_subs
    if (kind, target, pattern) in subs:
        return None
    if len(subs) >= limit:
        raise ProtocolError(ErrorCode.LIMIT, f"at most {limit} subscriptions per connection")
    sub = Subscription(kind, target, pattern, checked)
    subs[sub.key] = sub
    conn.services.metrics.subscriptions.labels(kind.value).inc()
    return sub


def forget(conn: Conn, sub: Subscription) -> None:
    if conn.subs.get(sub.key) is sub:
        del conn.subs[sub.key]
        conn.services.metrics.subscriptions.labels(sub.kind.value).dec()
    sub.active = False


def end(conn: Conn, sub: Subscription) -> None:
    """Stop delivery at once (nothing of it is queued after this returns)."""
    forget(conn, sub)
    if sub.kind is Kind.SUB:
        conn.services.hub.remove(sub.target, conn.outbox)
        return
    if sub.feed is not None:
        sub.feed.halt()  # deliveries already queued in the NATS client are dropped
    if sub.task is not None:
        sub.task.cancel()
    if sub.feed is not None:
        # Not left to the task's finally: a task cancelled before it first ran never
        # enters its try block. stop() is idempotent.
        conn.spawn_detached(sub.feed.stop())


def unsub(conn: Conn, kind: Kind, target: str, pattern: str) -> None:
    sub = conn.subs.get((kind, target, pattern))
    if sub is not None:
        end(conn, sub)


def release_all(conn: Conn) -> None:
    for sub in list(conn.subs.values()):
        end(conn, sub)


def revoke(conn: Conn, caps: Capabilities) -> list[dict[str, str]]:
    """End what ``caps`` no longer allow (protocol.md §4); how ``cap_update`` names them."""
    reserved = conn.services.reserved
    revoked = []
    for sub in list(conn.subs.values()):
        if not caps.allows(sub.kind, sub.target, sub.checked, reserved):
            end(conn, sub)
            revoked.append(sub.describe())
    return revoked
