"""One connection: its state, its subscriptions, and what each op does to them.

The session speaks to its socket only through :class:`Transport` and to NATS only through
the gateway's hub and bridges, so the same session runs behind any WebSocket layer.
Every task it starts is in ``self._tasks`` and ends when the session ends.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import protocol as p
from .auth import AuthError, Identity, verify_token
from .bridges import core
from .bridges.feed import Feed
from .capabilities import Capabilities, Kind
from .errors import CloseCode, ErrorCode, ProtocolError
from .outbox import Outbox, OutboxClosed

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("natsgate.session")

# Client frames waiting to be handled before the transport stops reading the socket (as
# aiohttp's reader did at 64 KiB), and the level at which it starts again.
INBOX_HIGH, INBOX_HIGH_BYTES = 64, 65_536
INBOX_LOW, INBOX_LOW_BYTES = 8, 32_768


class Transport(Protocol):
    """What a session needs from its WebSocket."""

    def write(self, frame: bytes) -> bool: ...  # one text frame; False: congested
    async def drained(self) -> None: ...  # until the socket takes writes again
    async def ping(self) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(eq=False, slots=True)  # one per subscription of every connection: memory
class Subscription:
    kind: Kind
    target: str
    pattern: str  # the core pattern, KV key pattern, or JetStream filter ("" for none)
    checked: list[str]  # what the capability check covered; re-checked on cap changes
    active: bool = True
    feed: Feed | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[Kind, str, str]:
        return (self.kind, self.target, self.pattern)

    def describe(self) -> dict[str, str]:
        """How ``cap_update`` names an ended subscription: the op and target that made it,
        plus ``pattern`` (KV) or ``filter`` (JetStream) when it had one."""
        match self.kind:
            case Kind.SUB:
                return {"op": "sub", "target": self.target}
            case Kind.KV:
                return {"op": "kv_sub", "target": self.target, "pattern": self.pattern}
            case Kind.JS:
                d = {"op": "js_sub", "target": self.target}
                if self.pattern:
                    d["filter"] = self.pattern
                return d


class Session:
    # slots: thousands of these live at once (memory per idle connection is a target)
    __slots__ = (
        "__weakref__",
        "_closed",
        "_cmds",
        "_ending",
        "_expiry",
        "_inq",
        "_inq_bytes",
        "_ping_sent",
        "_reader",
        "_refill_at",
        "_tasks",
        "_tokens",
        "caps",
        "config",
        "gw",
        "last_seen",
        "outbox",
        "remote",
        "state",
        "subs",
        "token",
        "transport",
        "user",
    )

    def __init__(self, gw: Gateway, transport: Transport, identity: Identity, remote: str) -> None:
        self.gw = gw
        self.config = gw.config
        self.transport = transport
        self.user = identity.user
        self.token = identity  # the token it was opened (or last refreshed) with: its exp
        self.remote = remote
        self.state = State.OPEN
        self.caps: Capabilities = Capabilities()
        self.subs: dict[tuple[Kind, str, str], Subscription] = {}
        self.outbox = Outbox(
            gw.config.outbox_bytes,
            gw.config.backpressure_ms / 1000,
            self._on_slow,
            sink=transport,
            flusher=gw.flusher,
            on_gone=self.disconnected,
        )
        self.last_seen = time.monotonic()
        self._ping_sent: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cmds: dict[asyncio.Task[Any], p.Cmd] = {}  # commands in flight
        self._expiry: asyncio.TimerHandle | None = None
        self._tokens = float(gw.config.rate_burst)
        self._refill_at = time.monotonic()
        self._closed: asyncio.Future[None] | None = None  # made when someone waits
        self._inq: deque[bytes | None] | None = None  # client frames not yet handled
        self._inq_bytes = 0
        self._ending = False  # the socket is gone; close once the frames before are handled
        self._reader: asyncio.Task[None] | None = None  # lives while frames wait

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Load capabilities and send them first (contract §1)."""
        self.caps = await self.gw.capstore.join(self.user, self)
        self.outbox.push(p.encode_cap_update(self.caps.to_json(), []))
        self._arm_expiry()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{name}:{self.user}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_closed(self) -> None:
        if self.state is State.CLOSED:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed)

    async def close(
        self, code: CloseCode = CloseCode.NORMAL, error: tuple[ErrorCode, str] | None = None
    ) -> None:
        """End the connection and free everything it held. Safe to call more than once."""
        if self.state is not State.OPEN:
            await self.wait_closed()
            return
        self.state = State.CLOSING
        self.outbox.close()
        self._release_all()
        self.gw.capstore.leave(self.user, self)
        if self._expiry is not None:
            self._expiry.cancel()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        unanswered = [op for op in self._cmds.values() if op.inbox is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            for op in unanswered:  # every op with an inbox is answered exactly once (§3)
                self.transport.write(
                    p.encode_error(
                        ErrorCode.INTERNAL,
                        "the connection closed before the reply came; the command may or "
                        "may not have run",
                        target=op.target,
                        inbox=op.inbox,
                    )
                )
            if error is not None:  # the last word, sent past the (dropped) queue
                self.gw.metrics.errors.labels(error[0].value).inc()
                self.transport.write(p.encode_error(*error))
            await asyncio.wait_for(self.transport.close(code, error[1] if error else ""), 1.0)
        except (TimeoutError, ConnectionError, RuntimeError, OSError) as exc:
            log.debug("closing %s: %r", self.user, exc)
        finally:
            self.state = State.CLOSED
            self.gw.detach(self)
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)

    def disconnected(self) -> None:
        """The socket is gone (the peer closed it, vanished, or a write failed): free
        everything, once the frames the client sent before are handled. A ``pub`` sent
        right before ``close()`` is published, as the contract's "in order" promises;
        only its reply has nowhere to go."""
        if self.state is not State.OPEN or self._ending:
            return
        self._ending = True
        if self._reader is None or self._inq is None:
            self._close_gone()
        else:
            self._inq.append(None)  # the reader closes the session when it gets here

    def _close_gone(self) -> None:
        self._close_soon(CloseCode.GOING_AWAY if self.gw.stopping else CloseCode.NORMAL)

    def _close_soon(self, code: CloseCode, error: tuple[ErrorCode, str] | None = None) -> None:
        if self.state is State.OPEN:
            self._spawn_detached(self.close(code, error))

    def _spawn_detached(self, coro: Coroutine[Any, Any, Any]) -> None:
        """For close() itself, which cancels the session's tasks and so cannot be one."""
        task = asyncio.create_task(coro)
        self.gw.track(task)

    def _on_slow(self) -> None:
        self.gw.metrics.backpressure_closes.inc()
        log.info("closing slow client %s (%s): send queue full", self.user, self.remote)
        self._close_soon(
            CloseCode.TRY_AGAIN_LATER,
            (ErrorCode.BACKPRESSURE, "client is reading too slowly; reconnect"),
        )

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        delay = max(0.0, self.token.exp - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._close_soon(CloseCode.UNAUTHORIZED, (ErrorCode.UNAUTHORIZED, "token expired"))

    def revoke(self) -> None:
        """Its token was revoked (logout, ``natsgate user revoke``): close as on expiry."""
        log.info("closing %s (%s): token revoked", self.user, self.remote)
        self._close_soon(CloseCode.UNAUTHORIZED, (ErrorCode.UNAUTHORIZED, "token revoked"))

    def keepalive(self, now: float) -> None:
        """Called by the gateway's one sweeper (not a task per connection: memory): ping a
        client silent for PING_INTERVAL, close it if nothing came back in PING_TIMEOUT."""
        if self.state is not State.OPEN:
            return
        sent = self._ping_sent
        if sent is not None:
            if self.last_seen >= sent:
                self._ping_sent = None  # answered (a pong, or any frame)
            elif now - sent >= self.config.ping_timeout_s:
                log.info(
                    "closing %s (%s): no pong within %.1fs",
                    self.user,
                    self.remote,
                    self.config.ping_timeout_s,
                )
                self._close_soon(CloseCode.NO_PONG)
                return
            else:
                return
        if now - self.last_seen >= self.config.ping_interval_s:
            self._ping_sent = now
            self._spawn(self._ping(), "ping")

    async def _ping(self) -> None:
        try:
            await self.transport.ping()
        except (ConnectionError, RuntimeError, OSError):
            self._close_soon(CloseCode.GOING_AWAY)

    def seen(self) -> None:
        self.last_seen = time.monotonic()

    # ------------------------------------------------------------------ input

    def begin(self) -> None:
        """Open without holding the caller (a protocol callback); frames that arrive
        meanwhile wait, so ``cap_update`` still goes first (§1)."""
        self._inq = deque()
        self._reader = self._spawn(self._read_inbox(opening=True), "open")

    def receive(self, frame: bytes) -> bool:
        """A client frame from a transport that reads in callbacks. Frames are handled in
        order by one task that lives only while frames wait: none for an idle connection.
        False: enough is waiting; the transport should pause reading (the session resumes
        it when caught up)."""
        if self.state is not State.OPEN or self._ending:
            return True
        t = self.gw.traffic
        t.frames_in += 1
        t.bytes_in += len(frame)
        q = self._inq
        if q is None:
            q = self._inq = deque()
        q.append(frame)
        self._inq_bytes += len(frame)
        if self._reader is None:
            self._reader = self._spawn(self._read_inbox(), "read")
        return len(q) < INBOX_HIGH and self._inq_bytes < INBOX_HIGH_BYTES

    async def _read_inbox(self, *, opening: bool = False) -> None:
        try:
            if opening:
                await self.open()
            q = self._inq
            while q:
                frame = q.popleft()
                if frame is None:  # disconnected() was called: everything before is done
                    self._close_gone()
                    return
                self._inq_bytes -= len(frame)
                if len(q) <= INBOX_LOW and self._inq_bytes <= INBOX_LOW_BYTES:
                    self.transport.resume_reading()
                await self.on_frame(frame)
            self.transport.resume_reading()
        except Exception:
            log.exception("connection of %s failed", self.user)
            self._close_soon(CloseCode.INTERNAL)
        finally:
            self._reader = self._inq = None
            self._inq_bytes = 0

    async def on_frame(self, frame: bytes | str) -> None:
        """Handle each envelope of a client frame on its own, in order (contract §1)."""
        self.seen()
        for item in p.decode_frame(frame):
            if self.state is not State.OPEN:
                return
            if isinstance(item, ProtocolError):
                self._send_error(item)
                continue
            if not self._take_token():
                self._send_error(
                    ProtocolError(
                        ErrorCode.LIMIT,
                        "too many frames; slow down",
                        inbox=item.inbox,
                        target=item.target,
                    )
                )
                continue
            try:
                await self._dispatch(item)
            except ProtocolError as err:
                err.inbox = err.inbox or item.inbox
                err.target = err.target or item.target
                self._send_error(err)
            except Exception:
                log.exception("op %s from %s failed", type(item).__name__, self.user)
                self._send_error(
                    ProtocolError(
                        ErrorCode.INTERNAL, "internal error", inbox=item.inbox, target=item.target
                    )
                )

    def _take_token(self) -> bool:
        """Per-connection rate limit (RATE_PER_S, RATE_BURST); off when the rate is 0."""
        rate = self.config.rate_per_s
        if rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(
            float(self.config.rate_burst), self._tokens + (now - self._refill_at) * rate
        )
        self._refill_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _send_error(self, err: ProtocolError) -> None:
        self.gw.metrics.errors.labels(err.code.value).inc()
        self.outbox.push(p.encode_protocol_error(err))

    def _ack(self, op: p.ClientOp, **extra: Any) -> None:
        if op.inbox is not None:
            self.outbox.push(p.encode_reply(op.target, op.inbox, **extra))

    async def _dispatch(self, op: p.ClientOp) -> None:
        match op:
            case p.Sub():
                await self._sub(op)
            case p.Unsub():
                self._unsub(Kind.SUB, op.target, "")
                self._ack(op)
            case p.Pub():
                await self._pub(op)
            case p.Cmd():
                self._cmd(op)
            case p.KvSub():
                await self._feed(op, Kind.KV, op.pattern)
            case p.KvUnsub():
                self._unsub(Kind.KV, op.target, op.pattern)
                self._ack(op)
            case p.JsSub():
                await self._feed(op, Kind.JS, op.opts.filter or "")
            case p.JsUnsub():
                self._unsub(Kind.JS, op.target, op.filter or "")
                self._ack(op)
            case p.Ping():
                self.outbox.push(p.encode_pong(op.inbox))
            case p.Auth():
                self._refresh_token(op)

    # ------------------------------------------------------------------ ops

    def _forbidden(self, what: str) -> ProtocolError:
        return ProtocolError(ErrorCode.FORBIDDEN, f"your capabilities do not cover {what}")

    def _admit(
        self, kind: Kind, target: str, pattern: str, checked: list[str]
    ) -> Subscription | None:
        """Register a new subscription, or None when the same one exists already."""
        if (kind, target, pattern) in self.subs:
            return None
        if len(self.subs) >= self.config.max_subs:
            raise ProtocolError(
                ErrorCode.LIMIT, f"at most {self.config.max_subs} subscriptions per connection"
            )
        sub = Subscription(kind, target, pattern, checked)
        self.subs[sub.key] = sub
        self.gw.metrics.subscriptions.labels(kind.value).inc()
        return sub

    async def _sub(self, op: p.Sub) -> None:
        if not self.caps.can_subscribe(op.target, self.gw.reserved):
            raise self._forbidden(f"subject {op.target!r}")
        sub = self._admit(Kind.SUB, op.target, "", [op.target])
        if sub is None:  # already subscribed: idempotent
            return self._ack(op)
        try:
            await self.gw.hub.add(op.target, self.outbox)
        except ProtocolError:
            self._forget(sub)
            raise
        except Exception as exc:
            self._forget(sub)
            log.warning("subscribe %s for %s failed: %r", op.target, self.user, exc)
            raise ProtocolError(
                ErrorCode.INTERNAL, "NATS did not confirm the subscription"
            ) from None
        if not sub.active:  # revoked (or closed) while NATS confirmed it
            self.gw.hub.remove(op.target, self.outbox)
            raise self._forbidden(f"subject {op.target!r}")
        self._ack(op)

    async def _feed(self, op: p.KvSub | p.JsSub, kind: Kind, pattern: str) -> None:
        what = "bucket" if kind is Kind.KV else "stream"
        denied = self._forbidden(f"{what} {op.target!r} with {pattern or 'no filter'!r}")
        # Check what is known before touching NATS, so a refusal says nothing about
        # whether the bucket or stream exists.
        if pattern and not self.caps.allows(kind, op.target, [pattern], self.gw.reserved):
            raise denied
        if not pattern and not self.caps.has_stream(op.target, self.gw.reserved):
            raise denied
        if (kind, op.target, pattern) not in self.subs:
            feeds = sum(1 for s in self.subs.values() if s.kind is not Kind.SUB)
            if feeds >= self.config.max_feeds:  # each one is a consumer on the NATS server
                raise ProtocolError(
                    ErrorCode.LIMIT,
                    f"at most {self.config.max_feeds} KV watches and stream subscriptions "
                    "per connection",
                )
        feed: Feed
        if isinstance(op, p.KvSub):  # open raises not_found / bad_request
            feed, checked = await self.gw.kv.open(self.outbox, op)
        else:
            feed, checked = await self.gw.js.open(self.outbox, op)
        if not self.caps.allows(kind, op.target, checked, self.gw.reserved):
            raise denied
        sub = self._admit(kind, op.target, pattern, checked)
        if sub is None:
            return self._ack(op)
        sub.feed = feed
        try:
            extra = await feed.start()
        except BaseException:
            self._forget(sub)
            self._spawn_detached(feed.stop())
            raise
        if not sub.active:
            self._spawn_detached(feed.stop())
            raise self._forbidden(f"{op.target!r}")
        self._ack(op, **extra)
        sub.task = self._spawn(self._run_feed(sub, feed), f"{kind.value}:{op.target}")

    async def _run_feed(self, sub: Subscription, feed: Feed) -> None:
        try:
            await feed.run()
        except ProtocolError as err:
            err.target = err.target or sub.target
            self._send_error(err)
        except (asyncio.CancelledError, OutboxClosed):
            raise
        except Exception:
            log.exception("%s feed %s of %s failed", sub.kind.value, sub.target, self.user)
            self._send_error(
                ProtocolError(ErrorCode.INTERNAL, "subscription failed", target=sub.target)
            )
        finally:
            if sub.active:  # ended by itself: forget it so it can be made again
                self._forget(sub)
            self._spawn_detached(feed.stop())

    def _unsub(self, kind: Kind, target: str, pattern: str) -> None:
        sub = self.subs.get((kind, target, pattern))
        if sub is not None:
            self._end(sub)

    def _forget(self, sub: Subscription) -> None:
        if self.subs.get(sub.key) is sub:
            del self.subs[sub.key]
            self.gw.metrics.subscriptions.labels(sub.kind.value).dec()
        sub.active = False

    def _end(self, sub: Subscription) -> None:
        """Stop delivery at once (nothing of it is queued after this returns)."""
        self._forget(sub)
        if sub.kind is Kind.SUB:
            self.gw.hub.remove(sub.target, self.outbox)
            return
        if sub.feed is not None:
            sub.feed.halt()  # deliveries already queued in the NATS client are dropped
        if sub.task is not None:
            sub.task.cancel()
        if sub.feed is not None:
            # Not left to the task's finally: a task cancelled before it first ran never
            # enters its try block. stop() is idempotent.
            self._spawn_detached(sub.feed.stop())

    def _release_all(self) -> None:
        for sub in list(self.subs.values()):
            self._end(sub)

    async def _pub(self, op: p.Pub) -> None:
        if not self.caps.can_publish(op.target, self.gw.reserved):
            raise self._forbidden(f"publishing on {op.target!r}")
        confirm = op.inbox is not None
        await core.publish(
            self.gw.upstream.nc, op.target, bytes(op.data), self.user, confirm=confirm
        )
        self._ack(op)

    def _cmd(self, op: p.Cmd) -> None:
        if not self.caps.can_command(op.target, self.gw.reserved):
            raise self._forbidden(f"commands on {op.target!r}")
        if len(self._cmds) >= self.config.max_pending_cmds:
            raise ProtocolError(
                ErrorCode.LIMIT, f"at most {self.config.max_pending_cmds} commands in flight"
            )
        task = self._spawn(self._request(op), "cmd")
        self._cmds[task] = op

    async def _request(self, op: p.Cmd) -> None:
        timeout_ms = op.timeout_ms or self.config.cmd_timeout_ms
        started = time.perf_counter()
        outcome = "ok"
        try:
            msg = await core.request(
                self.gw.upstream.nc, op.target, bytes(op.data), self.user, timeout_ms / 1000
            )
            headers = {k: v for k, v in (msg.headers or {}).items()} or None
            self.outbox.push(p.encode_cmd_reply(op.target, op.inbox, msg.data, headers))
        except ProtocolError as err:
            outcome = err.code.value
            err.inbox, err.target = op.inbox, op.target
            self._send_error(err)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._cmds.pop(task, None)
            self.gw.metrics.cmd_latency.labels(outcome).observe(time.perf_counter() - started)

    def _refresh_token(self, op: p.Auth) -> None:
        """The ``auth`` op: a fresh token for the same user extends the connection."""
        try:
            ident = verify_token(op.data.token, self.config.jwt_secret)
        except AuthError as exc:
            # The current token still holds; the connection stays until it expires.
            raise ProtocolError(ErrorCode.UNAUTHORIZED, str(exc)) from None
        if ident.user != self.user:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the new token is for another user")
        if self.gw.revocations.revoked(ident):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "token revoked")
        self.token = ident
        self._arm_expiry()
        self._ack(op, exp=ident.exp)

    # ------------------------------------------------------------------ capabilities

    def caps_changed(self, caps: Capabilities) -> None:
        """End what the new capabilities no longer allow, then say so (contract §4)."""
        if self.state is not State.OPEN:
            return
        self.caps = caps
        revoked = []
        for sub in list(self.subs.values()):
            if not caps.allows(sub.kind, sub.target, sub.checked, self.gw.reserved):
                self._end(sub)
                revoked.append(sub.describe())
        self.outbox.push(p.encode_cap_update(caps.to_json(), revoked))
