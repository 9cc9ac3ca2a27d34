"""Thousands of random and mutated frames at a live gateway: every bad one is answered with
an ``error``, the connection stays up, and nothing leaks once it closes."""

from __future__ import annotations

import json
import os
import random
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from natsgate import protocol as p
from natsgate.errors import ProtocolError

from .conftest import connect, unique
from .helpers import Gw, T, consumers, eventually, nats_subscriptions

FRAMES = int(os.environ.get("NATSGATE_FUZZ_FRAMES", "3000"))


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


async def test_fuzzed_frames_are_each_answered(gw: Gw, nc: NATS, nats_server: Any) -> None:
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
    bad = 0
    for i in range(FRAMES):
        frame = (
            mutate(rng, rng.choice(tpl))
            if rng.random() < 0.85
            else rng.randbytes(rng.randrange(1, 40)).decode("latin-1")
        )
        expected = list(p.decode_frame(frame))
        await c.send_raw(frame)
        await c.send_raw(json.dumps({"op": "ping", "inbox": f"fz{i}"}))
        pong = await c.expect(
            lambda e, i=i: e["op"] == "pong" and e.get("inbox") == f"fz{i}", timeout=2 * T
        )
        assert pong
        n_bad = sum(isinstance(x, ProtocolError) for x in expected)
        if n_bad:
            bad += n_bad
            errs = [
                e
                for e in list(c.inbox)
                if e["op"] == "error"
                and e["data"]["code"] in ("bad_request", "unsupported_version")
            ]
            assert len(errs) >= n_bad, (frame, list(c.inbox))
        for e in list(c.inbox):
            if e["op"] == "error":
                assert e["data"]["code"] != "internal", (frame, e)
        c.inbox.clear()
    assert bad > FRAMES // 3  # the mutations did produce bad frames
    await c.close()
    await eventually(lambda: not gw.gateway.sessions)
    assert len(gw.gateway.hub) == 0
    await eventually(lambda: nats_subscriptions(nats_server.monitor_url, "fz.>") == 0)
    await eventually(lambda: consumers(nats_server.monitor_url, stream) == 0, timeout=2)
    await eventually(lambda: consumers(nats_server.monitor_url, f"KV_{bucket}") == 0, timeout=2)
