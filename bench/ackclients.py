"""The acking clients of ``bench/acks.py``: one process holding many clients of one side.

Run as ``python -m bench.ackclients SIDE``; JSON commands on standard input,
answers on standard output (one a line), like ``bench/loadgen.py``. Exits when standard
input closes, on ``{"cmd": "exit"}``, or after ``MAX_LIFETIME_S``.

- ``natsgate``: picows WebSocket clients speaking the natsgate envelope, each its own user
  with its own durable. ``bind`` connects them, makes each durable with ``js_sub`` (stream
  still empty) and unbinds it again with ``js_unsub`` (the position stays). ``go`` binds
  them all again, and each client acks every ``msg`` as it arrives with a fire-and-forget
  ``js_ack`` (no inbox, as a browser does); its last ack carries an inbox, and its
  ``reply`` (sent once the NATS server has the ack) ends the client's run.
- ``nats``: nats-py pull consumers, one NATS connection each, bound to durables the
  orchestrator made with the same configuration as the gateway's. ``go``: each loops
  ``fetch(batch)`` and ``msg.ack()`` for every message; after the last, ``flush()`` (the
  server has the acks: what the gateway does for an ack with an inbox).

Each client counts distinct sequence numbers and stops at ``per_client``; every wait is
bounded by ``deadline_s``. ``go`` answers with the clients' first delivery and last
confirmed ack (``time.time()``: one clock for every process on this machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from typing import Any

from bench.common import commands, install_uvloop, raise_nofile, say

MAX_LIFETIME_S = 900
SEQ_RE = re.compile(rb'"seq":(\d+)')
DELIVERY_RE = re.compile(rb'"delivery":(\d+)')


class Tally:
    """One client's run: distinct sequence numbers acked, first delivery, the end."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.seen: set[int] = set()
        self.deliveries = 0
        self.redelivered = 0
        self.first = 0.0
        self.last_ack = 0.0  # the last ack sent
        self.done_at = 0.0  # the last ack confirmed
        self.done: asyncio.Future[None] | None = None
        self.error = ""

    def result(self) -> dict[str, Any]:
        return {
            "acked": len(self.seen),
            "deliveries": self.deliveries,
            "redelivered": self.redelivered,
            "first": self.first,
            "last_ack": self.last_ack,
            "done_at": self.done_at,
            "error": self.error,
        }


# ------------------------------------------------------------------ natsgate (picows)


def _sub_failed(fut: asyncio.Future[bytes], t: Tally) -> None:
    """A js_sub that was not ok ends its client's run at once."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is None and b'"ok":true' in fut.result():
        return
    t.error = t.error or (repr(exc) if exc else fut.result()[:200].decode(errors="replace"))
    if t.done is not None and not t.done.done():
        t.done.set_result(None)


def _ws_side(cfg: dict[str, Any]) -> Any:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    text, close = WSMsgType.TEXT, WSMsgType.CLOSE
    stream: str = cfg["stream"]

    class AckClient(WSListener):
        def __init__(self, durable: str, subject: str, want: int) -> None:
            self.durable = durable
            self.subject = subject
            self.tally = Tally(want)
            self.transport: WSTransport | None = None
            self.waits: dict[bytes, asyncio.Future[bytes]] = {}
            self.live = False
            self.ack_head = b'{"op":"js_ack","target":"%s","data":{"durable":"%s","seq":' % (
                stream.encode(),
                durable.encode(),
            )
            self.closed = False

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            self.closed = True
            for f in self.waits.values():
                if not f.done():
                    f.set_exception(ConnectionError("closed"))
            d = self.tally.done
            if d is not None and not d.done():
                self.tally.error = self.tally.error or "closed"
                d.set_result(None)

        def request(self, frame: bytes, inbox: bytes) -> asyncio.Future[bytes]:
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self.waits[inbox] = fut
            assert self.transport is not None
            self.transport.send(text, frame)
            return fut

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is close:
                self.tally.error = self.tally.error or "close frame"
                return
            data = frame.get_payload_as_bytes()
            for env in data.split(b"\n"):
                if b'"op":"msg"' in env:
                    self.on_msg(transport, env)
                elif b'"op":"reply"' in env or b'"op":"error"' in env:
                    m = re.search(rb'"inbox":"([^"]*)"', env)
                    fut = self.waits.pop(m.group(1), None) if m else None
                    if fut is not None and not fut.done():
                        fut.set_result(env)
                    elif b'"op":"error"' in env:
                        self.tally.error = env[:200].decode(errors="replace")

        def on_msg(self, transport: WSTransport, env: bytes) -> None:
            t = self.tally
            m = SEQ_RE.search(env)
            if m is None:
                return
            seq = int(m.group(1))
            now = time.time()
            if not t.first:
                t.first = now
            t.deliveries += 1
            d = DELIVERY_RE.search(env)
            if d is not None and d.group(1) != b"1":
                t.redelivered += 1
            t.seen.add(seq)
            t.last_ack = now
            if len(t.seen) >= t.want and not t.done_at and b"f" not in self.waits:
                # the last: with an inbox, answered once NATS has the ack
                fut = self.request(self.ack_head + b'%d},"inbox":"f"}' % seq, b"f")
                fut.add_done_callback(self._finished)
            else:
                transport.send(text, self.ack_head + b"%d}}" % seq)

        def _finished(self, fut: asyncio.Future[bytes]) -> None:
            t = self.tally
            t.done_at = time.time()
            if fut.exception() is not None:
                t.error = t.error or repr(fut.exception())
            elif b'"ok":true' not in fut.result():
                t.error = t.error or fut.result()[:200].decode(errors="replace")
            if t.done is not None and not t.done.done():
                t.done.set_result(None)

    class Side:
        def __init__(self) -> None:
            self.clients: list[AckClient] = []

        def _js_sub(self, c: AckClient) -> asyncio.Future[bytes]:
            body = {
                "durable": c.durable,
                "ack": "explicit",
                "filter": c.subject,
                "start_seq": 1,
                "batch": cfg["batch"],
            }
            frame = {"op": "js_sub", "target": stream, "data": body, "inbox": "s"}
            return c.request(json.dumps(frame).encode(), b"s")

        async def bind(self, wait_s: float) -> dict[str, Any]:
            """Connect, make each durable, unbind it (nothing is in the stream yet)."""
            sem = asyncio.Semaphore(16)

            async def one(i: int, subject: str, token: str) -> None:
                async with sem:
                    c = AckClient(f"d{i}", subject, cfg["per_client"])
                    await ws_connect(
                        lambda: c,
                        cfg["url"],
                        extra_headers={"Authorization": f"Bearer {token}"},
                        websocket_handshake_timeout=20,
                        enable_auto_pong=True,
                        max_frame_size=16 * 1024 * 1024,
                    )
                    self.clients.append(c)
                    r = await asyncio.wait_for(self._js_sub(c), wait_s)
                    if b'"ok":true' not in r:
                        raise RuntimeError(f"js_sub {c.durable}: {r[:200]!r}")
                    unsub = {"op": "js_unsub", "target": stream, "data": {"durable": c.durable}}
                    r = await asyncio.wait_for(
                        c.request(json.dumps({**unsub, "inbox": "u"}).encode(), b"u"), wait_s
                    )
                    if b'"ok":true' not in r:
                        raise RuntimeError(f"js_unsub {c.durable}: {r[:200]!r}")

            await asyncio.gather(
                *(one(*a) for a in zip(cfg["index"], cfg["subjects"], cfg["tokens"], strict=True))
            )
            return {"ev": "bound", "clients": len(self.clients)}

        async def go(self, deadline_s: float) -> list[Tally]:
            loop = asyncio.get_running_loop()
            subs = []
            for c in self.clients:
                c.tally.done = loop.create_future()
                subs.append(self._js_sub(c))
                subs[-1].add_done_callback(lambda f, t=c.tally: _sub_failed(f, t))
            tallies = [c.tally for c in self.clients]
            done = [t.done for t in tallies]
            await asyncio.wait([*done, *subs], timeout=deadline_s)  # type: ignore[list-item]
            for t, s in zip(tallies, subs, strict=True):
                ok = s.done() and not s.cancelled() and s.exception() is None
                if ok and b'"ok":true' not in s.result():
                    t.error = t.error or s.result()[:200].decode(errors="replace")
                if not t.done_at:
                    t.error = t.error or f"{len(t.seen)}/{t.want} within {deadline_s:.0f}s"
            return tallies

        async def close(self) -> None:
            for c in self.clients:
                with contextlib.suppress(Exception):
                    if c.transport is not None:
                        c.transport.disconnect(graceful=False)

    return Side()


# ------------------------------------------------------------------ nats-py


def _nats_side(cfg: dict[str, Any]) -> Any:
    import nats
    import nats.errors

    class Side:
        def __init__(self) -> None:
            self.ncs: list[Any] = []
            self.psubs: list[Any] = []

        async def bind(self, wait_s: float) -> dict[str, Any]:
            for i in cfg["index"]:
                nc = await nats.connect(cfg["nats_url"], name=f"ack-{i}", max_reconnect_attempts=0)
                self.ncs.append(nc)
                psub = await asyncio.wait_for(
                    nc.jetstream().pull_subscribe_bind(durable=f"d{i}", stream=cfg["stream"]),
                    wait_s,
                )
                self.psubs.append(psub)
            return {"ev": "bound", "clients": len(self.psubs)}

        async def go(self, deadline_s: float) -> list[Tally]:
            end = time.monotonic() + deadline_s
            batch = int(cfg["batch"])

            async def one(nc: Any, psub: Any) -> Tally:
                t = Tally(cfg["per_client"])
                try:
                    while len(t.seen) < t.want:
                        left = end - time.monotonic()
                        if left <= 0:
                            t.error = f"{len(t.seen)}/{t.want} within {deadline_s:.0f}s"
                            return t
                        try:
                            msgs = await psub.fetch(batch, timeout=min(5.0, left))
                        except (TimeoutError, nats.errors.TimeoutError):
                            continue
                        now = time.time()
                        if not t.first:
                            t.first = now
                        for msg in msgs:
                            md = msg.metadata
                            t.deliveries += 1
                            if md.num_delivered > 1:
                                t.redelivered += 1
                            t.seen.add(md.sequence.stream)
                            await msg.ack()
                        t.last_ack = time.time()
                    await nc.flush(timeout=10)
                    t.done_at = time.time()
                except Exception as exc:  # the report says which client failed, and how
                    t.error = repr(exc)[:200]
                return t

            return list(
                await asyncio.gather(
                    *(one(n, p) for n, p in zip(self.ncs, self.psubs, strict=True))
                )
            )

        async def close(self) -> None:
            for nc in self.ncs:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)

    return Side()


# ------------------------------------------------------------------ the process


async def main(side_name: str) -> None:
    raise_nofile()
    side: Any = None
    try:
        async for cmd in commands(MAX_LIFETIME_S, 1 << 20):
            if cmd["cmd"] == "bind":  # the clients' configuration (tokens: not in argv)
                try:
                    cfg = cmd["cfg"]
                    side = _ws_side(cfg) if side_name == "natsgate" else _nats_side(cfg)
                    say(await side.bind(float(cmd["wait_s"])))
                except Exception as exc:
                    say({"ev": "error", "error": repr(exc)[:300]})
            elif cmd["cmd"] == "go":
                tallies = await side.go(float(cmd["deadline_s"]))
                say({"ev": "done", "clients": [t.result() for t in tallies]})
    finally:
        if side is not None:
            await side.close()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main(sys.argv[1]))
