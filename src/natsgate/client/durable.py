"""Durable JetStream subscriptions (protocol.md §3, "Durable subscriptions and
acknowledgements"): the position lives on the NATS server under a name, so a later
connection, from any device, continues where the last one stopped.

Unlike a plain :class:`~natsgate.client.subscriptions.JsSubscription`, a durable keeps no
sequence of its own: a re-subscribe after a reconnect binds the durable by name again,
and the NATS server decides what comes next.  With explicit acks that includes messages
delivered before and not acked: they come again (``delivery`` 2, 3, ...), so nothing is
dropped by sequence here.  No I/O: acks go out through the owner (the client).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol

from .subscriptions import Handler, JsSubscription, Owner, SubKey, Subscription, SubState
from .wire import (
    DURABLE_RE,
    MAX_ACK_WAIT_MS,
    MIN_ACK_WAIT_MS,
    Envelope,
    JsMessage,
    JsWire,
    NatsgateError,
    Op,
    payload,
)

AckMode = Literal["none", "explicit"]


class DurableOwner(Owner, Protocol):
    """What a durable needs from its client besides :class:`Owner`: the ``js_ack`` op
    and an unsubscribe that can delete."""

    async def unsubscribe(self, sub: Subscription[Any], *, delete: bool = False) -> None: ...

    async def js_ack(
        self,
        stream: str,
        durable: str,
        seq: int,
        *,
        nak: bool = False,
        delay_ms: int | None = None,
        term: bool = False,
    ) -> None: ...


class Binding:
    """One binding of a durable to one connection.  The gateway takes a ``js_ack`` only
    for a message awaiting it on the connection it was delivered on (protocol: otherwise
    ``bad_request``), so a message's ack goes out only while its binding lasts; after
    that NATS delivers the message again, to whichever binding comes next."""

    __slots__ = ("durable", "gone", "owner", "stream")

    def __init__(self, owner: DurableOwner, stream: str, durable: str) -> None:
        self.owner = owner
        self.stream = stream
        self.durable = durable
        self.gone: NatsgateError | None = None

    async def settle(self, seq: int, how: dict[str, Any]) -> None:
        if self.gone is not None:
            raise self.gone
        await self.owner.js_ack(self.stream, self.durable, seq, **how)


class DurableSubscription(JsSubscription):
    """A durable of stream ``target`` named ``durable``, bound on every connection until
    unsubscribed.  ``ack`` is ``"none"`` (the gateway's default: handled once written to
    the socket) or ``"explicit"``: every message must be settled with ``ack()``,
    ``nak()`` or ``term()``, or NATS delivers it again after ``ack_wait_ms``."""

    def __init__(
        self,
        client: DurableOwner,
        stream: str,
        handler: Handler[JsMessage],
        *,
        durable: str,
        ack: AckMode = "none",
        ack_wait_ms: int | None = None,
        reset: bool = False,
        start_seq: int | None = None,
        start_time: datetime | str | None = None,
        batch: int | None = None,
        filter: str | None = None,
    ) -> None:
        check_durable(durable, ack, ack_wait_ms)
        self.durable = durable
        super().__init__(
            client,
            stream,
            handler,
            start_seq=start_seq,
            start_time=start_time,
            batch=batch,
            filter=filter,
        )
        self.ack = ack
        self.ack_wait_ms = ack_wait_ms
        self.reset = reset
        self._owner = client
        self._made = False  # a reply came: the durable exists, rebinds send no start
        self._binding = Binding(client, stream, durable)

    def __repr__(self) -> str:
        return f"<DurableSubscription {self.target!r} {self.durable!r} {self.state.value}>"

    @property
    def key(self) -> SubKey:
        return ("js_durable", self.target, self.durable)

    async def unsubscribe(self, *, delete: bool = False) -> None:
        """Unbind (the durable keeps its position on the NATS server), or with ``delete``
        delete the durable too."""
        await self._owner.unsubscribe(self, delete=delete)

    # ---------------------------------------------------------------- wire

    def wire(self) -> Op:
        """``js_sub`` with the durable's name and no bookkeeping of what was delivered.
        ``start_seq``, ``start_time`` and ``reset`` go only until the first reply: they
        make the durable, and a rebind must neither start it afresh nor, should it have
        been deleted meanwhile, replay the stream from the start (the browser library
        does the same).  ``filter`` always goes: the gateway checks it against the
        durable's."""
        data: dict[str, Any] = {"durable": self.durable}
        if self.ack != "none":
            data["ack"] = self.ack
        if self.ack_wait_ms is not None:
            data["ack_wait_ms"] = self.ack_wait_ms
        if not self._made:
            if self.start_seq:
                data["start_seq"] = self.start_seq
            elif self.start_time is not None:
                data["start_time"] = self.start_time
            if self.reset:
                data["reset"] = True
        if self.batch is not None:
            data["batch"] = self.batch
        if self.filter is not None:
            data["filter"] = self.filter
        return Op(self.op, target=self.target, data=data)

    def unwire(self, *, delete: bool = False) -> Op:
        data: dict[str, Any] = {"durable": self.durable}
        if delete:
            data["delete"] = True
        return Op(self.unop, target=self.target, data=data)

    # ---------------------------------------------------------------- client side

    def _pause(self) -> None:
        self._unbind(NatsgateError("disconnected", "the connection it came on is gone"))
        super()._pause()

    def _resending(self) -> None:
        super()._resending()
        if not self.ended:
            self._binding = Binding(self._owner, self.target, self.durable)

    def _on_reply(self, data: dict[str, Any]) -> None:
        if not self.ended:
            self._made = True
        super()._on_reply(data)

    def _end(self, state: SubState, err: NatsgateError | None) -> None:
        self._unbind(NatsgateError("closed", "the subscription ended"))
        super()._end(state, err)

    def _unbind(self, why: NatsgateError) -> None:
        if self._binding.gone is None:
            why.target = self.target
            self._binding.gone = why

    # ---------------------------------------------------------------- delivery

    def _take(self, w: JsWire, env: Envelope) -> None:
        """A ``msg`` of this durable: to the handler, with a way to ack it when acks are
        explicit.  Every delivery counts: a redelivery repeats a sequence on purpose."""
        self.last_seq = max(self.last_seq, w.seq)
        data = payload(w.payload, w.enc) if w.enc is not None else w.payload
        explicit = self.ack == "explicit"
        msg = JsMessage(
            w.seq,
            w.subject,
            data,
            w.time,
            env.headers,
            w.delivery,
            self._binding if explicit else None,
        )
        self._deliver(msg)


def check_durable(durable: str, ack: str, ack_wait_ms: int | None) -> None:
    """The protocol's rules on a durable ``js_sub``'s own fields, checked before sending:
    NatsgateError ``bad_request`` when they are broken."""
    if not isinstance(durable, str) or not DURABLE_RE.match(durable):
        raise NatsgateError("bad_request", f"durable names are 1-32 of A-Za-z0-9_-: {durable!r}")
    if ack not in ("none", "explicit"):
        raise NatsgateError("bad_request", f'ack is "none" or "explicit", not {ack!r}')
    if ack_wait_ms is not None and not MIN_ACK_WAIT_MS <= ack_wait_ms <= MAX_ACK_WAIT_MS:
        raise NatsgateError(
            "bad_request", f"ack_wait_ms is {MIN_ACK_WAIT_MS}-{MAX_ACK_WAIT_MS}: {ack_wait_ms}"
        )


__all__ = ["AckMode", "Binding", "DurableOwner", "DurableSubscription", "check_durable"]
