"""permessage-deflate's sending side (RFC 7692): what the gateway's messages look like
once deflated, made once per distinct message rather than once per socket.

Every connection agreed ``server_no_context_takeover`` (``handshake.negotiate_deflate``),
so a message's deflated form depends on its bytes and the window alone: one raw-deflate
stream per window size serves the whole process, reset after every message
(``Z_FULL_FLUSH``, whose trailing ``00 00 ff ff`` is stripped, §7.2.1). A connection holds
only a reference to a shared :class:`Compression`: no zlib state of its own.

Compress once: the hub pushes the same bytes to every subscriber's outbox, and the
flusher writes every ready outbox in one event-loop step, so in a fan-out each socket
writes the same message (the same object when one envelope went out, an equal one when
the same batch did). The whole compressed frame is kept, keyed by the message, until the
end of the step: the first socket deflates, the others look it up.
"""

from __future__ import annotations

import asyncio
import zlib

from .handshake import Deflate
from .wsframe import OP_TEXT, RSV1, header

LEVEL = 1  # batches: 2.8x less CPU than 6 for 0.21 vs 0.19 of the size (docs/benchmarks.md)
MEM_LEVEL = 8
STEP_CACHE_BYTES = 8 << 20  # messages and frames kept for the rest of one loop step


class Deflater:
    """One window size's deflate stream and this event-loop step's compressed frames."""

    __slots__ = ("_armed", "_cache", "_held", "_z", "deflated", "hits")

    def __init__(self, wbits: int) -> None:
        self._z = zlib.compressobj(LEVEL, zlib.DEFLATED, -wbits, MEM_LEVEL)
        self._cache: dict[bytes, bytes] = {}
        self._held = 0  # bytes the cache keeps alive
        self._armed: asyncio.AbstractEventLoop | None = None  # a clear is scheduled there
        self.deflated = 0  # messages deflated (for tests and the benchmark's figures)
        self.hits = 0  # frames taken from the cache instead

    def deflate(self, payload: bytes) -> bytes:
        """The message's compressed payload, independent of every message before it."""
        z = self._z
        out = z.compress(payload) + z.flush(zlib.Z_FULL_FLUSH)
        self.deflated += 1
        return out[:-4]  # the empty stored block's 00 00 ff ff: the receiver adds it back

    def frame(self, opcode: int, payload: bytes) -> bytes:
        """A whole frame, RSV1 set: header and deflated payload."""
        body = self.deflate(payload)
        return header(RSV1 | opcode, len(body)) + body

    def text_frame(self, payload: bytes) -> bytes:
        """:meth:`frame` for a text message, made once per distinct message per step."""
        cache = self._cache
        got = cache.get(payload)
        if got is not None:
            self.hits += 1
            return got
        out = self.frame(OP_TEXT, payload)
        if self._held < STEP_CACHE_BYTES:
            loop = asyncio.get_running_loop()
            if self._armed is not loop:  # a loop that died with a clear pending: rearm
                self._armed = loop
                loop.call_soon(self._clear)
            cache[payload] = out
            self._held += len(payload) + len(out)
        return out

    def _clear(self) -> None:
        self._cache.clear()
        self._held = 0
        self._armed = None


class Compression:
    """What one connection's messages get: the shared :class:`Deflater` of its window,
    and the size from which a message is deflated (0: every one)."""

    __slots__ = ("deflater", "min_bytes")

    def __init__(self, deflater: Deflater, min_bytes: int) -> None:
        self.deflater = deflater
        self.min_bytes = min_bytes


_deflaters: dict[int, Deflater] = {}
_compressions: dict[tuple[int, int], Compression] = {}


def deflater(wbits: int = 15) -> Deflater:
    """The process's one :class:`Deflater` for a window size."""
    d = _deflaters.get(wbits)
    if d is None:
        d = _deflaters[wbits] = Deflater(wbits)
    return d


def compression(agreed: Deflate | None, mode: str, min_bytes: int) -> Compression | None:
    """A connection's :class:`Compression` (shared by all with the same settings), or None
    when nothing was agreed. ``mode``: ``on`` deflates every data message, ``auto`` those
    of at least ``min_bytes``."""
    if agreed is None or mode == "off":
        return None
    key = (agreed.server_wbits, 0 if mode == "on" else min_bytes)
    c = _compressions.get(key)
    if c is None:
        c = _compressions[key] = Compression(deflater(key[0]), key[1])
    return c
