"""Durables on a cluster: one user's durable read through two gateways on a 3-node
nats-server cluster with an R3 stream, while the node that holds everything at once is
SIGKILLed and restarted.

The victim is the node gateway B is connected to, made leader of the stream and of the
durable's consumer first: the worst node to lose. Gateway B loses its NATS connection
(acks in flight fail or wait for the reconnect, its pull is gone), the consumer loses the
leader that tracks deliveries and acks (acks reach NATS only through its leader; a new one
is elected from the replicas), and the stream loses the leader that stores what the
backend publishes meanwhile. Killing only the stream leader, or only B's node, is a
subset of this.

Asserted: every message delivered and in the end acked on NATS, none lost, none
delivered again after the gateway confirmed its ack, the backend's messages stored once,
B's socket open throughout, the restarted node caught up. This test found that a confirmed
ack used to mean only "the gateway's own NATS node has it" (publish + flush): acks sent
while the consumer had no leader were confirmed and lost, and those messages came again.
The gateway now confirms with a double ack (a request JetStream answers once the
consumer's leader applied it); acks sent while there is no leader are answered
``internal`` and their messages come again, which the client then acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections import deque
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import KeyValueConfig, StreamConfig

from natsgate.config import Config
from natsgate.durables import consumer_name
from natsgate.revocations import GRACE_S

from ..conftest import connect, unique
from ..helpers import Gw, T, WsClient, eventually, monitor, start_gateway
from .conftest import Cluster, record
from .test_cluster import js_publish

pytestmark = pytest.mark.slow

BEFORE = 60  # in the stream before anyone reads
DURING = 20  # published by a backend while the victim is down
TOTAL = BEFORE + DURING
ON_A = TOTAL // 2  # acked through gateway A, then A's connection closes
KILL_AT = ON_A + 10  # confirmed acks when the victim is killed (B holds a batch unacked)
RESTART_AT = BEFORE + 5  # confirmed acks (and the backend done) when it comes back
SUB = {"durable": "d", "ack": "explicit", "ack_wait_ms": 5000, "batch": 10, "start_seq": 1}


class Reader:
    """One user's client of the durable ``d``: acks each message with an inbox and counts
    it only on the gateway's ``reply``. Envelopes are numbered in arrival order, so that a
    delivery can be placed after (or before) the confirmation of an earlier ack."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.n = 0
        self.backlog: deque[dict[str, Any]] = deque()  # msgs that came while awaiting a reply
        self.confirmed: dict[int, tuple[str, int]] = {}  # seq: (gateway, arrival no. of reply)
        self.failed: dict[int, str] = {}  # seq: error code, an ack answered with an error
        self.failed_then_redelivered: set[int] = set()
        self.deliveries: list[tuple[str, int, int, float]] = []  # gateway, seq, delivery, t
        self.after_confirmed: list[int] = []  # delivered after its ack was confirmed: none
        self.other: list[dict[str, Any]] = []  # anything else the gateway sent
        self.log: list[tuple[float, str]] = []  # (time, event): printed when a check fails

    async def _recv(self, c: WsClient, timeout: float) -> dict[str, Any]:
        env = await c.recv(timeout)
        self.n += 1
        env["_n"] = self.n
        return env

    async def _next_msg(self, c: WsClient, timeout: float) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.popleft()
        while True:
            env = await self._recv(c, timeout)
            if env.get("op") == "msg":
                return env
            self.other.append(env)

    async def step(self, c: WsClient, gw: str, timeout: float) -> None:
        """Read one message and ack it (TimeoutError when none comes)."""
        m = await self._next_msg(c, timeout)
        assert m["target"] == f"js:{self.stream}" and m["durable"] == "d", m
        seq, delivery = m["data"]["seq"], m["data"]["delivery"]
        self.deliveries.append((gw, seq, delivery, time.monotonic()))
        self.log.append((time.monotonic(), f"{gw} msg {seq} delivery {delivery}"))
        if seq in self.confirmed and m["_n"] > self.confirmed[seq][1]:
            self.after_confirmed.append(seq)
        inbox = await c.send("js_ack", self.stream, {"durable": "d", "seq": seq})
        while True:
            env = await self._recv(c, 3 * T)
            if env.get("op") == "msg":
                self.backlog.append(env)
            elif env.get("inbox") == inbox and env.get("op") in ("reply", "error"):
                break
            else:
                self.other.append(env)
        self.log.append((time.monotonic(), f"{gw} ack {seq}: {env['op']} {env.get('data')}"))
        if env["op"] == "reply":
            if seq in self.failed:
                self.failed_then_redelivered.add(seq)
            self.confirmed.setdefault(seq, (gw, env["_n"]))
        elif seq not in self.confirmed:
            self.failed[seq] = env["data"]["code"]


async def make_leader(nc: Any, api: str, info: Any, name: str) -> str:
    """Step a stream's or consumer's leader down until ``name`` leads it (bounded);
    returns the leader."""
    for _ in range(15):
        leader: str = (await info()).cluster.leader
        if leader == name:
            return leader
        with contextlib.suppress(nats.errors.Error):
            body = json.dumps({"placement": {"preferred": name}}).encode()
            await nc.request(api, body, timeout=2)

        async def moved(old: str = leader) -> bool:
            try:
                now = (await info()).cluster.leader
            except Exception:
                return False
            return bool(now and now != old)

        await eventually(moved, timeout=2 * T, every=0.1)
    return str((await info()).cluster.leader)


async def test_a_durable_continues_across_gateways_through_a_node_kill(
    cluster: Cluster, config: Config
) -> None:
    nc = await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    stream, subject = unique("DC"), unique("dc")
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"], num_replicas=3))
    # the auth buckets R3 as well (the gateway would make them R1), as test_cluster.py does
    for bucket in (config.auth_bucket, config.auth_creds_bucket):
        await js.create_key_value(KeyValueConfig(bucket=bucket, replicas=3, history=1))
    await js.create_key_value(
        KeyValueConfig(
            bucket=config.auth_revoked_bucket, replicas=3, history=1, limit_marker_ttl=GRACE_S
        )
    )
    deadline = time.monotonic() + 4 * T
    for n in range(BEFORE):
        await js_publish(js, f"{subject}.x", {"from": "svc", "n": n}, deadline)

    gws: list[Gw] = []
    for first in (0, 1):
        cfg = dataclasses.replace(config, nats_urls=tuple(cluster.seeds(first).split(",")))
        gws.append(await start_gateway(cfg))
    a, b = gws
    user = unique("u")
    await a.set_caps(user, {"streams": {stream: [">"]}})
    reader = Reader(stream)
    durable = consumer_name(user, "d")

    async def consumer() -> Any:
        return await js.consumer_info(stream, durable)

    # ---- gateway A: the first half, then the connection closes
    ca = await connect(a, user)
    reply = (await ca.ok("js_sub", stream, SUB))["data"]
    assert reply["pending"] == BEFORE and reply["ack_pending"] == 0
    while len(reader.confirmed) < ON_A:
        await reader.step(ca, "A", 2 * T)
    await ca.close()

    # every ack A's gateway confirmed is on the consumer (its leader may be another node)
    async def acked_on_a() -> bool:
        return bool((await consumer()).ack_floor.stream_seq == ON_A)

    await eventually(acked_on_a, timeout=2 * T, every=0.05)
    ci = await consumer()
    assert ci.config.num_replicas in (0, 3) and len(ci.cluster.replicas or []) == 2  # R3

    # ---- the victim: gateway B's node, made leader of the stream and of the durable
    def b_node() -> int:
        url = b.gateway.upstream.nc.connected_url
        assert url is not None
        return int(url.port or 0)

    victim = next(n for n in cluster.nodes if n.port == b_node())
    assert victim.server_name is not None
    name = victim.server_name
    leaders_before = {
        "stream": await make_leader(
            nc, f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", lambda: js.stream_info(stream), name
        ),
        "durable": await make_leader(
            nc, f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{durable}", consumer, name
        ),
    }
    assert leaders_before == {"stream": victim.server_name, "durable": victim.server_name}
    assert b_node() == victim.port

    # ---- gateway B: continues where A stopped
    cb = await connect(b, user)
    bound_t = time.monotonic()
    reply = (await cb.ok("js_sub", stream, {"durable": "d", "ack": "explicit"}))["data"]
    # what A's binding was handed and never acked is either back (NAKed at its close) or
    # still out until ack_wait; either way nothing of it was lost
    left_out = reply["ack_pending"]
    assert reply["pending"] + left_out == BEFORE - ON_A
    while len(reader.confirmed) < KILL_AT:
        await reader.step(cb, "B", 3 * T)
    on_b = [(s, t) for g, s, _, t in reader.deliveries if g == "B"]
    assert min(s for s, _ in on_b) == ON_A + 1 if not left_out else min(s for s, _ in on_b) > ON_A
    first_on_b_s = on_b[0][1] - bound_t

    # ---- SIGKILL in the middle of the stream: right after the gateway confirmed an ack,
    # so the leader is sending B the next batch as it dies
    held = sum(1 for g, _, _, _ in reader.deliveries if g == "B") - (KILL_AT - ON_A)
    victim.kill()
    killed_t = time.monotonic()
    publisher = asyncio.create_task(
        _publish(js, subject, BEFORE, DURING, killed_t + 6 * T), name="backend"
    )
    restarted_t = 0.0
    end = killed_t + 8 * T
    while True:
        if not restarted_t and publisher.done() and len(reader.confirmed) >= RESTART_AT:
            await publisher  # raises if the backend could not store its messages
            await asyncio.to_thread(victim.start)
            restarted_t = time.monotonic()
        # done when every message was answered and NATS holds them all as acked (an ack
        # NATS lost shows there as pending: keep reading until it comes again)
        answered = set(reader.confirmed) | set(reader.failed)
        if (
            restarted_t
            and answered >= set(range(1, TOTAL + 1))
            and await _all_acked_on_nats(consumer)
        ):
            break
        assert time.monotonic() < end, (
            f"stuck: {len(reader.confirmed)} confirmed, failed {sorted(reader.failed)}, "
            f"restarted {bool(restarted_t)}, other {reader.other[-3:]}"
        )
        with contextlib.suppress(TimeoutError):
            await reader.step(cb, "B", 0.5)
    done_t = time.monotonic()

    # ---- nothing lost, nothing confirmed came again
    await cluster.wait_jetstream()
    await eventually(lambda: _all_acked_on_nats(consumer), timeout=2 * T, every=0.1)
    ci = await consumer()
    seqs = {s for _, s, _, _ in reader.deliveries}
    assert seqs == set(range(1, TOTAL + 1))  # every message delivered
    never_back = set(reader.failed) - reader.failed_then_redelivered - set(reader.confirmed)
    # an ack answered with an error either came again and was confirmed, or had reached
    # NATS after all (its message never came back): NATS holds every message as acked
    assert set(reader.confirmed) | never_back == set(range(1, TOTAL + 1))
    assert ci.ack_floor.stream_seq == TOTAL and ci.num_pending == 0
    assert [e for e in reader.other if e.get("op") != "cap_update"] == []
    assert (await js.stream_info(stream)).state.messages == TOTAL  # publisher: once each

    # the quiet afterwards: nothing more is delivered (an unconfirmed copy, a late ack_wait)
    late = [e for e in await cb.quiet(1.0) if e.get("op") == "msg"]
    assert late == [] and not reader.backlog
    assert cb.close_code is None  # B's socket stayed open throughout

    async def node_caught_up() -> bool:
        jsz = monitor(victim.monitor_url, "/jsz?streams=1")
        for acc in jsz.get("account_details", []):
            for s in acc.get("stream_detail", []):
                if s["name"] == stream:
                    return bool(s["state"]["messages"] == TOTAL)
        return False

    await eventually(node_caught_up, timeout=4 * T, every=0.2)
    after_kill = [t for g, _, _, t in reader.deliveries if g == "B" and t >= killed_t]
    gaps = [y - x for x, y in zip([killed_t, *after_kill], after_kill, strict=False)]
    record(
        "test_a_durable_continues_across_gateways_through_a_node_kill",
        nodes=3,
        gateways=2,
        stream_replicas=3,
        killed=f"{victim.server_name} (gateway B's node, leader of stream and durable)",
        leaders_before=leaders_before,
        leaders_after={
            "stream": getattr((await js.stream_info(stream)).cluster, "leader", None),
            "durable": getattr(ci.cluster, "leader", None),
        },
        messages=TOTAL,
        published_while_down=DURING,
        acked_on_a=sum(1 for g, _ in reader.confirmed.values() if g == "A"),
        acked_on_b=sum(1 for g, _ in reader.confirmed.values() if g == "B"),
        a_left_unacked_at_close=left_out,
        b_first_message_after_bind_s=round(first_on_b_s, 2),
        unacked_on_b_at_kill=held,
        acks_answered_error=len(reader.failed),
        acks_refused_bad_request=sorted(s for s, e in reader.failed.items() if e == "bad_request"),
        error_codes=sorted(set(reader.failed.values())),
        failed_acks_redelivered=len(reader.failed_then_redelivered),
        failed_acks_that_reached_nats=len(never_back),
        deliveries=len(reader.deliveries),
        redeliveries=sum(1 for _, _, d, _ in reader.deliveries if d > 1),
        delivered_after_confirmed_ack=len(reader.after_confirmed),
        first_delivery_after_kill_s=round(gaps[0], 2) if gaps else None,
        longest_delivery_gap_after_kill_s=round(max(gaps), 2) if gaps else None,
        node_down_s=round(restarted_t - killed_t, 2),
        kill_to_all_acked_s=round(done_t - killed_t, 2),
        losses=0,
    )
    await cb.close()
    for g in gws:
        await g.stop()
    await nc.close()
    if reader.after_confirmed or reader.failed:  # the story, for the report
        for t, what in reader.log[ON_A:]:
            print(f"{t - killed_t:+.3f} {what}")
    assert reader.after_confirmed == [], (
        f"{len(reader.after_confirmed)} messages delivered again after the gateway "
        f"confirmed their ack: {reader.after_confirmed}"
    )


async def _publish(js: Any, subject: str, start: int, count: int, deadline: float) -> None:
    for n in range(start, start + count):
        await js_publish(js, f"{subject}.x", {"from": "svc", "n": n}, deadline)


async def _all_acked_on_nats(consumer: Any) -> bool:
    try:
        ci = await consumer()
    except Exception:  # no consumer leader for a moment
        return False
    return bool(
        ci.ack_floor.stream_seq == TOTAL and ci.num_ack_pending == 0 and ci.num_pending == 0
    )
