"""An ordered, flow-controlled reader of one JetStream stream, for one subscription.

Both KV watches and ``js_sub`` run on it.  It is an ephemeral pull consumer with no acks,
driven by hand (the nats.go "ordered consumer", done on pull):

- one pull request of ``batch`` messages is outstanding at a time, and the next is sent
  only when the client's socket has taken the previous batch, so a slow reader slows only
  its own consumer;
- consumer sequences must arrive without a hole, otherwise, or when heartbeats stop, or
  when the gateway's NATS connection comes back, the consumer is made again from the last
  delivered stream sequence + 1: no gap, no duplicate, without waiting for any client
  library's own slow recovery;
- :meth:`stop` deletes the consumer on the server at once (its ``inactive_threshold`` is a
  safety net should the gateway die).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from ..errors import ErrorCode, ProtocolError
from ..upstream import Upstream

log = logging.getLogger("natsgate.reader")

API = "$JS.API"
EXPIRES_S = 30.0  # a pull request lives this long on the server
HEARTBEAT_S = 2.0  # the server sends a heartbeat this often while a pull waits
INACTIVE_S = 30.0  # the server drops a forgotten consumer after this long


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a JetStream delivery's reply subject says about it."""

    consumer: str
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    pending: int

    @property
    def time(self) -> str:
        sec, ns = divmod(self.timestamp_ns, 1_000_000_000)
        stamp = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{ns:09d}Z"


def parse_ack(reply: str) -> Delivery | None:
    """Parse ``$JS.ACK.<stream>.<consumer>.<n>.<sseq>.<cseq>.<ts>.<pending>`` (and the
    newer form with domain and account hash in front)."""
    t = reply.split(".")
    if len(t) < 9 or t[0] != "$JS" or t[1] != "ACK":
        return None
    i = 4 if len(t) == 9 else 6
    try:
        return Delivery(t[i - 1], int(t[i + 1]), int(t[i + 2]), int(t[i + 3]), int(t[i + 4]))
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class Start:
    """Where a new consumer starts (it is made again from ``after`` + 1 later)."""

    seq: int | None = None  # by stream sequence, inclusive
    time: datetime | None = None
    last_per_subject: bool = False  # KV: the current value of each key
    # neither: only messages stored from now on


OnMessage = Callable[[Msg, Delivery], None]


class Reader:
    def __init__(
        self,
        upstream: Upstream,
        stream: str,
        filter_subject: str | None,
        start: Start,
        batch: int,
        on_message: OnMessage,
        written: Callable[[], Any] | None,
        *,
        resume: bool = True,
    ) -> None:
        self.upstream = upstream
        self.stream = stream
        self.filter = filter_subject
        self.start = start
        self.batch = batch
        self.on_message = on_message
        # coroutine factory: resolves when the client took all (None: a process-wide
        # reader with no client to wait for)
        self._written = written
        # On a remake: resume after the last sequence (streams), or start over from
        # ``start`` (KV: a fresh snapshot of current values).
        self.resume = resume
        self.last_seq = 0  # last stream sequence delivered
        self._started = False  # last_seq is meaningful (a consumer was made once)
        self._consumer: str | None = None
        self._creating: str | None = None  # the name of a consumer being made right now
        self._stopped = False
        self._gen = 0
        self._cseq = 0  # last consumer sequence seen in this generation
        self._received = 0  # messages of the current pull request
        self._asked = 0  # messages the current pull request asked for
        self._inbox = ""
        self._sub: Subscription | None = None
        self._wake = asyncio.Event()  # pull finished, heartbeat, or reset wanted
        self._pull_done = False
        self._reset = False
        self._alive = False
        # told of each consumer made again, before anything of it is delivered
        self.on_remade: Callable[[api.ConsumerInfo], None] | None = None

    # -------------------------------------------------------------- consumer

    async def open(self) -> api.ConsumerInfo:
        """Make the consumer and its delivery subscription; returns the consumer's info."""
        nc = self.upstream.nc
        if self._sub is None:
            self._inbox = nc.new_inbox()
            self._sub = await nc.subscribe(self._inbox + ".*", cb=self._on_delivery)
        return await self._create()

    async def _create(self) -> api.ConsumerInfo:
        self._gen += 1
        self._cseq = 0
        # Named by us, so stop() can delete it even while its creation is in flight
        # (the delete is sent after the create on the same connection, so it lands after).
        name = self._creating = f"ng{secrets.token_hex(8)}"
        cfg = api.ConsumerConfig(
            name=name,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=self.filter,
            inactive_threshold=INACTIVE_S,
            mem_storage=True,
            num_replicas=1,
            max_waiting=1,
        )
        if self._started:
            cfg.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = self.last_seq + 1
        elif self.start.last_per_subject:
            cfg.deliver_policy = api.DeliverPolicy.LAST_PER_SUBJECT
        elif self.start.seq:
            cfg.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = self.start.seq
        elif self.start.time is not None:
            cfg.deliver_policy = api.DeliverPolicy.BY_START_TIME
            cfg.opt_start_time = self.start.time
        else:
            cfg.deliver_policy = api.DeliverPolicy.NEW
        try:
            info = await self.upstream.js.add_consumer(self.stream, cfg, timeout=5)
        except NotFoundError:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no stream {self.stream!r}") from None
        except APIError as exc:
            if exc.code == 400:
                raise ProtocolError(ErrorCode.BAD_REQUEST, _api_text(exc)) from None
            raise
        finally:
            self._creating = None
        if self._stopped:  # stopped while it was being made
            self._forget_consumer(info.name or name)
            return info
        old, self._consumer = self._consumer, info.name
        if old:
            self._forget_consumer(old)
        if not self._started:
            self._started = True
            if not self.start.last_per_subject and info.delivered is not None:
                # the stream sequence just before the first one this consumer delivers
                self.last_seq = info.delivered.stream_seq or 0
        self._pull_done = True
        return info

    def _forget_consumer(self, name: str) -> None:
        task = asyncio.create_task(self._delete(name))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _delete(self, name: str) -> None:
        try:
            await self.upstream.js.delete_consumer(self.stream, name)
        except Exception as exc:  # gone already, or NATS away: inactive_threshold cleans up
            log.debug("delete consumer %s/%s: %r", self.stream, name, exc)

    def halt(self) -> None:
        """Deliver nothing more, from now on (synchronous: a revocation must not let a
        delivery already queued in the NATS client through). :meth:`stop` frees the rest."""
        self._stopped = True

    async def stop(self) -> None:
        """Release the subscription and delete the consumer now. Idempotent."""
        self._stopped = True
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe reader inbox: %r", exc)
        names = [n for n in (self._consumer, self._creating) if n]
        self._consumer = self._creating = None
        for name in names:
            await self._delete(name)

    # -------------------------------------------------------------- deliveries

    async def _on_delivery(self, msg: Msg) -> None:
        if self._stopped:
            return
        if not msg.reply:  # a status message, on the pull request's reply subject
            if msg.subject.rsplit(".", 1)[-1] != str(self._gen):
                return  # for a pull made before the last reset
            self._alive = True
            status = (msg.headers or {}).get("Status")
            if status == "100":  # idle heartbeat
                return
            if status in ("404", "408"):  # no messages / the pull expired
                self._finish_pull()
                return
            if status == "409":
                desc = (msg.headers or {}).get("Description", "")
                if "Consumer Deleted" in desc or "Leadership Change" in desc:
                    self.reset()
                else:
                    self._finish_pull()
                return
            return
        d = parse_ack(msg.reply)  # a message keeps its own subject; the reply names the consumer
        if d is None or d.consumer != self._consumer or self._reset:
            return  # for a consumer made before the last reset
        self._alive = True
        if d.consumer_seq != self._cseq + 1:
            log.info(
                "reader %s: consumer sequence jumped; remaking from %d",
                self.stream,
                self.last_seq + 1,
            )
            self.reset()
            return
        self._cseq = d.consumer_seq
        self._received += 1
        if d.stream_seq > self.last_seq:  # never a duplicate, even across remakes
            self.last_seq = d.stream_seq
            self.on_message(msg, d)
        if self._received >= self._asked:
            self._finish_pull()

    def _finish_pull(self) -> None:
        self._pull_done = True
        self._wake.set()

    def wake(self) -> None:
        """Make :meth:`pump` look at its ``until`` condition now."""
        self._wake.set()

    def reset(self) -> None:
        """Make the consumer again from the last delivered sequence + 1, soon."""
        self._reset = True
        self._gen += 1  # ignore whatever the old consumer still sends
        self._wake.set()

    async def _pull(self, batch: int) -> None:
        self._pull_done = False
        self._received = 0
        self._asked = batch
        req = {
            "batch": batch,
            "expires": int(EXPIRES_S * 1e9),
            "idle_heartbeat": int(HEARTBEAT_S * 1e9),
        }
        await self.upstream.nc.publish(
            f"{API}.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}",
            json.dumps(req).encode(),
            reply=f"{self._inbox}.{self._gen}",
        )

    async def pump(self, until: Callable[[], bool] | None = None) -> None:
        """Deliver until ``until()`` holds (or forever): pull a batch, wait until the
        client took it, pull the next; remake the consumer when needed."""
        while until is None or not until():
            # Clear first: whatever finishes a pull from here on (even during the awaits
            # below) leaves the event set, so the wait at the bottom cannot miss it.
            self._wake.clear()
            self._alive = False
            if self._reset:
                await self._remake()
                continue
            if self._pull_done:
                if self._written is not None:
                    await self._written()
                if until is not None and until():
                    return
                try:
                    await self._pull(self.batch)
                except (nats.errors.Error, OSError) as exc:
                    log.debug("pull failed: %r", exc)
                    self._reset = True
                    continue
            try:
                async with asyncio.timeout(HEARTBEAT_S * 2 + 1):
                    await self._wake.wait()
            except TimeoutError:
                if not self._alive and not self._pull_done:
                    log.info("reader %s: no heartbeat; remaking the consumer", self.stream)
                    self._reset = True

    async def _remake(self) -> None:
        delay = 0.1
        while True:
            if self.upstream.connected:
                if not self.resume:
                    self._started = False
                    self.last_seq = 0
                try:
                    info = await self._create()
                except ProtocolError:
                    raise
                except Exception as exc:
                    log.info("remaking consumer on %s failed: %r; retrying", self.stream, exc)
                else:
                    self._reset = False
                    if self.on_remade is not None:
                        self.on_remade(info)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _api_text(exc: APIError) -> str:
    return str(exc.description or "bad request") if hasattr(exc, "description") else str(exc)


_background: set[asyncio.Task[None]] = set()
