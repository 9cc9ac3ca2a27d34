"""The ops awaiting answers, by inbox (protocol.md §1: the gateway answers an op on
the ``inbox`` it came with): requests, settled by their ``reply``/``error`` (or ``pong``),
by their deadline or by the loss of their socket; and (re)subscribe ops, whose answer goes
to their subscription.  No I/O here: the connection sends, this keeps the table.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from .registry import Registry
from .subscriptions import AnySubscription, JsSubscription, SubState
from .wire import Envelope, NatsgateError, Op, decode_any

Emit = Callable[[str, Any], None]


class Request:
    """An op waiting for its ``reply``/``error`` (or ``pong``)."""

    __slots__ = ("expiry", "fut", "inbox", "lost_ok")

    def __init__(
        self,
        inbox: str,
        fut: asyncio.Future[Envelope],
        lost_ok: bool,
        expiry: asyncio.TimerHandle,
    ) -> None:
        self.inbox = inbox
        self.fut = fut
        self.lost_ok = lost_ok  # the socket dropping answers it (unsub: nothing is left)
        self.expiry = expiry


class SubOp:
    """A (re)subscribe op waiting for its reply; dropped with its connection, since the
    subscription is sent again on the next one."""

    __slots__ = ("sub",)

    def __init__(self, sub: AnySubscription) -> None:
        self.sub = sub


class Pending:
    """The table of ops awaiting answers; a subscription's answer updates it in ``subs``
    and may be reported with ``emit`` (``gap``, or ``error`` for a refused re-subscribe)."""

    def __init__(self, subs: Registry, emit: Emit) -> None:
        self._ops: dict[str, Request | SubOp] = {}
        self._inboxes = itertools.count(1)
        self._subs = subs
        self._emit = emit

    def _next_inbox(self) -> str:
        return f"{next(self._inboxes):x}"

    def request(self, op: Op, within: float, *, lost_ok: bool) -> Request:
        """Give ``op`` a fresh inbox and await its answer; after ``within`` seconds it
        fails with ``timeout``. Hand it to :meth:`discard` once no longer awaited."""
        loop = asyncio.get_running_loop()
        inbox = op.inbox = self._next_inbox()
        expiry = loop.call_later(within, self._expire, inbox, op)
        req = self._ops[inbox] = Request(inbox, loop.create_future(), lost_ok, expiry)
        return req

    def discard(self, req: Request) -> None:
        req.expiry.cancel()
        self._ops.pop(req.inbox, None)

    def _expire(self, inbox: str, op: Op) -> None:
        p = self._ops.pop(inbox, None)
        if isinstance(p, Request) and not p.fut.done():
            p.fut.set_exception(
                NatsgateError("timeout", f"no answer to {op.op} in time", target=op.target)
            )

    def subscribe(self, sub: AnySubscription) -> Op:
        """The op that (re)creates ``sub``, with a fresh inbox its answer will come on."""
        op = sub.wire()
        op.inbox = inbox = self._next_inbox()
        self._ops[inbox] = SubOp(sub)
        return op

    def lost(self, err: NatsgateError) -> None:
        """The socket is gone: what was in flight fails with ``err`` (or is done, when
        the loss answers it); subscribe ops are dropped, to be sent again."""
        ops, self._ops = self._ops, {}
        for p in ops.values():
            if isinstance(p, Request) and not p.fut.done():
                if p.lost_ok:
                    p.fut.set_result(Envelope("reply"))
                else:
                    p.fut.set_exception(err)

    def reply(self, env: Envelope) -> None:
        """A ``reply`` or ``pong``: to its request, or to the subscription it confirms."""
        p = self._ops.pop(env.inbox, None) if env.inbox is not None else None
        if p is None:
            return  # late (timed out) or not ours
        if isinstance(p, Request):
            if not p.fut.done():
                p.fut.set_result(env)
            return
        data = decode_any(env.data)
        sub = p.sub
        sub._on_reply(data if isinstance(data, dict) else {})
        if isinstance(sub, JsSubscription) and sub.gap and not sub.ended:
            self._emit("gap", sub)

    def error(self, env: Envelope, err: NatsgateError) -> bool:
        """An ``error`` envelope: to its request, or it ends the subscription it refuses.
        False when it answers no op of ours (the caller reports it)."""
        p = self._ops.pop(env.inbox, None) if env.inbox is not None else None
        if p is None:
            return False
        if isinstance(p, Request):
            if not p.fut.done():
                p.fut.set_exception(err)
            return True
        sub = p.sub
        if sub.ended:
            return True
        first = not sub._first.done()
        self._subs.forget(sub)
        sub._end(SubState.ENDED, err)
        if not first:  # a re-subscribe was refused: nobody awaits it
            self._emit("error", err)
        return True
