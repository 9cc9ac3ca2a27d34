"""The process-wide parts every session shares, and their start and stop order."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections import Counter, defaultdict
from typing import Any

from nats.js.kv import KeyValue

from .admin.bus import PREFIX as ADMIN_PREFIX
from .admin.bus import AdminBus
from .audit import Audit
from .auth import Passwords, Throttle, Verifier
from .bridges.durable import DurableBridge
from .bridges.jetstream import JsBridge
from .bridges.kv import KvBridge
from .bridges.presence import PresenceBridge
from .capabilities import Reserved
from .capstore import CapStore, ensure_bucket
from .config import Config
from .errors import CloseCode
from .fdlimit import connection_ceiling
from .hashpool import HashPool
from .hub import Hub
from .jwks import KeySet
from .metrics import Metrics, Traffic
from .outbox import Flusher
from .revocations import Revocations
from .session import Session
from .upstream import Upstream

log = logging.getLogger("natsgate")


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.upstream = Upstream(config, self.metrics)
        self.hub = Hub(
            lambda: self.upstream.nc, skip=lambda pattern: self.reserved.unnamed(pattern)
        )
        self.capstore = CapStore(self.upstream, config.auth_bucket)
        self.kv = KvBridge(self.upstream)
        self.js = JsBridge(self.upstream)
        self.durables = DurableBridge(self.upstream, config)
        self.presence = PresenceBridge(self.upstream, config)
        self.revocations = Revocations(self.upstream, config.auth_revoked_bucket)
        self.revocations.on_revoked = self._revoked
        # The identity provider's keys (JWT_JWKS_URL), beside HS256 tokens of JWT_SECRET
        self.keys = KeySet(config.jwt_jwks_url, self.metrics) if config.jwt_jwks_url else None
        self.verifier = Verifier(
            secret=config.jwt_secret,
            keys=self.keys,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
            user_claim=config.jwt_user_claim,
        )
        # The gateway's own buckets: hashes and revocations never readable, capabilities
        # only through a grant naming the bucket (security.md); presence members
        # likewise: they are written by the gateway alone.
        self.reserved = Reserved(
            hidden=frozenset({config.auth_creds_bucket, config.auth_revoked_bucket}),
            literal=frozenset({config.auth_bucket, config.presence_bucket}),
            # the admin requests never, the audit trail only by a grant naming its prefix
            hidden_subjects=frozenset({ADMIN_PREFIX}),
            literal_subjects=frozenset({config.audit_prefix} - {""}),
        )
        # this process among the gateways (the admin API's "gateway"; audit events)
        self.gateway_id = f"{socket.gethostname()}-{secrets.token_hex(3)}"
        self.audit = Audit(lambda: self.upstream.nc, config.audit_prefix, self.gateway_id)
        self.admin = AdminBus(self, lambda: self.upstream.nc, config.auth_bucket)
        self.passwords = Passwords(config.web_hash_salt)
        self.hasher = HashPool(self.passwords)
        self.throttle = Throttle()
        self.sessions: set[Session] = set()
        self.max_conns = connection_ceiling()  # one descriptor each (fdlimit.py)
        self.traffic = Traffic()
        # fan-out waits while the NATS reader is behind, answers do not (outbox.py)
        self.flusher = Flusher(self.traffic, behind=lambda: self.upstream.nc.behind)
        self._exported = Traffic()
        self.conns_by_ip: Counter[str] = Counter()
        self.by_user: defaultdict[str, set[Session]] = defaultdict(set)
        self.creds: KeyValue | None = None
        self.ready = asyncio.Event()  # NATS connected and auth buckets in place
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def export_traffic(self) -> None:
        """Move the plain counters of the hot path into Prometheus (at scrape time)."""
        m, t, e = self.metrics, self.traffic, self._exported
        m.frames_out.inc(t.frames - e.frames)
        m.bytes_out.inc(t.bytes - e.bytes)
        m.envelopes_out.inc(t.envelopes - e.envelopes)
        m.frames_in.inc(t.frames_in - e.frames_in)
        m.bytes_in.inc(t.bytes_in - e.bytes_in)
        e.frames, e.bytes, e.envelopes = t.frames, t.bytes, t.envelopes
        e.frames_in, e.bytes_in = t.frames_in, t.bytes_in
        m.queued_bytes.set(sum(s.outbox.size for s in self.sessions))

    def attach(self, session: Session) -> None:
        """A session is open: count it (its ``close`` calls :meth:`detach`)."""
        self.sessions.add(session)
        self.conns_by_ip[session.remote] += 1
        self.by_user[session.user].add(session)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()

    def detach(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.remove(session)
        self.conns_by_ip[session.remote] -= 1
        if self.conns_by_ip[session.remote] <= 0:
            del self.conns_by_ip[session.remote]
        mine = self.by_user.get(session.user)
        if mine is not None:
            mine.discard(session)
            if not mine:
                del self.by_user[session.user]
        self.metrics.connections.dec()

    def _revoked(self, user: str) -> None:
        """Some token of ``user`` was revoked: close the connections opened with it."""
        for session in list(self.by_user.get(user, ())):
            if self.revocations.revoked(session.token):
                session.revoke()

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep a reference to a fire-and-forget task until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Begin connecting to NATS; :attr:`ready` is set once the gateway can serve."""
        self.upstream.start()
        if self.keys is not None:  # not waited for: HS256 tokens work meanwhile
            self.keys.start()
        self.track(asyncio.create_task(self._setup(), name="setup"))
        self.track(asyncio.create_task(self._keepalive(), name="keepalive"))

    async def _keepalive(self) -> None:
        """One sweep over every connection instead of a ping task per connection."""
        cfg = self.config
        tick = max(0.02, min(cfg.ping_interval_s, cfg.ping_timeout_s) / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for session in list(self.sessions):
                session.keepalive(now)

    async def _setup(self) -> None:
        while True:
            await self.upstream.wait_ready()
            try:
                await self.capstore.start()
                await self.revocations.start()
                self.creds = await ensure_bucket(self.upstream, self.config.auth_creds_bucket)
                await self.admin.start()
                await self.presence.start()
            except Exception as exc:
                log.warning("cannot set up the auth buckets yet: %r; retrying", exc)
                await asyncio.sleep(1)
                continue
            self.ready.set()
            log.info("gateway ready")
            return

    async def stop(self) -> None:
        """SIGTERM: tell clients to reconnect elsewhere (1012), then drain NATS (§5)."""
        self.stopping = True
        sessions = list(self.sessions)
        if sessions:
            log.info("closing %d connections (1012: reconnect elsewhere)", len(sessions))
            await asyncio.gather(
                *(s.close(CloseCode.RESTART) for s in sessions), return_exceptions=True
            )
        await self.presence.close()  # the closed sessions' leaves go out first
        await self.hub.close()
        await self.admin.close()
        await self.audit.close()
        await self.capstore.close()
        await self.durables.close()
        await self.revocations.close()
        for task in list(self._tasks):
            if not task.done():
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.upstream.close()
        if self.keys is not None:
            await self.keys.close()
        self.hasher.close()
