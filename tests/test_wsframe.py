"""RFC 6455 framing and the upgrade head, as pure functions (no sockets)."""

from __future__ import annotations

import base64
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgate import handshake as hs
from natsgate import wsframe as wf


def client_frame(
    op: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv: int = 0
) -> bytes:
    """A frame as a browser sends it: masked (unless ``mask=b""``)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | op
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload
    return head + mask + body


# ------------------------------------------------------------------ the reader


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_is_its_own_inverse_and_matches_the_rfc(data: bytes, mask: bytes) -> None:
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert wf.unmask(data, mask) == expected
    assert wf.unmask(expected, mask) == data


# A message: text (valid UTF-8, non-ASCII included) or binary (any bytes).
message = st.one_of(
    st.tuples(st.just(wf.OP_TEXT), st.text(max_size=20_000).map(str.encode)),
    st.tuples(st.just(wf.OP_BINARY), st.binary(max_size=70_000)),
)
controls = st.tuples(st.sampled_from([wf.OP_PING, wf.OP_PONG]), st.binary(max_size=125))


def fragments(op: int, payload: bytes, cuts: list[int]) -> list[bytes]:
    """One message as frames cut at ``cuts`` (byte positions: UTF-8 may be split)."""
    at = [0, *sorted(c % (len(payload) + 1) for c in cuts), len(payload)]
    parts = [payload[at[i] : at[i + 1]] for i in range(len(at) - 1)]
    return [
        client_frame(op if i == 0 else wf.OP_CONT, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    ]


def feed_in_pieces(
    reader: wf.FrameReader, stream: bytes, data: st.DataObject
) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(stream):
        step = data.draw(st.integers(1, max(1, len(stream) - pos)))
        got += reader.feed(stream[pos : pos + step])
        pos += step
    return got


@given(st.lists(st.tuples(message, st.lists(st.integers(0), max_size=3)), max_size=5), st.data())
def test_any_valid_frame_sequence_round_trips_however_the_bytes_are_cut(
    msgs: list[tuple[tuple[int, bytes], list[int]]], data: st.DataObject
) -> None:
    """Messages in up to 4 fragments, control frames between fragments and between
    messages, a close at the end (or not), bytes cut anywhere: out come the same
    messages, control frames in place, and nothing is held afterwards."""
    stream, expected = b"", []
    for (op, payload), cuts in msgs:
        frames = fragments(op, payload, cuts)
        for i, f in enumerate(frames):
            stream += f
            if i < len(frames) - 1 and data.draw(st.booleans()):
                ctl = data.draw(controls)
                stream += client_frame(*ctl)
                expected.append(ctl)
        expected.append((op, payload))
    if data.draw(st.booleans()):
        body = wf.close_payload(1000, data.draw(st.text(max_size=40)))
        stream += client_frame(wf.OP_CLOSE, body) + client_frame(wf.OP_TEXT, b"late")
        expected.append((wf.OP_CLOSE, body))
    reader = wf.FrameReader(max_size=1 << 20)
    got = feed_in_pieces(reader, stream, data)
    # a control frame between fragments comes out before the message it interrupted
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert [m for m in got if m[0] <= wf.OP_BINARY] == [m for m in expected if m[0] <= 2]
    assert reader.held == 0 and reader._frag is None and reader._utf8 is None
    assert reader._buf is None or reader._buf is wf._CLOSED  # nothing held between messages


@given(st.binary(max_size=60), st.lists(st.integers(0), max_size=4), st.data())
def test_a_text_message_is_accepted_exactly_when_it_is_utf8(
    payload: bytes, cuts: list[int], data: st.DataObject
) -> None:
    reader = wf.FrameReader(max_size=1000)
    stream = b"".join(fragments(wf.OP_TEXT, payload, cuts))
    try:
        payload.decode()
    except UnicodeDecodeError:
        with pytest.raises(wf.FrameError) as info:
            feed_in_pieces(reader, stream, data)
        assert info.value.code == 1007
        assert reader.held == 0  # what was held is dropped with the error
    else:
        assert feed_in_pieces(reader, stream, data) == [(wf.OP_TEXT, payload)]


def test_utf8_fails_fast_on_the_fragment_that_breaks_it() -> None:
    """Autobahn 6.4.1: the second fragment holds 0xF4 0x90 (beyond U+10FFFF); the error
    comes with that fragment, before the third is sent."""
    reader = wf.FrameReader(max_size=1000)
    assert reader.feed(client_frame(wf.OP_TEXT, "κόσμε".encode(), fin=False)) == []
    with pytest.raises(wf.FrameError) as info:
        reader.feed(client_frame(wf.OP_CONT, b"\xf4\x90\x80\x80", fin=False))
    assert info.value.code == 1007
    # a sequence cut at a fragment boundary is fine, and binary is never checked
    reader = wf.FrameReader(max_size=1000)
    euro = "€".encode()
    stream = client_frame(wf.OP_TEXT, euro[:1], fin=False) + client_frame(wf.OP_CONT, euro[1:])
    assert reader.feed(stream + client_frame(wf.OP_BINARY, b"\xff")) == [
        (wf.OP_TEXT, euro),
        (wf.OP_BINARY, b"\xff"),
    ]
    # a message that ends inside a sequence is not UTF-8
    with pytest.raises(wf.FrameError) as info:
        wf.FrameReader(max_size=1000).feed(
            client_frame(wf.OP_TEXT, b"a", fin=False) + client_frame(wf.OP_CONT, euro[:2])
        )
    assert info.value.code == 1007


@given(st.binary(max_size=2000))
def test_any_bytes_give_messages_or_a_frame_error(junk: bytes) -> None:
    reader = wf.FrameReader(max_size=1000)
    try:
        for op, payload in reader.feed(junk):
            assert op in (wf.OP_TEXT, wf.OP_BINARY, wf.OP_CLOSE, wf.OP_PING, wf.OP_PONG)
            assert len(payload) <= 1000
            if op == wf.OP_TEXT:
                payload.decode()
    except wf.FrameError as exc:
        assert exc.code in (wf.PROTOCOL_ERROR, wf.INVALID_DATA, wf.TOO_BIG)


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.tuples(
                st.sampled_from([0, 1, 2, 8, 9, 10]), st.binary(max_size=600), st.booleans()
            ).map(lambda f: client_frame(f[0], f[1], fin=f[2])),
        ),
        max_size=8,
    ),
    st.data(),
)
def test_frames_and_junk_in_any_reads_raise_nothing_but_frame_error(
    parts: list[bytes], data: st.DataObject
) -> None:
    """Real frames (any opcode, fin or not) mixed with junk, cut into random reads: the
    reader emits, holds or refuses, and holds nothing once it refused."""
    reader = wf.FrameReader(max_size=500)
    stream = b"".join(parts)
    try:
        for op, payload in feed_in_pieces(reader, stream, data):
            assert op in (wf.OP_TEXT, wf.OP_BINARY, wf.OP_CLOSE, wf.OP_PING, wf.OP_PONG)
            assert len(payload) <= 500
    except wf.FrameError as exc:
        assert exc.code in (wf.PROTOCOL_ERROR, wf.INVALID_DATA, wf.TOO_BIG)
        assert reader.held == 0
    else:
        assert reader.held <= len(stream)


def test_a_frame_trickled_in_byte_by_byte_is_appended_to_one_buffer() -> None:
    """1 MiB in 1-byte reads: every read is appended to the same bytearray (amortized
    linear), where the old reader built a new ``bytes`` of everything held on each read
    (quadratic: 1 MiB of reads cost 512 GiB of copying)."""
    payload = os.urandom(1 << 20)
    raw = client_frame(wf.OP_BINARY, payload)
    reader = wf.FrameReader(max_size=1 << 20)
    assert reader.feed(raw[:1]) == []
    held = reader._buf
    assert isinstance(held, bytearray)
    for i in range(1, len(raw) - 1):
        assert reader.feed(raw[i : i + 1]) == []
        assert reader._buf is held  # the same object: nothing re-copied
    assert reader.held == len(raw) - 1
    assert reader.feed(raw[-1:]) == [(wf.OP_BINARY, payload)]
    assert reader._buf is None and reader.held == 0


def test_what_follows_a_whole_frame_in_a_buffer_is_kept_alone() -> None:
    """After a big frame completes, the next frame's first bytes do not keep the big
    buffer's allocation: only the leftover is held."""
    big = client_frame(wf.OP_BINARY, b"x" * 100_000)
    nxt = client_frame(wf.OP_TEXT, b"next")
    reader = wf.FrameReader(max_size=1 << 20)
    reader.feed(big[:10])
    assert reader.feed(big[10:] + nxt[:3]) == [(wf.OP_BINARY, b"x" * 100_000)]
    assert reader.held == 3
    assert reader.feed(nxt[3:]) == [(wf.OP_TEXT, b"next")]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (client_frame(wf.OP_TEXT, b"x", mask=b""), 1002),  # unmasked
        (client_frame(wf.OP_TEXT, b"x", rsv=0x40), 1002),  # permessage-deflate bit, not agreed
        (client_frame(0x3, b"x"), 1002),  # reserved opcode
        (client_frame(wf.OP_PING, b"x" * 126), 1002),  # control frame too long
        (client_frame(wf.OP_PING, b"x", fin=False), 1002),  # fragmented control frame
        (client_frame(wf.OP_CONT, b"x"), 1002),  # continuation of nothing
        (client_frame(wf.OP_TEXT, b"a", fin=False) + client_frame(wf.OP_TEXT, b"b"), 1002),
        (client_frame(wf.OP_TEXT, b"x" * 101), 1009),
        (client_frame(wf.OP_TEXT, b"x" * 60, fin=False) + client_frame(0, b"y" * 41), 1009),
        (client_frame(wf.OP_TEXT, b"\xff"), 1007),  # not UTF-8
        (client_frame(wf.OP_TEXT, b"\xed\xa0\x80"), 1007),  # a surrogate (U+D800)
        (client_frame(wf.OP_TEXT, b"\xc0\xaf"), 1007),  # an over-long encoding
        (client_frame(wf.OP_TEXT, b"\xe2\x82", fin=False) + client_frame(0, b"a"), 1007),
    ],
)
def test_protocol_errors_name_their_close_code(raw: bytes, code: int) -> None:
    with pytest.raises(wf.FrameError) as info:
        wf.FrameReader(max_size=100).feed(raw)
    assert info.value.code == code


def test_messages_ahead_of_a_bad_frame_come_with_the_error() -> None:
    good = [client_frame(wf.OP_TEXT, b"one"), client_frame(wf.OP_PING, b"p")]
    with pytest.raises(wf.FrameError) as info:
        wf.FrameReader(max_size=100).feed(b"".join(good) + client_frame(0x3, b"bad"))
    assert info.value.before == [(wf.OP_TEXT, b"one"), (wf.OP_PING, b"p")]


def test_an_over_long_frame_is_refused_from_its_header_alone() -> None:
    head = struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 40) + b"mask"
    with pytest.raises(wf.FrameError) as info:
        wf.FrameReader(max_size=1 << 20).feed(head)  # not one byte of the payload sent
    assert info.value.code == 1009


def test_nothing_after_a_close_frame_counts() -> None:
    reader = wf.FrameReader(max_size=100)
    out = reader.feed(
        client_frame(wf.OP_TEXT, b"a", fin=False)
        + client_frame(wf.OP_CLOSE, wf.close_payload(1000))
        + client_frame(wf.OP_TEXT, b"late")
    )
    assert out == [(wf.OP_CLOSE, b"\x03\xe8")]
    assert reader.held == 0  # the unfinished message is dropped too
    assert reader.feed(client_frame(wf.OP_TEXT, b"later")) == []  # in a later read as well


def test_nothing_after_an_error_counts() -> None:
    reader = wf.FrameReader(max_size=100)
    with pytest.raises(wf.FrameError):
        reader.feed(client_frame(wf.OP_TEXT, b"x", fin=False) + client_frame(0x3, b"bad"))
    assert reader.held == 0
    assert reader.feed(client_frame(wf.OP_TEXT, b"after")) == []


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"", (None, "")), (b"\x03\xe8bye", (1000, "bye")), (b"\x0f\xa1", (4001, ""))],
)
def test_close_payloads_parse(payload: bytes, expected: tuple[int | None, str]) -> None:
    assert wf.parse_close(payload) == expected


@pytest.mark.parametrize("payload", [b"\x03", b"\x03\xed", b"\x00\x00", b"\x03\xe8\xff"])
def test_bad_close_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(wf.FrameError):
        wf.parse_close(payload)


@given(st.integers(1000, 4999), st.text(max_size=200))
def test_close_reason_is_cut_to_123_bytes_on_a_character_boundary(code: int, reason: str) -> None:
    body = wf.close_payload(code, reason)
    assert len(body) <= 125
    assert reason.encode().startswith(body[2:])
    body[2:].decode()  # still UTF-8


@given(st.integers(0, 200_000))
def test_server_frame_headers_carry_the_length(n: int) -> None:
    head = wf.header(wf.OP_TEXT, n)
    assert head[0] == 0x81 and not head[1] & 0x80  # final, text, not masked
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", head[2:4])[0]
    elif length == 127:
        length = struct.unpack("!Q", head[2:10])[0]
    assert length == n


def test_accept_key_matches_rfc_6455_example() -> None:
    assert wf.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# ------------------------------------------------------------------ the upgrade head


KEY = base64.b64encode(b"0123456789abcdef").decode()


def head(*lines: str, target: str = "/ws?token=t&x=1") -> bytes:
    return "\r\n".join([f"GET {target} HTTP/1.1", *lines]).encode()


UPGRADE = (
    "Host: example.org",
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    "Sec-WebSocket-Version: 13",
    f"Sec-WebSocket-Key: {KEY}",
)


@pytest.mark.parametrize(
    ("line", "ours"),
    [
        (b"GET /ws HTTP/1.1", True),
        (b"GET /ws?token=x HTTP/1.1", True),
        (b"GET /wss HTTP/1.1", False),
        (b"GET /ws/x HTTP/1.1", False),
        (b"POST /ws HTTP/1.1", False),
        (b"GET /healthz HTTP/1.1", False),
    ],
)
def test_only_get_ws_is_upgraded_here(line: bytes, ours: bool) -> None:
    assert hs.routes_here(line) is ours


def test_a_browser_upgrade_parses_and_is_accepted() -> None:
    h = hs.parse_head(head(*UPGRADE, "Cookie: a=1; jwt=abc", "cookie: b=2", "X-Empty:"))
    assert h.path == "/ws"
    assert h.query["token"] == "t" and h.query["x"] == "1"
    assert h.headers["host"] == "example.org"  # names are case-insensitive
    assert h.headers["X-Empty"] == ""
    assert h.cookies == {"a": "1", "jwt": "abc", "b": "2"}
    assert hs.check_upgrade(h) == wf.accept_key(KEY)
    assert hs.switching("abc").startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /ws HTTP/1.0\r\nHost: x",
        b"GET /ws\r\nHost: x",
        b"GET /ws HTTP/1.1\r\nno colon here",
        b"GET /ws HTTP/1.1\r\n folded: continuation",
        b"GET /ws HTTP/1.1\r\nName : space before colon",
    ],
)
def test_malformed_heads_are_400(raw: bytes) -> None:
    with pytest.raises(hs.HeadError) as info:
        hs.parse_head(raw)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("drop", "add", "status"),
    [
        ("Upgrade: websocket", "", 400),
        ("Connection: keep-alive, Upgrade", "Connection: keep-alive", 400),
        ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 426),
        (f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Key: short", 400),
        ("Host: example.org", "Content-Length: 5", 400),
    ],
)
def test_what_is_not_an_upgrade_is_refused(drop: str, add: str, status: int) -> None:
    lines = [line for line in UPGRADE if line != drop] + ([add] if add else [])
    with pytest.raises(hs.HeadError) as info:
        hs.check_upgrade(hs.parse_head(head(*lines)))
    assert info.value.status == status


def test_refusals_are_plain_json_and_close() -> None:
    raw = hs.refusal(426, "only version 13")
    top, body = raw.split(b"\r\n\r\n")
    assert top.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Sec-WebSocket-Version: 13" in top and b"Connection: close" in top
    assert body == b'{"error": "only version 13"}'
    assert f"Content-Length: {len(body)}".encode() in top


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 200_000])
def test_each_length_encoding_round_trips(n: int) -> None:
    payload = os.urandom(n)
    raw = client_frame(wf.OP_BINARY, payload)
    reader = wf.FrameReader(max_size=1 << 20)
    cut = min(7, len(raw) - 1)
    assert reader.feed(raw[:cut]) == []  # a frame cut anywhere waits for the rest
    assert reader.feed(raw[cut:]) == [(wf.OP_BINARY, payload)]
