"""Durable subscriptions (``js_sub`` with ``durable``): a user's position in a stream kept on
the NATS server, delivered at least once, acknowledged by the client or on its behalf.

Each durable is a pull consumer with explicit acks (named in :mod:`..durables`); every
connection bound to it pulls from it, so they share its messages. With ``ack: "explicit"``
the client acks each message (``js_ack``); with ``ack: "none"`` the gateway acks a
message once the client's socket has taken it. A message nobody acks within ``ack_wait``
is delivered again by NATS, to whichever connection pulls next: a connection that dies
loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.errors import NotFoundError

from .. import frames
from ..coalesce import CoalescedBy
from ..config import Config
from ..durables import NAME_KEY, OWNER_KEY, consumer_name, durable_of, user_prefix
from ..errors import ErrorCode, ProtocolError
from ..outbox import Outbox, OutboxClosed
from ..protocol import ACK_WAIT_MS
from ..subjects import overlaps
from ..upstream import Upstream
from .feed import Feed
from .reader import parse_ack

log = logging.getLogger("natsgate.durable")

PULL_S = 5.0  # a pull waits this long for messages before the next one is made
ACK_TIMEOUT_S = 5.0  # a confirmed ack (js_ack with an inbox) waits this long for JetStream
HEARTBEAT_S = 1.0


class DurableFeed(Feed):
    """One connection bound to a durable. It makes its own pull requests (as the ordered
    :class:`~.reader.Reader` does) rather than use nats-py's ``fetch``, which holds the
    messages of a pull until it has the whole batch or the pull expires: a lone message
    waited seconds, and with a short ack wait came again before the client saw it."""

    def __init__(
        self,
        upstream: Upstream,
        outbox: Outbox,
        stream: str,
        durable: str,
        consumer: str,
        flt: str | None,
        *,
        explicit: bool,
        batch: int,
        ack_wait_s: float,
        reply: dict[str, Any],
    ) -> None:
        self.outbox = outbox
        self.stream, self.durable, self.consumer, self.filter = stream, durable, consumer, flt
        self.explicit, self.batch, self.ack_wait_s = explicit, batch, ack_wait_s
        self._upstream = upstream
        self._reply = reply
        self._sub: Subscription | None = None
        self._inbox = ""
        self._gen = 0  # the current pull; status messages of older ones are ignored
        self._got = 0  # messages of the current pull
        self._pulled = asyncio.Event()  # the current pull is complete or ended
        self._deleted = False
        self._halted = False
        # explicit acks: what this connection delivered and the client has not answered,
        # by stream sequence, with when (messages older than ack_wait went to others);
        # ack none: what went to the socket and is acked once written
        self._unacked: dict[int, tuple[Msg, float]] = {}
        self._inflight: list[Msg] = []

    async def start(self) -> dict[str, Any]:
        nc = self._upstream.nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox + ".*", cb=self._on_delivery)
        return self._reply

    async def run(self) -> None:
        ob, nc = self.outbox, self._upstream.nc
        while not self._halted:
            await ob.written_up_to(ob.pushed)  # the socket took what came so far
            if self._deleted:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"durable {self.durable!r} was deleted")
            self._gen += 1
            self._got = 0
            self._pulled.clear()
            request = {
                "batch": self.batch,
                "expires": int(PULL_S * 1e9),
                "idle_heartbeat": int(HEARTBEAT_S * 1e9),
            }
            try:
                await nc.publish(
                    f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}",
                    json.dumps(request).encode(),
                    reply=f"{self._inbox}.{self._gen}",
                )
                # NATS away or heartbeats gone: pull again after this long
                async with asyncio.timeout(PULL_S + 2 * HEARTBEAT_S):
                    await self._pulled.wait()
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("pull on %s: %r", self.consumer, exc)
            self._forget_stale()

    async def _on_delivery(self, msg: Msg) -> None:
        if msg.reply and msg.reply.startswith("$JS.ACK.") and self._halted:
            self._inflight.append(msg)  # never shown: stop() NAKs it
            return
        if msg.reply and msg.reply.startswith("$JS.ACK."):
            self._deliver(msg)
            self._got += 1
            if self._got >= self.batch:
                self._pulled.set()
            if not self.explicit:  # ack none: handled once the socket took it
                ob = self.outbox
                try:
                    await ob.written_up_to(ob.pushed)
                except OutboxClosed:
                    return  # stop() NAKs it
                if msg in self._inflight:
                    self._inflight.remove(msg)
                    await self._upstream.nc.publish(msg.reply, b"+ACK")
            return
        if msg.subject.rsplit(".", 1)[-1] != str(self._gen):
            return  # a status of an older pull
        status = (msg.headers or {}).get("Status")
        if status == "100":
            return  # idle heartbeat: the pull is alive
        if status == "409" and "Consumer Deleted" in (msg.headers or {}).get("Description", ""):
            self._deleted = True
        self._pulled.set()  # 404 no messages, 408 expired, 409 and the like: pull again

    def _deliver(self, msg: Msg) -> None:
        d = parse_ack(msg.reply or "")
        if d is None:
            return
        headers = dict(msg.headers) if msg.headers else None
        self.outbox.push(
            frames.encode_js(
                self.stream,
                d.stream_seq,
                msg.subject,
                msg.data,
                d.time,
                headers,
                sub=self.filter,
                durable=self.durable,
                delivery=msg.metadata.num_delivered if self.explicit else None,
            )
        )
        if self.explicit:
            self._unacked[d.stream_seq] = (msg, time.monotonic())
        else:
            self._inflight.append(msg)

    def _forget_stale(self) -> None:
        """Delivered here more than ack_wait ago and never answered: NATS has given them
        to someone (or here) again; keep the map bounded."""
        cutoff = time.monotonic() - self.ack_wait_s
        for seq in [s for s, (_, at) in self._unacked.items() if at < cutoff]:
            del self._unacked[seq]

    async def ack(
        self, seq: int, *, nak: bool, delay_ms: int | None, term: bool, confirm: bool
    ) -> None:
        """Answer one message delivered on this connection (``js_ack``)."""
        entry = self._unacked.pop(seq, None)
        if entry is None:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"message {seq} of durable {self.durable!r} is not awaiting an ack here "
                "(acked already, delivered on another connection, or delivered longer than "
                "ack_wait ago: then it comes again)",
            )
        msg = entry[0]
        if term:
            body = b"+TERM"
        elif nak:
            body = b"-NAK" + (b' {"delay":%d}' % (delay_ms * 1_000_000) if delay_ms else b"")
        else:
            body = b"+ACK"
        nc = self._upstream.nc
        try:
            if confirm:
                # A request makes it a double ack: JetStream answers once the consumer's
                # leader has applied it (with its replicas). A flush would only prove that
                # the gateway's own NATS node got it, and on a cluster an ack taken by a node
                # while the leader is being elected is dropped: the message came again.
                await nc.request(msg.reply, body, timeout=ACK_TIMEOUT_S)
            else:
                await nc.publish(msg.reply, body)
        except (TimeoutError, nats.errors.Error):
            self._unacked.setdefault(seq, entry)  # not taken: it may be answered again
            raise ProtocolError(ErrorCode.INTERNAL, "NATS did not confirm the ack") from None

    def halt(self) -> None:
        self._halted = True

    async def stop(self) -> None:
        """Unbind; the durable and its position stay on the NATS server. What this
        connection was given and did not answer goes back at once (a NAK), rather than
        after ack_wait: another device continues where this one stopped."""
        self._halted = True
        sub, self._sub = self._sub, None
        nc = self._upstream.nc
        with contextlib.suppress(Exception):  # gone already, or NATS away: ack_wait does it
            if sub is not None:
                # first: the server drops this binding's waiting pull with the interest,
                # so the NAKed messages cannot go back into it
                await sub.unsubscribe()
            unanswered = [m for m, _ in self._unacked.values()] + self._inflight
            self._unacked.clear()
            self._inflight = []
            for msg in unanswered:
                if msg.reply:
                    await nc.publish(msg.reply, b"-NAK")


class DurableBridge:
    def __init__(self, upstream: Upstream, config: Config) -> None:
        self.upstream = upstream
        self.config = config
        # one listing at a time: of a stream's consumer names (O(consumers)), and of a
        # user's durables there (a consumer info each), however many ask
        self._names = CoalescedBy[str, list[str]]("durable-names")
        self._lists = CoalescedBy[tuple[str, str], list[dict[str, Any]]]("durable-list")

    async def _stream(self, stream: str) -> api.StreamInfo:
        try:
            return await self.upstream.js.stream_info(stream)
        except NotFoundError:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no stream {stream!r}") from None

    async def _consumer(self, stream: str, name: str) -> api.ConsumerInfo | None:
        try:
            info: api.ConsumerInfo = await self.upstream.js.consumer_info(stream, name)
        except NotFoundError:
            return None
        return info

    async def _owned_names(self, user: str, stream: str) -> list[str]:
        """The names of the user's consumers on the stream, read after this call."""
        names = await self._names.get(stream, lambda: self._consumer_names(stream))
        prefix = user_prefix(user)
        return [n for n in names if n.startswith(prefix)]

    async def close(self) -> None:
        await self._lists.close()
        await self._names.close()

    async def _consumer_names(self, stream: str) -> list[str]:
        """Every consumer name of the stream, page after page (JetStream answers at most
        1,024 names, or 256 infos, at a time)."""
        js = self.upstream.js
        names: list[str] = []
        while True:
            resp = await js._api_request(  # nats-py has no call for CONSUMER.NAMES
                f"{js._prefix}.CONSUMER.NAMES.{stream}",
                json.dumps({"offset": len(names)}).encode(),
                timeout=js._timeout,
            )
            page = resp.get("consumers") or []
            names.extend(page)
            if not page or len(names) >= int(resp.get("total", 0)):
                return names

    async def _owned(self, user: str, stream: str) -> list[api.ConsumerInfo]:
        out = []
        for name in await self._owned_names(user, stream):
            ci = await self._consumer(stream, name)
            if ci is not None and (ci.config.metadata or {}).get(OWNER_KEY) == user:
                out.append(ci)
        return out

    async def open(
        self,
        outbox: Outbox,
        user: str,
        stream: str,
        opts: Any,
        allowed: Callable[[list[str]], bool],
    ) -> tuple[DurableFeed, list[str]]:
        """Make the durable or check the one there is; the feed binds to it when started.
        ``allowed`` is asked, before anything is made or deleted, whether the user may
        read what the durable covers: the filter, or every subject of the stream (also
        returned, for the check of a live subscription)."""
        info = await self._stream(stream)
        subjects = list(info.config.subjects or [])
        flt: str | None = opts.filter
        if flt is not None and not any(overlaps(flt, s) for s in subjects):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"filter {flt!r} is outside the subjects of {stream!r}"
            )
        covered = [flt] if flt is not None else subjects
        if not allowed(covered):
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"your capabilities do not cover stream {stream!r} with {flt or 'no filter'!r}",
            )
        name = consumer_name(user, opts.durable)
        ci = await self._consumer(stream, name)
        if ci is not None:
            if (ci.config.metadata or {}).get(OWNER_KEY) != user:
                raise ProtocolError(ErrorCode.FORBIDDEN, f"durable {opts.durable!r} is not yours")
            if (ci.config.filter_subject or None) != flt and not opts.reset:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"durable {opts.durable!r} exists with filter "
                    f"{ci.config.filter_subject or None!r}; send reset: true to make it afresh",
                )
            if opts.reset:
                await self.upstream.js.delete_consumer(stream, name)
                ci = None
        if ci is None:
            limit = self.config.max_durables_per_user
            if len(await self._owned_names(user, stream)) >= limit:
                raise ProtocolError(
                    ErrorCode.LIMIT, f"at most {limit} durables per user on stream {stream!r}"
                )
        ci = await self.upstream.js.add_consumer(stream, self._config(user, name, opts, ci))
        state = info.state
        reply = {
            "durable": opts.durable,
            "pending": ci.num_pending or 0,
            "ack_pending": ci.num_ack_pending or 0,
            "first_seq": state.first_seq or 0,
            "last_seq": state.last_seq or 0,
        }
        feed = DurableFeed(
            self.upstream,
            outbox,
            stream,
            opts.durable,
            name,
            flt,
            explicit=opts.ack == "explicit",
            batch=opts.batch,
            ack_wait_s=ci.config.ack_wait or ACK_WAIT_MS / 1000,
            reply=reply,
        )
        return feed, covered

    def _config(
        self, user: str, name: str, opts: Any, existing: api.ConsumerInfo | None
    ) -> api.ConsumerConfig:
        """The consumer's config: made with the start position, ack wait and batch (its
        most unacked messages); an existing one keeps them all but an ack wait given
        anew (it may change on a live consumer)."""
        if existing is not None:
            cfg = existing.config
            if opts.ack_wait_ms is not None:
                cfg.ack_wait = opts.ack_wait_ms / 1000
            return cfg
        if opts.start_seq:
            policy, seq, at = api.DeliverPolicy.BY_START_SEQUENCE, opts.start_seq, None
        elif opts.start_time is not None:
            policy, seq, at = api.DeliverPolicy.BY_START_TIME, None, opts.start_time
        else:
            policy, seq, at = api.DeliverPolicy.NEW, None, None
        return api.ConsumerConfig(
            durable_name=name,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=(opts.ack_wait_ms or ACK_WAIT_MS) / 1000,
            max_ack_pending=opts.batch,
            filter_subject=opts.filter,
            deliver_policy=policy,
            opt_start_seq=seq,
            opt_start_time=at,
            inactive_threshold=self.config.durable_inactive_s,
            metadata={OWNER_KEY: user, NAME_KEY: opts.durable},
        )

    async def _list(self, user: str, stream: str) -> list[dict[str, Any]]:
        out = []
        for c in await self._owned(user, stream):
            out.append(
                {
                    "name": durable_of(user, c.name),
                    "filter": c.config.filter_subject or None,
                    "pending": c.num_pending or 0,
                    "ack_pending": c.num_ack_pending or 0,
                }
            )
        return sorted(out, key=lambda d: str(d["name"]))

    async def list(self, user: str, stream: str) -> list[dict[str, Any]]:
        await self._stream(stream)
        return await self._lists.get((user, stream), lambda: self._list(user, stream))

    async def delete(self, user: str, stream: str, durable: str) -> bool:
        name = consumer_name(user, durable)
        ci = await self._consumer(stream, name)
        if ci is None:
            return False
        if (ci.config.metadata or {}).get(OWNER_KEY) != user:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"durable {durable!r} is not yours")
        with contextlib.suppress(NotFoundError):
            await self.upstream.js.delete_consumer(stream, name)
        return True
