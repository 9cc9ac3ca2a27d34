"""The audit trail: what happened to whom, as JSON on NATS (``<AUDIT_PREFIX>.<kind>``).

One event is ``{"time", "gateway", "kind", "user", "address", "detail"}``. Callers pass
names, addresses and reasons, never a password, hash or token: nothing here could tell one
from a user name, so nothing that holds one is ever handed in.

Emitting never blocks and never fails the path that emits it: :meth:`Audit.emit` encodes
the event and queues it (a bounded queue; full: the event is dropped and counted), and one
task publishes what is queued on the gateway's NATS connection. A flood is cut per kind
and user (or address, without a user): a burst of ``BURST`` events, then one per
``EVERY_S``; what was cut is counted and the next event that passes says how many
(``detail.suppressed``). Administrator actions are not cut: they are few and each matters.
:meth:`Audit.note` cuts the gateway's info lines for refusals the same way, per kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client

log = logging.getLogger("natsgate.audit")

BURST = 10  # events of one kind and user before the flood cut
EVERY_S = 1.0  # then one per second
QUEUE = 10_000  # events waiting to be published; beyond it they are dropped
MAX_KEYS = 10_000  # flood counters kept; past it the idle ones go


class Kind(enum.StrEnum):
    """The last token of the subject; ``natsgate audit --kind`` takes these."""

    LOGIN = "login"  # detail.outcome: ok, failed, throttled
    LOGOUT = "logout"
    UPGRADE_REFUSED = "upgrade_refused"  # detail: status, reason
    FORBIDDEN = "forbidden"  # detail: op target, message
    REVOCATION = "revocation"  # detail: revoked subscriptions, or the token
    SLOW_CLIENT = "slow_client"  # closed 1013: send queue full
    ADMIN = "admin"  # detail.action: disconnect, caps


class _Bucket:
    __slots__ = ("at", "suppressed", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = float(BURST)
        self.at = now
        self.suppressed = 0


class Limiter:
    """The flood cut, per key: a burst of ``BURST``, then one per ``EVERY_S``; what was cut
    is counted for the next that passes. At most ``MAX_KEYS`` counters."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def admit(self, key: tuple[str, str]) -> int:
        """-1: cut; else how many of this key were cut since the last one."""
        now = time.monotonic()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_KEYS:
                self._forget_idle(now)
            b = self._buckets[key] = _Bucket(now)
        b.tokens = min(float(BURST), b.tokens + (now - b.at) / EVERY_S)
        b.at = now
        if b.tokens < 1:
            b.suppressed += 1
            return -1
        b.tokens -= 1
        suppressed, b.suppressed = b.suppressed, 0
        return suppressed

    def take_suppressed(self, key: tuple[str, str]) -> int:
        """What was cut of this key and not yet told (then nothing is)."""
        b = self._buckets.get(key)
        if b is None:
            return 0
        suppressed, b.suppressed = b.suppressed, 0
        return suppressed

    def _forget_idle(self, now: float) -> None:
        """Drop counters back at a full burst (nothing cut to report); if every one is
        busy, drop them all: a flood of distinct keys is cut by the queue bound."""
        full = BURST * EVERY_S
        idle = [k for k, b in self._buckets.items() if not b.suppressed and now - b.at >= full]
        for k in idle or list(self._buckets):
            del self._buckets[k]


class Audit:
    """Publishes audit events for one gateway (``prefix`` empty: off)."""

    def __init__(self, nc: Callable[[], Client], prefix: str, gateway: str) -> None:
        self._nc = nc  # a getter: the upstream replaces its client when it connects
        self.prefix = prefix
        self.gateway = gateway
        self._queue: deque[tuple[str, bytes]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._cut = Limiter()
        self._log_cut = Limiter()  # note()'s lines, per kind of line
        self._log_pending: set[str] = set()  # kinds with a "suppressed" line due
        self.dropped = 0  # queue full, or NATS refused the publish
        self._enc = msgspec.json.Encoder()

    @property
    def enabled(self) -> bool:
        return bool(self.prefix)

    def emit(
        self,
        kind: Kind,
        user: str | None = None,
        address: str | None = None,
        /,
        **detail: Any,
    ) -> None:
        """Queue one event; returns at once whatever NATS is doing."""
        if not self.prefix:
            return
        if kind is not Kind.ADMIN:
            suppressed = self._cut.admit((kind.value, user or address or ""))
            if suppressed < 0:
                return
            if suppressed:
                detail["suppressed"] = suppressed
        if len(self._queue) >= QUEUE:
            self.dropped += 1
            return
        event = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "gateway": self.gateway,
            "kind": kind.value,
            "user": user,
            "address": address,
            "detail": detail,
        }
        self._queue.append((f"{self.prefix}.{kind.value}", self._enc.encode(event)))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._publish(), name="audit")

    def note(self, logger: logging.Logger, kind: str, msg: str, *args: object) -> None:
        """An info line for what a peer can repeat at will: refused upgrades, failed
        logins. Cut per ``kind`` of line (not per user: a storm of names is a storm too)
        with the trail's limiter, so 1,000 refusals are a handful of lines. What was cut
        is told by the next line of that kind, or ``EVERY_S`` later by a line of its own.
        Written with or without a ``prefix``: the log does not need NATS."""
        if not logger.isEnabledFor(logging.INFO):
            return
        suppressed = self._log_cut.admit((kind, ""))
        if suppressed < 0:
            if kind not in self._log_pending:
                self._log_pending.add(kind)
                loop = asyncio.get_running_loop()
                loop.call_later(EVERY_S, self._note_suppressed, logger, kind)
            return
        if suppressed:
            msg += " (%d more %s lines suppressed before it)"
            args = (*args, suppressed, kind)
        logger.info(msg, *args)

    def _note_suppressed(self, logger: logging.Logger, kind: str) -> None:
        self._log_pending.discard(kind)
        suppressed = self._log_cut.take_suppressed((kind, ""))
        if suppressed:
            logger.info("%s: %d more lines suppressed", kind, suppressed)

    async def _publish(self) -> None:
        try:
            while self._queue:
                subject, payload = self._queue.popleft()
                nc = self._nc()
                if nc.is_closed:
                    self.dropped += 1
                    continue
                try:
                    await nc.publish(subject, payload)  # nats-py buffers it while reconnecting
                except Exception as exc:  # buffer full, draining, closed: the event is lost
                    self.dropped += 1
                    log.debug("audit event not published: %r", exc)
        finally:
            self._task = None

    async def close(self) -> None:
        """Publish what is queued (before the NATS connection drains)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await asyncio.shield(task)
