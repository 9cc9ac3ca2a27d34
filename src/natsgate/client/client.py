"""The client's public API: subscribe, unsubscribe, publish, command, ping, close.

The machinery under it (the socket, its run loop, the ops awaiting answers) is the
:class:`~natsgate.client.connection.Connection` it extends.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, overload

from .connection import REQUEST_TIMEOUT, Connection
from .durable import AckMode, DurableSubscription
from .registry import S
from .subscriptions import (
    AnySubscription,
    CoreSubscription,
    Handler,
    JsSubscription,
    KvSubscription,
    Membership,
    PresenceSubscription,
    Subscription,
    SubState,
)
from .wire import (
    ClientState,
    DurableInfo,
    JsMessage,
    KvEvent,
    Message,
    NatsgateError,
    Op,
    PresenceEvent,
    decode_any,
    decode_durables,
    encode,
    payload,
)

log = logging.getLogger("natsgate.client")


class Client(Connection):
    """Use :func:`natsgate.client.connect`; see ``docs/python-client.md``."""

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def caps(self) -> dict[str, Any]:
        """The capabilities of the latest ``cap_update``."""
        return self._caps

    @property
    def subscriptions(self) -> list[AnySubscription]:
        return list(self._subs)

    def start(self) -> None:
        """Begin connecting (``connect()`` does this and waits for :meth:`ready`)."""
        if self._run_task is None and self._state is not ClientState.CLOSED:
            self._session = self._refusals.session()  # keeps why an upgrade was refused
            self._run_task = self.spawn(self._run(), "natsgate-client")

    async def _add(self, sub: S) -> S:
        if self._state is ClientState.CLOSED:
            raise self._closed_error()
        self._subs.add(sub)
        if self._state is ClientState.OPEN:
            self._send_sub(sub)
            await self._flush()
        try:
            await asyncio.shield(sub._first)
        except asyncio.CancelledError:
            self.spawn(self.unsubscribe(sub), "unsubscribe")
            raise
        return sub

    async def unsubscribe(self, sub: Subscription[Any], *, delete: bool = False) -> None:
        """End ``sub`` here at once and at the gateway (what ``sub.unsubscribe()`` does).
        ``delete`` (durables only): delete the durable on the NATS server too; that waits
        for a connection and raises what the gateway answers."""
        if delete:
            if not isinstance(sub, DurableSubscription):
                raise NatsgateError(
                    "bad_request", "only a durable can be deleted", target=sub.target
                )
            self._end_sub(sub)
            await self._request(sub.unwire(delete=True), REQUEST_TIMEOUT)
            return
        if not self._end_sub(sub) or self._state is not ClientState.OPEN:
            return  # nothing of it is left at the gateway
        try:
            await self._request(sub.unwire(), REQUEST_TIMEOUT, lost_ok=True)
        except NatsgateError as exc:
            log.debug("natsgate: %s %s: %s", sub.unop, sub.target, exc)

    def _end_sub(self, sub: Subscription[Any]) -> bool:
        """End ``sub`` here; False when it had ended already."""
        if sub.ended or sub not in self._subs:
            return False
        assert isinstance(sub, AnySubscription)
        self._subs.forget(sub)
        sub._end(SubState.ENDED, NatsgateError("closed", "unsubscribed"))
        return True

    async def subscribe(self, subject: str, handler: Handler[Message]) -> CoreSubscription:
        """A core subscription; returns once the gateway confirmed it."""
        return await self._add(CoreSubscription(self, subject, handler))

    async def kv_subscribe(
        self, bucket: str, pattern: str | None, handler: Handler[KvEvent]
    ) -> KvSubscription:
        """Watch the keys of ``bucket`` matching ``pattern`` (None: all). Current values
        reach ``handler`` (``snapshot=True``) before this returns."""
        return await self._add(KvSubscription(self, bucket, pattern, handler))

    @overload
    async def js_subscribe(
        self,
        stream: str,
        handler: Handler[JsMessage],
        *,
        start_seq: int | None = None,
        start_time: datetime | str | None = None,
        batch: int | None = None,
        filter: str | None = None,
        durable: None = None,
    ) -> JsSubscription: ...
    @overload
    async def js_subscribe(
        self,
        stream: str,
        handler: Handler[JsMessage],
        *,
        start_seq: int | None = None,
        start_time: datetime | str | None = None,
        batch: int | None = None,
        filter: str | None = None,
        durable: str,
        ack: AckMode = "none",
        ack_wait_ms: int | None = None,
        reset: bool = False,
    ) -> DurableSubscription: ...
    async def js_subscribe(
        self,
        stream: str,
        handler: Handler[JsMessage],
        *,
        start_seq: int | None = None,
        start_time: datetime | str | None = None,
        batch: int | None = None,
        filter: str | None = None,
        durable: str | None = None,
        ack: AckMode = "none",
        ack_wait_ms: int | None = None,
        reset: bool = False,
    ) -> JsSubscription:
        """Ordered delivery from ``stream``: from ``start_seq`` (inclusive), from
        ``start_time``, or (neither) only messages stored from now on. Its ``reply_data``
        holds the stream's ``first_seq``, ``last_seq`` and ``gap``.

        With ``durable`` (a name, 1-32 of ``A-Za-z0-9_-``) the position lives on the NATS
        server: a :class:`DurableSubscription`, bound again by name after a reconnect, and
        by any later ``js_subscribe`` of the same user, stream and name. ``start_seq``,
        ``start_time`` and ``filter`` then apply when the durable is made (``reset``:
        make it afresh). ``ack="explicit"``: each message must be settled with
        ``await msg.ack()`` (or ``nak()``, ``term()``), or it comes again after
        ``ack_wait_ms`` (1000-600000, gateway default 30000)."""
        if durable is not None:
            return await self._add(
                DurableSubscription(
                    self,
                    stream,
                    handler,
                    durable=durable,
                    ack=ack,
                    ack_wait_ms=ack_wait_ms,
                    reset=reset,
                    start_seq=start_seq,
                    start_time=start_time,
                    batch=batch,
                    filter=filter,
                )
            )
        if ack != "none" or ack_wait_ms is not None or reset:
            raise NatsgateError(
                "bad_request", "ack, ack_wait_ms and reset need a durable", target=stream
            )
        sub = JsSubscription(
            self,
            stream,
            handler,
            start_seq=start_seq,
            start_time=start_time,
            batch=batch,
            filter=filter,
        )
        return await self._add(sub)

    async def join(self, subject: str, info: Any = None) -> Membership:
        """Announce this connection on ``subject`` with ``info`` (JSON, at most 1 KiB);
        returns once the gateway stored it. Joined again after each reconnect until
        ``leave()``; ``update(info)`` changes the info everyone sees."""
        return await self._add(Membership(self, subject, info))

    async def update_join(self, membership: Membership, info: Any) -> None:
        """New info for a joined subject (what ``membership.update(info)`` does)."""
        membership.info = info
        if membership.ended:
            raise NatsgateError("closed", "left already", target=membership.target)
        await self._request(membership.wire(), REQUEST_TIMEOUT)

    async def presence(self, subject: str, handler: Handler[PresenceEvent]) -> PresenceSubscription:
        """The members of ``subject``: those there already reach ``handler``
        (``snapshot=True``) before this returns, then every join and leave;
        ``sub.members`` is the list at any time."""
        return await self._add(PresenceSubscription(self, subject, handler))

    async def js_ack(
        self,
        stream: str,
        durable: str,
        seq: int,
        *,
        nak: bool = False,
        delay_ms: int | None = None,
        term: bool = False,
    ) -> None:
        """The ``js_ack`` op, for message ``seq`` of ``durable``; returns once the gateway
        says the NATS server has it. ``JsMessage.ack()``, ``nak()`` and ``term()`` call
        this (only while the connection the message came on lasts)."""
        data: dict[str, Any] = {"durable": durable, "seq": seq}
        if nak:
            data["nak"] = True
            if delay_ms is not None:
                data["delay_ms"] = delay_ms
        if term:
            data["term"] = True
        await self._request(Op("js_ack", target=stream, data=data), REQUEST_TIMEOUT)

    async def durables(self, stream: str) -> list[DurableInfo]:
        """The user's durables of ``stream`` (``js_durables``), bound or not."""
        env = await self._request(Op("js_durables", target=stream), REQUEST_TIMEOUT)
        return [
            DurableInfo(d.name, d.filter, d.pending, d.ack_pending)
            for d in decode_durables(env.data).durables
        ]

    async def delete_durable(self, stream: str, durable: str) -> None:
        """Delete ``durable`` of ``stream`` on the NATS server (ending this client's
        subscription to it, if any)."""
        sub = self._subs.durable(stream, durable)
        if sub is not None:
            await self.unsubscribe(sub, delete=True)
            return
        data = {"durable": durable, "delete": True}
        await self._request(Op("js_unsub", target=stream, data=data), REQUEST_TIMEOUT)

    async def publish(self, subject: str, data: Any = None, *, ack: bool = True) -> None:
        """Publish ``data`` (sent to NATS as its JSON encoding). With ``ack`` wait until
        the gateway has handed it to NATS; without, only until it is written out."""
        op = Op("pub", target=subject, data=data)
        if ack:
            await self._request(op, REQUEST_TIMEOUT)
            return
        await self._wait_open(REQUEST_TIMEOUT)
        self._out.append(encode(op))
        await self._flush()

    async def command(
        self,
        subject: str,
        data: Any = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the gateway's timeout_ms, sent on the wire
    ) -> Any:
        """A NATS request through the gateway; returns the responder's payload (bytes if
        it was not text). ``timeout`` (seconds) is the gateway's wait for the responder;
        the client gives up ``timeout`` + 1 s after sending. Raises NatsgateError:
        ``timeout``, ``no_responders``, ``forbidden``, ``disconnected`` (the socket was
        lost meanwhile), ..."""
        op = Op("cmd", target=subject, data=data, timeout_ms=max(1, round(timeout * 1000)))
        env = await self._request(op, timeout)
        return payload(decode_any(env.data), env.enc)

    async def refresh_token(self, token: str) -> None:
        """The ``auth`` op: extend this connection with a fresh token for the same user;
        also used for reconnects from now on (unless a token_provider is set)."""
        await self._auth(token)

    async def ping(self) -> float:
        """A protocol-level round trip; returns its duration in seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._request(Op("ping"), REQUEST_TIMEOUT)
        return loop.time() - started

    async def close(self) -> None:
        """Close for good: pending ops fail with ``closed``, every task ends."""
        self._shut(NatsgateError("closed", "client closed"), emit=False)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._release()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
