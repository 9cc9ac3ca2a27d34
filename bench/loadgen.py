"""The load generator: thousands of WebSocket clients in one process (picows + uvloop).

Run by ``bench.run`` as ``python -m bench.loadgen SLOT COUNTERS_FILE SLOTS``; it takes JSON
commands on standard input, one a line, and answers on standard output, one JSON object a
line. It exits when standard input closes, on ``{"cmd": "exit"}``, or after
``MAX_LIFETIME_S``, whichever comes first.

Three client protocols, each counted as cheaply as the protocol allows:

- ``natsgate``: ``sub`` with an inbox, live at its ``reply``; a frame holds one or more
  newline-separated envelopes, so a frame counts ``frame.count(b"\\n") + 1`` deliveries.
  With ``COMPRESSION`` set (and not ``off``) in the environment, each client offers
  permessage-deflate as a browser does and inflates the frames that come with RSV1 (a
  fresh inflater each: the gateway agrees no context takeover); the bytes of every
  payload as it came off the wire and once inflated are counted.
- ``nats``: the NATS text protocol over nats-server's WebSocket listener: INFO, then
  ``CONNECT``/``SUB``/``PING``, live at ``PONG``; deliveries are the ``MSG `` tokens in the
  byte stream (a token split across two frames is counted once).
- ``socketio``: Engine.IO v4 / Socket.IO v5 over a raw WebSocket: ``0{...}`` open, ``40``
  connect, ``421["join",subject]`` with an ack, live at ``431[...]``; every ``42[...]`` frame
  is one delivery; ``2`` pings are answered with ``3``.

With ``COMPRESSION`` set (and not ``off``) the ``nats`` clients offer permessage-deflate
too (nats-server's listener agrees when its config says ``compression: true``) and inflate
compressed messages the same way, fragmented ones once whole.

In latency mode every frame is also searched for ``"s":<seq>,"t":<ns>`` and the process
keeps, per sequence number, how many of its clients got it and when the last one did, and
every single delivery's latency (publish to that client) in a histogram
(``bench/hist.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.common import SEQ_PATTERN, Counters, commands, install_uvloop, raise_nofile, say
from bench.hist import BUCKET_NS

MAX_LIFETIME_S = 1800
CONNECT_TIMEOUT_S = 20.0
SEQ_RE = re.compile(SEQ_PATTERN)
TEXT, BINARY, CONT, CLOSE = (
    WSMsgType.TEXT,
    WSMsgType.BINARY,
    WSMsgType.CONTINUATION,
    WSMsgType.CLOSE,
)
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
DEFLATE = os.environ.get("COMPRESSION", "off") != "off"
TAIL = b"\x00\x00\xff\xff"
NATS_CONNECT = (
    b'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":false,'
    b'"no_responders":false}\r\n'
)


class Gen:
    """Process-wide counters shared by every client."""

    def __init__(self, counters: Counters, slot: int) -> None:
        self.counters = counters
        self.mv = counters.mv
        self.slot = slot
        self.delivered = 0
        self.frames = 0  # frames that carried deliveries
        self.wire_bytes = 0  # natsgate: payload bytes as received (deflated or not)
        self.plain_bytes = 0  # the same, inflated
        self.latency = False
        # seq -> [clients that got it, last ns, publish ns, first ns]
        self.lat: dict[int, list[int]] = {}
        # every delivery's latency: 10 us bucket -> deliveries (bench/hist.py)
        self.hist: dict[int, int] = {}
        self.deflate_agreed = 0  # clients whose handshake agreed permessage-deflate
        self.closing = False
        self.disconnects = 0
        self.close_reasons: collections.Counter[str] = collections.Counter()
        self.transports: list[WSTransport] = []

    def add(self, n: int) -> None:
        self.delivered += n
        self.frames += 1
        self.mv[self.slot] = self.delivered

    def record(self, data: bytes, now: int) -> None:
        lat, hist = self.lat, self.hist
        for m in SEQ_RE.finditer(data):
            seq = int(m.group(1))
            tp = int(m.group(2))
            b = max(0, now - tp) // BUCKET_NS
            hist[b] = hist.get(b, 0) + 1
            e = lat.get(seq)
            if e is None:
                lat[seq] = [1, now, tp, now]
            else:
                e[0] += 1
                e[1] = now  # time only grows within one process: this is the max

    def reset(self, latency: bool) -> None:
        self.delivered = 0
        self.frames = 0
        self.wire_bytes = self.plain_bytes = 0
        self.mv[self.slot] = 0
        self.lat = {}
        self.hist = {}
        self.latency = latency


class Client(WSListener):
    """Base: the handshake differs per protocol, the bookkeeping does not."""

    def __init__(self, gen: Gen, subject: str, ready: asyncio.Future[None]) -> None:
        self.gen = gen
        self.subject = subject
        self.ready = ready
        self.live = False
        self.transport: WSTransport | None = None
        self.state = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before subscribed"))
        elif not self.gen.closing:
            self.gen.disconnects += 1

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))

    def go_live(self) -> None:
        self.live = True
        if not self.ready.done():
            self.ready.set_result(None)

    def control(self, frame: WSFrame) -> bool:
        """True when the frame is not data (a CLOSE: remember why)."""
        t = frame.msg_type
        if t is TEXT or t is BINARY or t is CONT:
            return False
        if t is CLOSE:
            try:
                code = frame.get_close_code()
                reason = f"{int(code.value) if hasattr(code, 'value') else code}"
            except Exception:
                reason = "close"
            self.gen.close_reasons[reason] += 1
        return True


class NatsgateClient(Client):
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(TEXT, b'{"op":"sub","target":"%s","inbox":"1"}' % self.subject.encode())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.live:
            if frame.msg_type is CLOSE:
                self.control(frame)
                return
            data = frame.get_payload_as_bytes()
            gen = self.gen
            gen.wire_bytes += len(data)
            if frame.rsv1:
                data = zlib.decompressobj(-15).decompress(data + TAIL)
            gen.plain_bytes += len(data)
            gen.add(data.count(b"\n") + 1)
            if gen.latency:
                gen.record(data, time.time_ns())
            return
        if self.control(frame):
            return
        data = frame.get_payload_as_bytes()
        if frame.rsv1:
            data = zlib.decompressobj(-15).decompress(data + TAIL)
        if b'"op":"error"' in data:
            self.fail("natsgate error: " + data[:160].decode(errors="replace"))
        elif b'"op":"reply"' in data:
            self.go_live()


class NatsClient(Client):
    """NATS text protocol over WebSocket."""

    def __init__(self, gen: Gen, subject: str, ready: asyncio.Future[None]) -> None:
        super().__init__(gen, subject, ready)
        self.tail = b""  # the last 3 bytes of the previous frame (a split "MSG " token)
        self.carry = b""  # latency mode: an incomplete payload at the end of a frame
        self.parts: list[bytes] | None = None  # a compressed message's fragments so far

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.control(frame):
            return
        data = frame.get_payload_as_bytes()
        if frame.rsv1 or self.parts is not None:
            # permessage-deflate: RSV1 on the first frame only; inflate once it is whole
            gen = self.gen
            gen.wire_bytes += len(data)
            if not frame.fin:
                self.parts = [*(self.parts or []), data]
                return
            if self.parts is not None:
                data, self.parts = b"".join([*self.parts, data]), None
            data = zlib.decompressobj(-15).decompress(data + TAIL)
            gen.plain_bytes += len(data)
        elif DEFLATE and self.live:
            self.gen.wire_bytes += len(data)
            self.gen.plain_bytes += len(data)
        if self.live:
            n = data.count(b"MSG ")
            tail = self.tail
            if tail:
                n += (tail + data[:3]).count(b"MSG ")
            self.tail = data[-3:]
            gen = self.gen
            if n:
                gen.add(n)
            if gen.latency:
                buf = self.carry + data if self.carry else data
                end = 0
                now = time.time_ns()
                for m in SEQ_RE.finditer(buf):
                    end = m.end()
                    gen.record(m.group(0), now)
                rest = buf[end:]
                self.carry = rest[-300:] if not rest.endswith(b"\r\n") else b""
            if b"PING\r\n" in data:
                transport.send(BINARY, b"PONG\r\n")
            return
        if b"-ERR" in data:
            self.fail("nats error: " + data[:160].decode(errors="replace"))
            return
        if self.state == 0 and data.startswith(b"INFO"):
            self.state = 1
            transport.send(BINARY, NATS_CONNECT + b"SUB %s 1\r\nPING\r\n" % self.subject.encode())
        elif self.state == 1 and b"PONG\r\n" in data:
            self.go_live()
            self.tail = data[-3:]
        if b"PING\r\n" in data:
            transport.send(BINARY, b"PONG\r\n")


class SocketioClient(Client):
    """Engine.IO 4 / Socket.IO 5 over a raw WebSocket."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.live:
            if frame.msg_type is CLOSE:
                self.control(frame)
                return
            data = frame.get_payload_as_bytes()
            if data.startswith(b"42"):
                gen = self.gen
                gen.add(1)
                if gen.latency:
                    gen.record(data, time.time_ns())
            elif data == b"2":
                transport.send(TEXT, b"3")
            return
        if self.control(frame):
            return
        data = frame.get_payload_as_bytes()
        if data == b"2":
            transport.send(TEXT, b"3")
        elif self.state == 0 and data.startswith(b"0{"):
            self.state = 1
            transport.send(TEXT, b"40")
        elif self.state == 1 and data.startswith(b"40"):
            self.state = 2
            transport.send(TEXT, b'421["join","%s"]' % self.subject.encode())
        elif data.startswith(b"44"):
            self.fail("socket.io connect error: " + data[:160].decode(errors="replace"))
        elif self.state == 2 and data.startswith(b"431"):
            self.go_live()


CLIENTS: dict[str, type[Client]] = {
    "natsgate": NatsgateClient,
    "nats": NatsClient,
    "socketio": SocketioClient,
}


async def connect_all(gen: Gen, cmd: dict[str, Any]) -> dict[str, Any]:
    """Open one client per subject in ``cmd["subjects"]``, at most ``concurrency`` set-ups
    in flight; returns when every client is subscribed or has failed."""
    cls = CLIENTS[cmd["proto"]]
    url: str = cmd["url"]
    headers: dict[str, str] = cmd.get("headers") or {}
    if DEFLATE and cmd["proto"] in ("natsgate", "nats"):
        headers = {**headers, "Sec-WebSocket-Extensions": DEFLATE_OFFER}
    sem = asyncio.Semaphore(int(cmd.get("concurrency", 64)))
    loop = asyncio.get_running_loop()
    errors: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + float(cmd.get("timeout_s", 120))
    ok = 0

    async def one(subject: str) -> None:
        nonlocal ok
        async with sem:
            if time.monotonic() > deadline:
                errors["deadline"] += 1
                return
            ready: asyncio.Future[None] = loop.create_future()
            try:
                transport, _ = await asyncio.wait_for(
                    ws_connect(
                        lambda: cls(gen, subject, ready),
                        url,
                        extra_headers=headers or None,
                        websocket_handshake_timeout=CONNECT_TIMEOUT_S,
                        enable_auto_pong=True,
                        max_frame_size=16 * 1024 * 1024,
                    ),
                    CONNECT_TIMEOUT_S,
                )
                gen.transports.append(transport)
                ext = transport.response.headers.get("Sec-WebSocket-Extensions") or ""
                if "permessage-deflate" in str(ext):
                    gen.deflate_agreed += 1
                await asyncio.wait_for(ready, CONNECT_TIMEOUT_S)
                ok += 1
            except Exception as exc:  # a failure to count, not to crash on
                text = f"{type(exc).__name__}: {exc}"[:120]
                errors[text] += 1
                if not ready.done():
                    ready.cancel()
                elif not ready.cancelled():
                    ready.exception()  # retrieved: no "never retrieved" warning

    t0 = time.time()
    await asyncio.gather(*(one(s) for s in cmd["subjects"]))
    return {
        "ev": "connected",
        "ok": ok,
        "failed": sum(errors.values()),
        "deflate_agreed": gen.deflate_agreed,
        "errors": dict(errors.most_common(5)),
        "t0": t0,
        "t1": time.time(),
    }


async def close_all(gen: Gen) -> None:
    gen.closing = True
    for t in gen.transports:
        with contextlib.suppress(Exception):
            t.disconnect(graceful=False)
    waits = [t.wait_disconnected() for t in gen.transports]
    if waits:
        await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 10)
    gen.transports.clear()


async def main(slot: int, counters_path: str, slots: int) -> None:
    raise_nofile()
    counters = Counters(Path(counters_path), slots)
    gen = Gen(counters, slot)
    try:
        async for cmd in commands(MAX_LIFETIME_S):
            match cmd["cmd"]:
                case "connect":
                    say(await connect_all(gen, cmd))
                case "mode":
                    gen.reset(bool(cmd.get("latency")))
                    say({"ev": "mode"})
                case "collect":
                    say(
                        {
                            "ev": "stats",
                            "delivered": gen.delivered,
                            "frames": gen.frames,
                            "wire_bytes": gen.wire_bytes,
                            "plain_bytes": gen.plain_bytes,
                            "lat": {str(k): v for k, v in gen.lat.items()},
                            "hist": {str(k): v for k, v in gen.hist.items()},
                            "disconnects": gen.disconnects,
                            "close_reasons": dict(gen.close_reasons),
                            "open": sum(1 for t in gen.transports if not t.is_disconnected),
                        }
                    )
                case "close":
                    await close_all(gen)
                    say({"ev": "closed"})
    finally:
        await close_all(gen)
        counters.close()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
