"""permessage-deflate (RFC 7692) as pure logic: the offer and the answer
(``handshake.negotiate_deflate``), inflating what clients send (``wsframe.FrameReader``)
and deflating what the gateway sends (``deflate.Deflater``), no sockets."""

from __future__ import annotations

import asyncio
import os
import random
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from natsgate import deflate as df
from natsgate import handshake as hs
from natsgate import wsframe as wf
from tests.test_wsframe import client_frame, feed_in_pieces

PMD = "permessage-deflate"
BOTH = f"{PMD}; server_no_context_takeover; client_no_context_takeover"


def offered(*values: str) -> CIMultiDict[str]:
    return CIMultiDict(("Sec-WebSocket-Extensions", v) for v in values)


def answer(*values: str, mode: str = "auto") -> str | None:
    agreed = hs.negotiate_deflate(offered(*values), mode)
    return agreed.response() if agreed else None


# ------------------------------------------------------------------ negotiation


@pytest.mark.parametrize(
    ("offers", "expected"),
    [
        # what browsers send: Chromium, Firefox, Safari
        ([f"{PMD}; client_max_window_bits"], BOTH),
        ([PMD], BOTH),
        ([f"{PMD}; client_no_context_takeover; server_no_context_takeover"], BOTH),
        ([f"{PMD};client_max_window_bits=10"], BOTH),  # their window: we inflate with 15
        ([f'{PMD}; client_max_window_bits="12"'], BOTH),  # a quoted token is the token
        ([f"{PMD}; server_max_window_bits=15"], f"{BOTH}; server_max_window_bits=15"),
        ([f"{PMD}; server_max_window_bits=9"], f"{BOTH}; server_max_window_bits=9"),
        # header names and parameter names are case-insensitive; spaces around = and ;
        (
            ["Permessage-Deflate ;  Server_Max_Window_Bits = 12"],
            f"{BOTH}; server_max_window_bits=12",
        ),
        # other extensions are passed over; the first offer we can honour is taken
        ([f"x-webkit-deflate-frame, {PMD}"], BOTH),
        ([f"{PMD}; server_max_window_bits=8, {PMD}; client_max_window_bits"], BOTH),
        (
            [f"{PMD}; server_max_window_bits=8", f"{PMD}; server_max_window_bits=10"],
            f"{BOTH}; server_max_window_bits=10",
        ),
        # declined, never a failed upgrade: ...
        ([], None),
        ([""], None),
        (["x-webkit-deflate-frame"], None),
        ([f"{PMD}; server_max_window_bits=8"], None),  # zlib has no raw 256-byte window
        ([f"{PMD}; server_max_window_bits"], None),  # a value is required
        ([f"{PMD}; server_max_window_bits=16"], None),
        ([f"{PMD}; server_max_window_bits=7"], None),
        ([f"{PMD}; server_max_window_bits=015"], None),  # exactly 8..15, no leading zero
        ([f"{PMD}; client_max_window_bits=16"], None),
        ([f"{PMD}; client_max_window_bits=abc"], None),
        ([f"{PMD}; server_no_context_takeover=1"], None),  # takes no value
        ([f"{PMD}; client_no_context_takeover; client_no_context_takeover"], None),  # twice
        ([f"{PMD}; mystery_param"], None),  # unknown parameter
        ([f"{PMD}; server_max_window_bits=10; server_max_window_bits=11"], None),
        # a header that does not parse: no extension
        ([f"{PMD}; =1"], None),
        ([f"{PMD},, x"], None),
        ([f'{PMD}; client_max_window_bits="1'], None),
        ([f"{PMD} junk"], None),
    ],
)
def test_negotiation_table(offers: list[str], expected: str | None) -> None:
    assert answer(*offers) == expected


def test_compression_off_never_negotiates() -> None:
    assert answer(PMD, mode="off") is None
    assert answer(PMD, mode="on") == BOTH


def test_the_101_carries_the_agreed_extension_or_none() -> None:
    plain = hs.switching("abc")
    assert b"Sec-WebSocket-Extensions" not in plain and plain.endswith(b"\r\n\r\n")
    agreed = hs.negotiate_deflate(offered(f"{PMD}; server_max_window_bits=11"), "on")
    with_ext = hs.switching("abc", agreed)
    assert with_ext.endswith(
        f"Sec-WebSocket-Accept: abc\r\nSec-WebSocket-Extensions: {BOTH}; "
        "server_max_window_bits=11\r\n\r\n".encode()
    )


@given(st.text(max_size=80))
def test_any_extensions_header_gives_an_answer_or_none(value: str) -> None:
    got = hs.negotiate_deflate(offered(value), "auto")
    assert got is None or 9 <= got.server_wbits <= 15


# ------------------------------------------------------------------ client -> gateway


def client_deflate(payload: bytes, *, final_block: bool = False) -> bytes:
    """What a browser sends: raw deflate, tail stripped (or a final block, §7.2.3.4)."""
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    if final_block:
        return z.compress(payload) + z.flush(zlib.Z_FINISH)
    out = z.compress(payload) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(wf.TAIL)
    return out[:-4]


def compressed_frames(op: int, payload: bytes, cuts: list[int], **kw: bool) -> list[bytes]:
    """A compressed message's deflated bytes cut into frames; RSV1 on the first alone."""
    body = client_deflate(payload, **kw)
    at = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    parts = [body[at[i] : at[i + 1]] for i in range(len(at) - 1)]
    return [
        client_frame(
            op if i == 0 else wf.OP_CONT,
            part,
            fin=i == len(parts) - 1,
            rsv=wf.RSV1 if i == 0 else 0,
        )
        for i, part in enumerate(parts)
    ]


message = st.one_of(
    st.tuples(st.just(wf.OP_TEXT), st.text(max_size=5_000).map(str.encode)),
    st.tuples(st.just(wf.OP_BINARY), st.binary(max_size=20_000)),
    st.tuples(st.just(wf.OP_TEXT), st.integers(0, 30_000).map(lambda n: b"ab" * n)),
)


@given(
    st.lists(st.tuples(message, st.lists(st.integers(0), max_size=4), st.booleans()), max_size=5),
    st.data(),
)
def test_compressed_and_plain_messages_round_trip_however_cut(
    msgs: list[tuple[tuple[int, bytes], list[int], bool]], data: st.DataObject
) -> None:
    """Compressed (in up to 5 fragments, the deflate stream cut anywhere, some with a
    final block) and plain messages mixed, pings between fragments, the bytes fed in
    arbitrary reads: out come the messages as sent, and nothing is held after them."""
    stream, expected = b"", []
    for (op, payload), cuts, compress in msgs:
        if compress:
            frames = compressed_frames(op, payload, cuts, final_block=data.draw(st.booleans()))
        else:
            frames = [client_frame(op, payload)]
        for i, f in enumerate(frames):
            stream += f
            if i < len(frames) - 1 and data.draw(st.booleans()):
                stream += client_frame(wf.OP_PING, b"p")
        expected.append((op, payload))
    reader = wf.FrameReader(max_size=1 << 20, inflate=True)
    got = feed_in_pieces(reader, stream, data)
    assert [m for m in got if m[0] <= wf.OP_BINARY] == expected
    assert reader.held == 0 and reader._z is None and reader._frag is None


def test_a_zip_bomb_closes_1009_without_inflating_past_the_limit() -> None:
    limit = 1 << 20
    bomb = client_deflate(b"\0" * (200 << 20))  # 200 MiB of zeros in about 200 KiB
    assert len(bomb) < 256 << 10
    for frames in (
        [client_frame(wf.OP_BINARY, bomb, rsv=wf.RSV1)],
        compressed_frames(wf.OP_BINARY, b"\0" * (200 << 20), [50_000, 100_000]),
    ):
        tracemalloc.start()
        try:
            with pytest.raises(wf.FrameError) as info:
                wf.FrameReader(max_size=limit, inflate=True).feed(b"".join(frames))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.value.code == 1009
        assert peak < 6 * limit  # the input, one limit of output and a copy: not 200 MiB


def test_a_message_of_exactly_the_limit_inflates() -> None:
    payload = bytes(range(256)) * 4  # 1 KiB
    reader = wf.FrameReader(max_size=1024, inflate=True)
    assert reader.feed(b"".join(compressed_frames(wf.OP_BINARY, payload, []))) == [
        (wf.OP_BINARY, payload)
    ]
    with pytest.raises(wf.FrameError) as info:
        wf.FrameReader(max_size=1023, inflate=True).feed(
            b"".join(compressed_frames(wf.OP_BINARY, payload, [300]))
        )
    assert info.value.code == 1009


def test_incompressible_data_at_the_limit_still_fits_its_compressed_frame() -> None:
    payload = os.urandom(100_000)
    body = client_deflate(payload)
    assert len(body) > len(payload)  # deflate grew it (stored blocks)
    reader = wf.FrameReader(max_size=100_000, inflate=True)
    assert reader.feed(client_frame(wf.OP_BINARY, body, rsv=wf.RSV1)) == [(wf.OP_BINARY, payload)]


@pytest.mark.parametrize(
    ("raw", "inflate", "code"),
    [
        (client_frame(wf.OP_TEXT, client_deflate(b"hi"), rsv=wf.RSV1), False, 1002),
        (client_frame(wf.OP_PING, b"", rsv=wf.RSV1), True, 1002),  # control: never
        (client_frame(wf.OP_CLOSE, b"", rsv=wf.RSV1), True, 1002),
        (client_frame(wf.OP_TEXT, b"a", rsv=0x20), True, 1002),  # RSV2: no such extension
        (client_frame(wf.OP_TEXT, b"a", rsv=0x60), True, 1002),
        (  # RSV1 on a continuation frame
            client_frame(wf.OP_TEXT, client_deflate(b"a"), fin=False, rsv=wf.RSV1)
            + client_frame(wf.OP_CONT, b"", rsv=wf.RSV1),
            True,
            1002,
        ),
        (client_frame(wf.OP_TEXT, b"\xff\xff\xff not deflate", rsv=wf.RSV1), True, 1002),
        (client_frame(wf.OP_TEXT, client_deflate(b"\xff"), rsv=wf.RSV1), True, 1007),
        (  # UTF-8 checked on the inflated text, fragment by fragment
            b"".join(compressed_frames(wf.OP_TEXT, "é".encode()[:1] + b"a" * 99, [3])),
            True,
            1007,
        ),
        (client_frame(wf.OP_TEXT, client_deflate(b"x" * 101), rsv=wf.RSV1), True, 1009),
    ],
)
def test_compression_errors_name_their_close_code(raw: bytes, inflate: bool, code: int) -> None:
    with pytest.raises(wf.FrameError) as info:
        wf.FrameReader(max_size=100, inflate=inflate).feed(raw)
    assert info.value.code == code


def test_utf8_in_a_compressed_fragmented_message_fails_on_the_fragment_that_breaks_it() -> None:
    rng = random.Random(7)
    payload = b"ok \xff" + bytes(rng.choice(b"abcdefghij klmnop") for _ in range(20_000))
    frames = compressed_frames(wf.OP_TEXT, payload, [len(client_deflate(payload)) // 2])
    reader = wf.FrameReader(max_size=1 << 20, inflate=True)
    with pytest.raises(wf.FrameError) as info:  # the first half already holds the 0xff
        reader.feed(frames[0])
    assert info.value.code == 1007


# ------------------------------------------------------------------ gateway -> client


def inflate(frame: bytes, wbits: int = 15) -> tuple[int, bytes]:
    """A client's view of one server frame: a fresh inflater (no context takeover)."""
    b0, n = frame[0], frame[1]
    head = 2 if n < 126 else 4 if n == 126 else 10
    assert b0 & wf.RSV1
    return b0 & 0x0F, zlib.decompressobj(-wbits).decompress(frame[head:] + wf.TAIL)


@given(st.lists(st.binary(max_size=70_000) | st.text(max_size=3000).map(str.encode), max_size=6))
def test_every_message_deflates_on_its_own(payloads: list[bytes]) -> None:
    """One shared stream for the process, yet each message inflates alone: the context
    is reset after every message, as server_no_context_takeover promises."""
    d = df.Deflater(15)
    for p in payloads:
        assert inflate(d.frame(wf.OP_TEXT, p)) == (wf.OP_TEXT, p)


@pytest.mark.parametrize("wbits", [9, 10, 12, 15])
def test_a_smaller_window_is_honoured(wbits: int) -> None:
    """Data with repeats far apart: a frame made for window 9 inflates with window 9."""
    payload = bytes(range(256)) * 200 + b"tail" * 100
    frame = df.deflater(wbits).frame(wf.OP_BINARY, payload)
    assert inflate(frame, wbits) == (wf.OP_BINARY, payload)


async def test_a_text_frame_is_deflated_once_per_loop_step() -> None:
    d = df.Deflater(15)
    batch = b'{"op":"msg","data":"hello"}\n' * 20
    first = d.text_frame(batch)
    again = [d.text_frame(bytes(bytearray(batch))) for _ in range(999)]  # equal, not same
    assert d.deflated == 1 and d.hits == 999 and all(f is first for f in again)
    assert inflate(first) == (wf.OP_TEXT, batch)
    await asyncio.sleep(0)  # the next step: the cache is gone
    assert d._cache == {} and d._held == 0
    d.text_frame(batch)
    assert d.deflated == 2


def test_compression_is_shared_by_settings() -> None:
    agreed = hs.Deflate()
    on = df.compression(agreed, "on", 256)
    assert on is not None and on.min_bytes == 0
    auto = df.compression(agreed, "auto", 256)
    assert auto is not None and auto.min_bytes == 256 and auto.deflater is on.deflater
    assert df.compression(agreed, "auto", 256) is auto
    assert df.compression(None, "on", 0) is None
    small = df.compression(hs.Deflate(10, True), "on", 0)
    assert small is not None and small.deflater is not on.deflater


def test_an_unfinished_compressed_message_counts_its_inflater() -> None:
    """A first fragment that inflates to nothing still holds zlib's state: it counts, so
    the input budget and the message clock see it."""
    reader = wf.FrameReader(max_size=1 << 20, inflate=True)
    body = client_deflate(b"hello " * 100)
    assert reader.feed(client_frame(wf.OP_TEXT, body[:1], fin=False, rsv=wf.RSV1)) == []
    assert reader.held >= wf.INFLATER_BYTES
    assert reader.feed(client_frame(wf.OP_CONT, body[1:])) == [(wf.OP_TEXT, b"hello " * 100)]
    assert reader.held == 0
