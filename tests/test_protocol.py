"""The envelope: decoding, validation and frame encoding (pure)."""

from __future__ import annotations

import json

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from natsgate import frames
from natsgate import protocol as p
from natsgate.errors import ErrorCode, ProtocolError

from .fuzz.properties import check_payload


def one(frame: str | bytes) -> p.ClientOp | ProtocolError:
    items = list(p.decode_frame(frame))
    assert len(items) == 1
    return items[0]


def err(frame: str | bytes) -> ProtocolError:
    item = one(frame)
    assert isinstance(item, ProtocolError), item
    return item


def test_every_op_decodes() -> None:
    assert one('{"op":"sub","target":"a.*","inbox":"1"}') == p.Sub(target="a.*", inbox="1")
    assert isinstance(one('{"op":"unsub","target":"a.*"}'), p.Unsub)
    pub = one('{"op":"pub","target":"a.b","data":{"x":[1, 2]}}')
    assert isinstance(pub, p.Pub) and bytes(pub.data) == b'{"x":[1, 2]}'
    cmd = one('{"op":"cmd","target":"svc.x","data":1,"timeout_ms":50}')
    assert isinstance(cmd, p.Cmd) and cmd.timeout_ms == 50
    kv = one('{"op":"kv_sub","target":"todos","data":{"pattern":"user.a.>"}}')
    assert isinstance(kv, p.KvSub) and kv.pattern == "user.a.>"
    kv_all = one('{"op":"kv_sub","target":"todos"}')
    assert isinstance(kv_all, p.KvSub) and kv_all.pattern == ">"
    js = one('{"op":"js_sub","target":"CHAT","data":{"start_seq":5,"batch":10,"filter":"c.*"}}')
    assert isinstance(js, p.JsSub) and js.opts.start_seq == 5 and js.opts.batch == 10
    js_t = one('{"op":"js_sub","target":"CHAT","data":{"start_time":"2026-01-02T03:04:05Z"}}')
    assert isinstance(js_t, p.JsSub) and js_t.opts.start_time is not None
    assert isinstance(one('{"op":"js_unsub","target":"CHAT","data":{"filter":"c.*"}}'), p.JsUnsub)
    assert isinstance(one('{"op":"ping","inbox":"p"}'), p.Ping)
    assert isinstance(one('{"op":"auth","data":{"token":"x.y.z"}}'), p.Auth)
    assert isinstance(one('{"v":1,"op":"ping"}'), p.Ping)


def test_legacy_frames() -> None:
    assert one('{"type":"subscribe","topic":"a.b"}') == p.Sub(target="a.b")
    assert one('{"type":"unsubscribe","topic":"a.b"}') == p.Unsub(target="a.b")
    assert err('{"type":"dance","topic":"a"}').code is ErrorCode.BAD_REQUEST
    assert err('{"type":"subscribe","topic":"a..b"}').code is ErrorCode.BAD_REQUEST


def test_batched_frame_each_on_its_own() -> None:
    items = list(
        p.decode_frame('{"op":"ping","inbox":"1"}\nnot json\n\n{"op":"ping","inbox":"2"}\n')
    )
    assert [type(i) for i in items] == [p.Ping, ProtocolError, p.Ping]


def test_bad_requests_are_explained() -> None:
    cases = {
        "not json": "not a JSON object",
        "[1,2]": "not a JSON object",
        '{"target":"a"}': "op",
        '{"op":"fly","inbox":"x"}': "unknown op 'fly'",
        '{"op":"sub"}': "target",
        '{"op":"sub","target":5}': "Expected `str`",
        '{"op":"sub","target":"a","bogus":1}': "bogus",
        '{"op":"pub","target":"a.*"}': "literal",
        '{"op":"cmd","target":"a.>"}': "literal",
        '{"op":"sub","target":"a..b"}': "empty token",
        '{"op":"kv_sub","target":"bad.bucket"}': "bucket",
        '{"op":"kv_sub","target":"b","data":{"pattern":"a b"}}': "whitespace",
        '{"op":"js_sub","target":"S","data":{"start_seq":-1}}': "start_seq",
        '{"op":"js_sub","target":"S","data":{"start_seq":"1"}}': "start_seq",
        '{"op":"js_sub","target":"S","data":{"batch":0}}': "batch",
        '{"op":"js_sub","target":"S","data":{"batch":1001}}': "batch",
        '{"op":"js_sub","target":"S","data":{"start_time":"yesterday"}}': "start_time",
        '{"op":"js_sub","target":"S","data":{"start_time":"2026-01-02T03:04:05"}}': "start_time",
        '{"op":"js_sub","target":"a.b"}': "stream",
        '{"op":"cmd","target":"a","timeout_ms":0}': "timeout_ms",
        '{"op":"auth","data":{}}': "token",
        '{"op":"ping","inbox":"' + "x" * 129 + '"}': "inbox",
    }
    for frame, needle in cases.items():
        e = err(frame)
        assert e.code is ErrorCode.BAD_REQUEST, frame
        assert needle in e.message, (frame, e.message)


def test_invalid_utf8_is_a_bad_request() -> None:
    """Found by the atheris run: msgspec raised UnicodeDecodeError naming such a field."""
    for frame in (
        b'{"op":"pub","targta\xff":{"x":[1,2]}}',
        b'{"op":"\xff"}',
        b"\xff\xfe",
        b'{"type":"subscribe","t\xffpic":"a"}',
    ):
        assert err(frame).code is ErrorCode.BAD_REQUEST


def test_errors_keep_inbox_and_target() -> None:
    e = err('{"op":"sub","target":"a..b","inbox":"q1"}')
    assert (e.inbox, e.target) == ("q1", "a..b")
    e = err('{"op":"sub","target":7,"inbox":"q2"}')
    assert e.inbox == "q2"


def test_versions() -> None:
    for v in ("2", "0", '"1"', "1.5", "true", "null"):
        e = err('{"v":' + v + ',"op":"ping","inbox":"v"}')
        assert e.code is ErrorCode.UNSUPPORTED_VERSION, v
        assert e.inbox == "v"
    assert isinstance(one('{"v":1,"op":"ping"}'), p.Ping)


def test_payload_rules() -> None:
    assert frames.payload(b'{"a": 1}') == (msgspec.Raw(b'{"a": 1}'), None)
    raw, enc = frames.payload(b'{"a":\r\n1, "b": "x\\ny"}')  # whitespace newlines go, escapes stay
    assert bytes(raw) == b'{"a":  1, "b": "x\\ny"}' and enc is None
    raw, enc = frames.payload(b"1e400\n")  # not a float: passed on as the JSON text it is
    assert bytes(raw) == b"1e400 " and enc is None
    raw, enc = frames.payload("héllo".encode())
    assert json.loads(bytes(raw)) == "héllo" and enc is None
    raw, enc = frames.payload(b"\xff")
    assert json.loads(bytes(raw)) == "/w==" and enc == "base64"
    raw, enc = frames.payload(b"")
    assert json.loads(bytes(raw)) == ""


def test_frames_are_one_line_json() -> None:
    out = [
        frames.encode_msg("a.b", b'{"x":\n1}', sub="a.*", headers={"H": "v"}),
        frames.encode_kv("b", "k", 3, "PUT", b"line1\nline2", snapshot=True),
        frames.encode_js("S", 9, "a.b", b"\xff\x00", "2026-01-01T00:00:00Z", None),
        frames.encode_reply("a", "i", first_seq=1),
        frames.encode_error(ErrorCode.LIMIT, "too many", target="a", inbox="i"),
        frames.encode_cap_update({"subjects": []}, [{"op": "sub", "target": "a"}]),
        frames.encode_pong("i"),
    ]
    for f in out:
        assert b"\n" not in f
        json.loads(f)
    msg = json.loads(out[0])
    assert msg == {
        "op": "msg",
        "target": "a.b",
        "data": {"x": 1},
        "sub": "a.*",
        "headers": {"H": "v"},
    }
    js = json.loads(out[2])
    assert js["data"]["enc"] == "base64" and js["data"]["seq"] == 9
    kv = json.loads(out[1])
    assert kv["data"] == {
        "key": "k",
        "revision": 3,
        "op": "PUT",
        "value": "line1\nline2",
        "snapshot": True,
    }


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
OPS = st.sampled_from(
    [
        "sub",
        "unsub",
        "pub",
        "cmd",
        "kv_sub",
        "kv_unsub",
        "js_sub",
        "js_unsub",
        "ping",
        "auth",
        "x",
        "",
    ]
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    env = draw(
        st.dictionaries(
            st.sampled_from(
                ["v", "op", "target", "inbox", "data", "timeout_ms", "type", "topic", "zz"]
            ),
            JSONISH,
            max_size=6,
        )
    )
    if draw(st.booleans()):
        env["op"] = draw(OPS)
    return json.dumps(env).encode()


@given(st.one_of(envelopes(), st.binary(max_size=200), st.text(max_size=200)))
@settings(max_examples=3000)
def test_decoder_never_raises(frame: bytes | str) -> None:
    """Every input decodes to ops or ProtocolErrors, never a stray exception."""
    for item in p.decode_frame(frame):
        assert isinstance(item, (ProtocolError, *p.ClientOp.__args__))  # type: ignore[attr-defined]
        if isinstance(item, ProtocolError):
            assert item.message and "Traceback" not in item.message


def _quoted(raw: bytes) -> bytes:
    """A JSON string around arbitrary bytes: msgspec's ``Raw`` takes it even when the
    bytes inside are not UTF-8."""
    return b'"' + raw.replace(b"\\", b"").replace(b'"', b"") + b'"'


PAYLOADS = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=32).map(_quoted),
    st.text(max_size=32).map(str.encode),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    JSONISH.map(lambda v: json.dumps(v, indent=1, ensure_ascii=False).encode()),
    st.sampled_from([b"", b" ", b"\n", b"NaN", b"-0", b"\xef\xbb\xbf1", b"\xed\xa0\x80"]),
    # out of a double's range: fine as JSON text, but not re-encodable once decoded
    st.sampled_from([b"1e400", b"1e400\n", b"[1,\n-1e999]"]),
)


@given(raw=PAYLOADS, subject=st.sampled_from(["a.b", "chat.ümlaut", "x"]))
@settings(max_examples=500)
def test_every_payload_goes_out_as_one_line_of_utf8_json(raw: bytes, subject: str) -> None:
    """protocol.md §3 and security.md: whatever bytes a NATS publisher sent, ``msg`` (core, KV,
    JetStream) and the ``cmd`` reply are valid UTF-8 JSON without a raw newline; the
    payload is its JSON value, else its UTF-8 text as a string, else base64 with
    ``"enc": "base64"`` (``b'"\\xff"'`` passes msgspec's JSON check, yet is base64)."""
    check_payload(raw, subject)
