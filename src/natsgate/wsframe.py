"""RFC 6455 framing, server side: parse what clients send, frame what the gateway sends.

Ours rather than aiohttp's or picows' because per-connection state is what bounds how many
idle connections one process holds: between frames a :class:`FrameReader` is four slots
and no buffer (``bench/parsers.py`` measures it against python-websockets' parser). Pure
logic, no I/O; tested with hypothesis (``tests/test_wsframe.py``, ``tests/test_deflate.py``)
and the Autobahn TestSuite (``tests/test_autobahn.py``).

With permessage-deflate agreed (RFC 7692, always without context takeover), a message
whose first frame has RSV1 is inflated here, a fresh inflater per message, never past
``max_size`` bytes of output. Deflating what the gateway sends is ``deflate.py``'s.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import struct
import zlib

from .errors import CloseCode

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA = (OP_CONT, OP_TEXT, OP_BINARY)
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")
_CODE = struct.Struct("!H")
_UTF8 = codecs.getincrementaldecoder("utf-8")
_CLOSED = b""  # FrameReader._buf once a close frame or an error ended the input
TAIL = b"\x00\x00\xff\xff"  # what a deflated message's sender strips (RFC 7692 §7.2.1)
RSV1 = 0x40
# what zlib holds while a compressed message is unfinished (a 32 KiB window and its state):
# counted in ``held``, so the input budget and the message clock cover it too
INFLATER_BYTES = 40 << 10

PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
INVALID_DATA = CloseCode.INVALID_DATA
TOO_BIG = CloseCode.TOO_BIG


class FrameError(Exception):
    """The peer broke the protocol: close the connection with ``code``. ``before`` holds
    the whole messages that came ahead of the offending frame (they are still handled)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.before: list[tuple[int, bytes]] = []


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode()


def valid_key(key: str) -> bool:
    """A key must be 16 random bytes in base64 (RFC 6455 §4.1)."""
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def header(opcode: int, length: int) -> bytes:
    """A final, unmasked frame's header (servers never mask, §5.1)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return _H16.pack(0x80 | opcode, 126, length)
    return _H64.pack(0x80 | opcode, 127, length)


def frame(opcode: int, payload: bytes) -> bytes:
    return header(opcode, len(payload)) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's body: the code, then at most 123 bytes of UTF-8 reason (§5.5.1)."""
    raw = reason.encode()[:123].decode("utf-8", "ignore").encode()
    return _CODE.pack(code) + raw


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The peer's close code and reason; ``None`` when it sent no code."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a one-byte body")
    (code,) = _CODE.unpack_from(payload)
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise FrameError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None


def unmask(data: bytes | bytearray | memoryview, mask: bytes | bytearray | memoryview) -> bytes:
    """XOR with the repeating 4-byte key, as one big-integer operation (runs in C)."""
    n = len(data)
    if n == 0:
        return b""
    key = (bytes(mask) * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Turns the bytes a client sends into whole messages: ``(opcode, payload)`` for text,
    binary (fragments joined) and control frames, in order.

    Refuses, with :class:`FrameError`, unmasked frames, reserved bits or opcodes (RSV1
    only on the first frame of a data message, and only with ``inflate``), fragmented or
    over-long control frames, a continuation without a message, a message over
    ``max_size`` bytes (1009, as soon as a header announces it, before any of it is
    buffered) and a text message that is not UTF-8 (1007: a fragmented one as soon as a
    fragment breaks it, a single frame when it is whole). A compressed message's limit
    is on its inflated size: inflation stops one byte past it (1009), so a zip bomb
    costs at most ``max_size`` bytes; its compressed frames may each be a little over
    ``max_size`` (deflate's stored blocks). Nothing counts after a close frame or an
    error.

    An incomplete frame is kept in a bytearray that later reads are appended to, so a
    frame that trickles in costs linear time, not a copy of all of it per read. Between
    messages nothing is held: ``held`` is 0 and no buffer or decoder exists.
    """

    __slots__ = ("_buf", "_frag", "_utf8", "_z", "inflate", "max_size")

    def __init__(self, max_size: int, *, inflate: bool = False) -> None:
        self.max_size = max_size
        self.inflate = inflate  # permessage-deflate was agreed: RSV1 means compressed
        self._buf: bytearray | bytes | None = None  # an incomplete frame, kept between reads
        self._frag: bytearray | None = None  # a fragmented message being joined
        self._utf8: codecs.IncrementalDecoder | None = None  # checks fragmented text only
        self._z: zlib._Decompress | None = None  # inflates a fragmented compressed message

    @property
    def held(self) -> int:
        """Bytes of unfinished input held: an incomplete frame plus the fragments so far
        (and an inflater's state, while a compressed message is unfinished)."""
        buf, frag = self._buf, self._frag
        held = (0 if buf is None else len(buf)) + (0 if frag is None else len(frag))
        return held if self._z is None else held + INFLATER_BYTES

    def discard(self) -> None:
        """Drop whatever is held; nothing fed from now on counts (the connection ends)."""
        self._buf, self._frag, self._utf8, self._z = _CLOSED, None, None, None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        try:
            self._feed(data, out)
        except FrameError as exc:
            self.discard()
            exc.before = out
            raise
        return out

    def _feed(self, data: bytes, out: list[tuple[int, bytes]]) -> None:
        buf = self._buf
        if buf is None:
            buf = data  # the common case: parse the read itself, no copy
        elif buf is _CLOSED:
            return
        else:
            buf += data  # appended in place (amortized linear), never re-copied whole
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            fin, op, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            compressed = False
            if b0 & 0x70:
                compressed = _compressed(b0, op, self.inflate)
            if not b1 & 0x80:
                raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
                if length >> 63:
                    raise FrameError(PROTOCOL_ERROR, "frame length has its top bit set")
            if op in _CONTROL:
                if not fin or length > 125:
                    raise FrameError(PROTOCOL_ERROR, "control frames must be final and short")
            elif op not in _DATA:
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {op:#x}")
            elif length + (len(self._frag) if self._frag is not None else 0) > self.max_size and (
                not (compressed or self._z is not None) or length > _deflated_max(self.max_size)
            ):
                raise FrameError(TOO_BIG, f"message larger than {self.max_size} bytes")
            start = pos + head + 4
            if end - start < length:
                break
            payload = unmask(buf[start : start + length], buf[pos + head : start])
            pos = start + length
            if op in _CONTROL:
                out.append((op, payload))
                if op == OP_CLOSE:
                    self.discard()  # nothing after a close frame counts (§5.5.1)
                    return
            elif op == OP_CONT:
                frag = self._frag
                if frag is None:
                    raise FrameError(PROTOCOL_ERROR, "continuation frame without a message")
                z = self._z
                if z is not None:
                    payload = _inflate(z, payload, bool(fin), self.max_size - len(frag))
                frag += payload
                utf8 = self._utf8
                if utf8 is not None:
                    _check(utf8, payload, bool(fin))
                if fin:
                    out.append((OP_BINARY if utf8 is None else OP_TEXT, bytes(frag)))
                    self._frag = self._utf8 = self._z = None
            else:
                if self._frag is not None:
                    raise FrameError(PROTOCOL_ERROR, "new message inside a fragmented one")
                if compressed:  # a fresh inflater: the client keeps no context either
                    z = zlib.decompressobj(-15)
                    payload = _inflate(z, payload, bool(fin), self.max_size)
                    if not fin:
                        self._z = z
                if fin:
                    if op == OP_TEXT and not payload.isascii():
                        _check_whole(payload)
                    out.append((op, payload))
                else:
                    if op == OP_TEXT:  # a decoder only while a fragmented text message lasts
                        self._utf8 = utf8 = _UTF8()
                        _check(utf8, payload, False)
                    self._frag = bytearray(payload)
        if pos == end:
            self._buf = None
        elif buf is data:
            self._buf = bytearray(memoryview(data)[pos:])
        else:
            if pos:
                del buf[:pos]  # type: ignore[union-attr]  # a bytearray: cheap at the front
            self._buf = buf


def _compressed(b0: int, op: int, inflate: bool) -> bool:
    """A frame with reserved bits: True when it starts a compressed message, else the
    error (RFC 7692 §6: RSV1 only with the extension, only on a data message's first frame)."""
    if b0 & 0x70 != RSV1 or not inflate:
        raise FrameError(PROTOCOL_ERROR, "reserved bits set; no extension was agreed for them")
    if op not in (OP_TEXT, OP_BINARY):
        raise FrameError(PROTOCOL_ERROR, "RSV1 on a control or continuation frame")
    return True


def _deflated_max(max_size: int) -> int:
    """The most a compressed frame may carry: deflate can grow incompressible data a
    little (5 bytes per 64 KiB stored block), and a limit-size message must still fit."""
    return max_size + (max_size >> 10) + 64


def _inflate(z: zlib._Decompress, data: bytes, final: bool, room: int) -> bytes:
    """Inflate one frame's payload, at most ``room`` bytes of output (else 1009: never
    more than one byte past the limit is made, whatever the compressed data claims)."""
    try:
        out = z.decompress(data, room + 1)  # max_length 0 would mean "no limit": room >= 0
        if len(out) <= room and final:
            out += z.decompress(TAIL, room + 1 - len(out))
    except zlib.error:
        raise FrameError(PROTOCOL_ERROR, "compressed message is not valid deflate data") from None
    if len(out) > room:
        raise FrameError(TOO_BIG, "message larger than the limit once inflated")
    return out


def _check_whole(payload: bytes) -> None:
    try:
        payload.decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "text message is not UTF-8") from None


def _check(decoder: codecs.IncrementalDecoder, fragment: bytes, final: bool) -> None:
    """Fail as soon as a fragment makes the text message invalid UTF-8 (RFC 6455 §8.1)."""
    try:
        decoder.decode(fragment, final)
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "text message is not UTF-8") from None
