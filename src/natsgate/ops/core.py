"""Core NATS ops: ``sub``/``unsub`` (through the hub: one NATS subscription per distinct
pattern per process), ``pub`` and ``cmd`` (through :mod:`..bridges.core`, which stamps
``Natsgate-User``)."""

from __future__ import annotations

import asyncio
import logging
import time

from .. import frames
from .. import protocol as p
from ..bridges import core
from ..capabilities import Kind
from ..errors import ErrorCode, ProtocolError
from . import subs
from .context import Conn, forbidden

log = logging.getLogger("natsgate.session")


async def sub(conn: Conn, op: p.Sub) -> None:
    gw = conn.services
    if not conn.caps.can_subscribe(op.target, gw.reserved):
        raise forbidden(f"subject {op.target!r}")
    s = subs.admit(conn, Kind.SUB, op.target, "", [op.target])
    if s is None:  # already subscribed: idempotent
        return conn.ack(op)
    try:
        await gw.hub.add(op.target, conn.outbox)
    except ProtocolError:
        subs.forget(conn, s)
        raise
    except Exception as exc:
        subs.forget(conn, s)
        log.warning("subscribe %s for %s failed: %r", op.target, conn.user, exc)
        raise ProtocolError(ErrorCode.INTERNAL, "NATS did not confirm the subscription") from None
    if not s.active:  # revoked (or closed) while NATS confirmed it
        gw.hub.remove(op.target, conn.outbox)
        raise forbidden(f"subject {op.target!r}")
    conn.ack(op)


async def unsub(conn: Conn, op: p.Unsub) -> None:
    subs.unsub(conn, Kind.SUB, op.target, "")
    conn.ack(op)


async def pub(conn: Conn, op: p.Pub) -> None:
    gw = conn.services
    if not conn.caps.can_publish(op.target, gw.reserved):
        raise forbidden(f"publishing on {op.target!r}")
    confirm = op.inbox is not None
    await core.publish(gw.upstream.nc, op.target, bytes(op.data), conn.user, confirm=confirm)
    conn.ack(op)


async def cmd(conn: Conn, op: p.Cmd) -> None:
    """Starts the request and returns: commands run concurrently, each answered once."""
    if not conn.caps.can_command(op.target, conn.services.reserved):
        raise forbidden(f"commands on {op.target!r}")
    limit = conn.config.max_pending_cmds
    if len(conn.cmds) >= limit:
        raise ProtocolError(ErrorCode.LIMIT, f"at most {limit} commands in flight")
    task = conn.spawn(_request(conn, op), "cmd")
    conn.cmds[task] = op


async def _request(conn: Conn, op: p.Cmd) -> None:
    gw = conn.services
    timeout_ms = op.timeout_ms or conn.config.cmd_timeout_ms
    started = time.perf_counter()
    outcome = "ok"
    try:
        msg = await core.request(
            gw.upstream.nc, op.target, bytes(op.data), conn.user, timeout_ms / 1000
        )
        headers = {k: v for k, v in (msg.headers or {}).items()} or None
        conn.outbox.push(frames.encode_cmd_reply(op.target, op.inbox, msg.data, headers))
    except ProtocolError as err:
        outcome = err.code.value
        err.inbox, err.target = op.inbox, op.target
        conn.send_error(err)
    finally:
        task = asyncio.current_task()
        if task is not None:
            conn.cmds.pop(task, None)
        gw.metrics.cmd_latency.labels(outcome).observe(time.perf_counter() - started)
