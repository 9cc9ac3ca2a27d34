"""Every gateway's connections, on request (protocol.md §7).

Each gateway answers NATS requests on ``$NATSGATE.admin.<AUTH_BUCKET>.connections`` (its
connections) and ``...disconnect`` (close those of a user or with a conn id, 4003); the
gateway an administrator asked sends one request and gathers the answers. Which gateways
to wait for it knows from their greetings: each says ``hello`` on ``...hello`` when it
starts, every ``HELLO_S``, and once more when it hears a gateway new to it; ``bye`` when it
stops. So a gather waits for every gateway heard from within ``PEER_TTL_S``, until
``GATHER_S``, and names those that did not answer (``missing``) instead of leaving them out
unsaid, as waiting for the answers to go quiet did: a gateway busy for 300 ms was simply
not there, and a disconnect left its connections open. Answers of gateways it did not
know (an older version) still count until none came for ``QUIET_S``. Gateways sharing an
auth bucket are one deployment; another one on the same NATS has other subjects.

Who can ask: the subjects start with ``$``, so no wildcard grant reaches them (protocol.md §4),
and the gateway treats the prefix as hidden (``Reserved.hidden_subjects``): no
grant at all reaches it through the gateway. Any message the gateway sends for a user
carries ``Natsgate-User``; a request with that header is ignored all the same. What is
left is what NATS itself lets through: a NATS user allowed to publish there (the gateways'
own, an operator's tools) is an administrator, as one allowed to write the auth bucket is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..bridges.core import USER_HEADER
from ..capabilities import Kind
from ..errors import CloseCode
from ..session import Session, State
from ..subscriptions import feeds

log = logging.getLogger("natsgate.admin")

PREFIX = "$NATSGATE.admin"  # + .<auth bucket>.<verb>
QUIET_S = 0.25  # with every known gateway answered, gathering ends after this quiet
GATHER_S = 2.0  # and after this at the latest, known gateways missing or not
HELLO_S = 5.0  # each gateway greets the others this often
PEER_TTL_S = 3 * HELLO_S  # a gateway not heard from for this long is not waited for
# gateways remembered at most: whoever may publish a greeting (a NATS user, not a client of
# the gateway) cannot grow the table, or the greetings sent back, without bound
MAX_PEERS = 1024
CHUNK = 500  # connections per answer message (NATS' max payload is 1 MiB by default)


def prefix(auth_bucket: str) -> str:
    """The admin subjects of the gateways sharing ``auth_bucket`` (one deployment)."""
    return f"{PREFIX}.{auth_bucket}"


class Host(Protocol):
    """What the bus needs from its gateway."""

    @property
    def gateway_id(self) -> str: ...
    @property
    def sessions(self) -> set[Session]: ...


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe(gateway: str, s: Session) -> dict[str, Any]:
    """One connection as ``/admin/api/connections`` lists it."""
    return {
        "gateway": gateway,
        "conn": s.conn_id,
        "user": s.user,
        "since": _when(s.since),
        "address": s.remote,
        "subs": sum(1 for sub in s.subs.values() if sub.kind is Kind.SUB),
        "feeds": feeds(s.subs),
        "queued_bytes": s.outbox.size,
        "bytes_in": s.bytes_in,
        "bytes_out": s.outbox.bytes_out,
    }


class _Ask(msgspec.Struct, frozen=True):
    source: str = msgspec.field(name="from", default="")
    user: str | None = None
    conn: str | None = None


class _Hello(msgspec.Struct, frozen=True):
    gateway: str = ""


_decode = msgspec.json.Decoder(_Ask)
_decode_hello = msgspec.json.Decoder(_Hello)
_encode = msgspec.json.Encoder()


class AdminBus:
    def __init__(self, host: Host, nc: Callable[[], Client], auth_bucket: str) -> None:
        self._host = host
        self._nc = nc  # a getter for the gateway's NATS client
        self.prefix = prefix(auth_bucket)
        self._subs: list[Subscription] = []
        self._peers: dict[str, float] = {}  # other gateways: when last heard from
        self._greeter: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ this gateway

    def connections(self) -> list[dict[str, Any]]:
        gid = self._host.gateway_id
        return [describe(gid, s) for s in list(self._host.sessions) if s.state is State.OPEN]

    async def disconnect(self, user: str | None, conn: str | None) -> int:
        """Close this gateway's connections of ``user`` or with id ``conn`` (4003)."""
        chosen = [
            s
            for s in list(self._host.sessions)
            if s.state is State.OPEN
            and ((user is not None and s.user == user) or (conn is not None and s.conn_id == conn))
        ]
        for s in chosen:  # not waited for: a close handshake may take its peer a while
            s.spawn_detached(s.close(CloseCode.ADMIN_DISCONNECT))
        if chosen:
            await asyncio.sleep(0)  # each close has begun: none is listed as open any more
        return len(chosen)

    # ------------------------------------------------------------------ answering

    async def start(self) -> None:
        """Answer the other gateways (nats-py subscribes again after a reconnect)."""
        if self._subs:
            return
        nc = self._nc()
        self._subs = [
            await nc.subscribe(f"{self.prefix}.connections", cb=self._on_connections),
            await nc.subscribe(f"{self.prefix}.disconnect", cb=self._on_disconnect),
            await nc.subscribe(f"{self.prefix}.hello", cb=self._on_hello),
            await nc.subscribe(f"{self.prefix}.bye", cb=self._on_bye),
        ]
        self._greeter = asyncio.create_task(self._greet(), name="admin-hello")

    # ------------------------------------------------------------------ who is there

    async def _say(self, what: str) -> None:
        with contextlib.suppress(Exception):  # NATS away: said again on the next round
            await self._nc().publish(
                f"{self.prefix}.{what}", _encode.encode({"gateway": self._host.gateway_id})
            )

    async def _greet(self) -> None:
        while True:
            await self._say("hello")
            await asyncio.sleep(HELLO_S)

    def _heard(self, msg: Msg) -> str | None:
        """The other gateway a greeting is from (None: this one, or not a greeting)."""
        if msg.headers and USER_HEADER in msg.headers:
            return None
        try:
            gid = _decode_hello.decode(msg.data).gateway
        except msgspec.DecodeError:
            return None
        return gid if gid and gid != self._host.gateway_id else None

    async def _on_hello(self, msg: Msg) -> None:
        gid = self._heard(msg)
        if gid is None:
            return
        new = gid not in self._peers
        if self._saw(gid) and new:  # so that a gateway starting now knows this one at once
            await self._say("hello")

    def _saw(self, gid: str) -> bool:
        """Note that ``gid`` is there; False when the table is full and it is new."""
        if gid not in self._peers and len(self.peers()) >= MAX_PEERS:
            log.debug("more than %d gateways greet this one; not waiting for %s", MAX_PEERS, gid)
            return False
        self._peers[gid] = asyncio.get_running_loop().time()
        return True

    async def _on_bye(self, msg: Msg) -> None:
        gid = self._heard(msg)
        if gid is not None:
            self._peers.pop(gid, None)

    def peers(self) -> set[str]:
        """The other gateways heard from within PEER_TTL_S."""
        now = asyncio.get_running_loop().time()
        for gid in [g for g, t in self._peers.items() if now - t > PEER_TTL_S]:
            del self._peers[gid]
        return set(self._peers)

    def _ask(self, msg: Msg) -> _Ask | None:
        """The request, or None: no reply subject, a user's message, or unreadable."""
        if not msg.reply or (msg.headers and USER_HEADER in msg.headers):
            return None
        try:
            return _decode.decode(msg.data or b"{}")
        except msgspec.DecodeError:
            return None

    async def _on_connections(self, msg: Msg) -> None:
        ask = self._ask(msg)
        if ask is None:
            return
        gid = self._host.gateway_id
        conns = [] if ask.source == gid else self.connections()  # the asker lists its own
        nc = self._nc()
        with contextlib.suppress(Exception):
            for i in range(0, max(1, len(conns)), CHUNK):
                part = {"gateway": gid, "connections": conns[i : i + CHUNK]}
                await nc.publish(msg.reply, _encode.encode(part))

    async def _on_disconnect(self, msg: Msg) -> None:
        ask = self._ask(msg)
        if ask is None or (ask.user is None and ask.conn is None):
            return
        gid = self._host.gateway_id
        closed = 0 if ask.source == gid else await self.disconnect(ask.user, ask.conn)
        with contextlib.suppress(Exception):
            await self._nc().publish(msg.reply, _encode.encode({"gateway": gid, "closed": closed}))

    # ------------------------------------------------------------------ asking

    async def gather(self, verb: str, **ask: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """Ask every gateway (this one included, which answers at once and empty) and
        collect the answers of the others: those of every gateway known to be there, then
        until none came for QUIET_S, at most GATHER_S. Also returns the known gateways
        that did not answer."""
        nc = self._nc()
        gid = self._host.gateway_id
        expected = self.peers()
        if not nc.is_connected:
            return [], sorted(expected)
        answers: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_answer(msg: Msg) -> None:
            answers.put_nowait(msg)

        got: list[dict[str, Any]] = []
        waiting = set(expected)  # known gateways that have not answered yet
        inbox = nc.new_inbox()
        try:  # NATS going away meanwhile: this gateway's own answer is all there is
            sub = await nc.subscribe(inbox, cb=on_answer)
        except Exception as exc:
            log.warning("cannot ask the other gateways: %r", exc)
            return got, sorted(waiting)
        try:
            try:
                payload = _encode.encode({"from": gid, **ask})
                await nc.publish(f"{self.prefix}.{verb}", payload, reply=inbox)
            except Exception as exc:
                log.warning("cannot ask the other gateways: %r", exc)
                return got, sorted(waiting)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + GATHER_S
            while (left := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(left if waiting else min(QUIET_S, left)):
                        msg = await answers.get()
                except TimeoutError:
                    break
                with contextlib.suppress(msgspec.DecodeError):
                    answer = msgspec.json.decode(msg.data)
                    peer = answer.get("gateway") if isinstance(answer, dict) else None
                    if isinstance(peer, str) and peer != gid:
                        got.append(answer)
                        waiting.discard(peer)
                        self._saw(peer)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if waiting:
            log.warning("gateways that did not answer within %.0f s: %s", GATHER_S, waiting)
        return got, sorted(waiting)

    async def all_connections(self) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        """Every gateway's connections, the gateways that answered (this one first), and
        those known to be there that did not."""
        conns = self.connections()
        gateways = [self._host.gateway_id]
        answers, missing = await self.gather("connections")
        for answer in answers:
            gateways.append(str(answer.get("gateway")))
            conns.extend(_list(answer.get("connections")))
        return conns, list(dict.fromkeys(gateways)), missing

    async def disconnect_everywhere(
        self, user: str | None, conn: str | None
    ) -> tuple[int, list[str]]:
        """Connections closed, and the gateways known to be there that did not answer."""
        here, (answers, missing) = await asyncio.gather(
            self.disconnect(user, conn), self.gather("disconnect", user=user, conn=conn)
        )
        there: list[object] = [a.get("closed") for a in answers]
        return int(here) + sum(n for n in there if isinstance(n, int)), missing

    async def close(self) -> None:
        if self._greeter is not None:
            self._greeter.cancel()
            await asyncio.gather(self._greeter, return_exceptions=True)
            self._greeter = None
            await self._say("bye")
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []


def _list(value: object) -> Iterable[dict[str, Any]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []
