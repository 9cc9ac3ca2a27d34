"""One connection's life: opening (``cap_update`` first), its input queue, the rate limit,
keepalive, token expiry and revocation, capability changes, and closing with everything
it held released.

What each op does is in :mod:`.ops` (a table from op to handler); the subscriptions it
holds are in :mod:`.subscriptions`. The session speaks to its socket only through
:class:`Transport` and to the gateway only through :class:`Host`, so it runs behind any
WebSocket layer. Every task it starts is in ``self._tasks`` and ends when it ends.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from . import frames, ops
from . import protocol as p
from .audit import Audit
from .audit import Kind as AuditKind
from .auth import Identity
from .capabilities import Capabilities
from .capstore import CapStore
from .errors import CloseCode, ErrorCode, ProtocolError
from .metrics import Traffic
from .ops import presence, subs
from .ops.context import Services
from .outbox import Flusher, Outbox
from .subscriptions import SubKey, Subscription

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


class Host(Services, Protocol):
    """What a session needs from the gateway, beyond what its ops need."""

    @property
    def capstore(self) -> CapStore: ...
    @property
    def flusher(self) -> Flusher: ...
    @property
    def traffic(self) -> Traffic: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def audit(self) -> Audit: ...
    def detach(self, session: Session) -> None: ...
    def track(self, task: asyncio.Task[Any]) -> None: ...


class Session:
    # slots: thousands of these live at once (memory per idle connection is a target)
    __slots__ = (
        "__weakref__",
        "_closed",
        "_ending",
        "_expiry",
        "_inq",
        "_inq_bytes",
        "_ping_sent",
        "_reader",
        "_refill_at",
        "_tasks",
        "_tokens",
        "bytes_in",
        "caps",
        "cmds",
        "config",
        "conn_id",
        "frames_in",
        "gw",
        "last_seen",
        "outbox",
        "remote",
        "since",
        "state",
        "subs",
        "token",
        "transport",
        "user",
    )

    def __init__(self, gw: Host, transport: Transport, identity: Identity, remote: str) -> None:
        self.gw = gw
        self.config = gw.config
        self.transport = transport
        self.user = identity.user
        self.token = identity  # the token it was opened (or last refreshed) with: its exp
        self.remote = remote
        self.conn_id = secrets.token_urlsafe(9)  # opaque, unique across gateways (admin, presence)
        self.since = time.time()  # opened at (wall clock, for people)
        self.bytes_in = self.frames_in = 0  # client frames; what went out is the outbox's
        self.state = State.OPEN
        self.caps: Capabilities = Capabilities()
        self.subs: dict[SubKey, Subscription] = {}
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
        self.cmds: dict[asyncio.Task[Any], p.Cmd] = {}  # commands in flight
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
        """Load capabilities and send them first (protocol.md §1)."""
        self.caps = await self.gw.capstore.join(self.user, self)
        self.outbox.push(frames.encode_cap_update(self.caps.to_json(), []))
        self._arm_expiry()

    @property
    def services(self) -> Services:
        return self.gw

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
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
        subs.release_all(self)
        self.gw.presence.leave_all(self.conn_id)  # its members leave now, everywhere
        self.gw.capstore.leave(self.user, self)
        if self._expiry is not None:
            self._expiry.cancel()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        unanswered = [op for op in self.cmds.values() if op.inbox is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            for op in unanswered:  # every op with an inbox is answered exactly once (§3)
                self.transport.write(
                    frames.encode_error(
                        ErrorCode.INTERNAL,
                        "the connection closed before the reply came; the command may or "
                        "may not have run",
                        target=op.target,
                        inbox=op.inbox,
                    )
                )
            if error is not None:  # the last word, sent past the (dropped) queue
                self.gw.metrics.errors.labels(error[0].value).inc()
                self.transport.write(frames.encode_error(*error))
            async with asyncio.timeout(1.0):
                await self.transport.close(code, error[1] if error else "")
        except (TimeoutError, ConnectionError, RuntimeError, OSError) as exc:
            log.debug("closing %s: %r", self.user, exc)
        finally:
            self.state = State.CLOSED
            self.gw.detach(self)
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            if log.isEnabledFor(logging.INFO):
                self._log_disconnect(code, error)

    def _log_disconnect(self, code: CloseCode, error: tuple[ErrorCode, str] | None) -> None:
        """One line per connection's end; ``by=client``: the socket closed or went first."""
        how = f"code={int(code)}" + (f" reason={error[1]!r}" if error else "")
        log.info(
            "disconnect user=%s conn=%s address=%s %s duration=%.1fs frames_in=%d bytes_in=%d"
            " envelopes_out=%d bytes_out=%d",
            self.user,
            self.conn_id,
            self.remote,
            "by=client" if self._ending else how,
            time.time() - self.since,
            self.frames_in,
            self.bytes_in,
            self.outbox.written,
            self.outbox.bytes_out,
        )

    def disconnected(self) -> None:
        """The socket is gone (the peer closed it, vanished, or a write failed): free
        everything, once the frames the client sent before are handled. A ``pub`` sent
        right before ``close()`` is published, as the protocol's "in order" promises;
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
            self.spawn_detached(self.close(code, error))

    def spawn_detached(self, coro: Coroutine[Any, Any, Any]) -> None:
        """For close() itself, which cancels the session's tasks and so cannot be one."""
        task = asyncio.create_task(coro)
        self.gw.track(task)

    def _on_slow(self) -> None:
        self.gw.metrics.backpressure_closes.inc()
        log.info("closing slow client %s (%s): send queue full", self.user, self.remote)
        self.gw.audit.emit(AuditKind.SLOW_CLIENT, self.user, self.remote, conn=self.conn_id)
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
        self.gw.audit.emit(AuditKind.REVOCATION, self.user, self.remote, token="revoked")
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
            self.spawn(self._ping(), "ping")

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
        self._reader = self.spawn(self._read_inbox(opening=True), "open")
        log.info("connect user=%s conn=%s address=%s", self.user, self.conn_id, self.remote)

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
        self.bytes_in += len(frame)
        self.frames_in += 1
        q = self._inq
        if q is None:
            q = self._inq = deque()
        q.append(frame)
        self._inq_bytes += len(frame)
        if self._reader is None:
            self._reader = self.spawn(self._read_inbox(), "read")
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
        """Handle each envelope of a client frame on its own, in order (protocol.md §1)."""
        self.seen()
        for item in p.decode_frame(frame):
            if self.state is not State.OPEN:
                return
            if isinstance(item, ProtocolError):
                self.send_error(item)
                continue
            if not self._take_token():
                self.send_error(
                    ProtocolError(
                        ErrorCode.LIMIT,
                        "too many frames; slow down",
                        inbox=item.inbox,
                        target=item.target,
                    )
                )
                continue
            try:
                await ops.dispatch(self, item)
            except ProtocolError as err:
                err.inbox = err.inbox or item.inbox
                err.target = err.target or item.target
                self.send_error(err)
            except Exception:
                log.exception("op %s from %s failed", type(item).__name__, self.user)
                self.send_error(
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

    def send_error(self, err: ProtocolError) -> None:
        self.gw.metrics.errors.labels(err.code.value).inc()
        if err.code is ErrorCode.FORBIDDEN:
            self.gw.audit.emit(
                AuditKind.FORBIDDEN, self.user, self.remote, target=err.target, message=err.message
            )
        self.outbox.push(frames.encode_protocol_error(err))

    def ack(self, op: p.ClientOp, **extra: Any) -> None:
        if op.inbox is not None:
            self.outbox.push(frames.encode_reply(op.target, op.inbox, **extra))

    def refresh(self, identity: Identity) -> None:
        """A fresh token (the ``auth`` op): its ``exp`` applies from now on."""
        self.token = identity
        self._arm_expiry()

    # ------------------------------------------------------------------ capabilities

    def caps_changed(self, caps: Capabilities) -> None:
        """End what the new capabilities no longer allow, then say so (protocol.md §4)."""
        if self.state is not State.OPEN:
            return
        self.caps = caps
        revoked = subs.revoke(self, caps) + presence.revoke(self, caps)
        self.outbox.push(frames.encode_cap_update(caps.to_json(), revoked))
        if revoked:
            self.gw.audit.emit(AuditKind.REVOCATION, self.user, self.remote, revoked=revoked)
