"""What should parse client frames: natsgate's :class:`~natsgate.wsframe.FrameReader` or
python-websockets' sans-I/O ``ServerProtocol``? ``python -m bench.parsers [N]``.

Both are fed the same bytes in one process, one after the other:

- memory: 5,000 instances each (N with an argument), after the handshake and one message,
  so each holds what it keeps between messages; tracemalloc's count of bytes allocated
  by Python, divided by the number of instances (the socket and the driver around either
  parser are not counted: they are the same whichever parser is used);
- CPU: 20,000 typical client frames (100-byte JSON text, masked, a fresh mask each) fed
  one frame per read, as a browser's messages arrive, and again 16 frames per read;
  the time per frame is the best of 7 runs. websockets' protocol yields frames, not
  checked text: its drivers decode each text frame afterwards, so that decode is counted
  (FrameReader checks UTF-8 itself).

Server-to-client framing is not compared: fan-out stays natsgate's (one header per batch).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from websockets.frames import Opcode
from websockets.server import ServerProtocol

from natsgate.wsframe import OP_TEXT, FrameReader, unmask

MAX_SIZE = 1 << 20  # natsgate's default MAX_FRAME_BYTES, for both
FRAMES = 20_000
REPEATS = 7


def client_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes((0x81, 0x80 | len(payload))) + mask + unmask(payload, mask)


def typical_payload(i: int) -> bytes:
    env = {"op": "pub", "target": "chat.room.42", "data": {"text": f"hello {i:08d}"}}
    raw = json.dumps(env, separators=(",", ":")).encode()
    return (raw + b" " * 100)[:100]  # 100 bytes, still one JSON value


def handshake() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /ws HTTP/1.1\r\nHost: example.org\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key}\r\n\r\n"
    ).encode()


def open_websockets(first: bytes) -> ServerProtocol:
    p = ServerProtocol(max_size=MAX_SIZE)
    p.receive_data(handshake())
    (request,) = p.events_received()
    p.send_response(p.accept(request))  # type: ignore[arg-type]
    p.data_to_send()
    p.receive_data(first)
    (frame,) = p.events_received()
    assert frame.opcode is Opcode.TEXT
    return p


def open_natsgate(first: bytes) -> FrameReader:
    r = FrameReader(MAX_SIZE)
    assert r.feed(first) == [(OP_TEXT, typical_payload(0))]
    return r


def per_instance(make: Callable[[], Any], n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [make() for _ in range(n)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(kept) == n
    return (after - before) / n


def best_time(run: Callable[[], int]) -> float:
    """Seconds per frame, the best of REPEATS runs."""
    best = float("inf")
    for _ in range(REPEATS):
        gc.collect()
        start = time.perf_counter()
        n = run()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def natsgate_run(reads: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        r = FrameReader(MAX_SIZE)
        feed = r.feed
        n = 0
        for chunk in reads:
            n += len(feed(chunk))
        return n

    return run


def websockets_run(reads: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        p = open_websockets(client_frame(typical_payload(0)))
        receive, events = p.receive_data, p.events_received
        n = 0
        for chunk in reads:
            receive(chunk)
            for frame in events():
                frame.data.decode()  # what its drivers do with a text frame
                n += 1
        return n

    return run


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    first = client_frame(typical_payload(0))
    frames = [client_frame(typical_payload(i)) for i in range(FRAMES)]
    batched = [b"".join(frames[i : i + 16]) for i in range(0, FRAMES, 16)]

    mem = {
        "natsgate FrameReader": per_instance(lambda: open_natsgate(first), n),
        "websockets ServerProtocol": per_instance(lambda: open_websockets(first), n),
    }
    cpu = {
        "natsgate FrameReader": (
            best_time(natsgate_run(frames)),
            best_time(natsgate_run(batched)),
        ),
        "websockets ServerProtocol": (
            best_time(websockets_run(frames)),
            best_time(websockets_run(batched)),
        ),
    }
    import websockets

    print(
        f"python {sys.version.split()[0]}, websockets {websockets.__version__} "
        f"(C speedups: {'yes' if _has_speedups() else 'no'}); {n:,} instances, "
        f"{FRAMES:,} frames of 100 bytes, best of {REPEATS}\n"
    )
    print("| parser | bytes per connection | us per frame, 1 per read | 16 per read |")
    print("|---|---:|---:|---:|")
    for name in mem:
        one, sixteen = cpu[name]
        print(f"| {name} | {mem[name]:,.0f} | {one * 1e6:.2f} | {sixteen * 1e6:.2f} |")


def _has_speedups() -> bool:
    try:
        import websockets.speedups  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
