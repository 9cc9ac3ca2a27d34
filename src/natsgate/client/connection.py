"""Under the client's public API: one WebSocket at a time and its state machine (the
public methods are in ``client.py``, the ops awaiting answers in ``pending.py``).

One task (``_run``) dials, reads and re-dials; it calls plain-function handlers inline
while it reads, so the per-message path is one msgspec decode, one dict lookup and one
call (see ``registry``).  Every task the client starts is in ``_tasks`` and is cancelled
by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Literal

import aiohttp
import msgspec

from ..errors import CloseCode
from .events import NOTHING, Emitter
from .options import TokenProvider, gateway_url, token_expiry
from .pending import Pending
from .reconnect import Closed, Outcome, Policy, Refused, Retry, Unreachable, Verdict, decide
from .refusal import Refusals
from .registry import CapUpdate, Registry
from .subscriptions import AnySubscription
from .wire import (
    ClientState,
    DisconnectInfo,
    Envelope,
    NatsgateError,
    Op,
    ReconnectInfo,
    decode_cap_update,
    decode_envelope,
    encode,
    error_from,
)

log = logging.getLogger("natsgate.client")

REQUEST_TIMEOUT = 5.0  # seconds for an acknowledgement (pub, unsub, auth, ping)
MAX_BATCH_BYTES = 256 * 1024  # client frames batch ops up to this (MAX_FRAME_BYTES is 1 MiB)

_TRANSITIONS: dict[ClientState, frozenset[ClientState]] = {
    ClientState.CONNECTING: frozenset({ClientState.OPEN, ClientState.CLOSED}),
    ClientState.OPEN: frozenset({ClientState.RECONNECTING, ClientState.CLOSED}),
    ClientState.RECONNECTING: frozenset({ClientState.OPEN, ClientState.CLOSED}),
    ClientState.CLOSED: frozenset(),
}


class Connection(Emitter):
    """Everything under :class:`~natsgate.client.client.Client`'s public methods."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        headers: dict[str, str] | None = None,
        min_backoff: float = 0.25,
        max_backoff: float = 10.0,
        stable_after: float = 5.0,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 20.0,
        timeout_grace: float = 1.0,
        refresh_before: float | None = 30.0,
    ) -> None:
        self.url = gateway_url(url)
        self._token = token
        self._token_provider = token_provider
        self._headers = dict(headers or {})
        self._policy = Policy(
            min_backoff, max(max_backoff, min_backoff), stable_after, token_provider is not None
        )
        self._connect_timeout = connect_timeout
        self._heartbeat = heartbeat
        self._grace = timeout_grace
        self._refresh_before = refresh_before
        self._refresher: asyncio.Task[None] | None = None

        self._state = ClientState.CONNECTING
        self._caps: dict[str, Any] = {}
        self._caps_seen = False  # a cap_update came: a late cap_update listener gets it
        self._refusals = Refusals(connect_timeout)  # why the latest upgrade was refused
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse[Literal[False]] | None = None
        self._conn_open = False  # this socket got its cap_update
        self._opened_at = 0.0
        self._ever_opened = False
        self._token_stale = token is None  # ask the provider before the next dial
        self._attempts = 0  # of the current reconnect, as reconnect.decide counts them
        self._error: NatsgateError | None = None  # why the client is CLOSED
        self.last_failure = ""  # why the latest attempt or connection ended, for people
        self._saw_unauthorized = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._run_task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._listeners = {}
        self._subs = Registry()
        self._pending = Pending(self._subs, self._emit)

    # ================================================================== state

    async def ready(self) -> None:
        """Wait until the client is OPEN (a socket is up and its first ``cap_update`` has
        arrived); raises the reason if the client is or becomes CLOSED. Bound it with
        ``asyncio.timeout``."""
        if self._state is ClientState.OPEN:
            return
        if self._state is ClientState.CLOSED:
            raise self._closed_error()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    # ================================================================== tasks, events

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in a task the client owns: :meth:`close` cancels it."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _current(self, event: str) -> Any:
        """A late ``cap_update`` listener gets the latest caps (``revoked``, ``ended``: empty)."""
        if event == "cap_update" and self._caps_seen:
            return CapUpdate(self._caps, [], [])
        return NOTHING

    def _transition(self, new: ClientState) -> None:
        old = self._state
        if new is old:
            return
        if new not in _TRANSITIONS[old]:
            raise AssertionError(f"client cannot go from {old.value} to {new.value}")
        self._state = new
        self._emit("state", new)

    def _closed_error(self) -> NatsgateError:
        return self._error or NatsgateError("closed", "client is closed")

    def _shut(self, err: NatsgateError, *, emit: bool) -> None:
        """Become CLOSED: fail what waits, end every subscription. Synchronous, so that
        nothing can slip in between; tasks and sockets are released by the caller."""
        if self._state is ClientState.CLOSED:
            return
        self._error = err
        if emit:
            self._emit("error", err)
        self._transition(ClientState.CLOSED)
        self._ws_gone()
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(err)
                fut.exception()
        self._waiters.clear()
        self._subs.end_all(err)

    async def _release(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ================================================================== the connection

    async def _run(self) -> None:
        """Dial, serve, and re-dial until closed, as :func:`reconnect.decide` says after
        each attempt (protocol.md §2 and §6)."""
        retry = Retry()
        try:
            while True:
                outcome = await self._attempt()
                if self._state is ClientState.CLOSED:
                    return
                decision = decide(outcome, retry, self._policy)
                retry = decision.retry
                self._attempts = retry.attempt
                closed = outcome if isinstance(outcome, Closed) else None
                if decision.verdict is Verdict.STOP:
                    if closed is not None:
                        self._emit("disconnect", DisconnectInfo(closed.code, closed.reason, None))
                    # an `error` envelope may have said `unauthorized` before the 4001
                    said = closed is not None and closed.code == CloseCode.UNAUTHORIZED
                    err = NatsgateError(decision.error, decision.message)
                    self._shut(err, emit=not (said and self._saw_unauthorized))
                    return
                delay = decision.delay
                assert delay is not None  # reconnecting
                if decision.verdict is Verdict.NEW_TOKEN:
                    self._token_stale = True
                if self._state is ClientState.OPEN:
                    self._transition(ClientState.RECONNECTING)
                if closed is not None and closed.open_for is not None:
                    self._emit("disconnect", DisconnectInfo(closed.code, closed.reason, delay))
                log.debug("natsgate: reconnecting in %.2fs after %r", delay, outcome)
                await asyncio.sleep(delay)
        except Exception as exc:  # a bug: say so and stop rather than hang
            log.exception("natsgate client failed")
            self._shut(NatsgateError("internal", f"client failed: {exc!r}"), emit=True)
        finally:
            await self._release()

    async def _attempt(self) -> Outcome:
        """One connection, from dialing until its socket is gone."""
        assert self._session is not None
        try:
            token = await self._next_token()
        except Exception as exc:
            self._emit("error", NatsgateError("unauthorized", f"token_provider failed: {exc!r}"))
            return Unreachable("no token")
        headers = dict(self._headers)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                ws = await self._session.ws_connect(
                    self.url,
                    headers=headers,
                    heartbeat=self._heartbeat,
                    max_msg_size=0,
                    decode_text=False,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            reason = self._refusals.describe(exc)
            self.last_failure = f"upgrade refused: {exc.status} {reason}"
            log.debug("natsgate: %s", self.last_failure)
            return Refused(exc.status, reason)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.last_failure = f"cannot connect: {exc!r}"
            log.debug("natsgate: %s", self.last_failure)
            return Unreachable(repr(exc))
        self._ws = ws
        self._conn_open = False
        self._saw_unauthorized = False
        code, reason = await self._read(ws)
        self.last_failure = f"socket closed: {code} {reason}"
        open_for = None
        if self._conn_open:
            open_for = asyncio.get_running_loop().time() - self._opened_at
        self._ws_gone(code, reason)
        self._ws = None
        await ws.close()
        return Closed(code, reason, open_for)

    async def _next_token(self) -> str | None:
        """The token for a dial: as given at first; from the provider (when there is one)
        once after each lost connection and after each refusal, not on every retry, so
        that a long outage does not hammer whoever issues tokens."""
        if self._token_provider is not None and self._token_stale:
            self._token = await self._token_provider()
        self._token_stale = False
        return self._token

    async def _read(self, ws: aiohttp.ClientWebSocketResponse[Literal[False]]) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        text, binary, closing = (
            aiohttp.WSMsgType.TEXT,
            aiohttp.WSMsgType.BINARY,
            aiohttp.WSMsgType.CLOSE,
        )
        try:
            while True:
                if self._conn_open:
                    msg = await ws.receive()
                else:  # the first envelope must come soon (protocol.md §1)
                    msg = await ws.receive(timeout=max(0.001, deadline - loop.time()))
                t = msg.type
                if t is text or t is binary:
                    self._on_frame(msg.data)
                    if self._out:
                        await self._flush()
                elif t is closing:
                    return int(msg.data), str(msg.extra or "")
                else:  # CLOSING, CLOSED, ERROR
                    return ws.close_code or 1006, repr(ws.exception() or t)
        except TimeoutError:
            return CloseCode.CLIENT_TIMEOUT, "no cap_update in time"

    def _ws_gone(self, code: int = 1006, reason: str = "") -> None:
        """The socket is gone: what was in flight fails, subscriptions wait to be re-sent."""
        self._out.clear()
        self._conn_open = False
        lost = NatsgateError("disconnected", f"connection lost ({code} {reason})".strip())
        if self._state is ClientState.CLOSED:
            lost = self._closed_error()
        for sub in self._subs:
            sub._pause()
        self._pending.lost(lost)

    def _on_open(self) -> None:
        """First cap_update of a socket: OPEN; re-send every subscription, in order."""
        self._conn_open = True
        self._opened_at = asyncio.get_running_loop().time()
        reconnected = self._ever_opened
        self._ever_opened = True
        self._transition(ClientState.OPEN)
        for sub in self._subs:
            sub._resending()
            self._send_sub(sub)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        if reconnected:
            self._emit("reconnect", ReconnectInfo(self._attempts))
        self._arm_refresh()

    def _arm_refresh(self) -> None:
        """With a token_provider, send the ``auth`` op with a fresh token before the
        current one expires, so the connection and its subscriptions live on."""
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        exp = token_expiry(self._token)
        if self._token_provider is None or exp is None or self._refresh_before is None:
            return
        self._refresher = self.spawn(self._refresh_at(exp - self._refresh_before), "refresh")

    async def _auth(self, token: str) -> None:
        """The ``auth`` op; the token is used for reconnects from now on."""
        await self._request(Op("auth", data={"token": token}), REQUEST_TIMEOUT)
        self._token = token

    async def _refresh_at(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.time()))
        assert self._token_provider is not None
        try:
            token = await self._token_provider()
            if token:
                await self._auth(token)
        except NatsgateError as exc:
            self._emit("error", exc)
            return
        except Exception as exc:  # the application's callback failed
            self._emit("error", NatsgateError("unauthorized", f"token_provider failed: {exc!r}"))
            return
        self._refresher = None
        self._arm_refresh()

    # ================================================================== sending

    async def _flush(self) -> None:
        """Write queued ops, newline-batched (protocol.md §1), in order."""
        while self._out:
            out, size, n = self._out, 0, 0
            while n < len(out) and (n == 0 or size + len(out[n]) < MAX_BATCH_BYTES):
                size += len(out[n]) + 1
                n += 1
            frame = out[0] if n == 1 else b"\n".join(out[:n])
            del out[:n]
            ws = self._ws
            if ws is None:
                out.clear()
                return
            try:
                await ws.send_frame(frame, aiohttp.WSMsgType.TEXT)
            except (ConnectionError, RuntimeError, OSError) as exc:
                log.debug("natsgate: send failed: %r", exc)  # the reader sees the close
                out.clear()
                return

    async def _wait_open(self, within: float) -> None:
        if self._state is ClientState.OPEN:
            return
        try:
            async with asyncio.timeout(within):
                await self.ready()
        except TimeoutError:
            raise NatsgateError("disconnected", "not connected to the gateway") from None

    async def _request(self, op: Op, within: float, *, lost_ok: bool = False) -> Envelope:
        """Send ``op`` with a fresh inbox; its reply envelope, or its error raised (also
        ``timeout`` when nothing came ``within`` seconds plus the grace)."""
        await self._wait_open(within)
        req = self._pending.request(op, within + self._grace, lost_ok=lost_ok)
        try:
            self._out.append(encode(op))
            await self._flush()
            return await req.fut
        finally:
            self._pending.discard(req)

    def _send_sub(self, sub: AnySubscription) -> None:
        """Queue the op that (re)creates ``sub``; its answer goes to ``sub``."""
        self._out.append(encode(self._pending.subscribe(sub)))

    # ================================================================== receiving

    def _on_frame(self, frame: bytes) -> None:
        """Each newline-separated envelope of a frame, in order (protocol.md §1)."""
        for line in frame.split(b"\n"):
            if not line:
                continue
            try:
                env = decode_envelope(line)
            except msgspec.DecodeError as exc:
                self._emit("error", NatsgateError("protocol", f"bad envelope: {exc}"))
                continue
            op = env.op
            try:
                if op == "msg":
                    self._subs.route(env)
                elif op == "reply" or op == "pong":
                    self._pending.reply(env)
                elif op == "error":
                    self._on_error(env)
                elif op == "cap_update":
                    self._on_cap_update(env)
                # other ops: from a newer gateway; ignored
            except msgspec.DecodeError as exc:
                self._emit("error", NatsgateError("protocol", f"bad {op} envelope: {exc}"))

    def _on_error(self, env: Envelope) -> None:
        err = error_from(env)
        if self._pending.error(env, err):
            return
        if err.code == "unauthorized":  # about the connection, not one op
            self._saw_unauthorized = True
        self._emit("error", err)

    def _on_cap_update(self, env: Envelope) -> None:
        w = decode_cap_update(env.data)
        self._caps = w.caps
        self._caps_seen = True
        self._emit("cap_update", self._subs.revoke(w.caps, w.revoked))
        if self._ws is not None and not self._conn_open and self._state is not ClientState.CLOSED:
            self._on_open()
