"""Abuse (issue 6, item 3, in part): the per-address connection limit, the per-connection
rate limit, privilege escalation attempts, and revocation in the middle of a JetStream
stream being delivered.

The escalation test is a list of ops that try to read what the capabilities do not cover
(through wildcards, ``_INBOX.`` replies, the ``$JS``/``$KV`` API subjects, KV key patterns,
stream filters, legacy frames, duplicate JSON keys, protocol injection); each must be
refused, and afterwards, while every kind of traffic flows, no message from outside the
grant may reach the client.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from natsgate.subjects import match

from ..conftest import SECRET, connect, unique
from ..helpers import Gw, T, eventually
from .conftest import Collector, record

# ------------------------------------------------------------------ connection limit


async def test_connection_limit_per_address(make_gw: Any) -> None:
    gw: Gw = await make_gw(max_conns_per_ip=5)
    user = unique("u")
    open_ = [await connect(gw, user) for _ in range(5)]

    async def refused_status(headers: dict[str, str] | None = None) -> int:
        try:
            c = await connect(gw, user, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await c.close()
        return 101

    assert await refused_status() == 429
    # a forwarded-for header does not make another address of it
    assert await refused_status({"X-Forwarded-For": "203.0.113.9"}) == 429
    assert await refused_status({"Forwarded": "for=203.0.113.9"}) == 429
    # the five keep working meanwhile
    for c in open_:
        inbox = await c.send("ping")
        assert (await c.expect(op="pong"))["inbox"] == inbox
    # one leaves: room for one more
    await open_.pop().close()
    await eventually(lambda: len(gw.gateway.sessions) == 4)
    open_.append(await connect(gw, user))
    assert await refused_status() == 429
    refused = gw.gateway.metrics.refused.labels("429")._value.get()
    assert refused == 4
    record(
        "test_connection_limit_per_address",
        max_conns_per_ip=5,
        refused_with="HTTP 429 on the upgrade (no socket opened)",
        refused_upgrades=refused,
    )
    for c in open_:
        await c.close()


# ------------------------------------------------------------------ rate limit


async def test_rate_limit_per_connection(make_gw: Any, nc: NATS) -> None:
    rate, burst = 20, 10
    gw: Gw = await make_gw(rate_per_s=rate, rate_burst=burst)
    user, p = unique("u"), unique("s")
    await gw.set_caps(user, {"subjects": [f"{p}.>"]})
    noisy = Collector(await connect(gw, user), "noisy")
    calm = Collector(await connect(gw, user), "calm")
    await noisy.ok("sub", f"{p}.x")

    # a burst: 100 pings in one frame
    await noisy.client.send_raw(
        "\n".join(json.dumps({"op": "ping", "inbox": f"b{i}"}) for i in range(100))
    )
    await eventually(
        lambda: sum(1 for e in noisy.envs if str(e.get("inbox", "")).startswith("b")) == 100
    )
    burst_envs = [e for e in noisy.envs if str(e.get("inbox", "")).startswith("b")]
    burst_ok = sum(1 for e in burst_envs if e["op"] == "pong")
    limited = [e for e in burst_envs if e["op"] == "error"]
    assert burst_ok <= burst + 1
    assert limited and all(e["data"]["code"] == "limit" for e in limited)
    assert burst_ok + len(limited) == 100  # each op answered exactly once

    # sustained: 3 s at 100 a second is held to about the rate
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:
        await noisy.client.send("ping", inbox=f"s{sent}")
        sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / 100 - time.monotonic()))
    elapsed = time.monotonic() - t0
    await eventually(
        lambda: sum(1 for e in noisy.envs if str(e.get("inbox", "")).startswith("s")) == sent
    )
    sustained = [e for e in noisy.envs if str(e.get("inbox", "")).startswith("s")]
    passed = sum(1 for e in sustained if e["op"] == "pong")
    assert passed <= rate * elapsed + burst + 2
    assert passed >= rate * elapsed * 0.5

    # the limited connection keeps its subscription; the other one was never limited
    await nc.publish(f"{p}.x", b'"still here"')
    await eventually(lambda: any(e.get("op") == "msg" for e in noisy.envs))
    for _ in range(10):
        await calm.client.send("ping")
    await eventually(lambda: sum(1 for e in calm.envs if e.get("op") == "pong") == 10)
    assert noisy.close_code is None and calm.close_code is None
    record(
        "test_rate_limit_per_connection",
        rate_per_s=rate,
        rate_burst=burst,
        burst_sent=100,
        burst_passed=burst_ok,
        burst_limited=len(limited),
        sustained_sent=sent,
        sustained_seconds=round(elapsed, 2),
        sustained_passed=passed,
        sustained_passed_per_s=round(passed / elapsed, 1),
        refused_with="error envelope, code limit, same inbox; connection and subscriptions kept",
    )
    await noisy.stop()
    await calm.stop()


# ------------------------------------------------------------------ privilege escalation


def _env(**fields: Any) -> str:
    return json.dumps(fields)


async def test_no_op_reads_outside_the_grant(gw: Gw, nc: NATS) -> None:
    p, stream, bucket, other_bucket, other_stream = (
        unique("p"),
        unique("S"),
        unique("todos"),
        unique("secret"),
        unique("O"),
    )
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{p}.chat.room.*", f"{p}.admin.*"]))
    await js.add_stream(StreamConfig(name=other_stream, subjects=[f"{p}.other.*"]))
    kv = await js.create_key_value(bucket=bucket)
    secret = await js.create_key_value(bucket=other_bucket)
    await kv.put("user.alice.1", b'"mine"')
    await kv.put("user.bob.1", b'"bobs"')
    await kv.put("admin.x", b'"admins"')
    await secret.put("k", b'"secret"')
    await js.publish(f"{p}.admin.1", b'"admin before"')
    await js.publish(f"{p}.chat.room.1", b'"chat before"')

    async def echo(m: Any) -> None:
        await m.respond(m.data)

    await nc.subscribe(f"{p}.svc.echo", cb=echo)
    await nc.subscribe("$JS.API.STREAM.LIST.fake", cb=echo)  # a responder that would leak
    await nc.flush()

    grant = {
        "subjects": [f"{p}.chat.>"],
        "publish": [f"{p}.chat.room.*"],
        "commands": [f"{p}.svc.echo"],
        "buckets": {bucket: ["user.alice.>"]},
        "streams": {stream: [f"{p}.chat.room.*"]},
    }
    await gw.set_caps("alice", grant)
    # bob may do everything, to make traffic; "wide" is granted every subject (">")
    await gw.set_caps(
        "bob",
        {
            "subjects": [f"{p}.>"],
            "publish": [f"{p}.>"],
            "commands": [f"{p}.>"],
            "buckets": {bucket: [">"]},
            "streams": {stream: [f"{p}.>"]},
        },
    )
    await gw.set_caps("wide", {"subjects": [">"]})
    alice = Collector(await connect(gw, "alice"), "alice")
    bob = Collector(await connect(gw, "bob"), "bob")
    wide = Collector(await connect(gw, "wide"), "wide")

    kvs, jss = f"kv:{bucket}", f"js:{stream}"
    # (what it tries, the frame, the error codes that count as refused)
    forbidden, bad = {"forbidden"}, {"bad_request"}
    attempts: list[tuple[str, str, set[str]]] = [
        ("sub > while granted chat.>", _env(op="sub", target=">"), forbidden),
        ("sub *.>", _env(op="sub", target="*.>"), forbidden),
        ("sub the prefix's parent", _env(op="sub", target=f"{p}.>"), forbidden),
        ("sub a sibling", _env(op="sub", target=f"{p}.admin.*"), forbidden),
        ("sub _INBOX.>", _env(op="sub", target="_INBOX.>"), forbidden),
        ("sub _INBOX.*", _env(op="sub", target="_INBOX.*"), forbidden),
        ("sub $JS.API.>", _env(op="sub", target="$JS.API.>"), forbidden),
        ("sub $JS.>", _env(op="sub", target="$JS.>"), forbidden),
        ("sub $JS.ACK.>", _env(op="sub", target="$JS.ACK.>"), forbidden),
        ("sub $KV.<bucket>.>", _env(op="sub", target=f"$KV.{bucket}.>"), forbidden),
        (
            "sub $KV.<bucket>.user.alice.> (own keys, as core)",
            _env(op="sub", target=f"$KV.{bucket}.user.alice.>"),
            forbidden,
        ),
        ("sub $SYS.>", _env(op="sub", target="$SYS.>"), forbidden),
        ("sub a case variant", _env(op="sub", target=f"{p.upper()}.chat.>"), forbidden),
        ("kv_sub all keys", _env(op="kv_sub", target=bucket), forbidden),
        ("kv_sub pattern >", _env(op="kv_sub", target=bucket, data={"pattern": ">"}), forbidden),
        (
            "kv_sub user.*.> (other users)",
            _env(op="kv_sub", target=bucket, data={"pattern": "user.*.>"}),
            forbidden,
        ),
        (
            "kv_sub user.bob.>",
            _env(op="kv_sub", target=bucket, data={"pattern": "user.bob.>"}),
            forbidden,
        ),
        (
            "kv_sub *.alice.>",
            _env(op="kv_sub", target=bucket, data={"pattern": "*.alice.>"}),
            forbidden,
        ),
        (
            "kv_sub another bucket",
            _env(op="kv_sub", target=other_bucket, data={"pattern": "user.alice.>"}),
            forbidden,
        ),
        (
            "kv_sub a bucket that does not exist (no existence leak)",
            _env(op="kv_sub", target=unique("nope"), data={"pattern": "user.alice.>"}),
            forbidden,
        ),
        (
            "js_sub the bucket's stream",
            _env(op="js_sub", target=f"KV_{bucket}", data={"start_seq": 1}),
            forbidden,
        ),
        (
            "js_sub the bucket's stream, own keys",
            _env(
                op="js_sub",
                target=f"KV_{bucket}",
                data={"start_seq": 1, "filter": f"$KV.{bucket}.user.alice.>"},
            ),
            forbidden,
        ),
        (
            "js_sub with a filter wider than granted",
            _env(op="js_sub", target=stream, data={"start_seq": 1, "filter": f"{p}.>"}),
            forbidden,
        ),
        (
            "js_sub with a filter on the ungranted subject",
            _env(op="js_sub", target=stream, data={"start_seq": 1, "filter": f"{p}.admin.*"}),
            forbidden,
        ),
        (
            "js_sub without filter (stream has subjects beyond the grant)",
            _env(op="js_sub", target=stream, data={"start_seq": 1}),
            forbidden,
        ),
        (
            "js_sub another stream",
            _env(op="js_sub", target=other_stream, data={"start_seq": 1}),
            forbidden,
        ),
        (
            "js_sub a stream that does not exist (no existence leak)",
            _env(op="js_sub", target=unique("NOPE"), data={"filter": f"{p}.chat.room.*"}),
            forbidden,
        ),
        ("cmd $JS.API.STREAM.LIST", _env(op="cmd", target="$JS.API.STREAM.LIST"), forbidden),
        (
            "cmd $JS.API.STREAM.LIST.fake",
            _env(op="cmd", target="$JS.API.STREAM.LIST.fake"),
            forbidden,
        ),
        (
            "cmd $JS.API.STREAM.MSG.GET",
            _env(op="cmd", target=f"$JS.API.STREAM.MSG.GET.{stream}", data={"seq": 1}),
            forbidden,
        ),
        (
            "cmd $JS.API.DIRECT.GET (read bob's key)",
            _env(op="cmd", target=f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.user.bob.1"),
            forbidden,
        ),
        (
            "cmd $JS.API.CONSUMER.CREATE",
            _env(op="cmd", target=f"$JS.API.CONSUMER.CREATE.{stream}"),
            forbidden,
        ),
        ("cmd _INBOX.x", _env(op="cmd", target="_INBOX.x"), forbidden),
        ("cmd another service", _env(op="cmd", target=f"{p}.svc.admin"), forbidden),
        (
            "pub $KV.<bucket>.user.bob.x",
            _env(op="pub", target=f"$KV.{bucket}.user.bob.x"),
            forbidden,
        ),
        (
            "pub $KV.<bucket>.user.alice.x",
            _env(op="pub", target=f"$KV.{bucket}.user.alice.x"),
            forbidden,
        ),
        ("pub _INBOX.x", _env(op="pub", target="_INBOX.x"), forbidden),
        (
            "pub $JS.API.STREAM.DELETE",
            _env(op="pub", target=f"$JS.API.STREAM.DELETE.{stream}"),
            forbidden,
        ),
        ("pub outside the publish grant", _env(op="pub", target=f"{p}.chat.x", data=1), forbidden),
        (
            "pub with a forged Natsgate-User header",
            _env(op="pub", target=f"{p}.chat.room.1", data=1, headers={"Natsgate-User": "bob"}),
            bad,
        ),
        ("sub with CRLF injection", _env(op="sub", target=f"{p}.chat.x\r\nSUB > 9"), bad),
        ("sub with a space (queue group)", _env(op="sub", target=f"{p}.chat.x _INBOX.>"), bad),
        ("sub with a tab", _env(op="sub", target=f"{p}.chat.x\t>"), bad),
        ("sub with NUL", _env(op="sub", target=f"{p}.chat.\u0000"), bad),
        (
            "pub with CRLF injection",
            _env(op="pub", target=f"{p}.chat.room.1\r\nPUB $KV.{bucket}.user.bob.1 1\r\nx", data=1),
            bad,
        ),
        ("sub with an empty token", _env(op="sub", target=f"{p}.chat..x"), bad),
        ("sub > in the middle", _env(op="sub", target=f"{p}.chat.>.x"), bad),
        (
            "kv_sub pattern with a space",
            _env(op="kv_sub", target=bucket, data={"pattern": "user.alice.> >"}),
            bad,
        ),
        ("kv_sub bucket name with a dot", _env(op="kv_sub", target=f"{bucket}.x"), bad),
        ("js_sub stream name with a dot", _env(op="js_sub", target=f"{stream}.x"), bad),
        ("version 2", _env(v=2, op="sub", target=">"), {"unsupported_version"}),
        ("unknown op", _env(op="subscribe_all", target=">"), bad),
        ("auth with bob's token", "", {"forbidden"}),  # filled in below
    ]
    from natsgate.auth import mint_token

    attempts[-1] = (
        "auth with bob's token",
        _env(op="auth", data={"token": mint_token("bob", SECRET, 600)}),
        forbidden,
    )
    # duplicate JSON keys: the decoder keeps the last one; each is either refused, or
    # what it made is within the grant (shown below from the session's own table)
    duplicates: list[tuple[str, str]] = [
        ("dup target, wide last", f'{{"op":"sub","target":"{p}.chat.x","target":">"}}'),
        ("dup target, wide first", f'{{"op":"sub","target":">","target":"{p}.chat.y"}}'),
        (
            "dup pattern",
            f'{{"op":"kv_sub","target":"{bucket}",'
            '"data":{"pattern":"user.alice.>","pattern":">"}}',
        ),
        (
            "dup filter",
            f'{{"op":"js_sub","target":"{stream}",'
            f'"data":{{"filter":"{p}.chat.room.*","filter":"{p}.>","start_seq":1}}}}',
        ),
        ("dup op", f'{{"op":"sub","op":"kv_sub","target":"{bucket}"}}'),
        ("dup version", '{"v":1,"v":2,"op":"sub","target":">"}'),
        ("dup version, 1 last", '{"v":2,"v":1,"op":"sub","target":"_INBOX.>"}'),
    ]

    outcomes: dict[str, str] = {}
    for i, (what, frame, codes) in enumerate(attempts):
        inbox = f"a{i}"
        obj = json.loads(frame)
        obj["inbox"] = inbox
        await alice.client.send_raw(json.dumps(obj))
        env = await alice.answer(inbox)
        assert env["op"] == "error", (what, env)
        assert env["data"]["code"] in codes, (what, env)
        outcomes[what] = env["data"]["code"]
    for i, (what, frame) in enumerate(duplicates):
        inbox = f"d{i}"
        await alice.client.send_raw(frame[:-1] + f',"inbox":"{inbox}"}}')
        env = await alice.answer(inbox)
        outcomes[what] = env["data"]["code"] if env["op"] == "error" else "accepted"
    # legacy frames carry no inbox: the error comes with the frame's subject as target
    for topic in (">", "_INBOX.>", f"$KV.{bucket}.>", f"{p}.admin.*"):
        before = len(alice.envs)
        await alice.client.send_raw(json.dumps({"type": "subscribe", "topic": topic}))

        def refusal(topic: str = topic, before: int = before) -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in alice.envs[before:]
                    if e.get("op") == "error" and e.get("target") == topic
                ),
                None,
            )

        env = await eventually(refusal)
        assert env["data"]["code"] == "forbidden", env
        outcomes[f"legacy subscribe {topic}"] = "forbidden"

    # what the duplicates made, as the gateway holds it: all within the grant
    from natsgate.capabilities import Capabilities

    caps = Capabilities.parse(json.dumps(grant).encode())
    (session,) = [s for s in gw.gateway.sessions if s.user == "alice"]
    for sub in session.subs.values():
        assert caps.allows(sub.kind, sub.target, sub.checked), sub

    # the allowed ones, for contrast: granted reads work
    await alice.ok("sub", f"{p}.chat.>")
    await alice.ok("kv_sub", bucket, {"pattern": "user.alice.>"})
    await alice.ok("js_sub", stream, {"start_seq": 1, "filter": f"{p}.chat.room.*"})
    await wide.ok("sub", ">")
    await wide.ok("sub", "*.>")
    assert (await wide.answer(await wide.client.send("sub", "_INBOX.>")))["op"] == "error"
    await bob.ok("sub", f"{p}.>")
    await bob.ok("js_sub", stream, {"start_seq": 1})
    await bob.ok("kv_sub", bucket)

    # now every kind of traffic, inside and outside alice's grant
    for i in range(5):
        await nc.publish(f"{p}.chat.room.1", f'"core {i}"'.encode())
        await nc.publish(f"{p}.admin.x", b'"admin core"')
        await nc.publish(f"{p}.secret", b'"secret core"')
        await nc.publish(f"_INBOX.{p}.{i}", b'"someone\'s reply"')
        await nc.publish(f"$KV.{bucket}.user.bob.1", b'"raw kv"')
        await js.publish(f"{p}.admin.1", b'"admin js"')
        await js.publish(f"{p}.chat.room.2", b'"chat js"')
        await js.publish(f"{p}.other.1", b'"other stream"')
        await kv.put("user.bob.1", f'"bob {i}"'.encode())
        await kv.put("user.alice.1", f'"alice {i}"'.encode())
        await kv.put("admin.x", b'"admin kv"')
        await secret.put("k", b'"secret kv"')
        assert (await bob.ok("cmd", f"{p}.svc.echo", {"i": i}))["data"] == {"i": i}
        await bob.ok("pub", f"{p}.chat.room.3", {"bob": i})
        assert (await alice.ok("cmd", f"{p}.svc.echo", {"a": i}))["data"] == {"a": i}
    # wait for the last of each granted kind, so that anything leaking has arrived too
    await eventually(
        lambda: any(
            e.get("target") == kvs and e["data"].get("value") == "alice 4" for e in alice.envs
        )
    )
    info = await js.stream_info(stream, subjects_filter=f"{p}.chat.room.*")
    granted_in_stream = sum((info.state.subjects or {}).values())
    await eventually(
        lambda: sum(1 for e in alice.envs if e.get("target") == jss) == granted_in_stream
    )
    await eventually(
        lambda: sum(1 for e in wide.envs if e.get("op") == "msg" and e.get("sub") == ">") >= 20
    )
    await asyncio.sleep(0.3)

    leaks = []
    for e in alice.envs:
        if e.get("op") != "msg":
            continue
        t = e["target"]
        if t == kvs:
            key = e["data"].get("key")
            ok = key is None or match("user.alice.>", key)
        elif t == jss:
            ok = match(f"{p}.chat.room.*", e["data"]["subject"])
        else:
            ok = match(f"{p}.chat.>", t)
        if not ok:
            leaks.append(e)
    assert not leaks, leaks[:5]
    wide_private = [
        e
        for e in wide.envs
        if e.get("op") == "msg" and (e["target"].startswith("_INBOX.") or e["target"][0] == "$")
    ]
    assert not wide_private, wide_private[:5]
    # the stream reads were complete and only granted
    js_subjects = {d["subject"] for d in alice.js(stream)}
    assert js_subjects == {f"{p}.chat.room.1", f"{p}.chat.room.2", f"{p}.chat.room.3"}
    seqs = [d["seq"] for d in alice.js(stream)]
    assert seqs == sorted(set(seqs))
    assert alice.close_code is None  # refusals never cost the connection

    refused = sum(1 for v in outcomes.values() if v != "accepted")
    record(
        "test_no_op_reads_outside_the_grant",
        attempts=len(outcomes),
        refused=refused,
        accepted_but_within_grant=[k for k, v in outcomes.items() if v == "accepted"],
        by_code={c: sum(1 for v in outcomes.values() if v == c) for c in set(outcomes.values())},
        messages_seen_by_alice=sum(1 for e in alice.envs if e.get("op") == "msg"),
        messages_seen_by_wide=sum(1 for e in wide.envs if e.get("op") == "msg"),
        leaks=0,
    )
    for c in (alice, bob, wide):
        await c.stop()


# ------------------------------------------------------------------ revocation mid-stream


def after_cap_update(
    c: Collector, stream: str, sub_filter: str | None, nth: int
) -> tuple[int, list[dict[str, Any]]]:
    """(the position of the ``nth`` cap_update with a revocation, the JetStream messages
    of the subscription with ``sub_filter`` that came after it)."""
    positions = [
        i for i, e in enumerate(c.envs) if e.get("op") == "cap_update" and e["data"].get("revoked")
    ]
    at = positions[nth]
    t = f"js:{stream}"
    late = [
        e
        for e in c.envs[at + 1 :]
        if e.get("op") == "msg" and e.get("target") == t and e.get("sub") == sub_filter
    ]
    return at, late


async def test_revocation_mid_stream_delivers_nothing_after_cap_update(gw: Gw, nc: NATS) -> None:
    p, stream = unique("r"), unique("S")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{p}.room.*"]))
    body = json.dumps({"pad": "x" * 200}).encode()
    for i in range(3000):  # a backlog, so that delivery is in full swing
        await nc.publish(f"{p}.room.{i % 3}", body)
    await nc.flush()
    wide = {"streams": {stream: [f"{p}.room.*"]}}
    narrow = {"streams": {stream: [f"{p}.room.1"]}}

    publishing = True
    published = 0

    async def publisher() -> None:  # and more all along
        nonlocal published
        while publishing and published < 200_000:
            for _ in range(50):
                await nc.publish(f"{p}.room.{published % 3}", body)
                published += 1
            await nc.flush()
            await asyncio.sleep(0.005)

    rounds, late_total, frames_before_revoke = 10, 0, []
    kept_checked = 0
    pub = asyncio.create_task(publisher())
    try:
        for r in range(rounds):
            user = unique("u")
            await gw.set_caps(user, wide)
            c = Collector(await connect(gw, user), f"r{r}")
            await c.ok("js_sub", stream, {"start_seq": 1, "batch": 1000, "filter": f"{p}.room.*"})
            await c.ok("js_sub", stream, {"start_seq": 1, "batch": 1000, "filter": f"{p}.room.1"})
            # revoke while messages of both are streaming in
            await eventually(lambda c=c, r=r: len(c.js(stream)) >= 500 + 100 * r, timeout=2 * T)
            frames_before_revoke.append(len(c.js(stream)))
            await gw.set_caps(user, narrow)  # ends the room.* one, keeps room.1
            await eventually(
                lambda c=c: any(
                    e.get("op") == "cap_update" and e["data"].get("revoked") for e in c.envs
                ),
                timeout=2 * T,
            )
            upd = next(e for e in c.envs if e.get("op") == "cap_update" and e["data"]["revoked"])
            assert upd["data"]["revoked"] == [
                {"op": "js_sub", "target": stream, "filter": f"{p}.room.*"}
            ]
            # the kept one goes on: more of it arrives after the update, without a gap
            at, _ = after_cap_update(c, stream, f"{p}.room.1", 0)
            await eventually(
                lambda c=c, at=at: (
                    sum(1 for e in c.envs[at:] if e.get("target") == f"js:{stream}") >= 200
                ),
                timeout=2 * T,
            )
            await gw.set_caps(user, None)  # deleting the key revokes the rest
            await eventually(
                lambda c=c: (
                    sum(
                        1
                        for e in c.envs
                        if e.get("op") == "cap_update" and e["data"].get("revoked")
                    )
                    == 2
                ),
                timeout=2 * T,
            )
            await asyncio.sleep(0.3)  # anything late would have come by now
            _, late_wide = after_cap_update(c, stream, f"{p}.room.*", 0)
            _, late_narrow = after_cap_update(c, stream, f"{p}.room.1", 1)
            late_total += len(late_wide) + len(late_narrow)
            kept = [d["seq"] for d in c.js(stream) if d["subject"] == f"{p}.room.1"]
            kept_sub = [
                e["data"]["seq"]
                for e in c.envs
                if e.get("target") == f"js:{stream}" and e.get("sub") == f"{p}.room.1"
            ]
            assert kept_sub == sorted(set(kept_sub))  # in order, no duplicate
            kept_checked += len(kept)
            assert c.close_code is None
            await c.stop()
            if late_total:
                break
    finally:
        publishing = False
        await pub
    record(
        "test_revocation_mid_stream_delivers_nothing_after_cap_update",
        rounds=r + 1,
        js_frames_before_each_revocation=frames_before_revoke,
        published_during=published,
        js_msgs_after_cap_update=late_total,
    )
    assert late_total == 0, f"{late_total} JetStream messages arrived after their revocation"


async def test_revocation_race_with_queued_deliveries(gw: Gw, nc: NATS) -> None:
    """The same revocation, made at the moment the feed's NATS subscription holds queued
    deliveries (found by looking at it: the gateway runs in this process), so that the
    race above is shown every time."""
    from natsgate.capabilities import Capabilities
    from natsgate.capabilities import Kind as CapKind

    p, stream = unique("r"), unique("S")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{p}.room.*"]))
    body = json.dumps({"pad": "x" * 200}).encode()
    for i in range(5000):
        await nc.publish(f"{p}.room.{i % 3}", body)
    await nc.flush()
    user = unique("u")
    await gw.set_caps(user, {"streams": {stream: [f"{p}.room.*"]}})
    c = Collector(await connect(gw, user), "racer")
    await c.ok("js_sub", stream, {"start_seq": 1, "batch": 1000, "filter": f"{p}.room.*"})
    (session,) = [s for s in gw.gateway.sessions if s.user == user]
    (sub,) = [s for s in session.subs.values() if s.kind is CapKind.JS]
    nats_sub = sub.feed.reader._sub  # type: ignore[union-attr]
    # look between two turns of the event loop, as the capability watch would run
    await eventually(lambda: nats_sub.pending_msgs > 0, timeout=2 * T, every=0)
    queued = nats_sub.pending_msgs
    assert queued > 0, "never caught deliveries in the queue"
    session.caps_changed(Capabilities())  # what the capability watch does on a delete
    await asyncio.sleep(0.5)
    at = next(
        i for i, e in enumerate(c.envs) if e.get("op") == "cap_update" and e["data"]["revoked"]
    )
    late = [e for e in c.envs[at + 1 :] if e.get("target") == f"js:{stream}"]
    record(
        "test_revocation_race_with_queued_deliveries",
        queued_at_revocation=queued,
        js_msgs_after_cap_update=len(late),
    )
    await c.stop()
    assert not late, f"{len(late)} JetStream messages after the cap_update that revoked them"
