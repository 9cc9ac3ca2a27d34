"""Gateway restarts (issue 6, item 2a and 2b), with real ``natsgate serve`` processes.

(a) A gateway holding 1,000 connections is killed (SIGKILL: no goodbye) and started
again on the same port. The clients are ``natsgate.client`` instances with their
full-jitter backoff; 200 of them hold a JetStream subscription on a stream a backend
keeps publishing to throughout. All must come back, without an error storm, and every
JetStream subscription must resume without a gap.

(b) SIGTERM while commands to a slow service are in flight: every command ends (a reply,
an error envelope, or the client's ``disconnected``), clients are told 1012, and the
process exits 0 within its drain timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.js.api import StreamConfig

from natsgate import client as ng
from natsgate.auth import mint_token
from natsgate.natsrunner import NatsServer

from ..conftest import SECRET, unique
from ..helpers import T, WsClient, eventually
from .conftest import GatewayProc, percentile, record

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A nats-server of this test's own: the killed gateway leaves consumers behind
    (until their inactive threshold) that other tests need not see."""
    server = NatsServer(store_dir=tmp_path / "js").start()
    yield server
    server.stop()


async def set_caps(nc: Any, gw: GatewayProc, user: str, caps: dict[str, Any]) -> None:
    kv = await nc.jetstream().key_value(gw.env["AUTH_BUCKET"])
    await kv.put(user, json.dumps(caps).encode())


def log_problems(text: str) -> list[str]:
    """Lines of a gateway's stderr that say something went wrong inside it."""
    return [ln for ln in text.splitlines() if " ERROR " in ln or "Traceback" in ln]


# ------------------------------------------------------------------ (a) 1,000 clients


async def test_thousand_clients_come_back_after_a_gateway_kill(
    own_nats: NatsServer, gateway_procs: Any
) -> None:
    n_clients, n_js, n_users = 1000, 200, 10
    down_s = 2.0  # the gateway stays down this long before it is started again
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    p, stream = unique("r"), unique("S")
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{p}.>"]))
    gw: GatewayProc = gateway_procs(own_nats.url)
    await gw.astart()
    await gw.wait_healthy()
    users = [f"user{i}" for i in range(n_users)]
    for u in users:
        await set_caps(nc, gw, u, {"subjects": [f"{p}.>"], "streams": {stream: [f"{p}.>"]}})

    # a backend publishes into the stream all along
    published = 0
    stop_publishing = asyncio.Event()

    async def publisher() -> None:  # 20 a second, on a schedule
        nonlocal published
        t0 = time.monotonic()
        while not stop_publishing.is_set() and published < 5000:
            await js.publish(f"{p}.tick", json.dumps({"n": published}).encode())
            published += 1
            await asyncio.sleep(max(0.0, t0 + published / 20 - time.monotonic()))

    pub_task = asyncio.create_task(publisher())

    errors: list[ng.NatsgateError] = []
    disconnects: Counter[int] = Counter()
    back_at: dict[int, float] = {}
    attempts: list[int] = []
    seqs: list[list[int]] = [[] for _ in range(n_js)]
    clients: list[ng.Client] = []
    subs: list[ng.JsSubscription] = []
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        tok = mint_token(users[i % n_users], SECRET, 3600)
        async with sem:
            c = await ng.connect(
                gw.ws_url, token=tok, min_backoff=0.25, max_backoff=4.0, connect_timeout=6 * T
            )
        clients.append(c)
        c.on("error", errors.append)
        c.on("disconnect", lambda d: disconnects.update([d.code]))

        def back(info: ng.ReconnectInfo, i: int = i) -> None:
            back_at[i] = time.monotonic()
            attempts.append(info.attempts)

        c.on("reconnect", back)
        if i < n_js:
            got = seqs[i]
            subs.append(
                await c.js_subscribe(stream, lambda m, got=got: got.append(m.seq), start_seq=1)
            )

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n_clients)))
    connect_s = time.monotonic() - started
    assert (await gw.metrics())["natsgate_open_connections"] == n_clients
    await eventually(lambda: all(got for got in seqs), timeout=4 * T)

    # the crash
    before_kill = published
    gw.kill()
    killed = time.monotonic()
    await eventually(lambda: sum(disconnects.values()) == n_clients, timeout=2 * T)
    await asyncio.sleep(down_s)  # as a process manager's restart delay would
    await gw.astart()
    listening_s = time.monotonic() - killed
    healthy_s = listening_s + await gw.wait_healthy()
    await eventually(lambda: len(back_at) == n_clients, timeout=10 * T, every=0.1)
    all_back_s = max(back_at.values()) - killed
    during_outage = published - before_kill
    await eventually(
        lambda: all(s.state is ng.SubState.ACTIVE for s in subs), timeout=4 * T, every=0.1
    )

    stop_publishing.set()
    await pub_task
    last = int((await js.stream_info(stream)).state.last_seq)
    await eventually(lambda: all(s.last_seq == last for s in subs), timeout=6 * T, every=0.1)
    gaps = sum(1 for got in seqs if got != list(range(1, last + 1)))
    assert gaps == 0

    m = await gw.metrics()
    assert m["natsgate_open_connections"] == n_clients
    assert m["natsgate_accepted_connections_total"] == n_clients  # each came back once
    refused = {k: v for k, v in m.items() if k.startswith("natsgate_upgrades_refused_total")}
    problems = log_problems(gw.stderr())
    assert not problems, problems[:5]
    assert not errors, errors[:5]  # no error event on any client
    assert set(disconnects) <= {1006}, disconnects  # the kill: no close frame

    reconnect_times = sorted(t - killed for t in back_at.values())
    record(
        "test_thousand_clients_come_back_after_a_gateway_kill",
        clients=n_clients,
        js_subscriptions=n_js,
        users=n_users,
        initial_connect_s=round(connect_s, 2),
        fault=f"SIGKILL, {down_s:.0f} s down, restart on the same port",
        restart_listening_s=round(listening_s, 2),
        restart_healthy_s=round(healthy_s, 2),
        all_back_s=round(all_back_s, 2),
        back_p50_s=round(percentile(reconnect_times, 0.5), 2),
        back_p99_s=round(percentile(reconnect_times, 0.99), 2),
        attempts_p50=percentile([float(a) for a in attempts], 0.5),
        attempts_max=max(attempts),
        dial_attempts_total=sum(attempts),
        upgrades_refused_after_restart={k.split('"')[1]: v for k, v in refused.items()},
        client_error_events=len(errors),
        gateway_error_log_lines=len(problems),
        stream_messages=last,
        published_before_kill=before_kill,
        published_while_clients_were_away=during_outage,
        js_messages_delivered=sum(len(got) for got in seqs),
        js_gaps=gaps,
        losses=0,
        gateway_rss_mb=round(gw.rss() / 2**20, 1),
    )
    await asyncio.gather(*(c.close() for c in clients))
    await nc.close()


# ------------------------------------------------------------------ (b) SIGTERM


async def test_sigterm_ends_every_inflight_command_and_exits_0(
    own_nats: NatsServer, gateway_procs: Any
) -> None:
    drain_s = 5.0
    nc = await nats.connect(own_nats.url)
    svc = unique("svc")
    gw: GatewayProc = gateway_procs(own_nats.url, env={"DRAIN_TIMEOUT": str(drain_s)})
    await gw.astart()
    await gw.wait_healthy()
    user = unique("u")
    await set_caps(nc, gw, user, {"commands": [f"{svc}.>"]})
    received = asyncio.Event()
    seen = 0
    n_clients, n_raw = 20, 5

    async def slow(msg: Any) -> None:  # answers after 3 s: in flight at SIGTERM
        nonlocal seen
        seen += 1
        if seen == n_clients + n_raw:
            received.set()
        await asyncio.sleep(3)
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(msg.data)

    pending: set[asyncio.Task[None]] = set()

    async def on_request(msg: Any) -> None:  # each request on its own, concurrently
        task = asyncio.create_task(slow(msg))
        pending.add(task)
        task.add_done_callback(pending.discard)

    await nc.subscribe(f"{svc}.slow", cb=on_request)
    await nc.flush()

    tok = mint_token(user, SECRET, 3600)
    clients = [await ng.connect(gw.ws_url, token=tok, max_backoff=1.0) for _ in range(n_clients)]
    codes: list[int] = []
    for c in clients:
        c.on("disconnect", lambda d: codes.append(d.code))
    raw = await WsClient.open(gw.ws_url, token=tok)
    assert (await raw.recv())["op"] == "cap_update"

    term = 0.0

    async def command(c: ng.Client) -> tuple[str, float]:
        """The outcome, and how long after SIGTERM it came."""
        try:
            await c.command(f"{svc}.slow", "x", timeout=10.0)
        except ng.NatsgateError as exc:
            return exc.code, time.monotonic() - term
        return "reply", time.monotonic() - term

    tasks = [asyncio.create_task(command(c)) for c in clients]
    inboxes = [await raw.send("cmd", f"{svc}.slow", "x", timeout_ms=10_000) for _ in range(n_raw)]
    await asyncio.wait_for(received.wait(), 2 * T)  # all 25 reached the service

    gw.signal(signal.SIGTERM)
    term = time.monotonic()
    # the raw client: for each inbox a reply or an error envelope, or else the close
    answered: dict[str, str] = {}
    raw_close = None
    try:
        while True:
            env = await raw.recv(timeout=drain_s + 2)
            if env.get("inbox") in inboxes:
                answered[env["inbox"]] = "reply" if env["op"] == "reply" else env["data"]["code"]
    except Exception as exc:
        raw_close = getattr(exc, "code", None)
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), drain_s + 2)  # never hang
    exit_code = await asyncio.to_thread(gw.wait, drain_s + 5)
    exit_s = time.monotonic() - term
    await raw.close()

    assert raw_close == 1012
    assert set(answered) == set(inboxes), answered  # each answered once before the close
    assert exit_code == 0
    assert exit_s < drain_s + 2
    kinds = Counter(kind for kind, _ in outcomes)
    assert set(kinds) <= {"reply", "disconnected", "no_responders", "timeout", "internal"}, kinds
    assert min(t for _, t in outcomes) > 0  # all were still in flight at SIGTERM
    assert max(t for _, t in outcomes) < drain_s + 1
    assert 1012 in codes and set(codes) <= {1012}, codes
    record(
        "test_sigterm_ends_every_inflight_command_and_exits_0",
        commands_in_flight=n_clients + n_raw,
        client_outcomes=dict(kinds),
        raw_outcomes=dict(Counter(answered.values())),
        last_outcome_after_sigterm_s=round(max(t for _, t in outcomes), 3),
        close_codes=dict(Counter(codes)),
        exit_code=exit_code,
        exit_after_sigterm_s=round(exit_s, 2),
        drain_timeout_s=drain_s,
    )
    for c in clients:
        await c.close()
    await nc.close()
