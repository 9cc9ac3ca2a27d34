"""Test helpers: a gateway in this process on port 0, and a raw WebSocket client that
splits newline-batched frames and waits for envelopes by predicate."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from natsgate.config import Config
from natsgate.edge import Edge
from natsgate.gateway import Gateway
from natsgate.server import make_app

T = float(os.environ.get("NATSGATE_TEST_TIMEOUT_SCALE", "1")) * 5.0  # one time unit, s


@dataclass
class Gw:
    gateway: Gateway
    edge: Edge
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def set_caps(self, user: str, caps: dict[str, Any] | None) -> None:
        """Write (or with None delete) a user's capabilities in the auth bucket."""
        kv = await self.gateway.upstream.js.key_value(self.gateway.config.auth_bucket)
        if caps is None:
            await kv.delete(user, validate_keys=False)
        else:  # a user id is any one subject token, more than nats-py's key pattern allows
            await kv.put(user, json.dumps(caps).encode(), validate_keys=False)

    async def stop(self) -> None:
        self.edge.stop_listening()
        await self.gateway.stop()
        await self.edge.cleanup()


async def start_gateway(config: Config) -> Gw:
    gateway = Gateway(config)
    await gateway.start()
    async with asyncio.timeout(3 * T):
        await gateway.ready.wait()
    edge = Edge(gateway, make_app(gateway))
    port = await edge.start(config.host, config.port)
    return Gw(gateway, edge, port)


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"socket closed with {code}")
        self.code = code


class WsClient:
    """A raw protocol client: send envelopes, wait for envelopes."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session = session
        self.ws = ws
        self.inbox: deque[dict[str, Any]] = deque()
        self.frames = 0
        self.close_code: int | None = None
        self.first: dict[str, Any] = {}
        self._n = 0

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> WsClient:
        session = aiohttp.ClientSession()
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        try:
            kw.setdefault("autoping", True)
            ws = await session.ws_connect(url, headers=h, max_msg_size=0, **kw)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    def next_inbox(self) -> str:
        self._n += 1
        return f"i{self._n}"

    async def send(self, op: str, target: str | None = None, data: Any = None, **extra: Any) -> str:
        """Send one envelope with a fresh inbox; returns the inbox."""
        inbox = extra.pop("inbox", None) or self.next_inbox()
        env: dict[str, Any] = {"op": op, "inbox": inbox, **extra}
        if target is not None:
            env["target"] = target
        if data is not None:
            env["data"] = data
        await self.ws.send_str(json.dumps(env))
        return inbox

    async def send_raw(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            await self.ws.send_bytes(text)
        else:
            await self.ws.send_str(text)

    async def _fill(self, timeout: float) -> None:
        # asyncio's timeout, not aiohttp's: aiohttp restarts its own after each ping
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel
            msg = await self.ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            self.frames += 1
            for line in msg.data.split("\n"):
                if line:
                    self.inbox.append(json.loads(line))
        elif msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.ERROR,
        ):
            # the code the server sent (aiohttp's own close_code turns 1006 when the
            # server has gone before aiohttp could answer the close frame)
            code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else self.ws.close_code
            self.close_code = code
            raise Closed(code)

    async def recv(self, timeout: float = T) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.inbox:
            await self._fill(max(0.001, deadline - time.monotonic()))
        return self.inbox.popleft()

    async def expect(
        self,
        pred: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = T,
        **match: Any,
    ) -> dict[str, Any]:
        """The first envelope (skipping others, which are kept) that matches."""
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                while not self.inbox:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"no envelope matching {match or pred}; saw {skipped[-5:]}"
                        )
                    await self._fill(left)
                env = self.inbox.popleft()
                if all(env.get(k) == v for k, v in match.items()) and (pred is None or pred(env)):
                    return env
                skipped.append(env)
        finally:
            self.inbox.extendleft(reversed(skipped))

    async def reply(self, inbox: str, timeout: float = T) -> dict[str, Any]:
        """The reply or error for ``inbox``."""
        return await self.expect(
            lambda e: e.get("inbox") == inbox and e["op"] in ("reply", "error"), timeout
        )

    async def ok(
        self, op: str, target: str | None = None, data: Any = None, **extra: Any
    ) -> dict[str, Any]:
        """Send and require a positive reply."""
        inbox = await self.send(op, target, data, **extra)
        env = await self.reply(inbox)
        assert env["op"] == "reply", env
        return env

    async def error(
        self, op: str, target: str | None = None, data: Any = None, **extra: Any
    ) -> dict[str, Any]:
        inbox = await self.send(op, target, data, **extra)
        env = await self.reply(inbox)
        assert env["op"] == "error", env
        return env["data"]

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives within ``seconds`` (to show that nothing does)."""
        deadline = time.monotonic() + seconds
        got = list(self.inbox)
        self.inbox.clear()
        while (left := deadline - time.monotonic()) > 0:
            try:
                await self._fill(left)
            except TimeoutError:
                break
            got.extend(self.inbox)
            self.inbox.clear()
        return got

    async def wait_closed(self, timeout: float = T) -> int | None:
        deadline = time.monotonic() + timeout
        try:
            while True:
                await self._fill(max(0.001, deadline - time.monotonic()))
                self.inbox.clear()
        except Closed as c:
            return c.code

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def monitor(url: str, path: str) -> dict[str, Any]:
    """Read nats-server's monitoring endpoint (``/subsz``, ``/jsz``, ``/connz``)."""
    with urllib.request.urlopen(f"{url}{path}", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


async def eventually(check: Callable[[], Any], timeout: float = T, every: float = 0.02) -> Any:
    """Poll a condition on the system under test until it holds (state, not time)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(every)


def nats_subscriptions(url: str, subject: str) -> int:
    """How many client subscriptions on the NATS server have exactly this subject."""
    count, offset = 0, 0
    while True:  # page through: the server caps how many connections one answer lists
        connz = monitor(url, f"/connz?subs=1&limit=1024&offset={offset}")
        conns = connz.get("connections") or []
        count += sum((c.get("subscriptions_list") or []).count(subject) for c in conns)
        offset += len(conns)
        if not conns or offset >= int(connz.get("total", 0)):
            return count


def consumers(url: str, stream: str) -> int:
    """How many consumers the NATS server holds on ``stream``."""
    jsz = monitor(url, "/jsz?streams=1&consumers=1&accounts=1")
    total = 0
    for acc in jsz.get("account_details", []):
        for s in acc.get("stream_detail", []):
            if s["name"] == stream:
                total += len(s.get("consumer_detail") or [])
    return total
