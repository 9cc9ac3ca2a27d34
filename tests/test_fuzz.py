"""Thousands of random and mutated frames at a live gateway: every bad one is answered with
an ``error``, the connection stays up, and nothing leaks once it closes."""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from natsgate import protocol as p
from natsgate.errors import ProtocolError

from .conftest import connect, unique
from .fuzz.properties import expect_payload, loads_frame
from .helpers import Gw, T, consumers, eventually, nats_subscriptions

FRAMES = int(os.environ.get("NATSGATE_FUZZ_FRAMES", "100000"))
BATCH = 100


def templates(stream: str, bucket: str) -> list[dict[str, Any]]:
    return [
        {"op": "sub", "target": "fz.a.*"},
        {"op": "unsub", "target": "fz.a.*"},
        {"op": "sub", "target": "fz.>"},
        {"op": "pub", "target": "fz.b", "data": {"x": 1}},
        {"op": "cmd", "target": "fz.svc", "data": "q", "timeout_ms": 20},
        {"op": "kv_sub", "target": bucket, "data": {"pattern": "k.>"}},
        {"op": "kv_unsub", "target": bucket, "data": {"pattern": "k.>"}},
        {"op": "js_sub", "target": stream, "data": {"start_seq": 1, "batch": 5}},
        {"op": "js_unsub", "target": stream},
        {"op": "ping"},
        {"op": "auth", "data": {"token": "x.y.z"}},
        {"type": "subscribe", "topic": "fz.legacy"},
        {"v": 2, "op": "ping"},
    ]


JUNK: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    1.5,
    "",
    "*",
    ">",
    "a..b",
    " ",
    "\u0000",
    [],
    {},
    [1],
    {"a": {}},
]


def mutate(rng: random.Random, env: dict[str, Any]) -> str:
    env = json.loads(json.dumps(env))
    kind = rng.randrange(6)
    if kind == 0:  # replace a field's value
        env[rng.choice([*env.keys(), "target", "data", "v", "inbox"])] = rng.choice(JUNK)
    elif kind == 1:  # drop a field
        if env:
            env.pop(rng.choice(list(env)))
    elif kind == 2:  # unknown field
        env[rng.choice(["zz", "Op", "targets", "timeout"])] = rng.choice(JUNK)
    elif kind == 3:  # byte-level damage
        text = json.dumps(env)
        i = rng.randrange(len(text))
        return text[:i] + rng.choice(['"', "{", "}", ",", "\\", "x", ""]) + text[i + 1 :]
    elif kind == 4:  # truncation
        text = json.dumps(env)
        return text[: rng.randrange(1, len(text))]
    else:  # random data payloads
        env["data"] = rng.choice(JUNK)
    return json.dumps(env)


@pytest.mark.slow
async def test_fuzzed_frames_are_each_answered(
    gw: Gw, nc: NATS, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="natsgate")
    stream, bucket = unique("FZ"), unique("fz")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=["fz.js.*"]))
    await js.publish("fz.js.a", b"1")
    await js.create_key_value(bucket=bucket)
    user = unique("u")
    await gw.set_caps(
        user,
        {
            "subjects": ["fz.>"],
            "publish": ["fz.>"],
            "commands": ["fz.>"],
            "buckets": {bucket: [">"]},
            "streams": {stream: [">"]},
        },
    )
    c = await connect(gw, user)
    rng = random.Random(20261125)
    tpl = templates(stream, bucket)
    bad = sent = 0
    while sent < FRAMES:
        # a batch of frames, then a ping: the pong proves the connection is alive and that
        # every frame before it was handled (in order)
        expected_bad = 0
        for _ in range(BATCH):
            roll = rng.random()
            frame: str | bytes
            if roll < 0.8:
                frame = mutate(rng, rng.choice(tpl))
            elif roll < 0.9:
                frame = rng.randbytes(rng.randrange(1, 40))  # not even UTF-8
            else:
                frame = "\n".join(mutate(rng, rng.choice(tpl)) for _ in range(3))
            expected_bad += sum(isinstance(x, ProtocolError) for x in p.decode_frame(frame))
            await c.send_raw(frame)
            sent += 1
        await c.send_raw(json.dumps({"op": "ping", "inbox": f"fz{sent}"}))
        await c.expect(
            lambda e, s=sent: e["op"] == "pong" and e.get("inbox") == f"fz{s}", timeout=3 * T
        )
        answered = [e for e in c.inbox if e["op"] == "error"]
        assert (
            sum(e["data"]["code"] in ("bad_request", "unsupported_version") for e in answered)
            >= expected_bad
        )
        assert not [e for e in answered if e["data"]["code"] == "internal"], answered
        bad += expected_bad
        c.inbox.clear()
    assert bad > FRAMES // 3  # the mutations did produce bad frames
    await c.close()
    await eventually(lambda: not gw.gateway.sessions)
    assert len(gw.gateway.hub) == 0
    await eventually(lambda: nats_subscriptions(nats_server.monitor_url, "fz.>") == 0)
    try:
        await eventually(lambda: consumers(nats_server.monitor_url, stream) == 0, timeout=2)
        await eventually(lambda: consumers(nats_server.monitor_url, f"KV_{bucket}") == 0, timeout=2)
    except TimeoutError:
        from .helpers import monitor

        jsz = monitor(nats_server.monitor_url, "/jsz?streams=1&consumers=1&config=1&accounts=1")
        for acc in jsz.get("account_details", []):
            for st in acc.get("stream_detail", []):
                if st["name"] in (stream, f"KV_{bucket}"):
                    print(
                        "LEFT",
                        st["name"],
                        json.dumps(st.get("consumer_detail"), indent=None)[:3000],
                    )
        raise
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors[:5]]


def random_payload(rng: random.Random) -> bytes:
    """Bytes a NATS publisher might send: JSON (some with newlines), text, JSON strings
    with bytes that are not UTF-8 inside (msgspec's JSON check takes them), noise."""
    kind = rng.randrange(5)
    if kind == 0:
        value = rng.choice([*JUNK, {"a": [1, "é\n"]}, "x\ny"])
        return json.dumps(value, indent=rng.choice([None, 1])).encode()
    if kind == 1:
        return "".join(rng.choice('aé€😀 \n\t"\\{') for _ in range(rng.randrange(12))).encode()
    if kind == 2:
        inside = rng.randbytes(rng.randrange(1, 12)).replace(b'"', b"").replace(b"\\", b"")
        return b'"' + inside + b'"'
    return rng.randbytes(rng.randrange(40))


PAYLOADS = int(os.environ.get("NATSGATE_FUZZ_PAYLOADS", "300"))


async def test_any_nats_payload_reaches_the_client_as_utf8_json(gw: Gw, nc: NATS) -> None:
    """security.md: whatever a NATS publisher sends, on a core subject, into a KV
    bucket or a stream, every frame the client gets is one line of valid UTF-8 JSON, each
    payload follows the rules of section 3, and no message is skipped for its content."""
    rng = random.Random(20261126)
    payloads = [random_payload(rng) for _ in range(PAYLOADS)]
    subj, stream, bucket = unique("fzp"), unique("FZP"), unique("fzp")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subj}_js.*"]))
    kv = await js.create_key_value(bucket=bucket)
    user = unique("u")
    await gw.set_caps(
        user,
        {"subjects": [f"{subj}.>"], "buckets": {bucket: [">"]}, "streams": {stream: [">"]}},
    )
    c = await connect(gw, user)
    await c.ok("sub", f"{subj}.>")
    await c.ok("kv_sub", bucket)
    await c.ok("js_sub", stream)
    assert not c.inbox, c.inbox
    for i, raw in enumerate(payloads):
        await nc.publish(f"{subj}.{i}", raw)
        await kv.put(f"k{i}", raw)
        await js.publish(f"{subj}_js.{i}", raw)
    got: dict[str, dict[int, tuple[Any, Any]]] = {"core": {}, "kv": {}, "js": {}}
    while sum(map(len, got.values())) < 3 * PAYLOADS:
        frame = await asyncio.wait_for(c.ws.receive(), 5 * T)
        assert frame.type is aiohttp.WSMsgType.TEXT, frame
        for line in frame.data.encode().split(b"\n"):
            env = loads_frame(line)
            assert env["op"] == "msg", env
            data = env["data"]
            if env["target"] == f"kv:{bucket}":
                got["kv"][int(data["key"][1:])] = (data["value"], data.get("enc"))
            elif env["target"] == f"js:{stream}":
                i = int(data["subject"].rsplit(".", 1)[1])
                got["js"][i] = (data["payload"], data.get("enc"))
            else:
                got["core"][int(env["target"].rsplit(".", 1)[1])] = (data, env.get("enc"))
    for kind, received in got.items():
        assert sorted(received) == list(range(PAYLOADS)), kind
        for i, (value, enc) in received.items():
            expect_payload(payloads[i], value, enc)
    await c.close()
