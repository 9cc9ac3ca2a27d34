"""Every client op, in one table: op type -> handler (protocol.md §3).

A handler takes the connection as :class:`~.context.Conn` and the decoded op, and either
answers it (``reply``, a ``pong``, a command's reply later) or raises
:class:`~natsgate.errors.ProtocolError`, which the session turns into the op's ``error``.
Families live in their own modules; a new op is a line here and a function there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .. import protocol as p
from . import connection, core, jetstream, kv, presence
from .context import Conn, Services

Handler = Callable[[Conn, Any], Awaitable[None]]

HANDLERS: dict[type[p.ClientOp], Handler] = {
    p.Sub: core.sub,
    p.Unsub: core.unsub,
    p.Pub: core.pub,
    p.Cmd: core.cmd,
    p.KvSub: kv.kv_sub,
    p.KvUnsub: kv.kv_unsub,
    p.JsSub: jetstream.js_sub,
    p.JsUnsub: jetstream.js_unsub,
    p.JsAck: jetstream.js_ack,
    p.JsDurables: jetstream.js_durables,
    p.Ping: connection.ping,
    p.Auth: connection.auth,
    p.Join: presence.join,
    p.Leave: presence.leave,
    p.PresenceSub: presence.presence_sub,
    p.PresenceUnsub: presence.presence_unsub,
}


async def dispatch(conn: Conn, op: p.ClientOp) -> None:
    await HANDLERS[type(op)](conn, op)


__all__ = ["HANDLERS", "Conn", "Services", "dispatch"]
