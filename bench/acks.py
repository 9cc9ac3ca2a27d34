"""Acknowledged deliveries per second through durables: one natsgate process with 100
WebSocket clients, each on its own durable with explicit acks, next to nats-server's own
JetStream with 100 nats-py pull consumers acking the same messages.

    python -m bench.acks                      # 2 rounds per side, alternating, ~2 minutes
    python -m bench.acks --clients 100 --per-client 2000 --batch 100 --runs 2

Every round starts from scratch, all on 127.0.0.1: a nats-server (JetStream on, a
temporary store), a stream ``ACKS`` on ``acks.*`` pre-filled with ``--per-client``
messages on each client's subject ``acks.<i>`` (150-byte JSON), then

- natsgate: one ``natsgate serve`` process; client ``i`` is user ``u<i>`` granted
  ``{"streams": {"ACKS": ["acks.<i>"]}}``; its durable ``d<i>`` is made before the stream
  is filled (``js_sub`` then ``js_unsub``, which keeps the position) and bound again when
  the round starts: ``{"durable": "d<i>", "ack": "explicit", "filter": "acks.<i>",
  "start_seq": 1, "batch": B}``. Every ``msg`` is answered with a ``js_ack`` without an
  inbox; the client's last ack has one, and its reply (NATS has the ack) ends the client.
- nats-py: consumers ``d<i>`` made with the gateway's configuration (explicit acks,
  ``max_ack_pending`` = batch, the same filter and start), one nats-py connection each,
  looping ``fetch(B)`` and ``msg.ack()``; ``flush()`` after the last.

The clients run in ``--procs`` processes (``bench/ackclients.py``). The rate is the
messages acked over the time from the first delivery to the last confirmed ack; then
every consumer must show nothing pending and nothing awaiting an ack (nats-py
``consumer_info``). Each round is bounded (``--deadline``, 60 s); the processes started
are stopped on the way out, also on Ctrl-C. Results: ``bench/results/acks-<ts>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.machine import machine, system_cpu, wait_quiet
from bench.procs import (
    REGISTRY,
    Child,
    Server,
    cpu_seconds,
    free_port,
    kill_leftovers,
    wait_for_line,
)
from bench.settings import RESULTS, ROOT
from bench.sut import caps_bucket, http_ok, natsgate_argv, natsgate_code

STREAM = "ACKS"
PAYLOAD_BYTES = 150
SIDES = {"natsgate": "natsgate (1 process), WebSocket clients", "nats": "nats-server, nats-py"}


def payload(i: int, k: int) -> bytes:
    head = b'{"to":"u%d","n":%d,"title":"You have a new notification","body":"' % (i, k)
    return head + b"x" * max(4, PAYLOAD_BYTES - 2 - len(head)) + b'"}'


# ------------------------------------------------------------------ set-up


async def fill_stream(nc: Any, clients: int, per_client: int, wait_s: float) -> float:
    """``per_client`` messages on each client's subject of the (empty) stream,
    interleaved; returns the seconds it took."""
    js = nc.jetstream()
    t0 = time.monotonic()
    for k in range(per_client):
        for i in range(clients):
            await nc.publish(f"acks.{i}", payload(i, k))
        if k % 20 == 19:
            await nc.flush(timeout=30)
    await nc.flush(timeout=30)
    want = clients * per_client
    deadline = time.monotonic() + wait_s
    while True:
        info = await js.stream_info(STREAM)
        if info.state.messages >= want:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise RuntimeError(f"stream holds {info.state.messages} of {want} messages")
        await asyncio.sleep(0.1)


async def make_consumers(nc: Any, clients: int, batch: int) -> None:
    """nats-py side: the consumers the gateway would make (the configuration of
    src/natsgate/bridges/durable.py, ``DurableBridge._config``)."""
    from nats.js import api

    js = nc.jetstream()
    for i in range(clients):
        await js.add_consumer(
            STREAM,
            api.ConsumerConfig(
                durable_name=f"d{i}",
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_ack_pending=batch,
                filter_subject=f"acks.{i}",
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=1,
            ),
        )


async def grant_users(nc: Any, clients: int, wait_s: float) -> None:
    """Client i is user u<i>, granted its own subject of the stream (``auth_users``, made
    by the gateway when it starts)."""
    kv = await caps_bucket(nc, wait_s)
    for i in range(clients):
        await kv.put(f"u{i}", json.dumps({"streams": {STREAM: [f"acks.{i}"]}}).encode())


async def start_gateway(
    nats_url: str, secret: str, run_dir: Path, stack: contextlib.ExitStack, src: Path | None
) -> tuple[Server, str]:
    """One ``natsgate serve`` process, as bench/sut.py starts it; the per-connection rate
    limit (RATE_PER_S, 200 envelopes/s by default) is off: the gateway's capacity is
    measured, not the policy."""
    port = free_port()
    argv = [*natsgate_argv(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log", "warn"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.update(JWT_SECRET=secret, NATS_URL=nats_url, RATE_PER_S="0")
    if src is not None:  # that tree's natsgate, not this checkout's (as bench/sut.py does)
        env["PYTHONPATH"] = f"{src}{os.pathsep}{ROOT}"
    srv = Server("natsgate", argv, run_dir / "natsgate.log", env, run_dir)
    stack.callback(srv.stop)
    await wait_for_line(srv, r"natsgate listening on (http://[0-9.]+:[0-9]+)", 1, 30)
    await http_ok(f"http://127.0.0.1:{port}/healthz", 30)
    return srv, f"ws://127.0.0.1:{port}/ws"


# ------------------------------------------------------------------ the proof


async def check_consumers(nc: Any, clients: int, per_client: int, wait_s: float) -> dict:
    """Every consumer of the stream: nothing pending, nothing awaiting an ack, its ack
    floor at the last message of its subject. Polled (acks are applied by the server
    after it answered the flush) for at most ``wait_s``."""
    js = nc.jetstream()
    deadline = time.monotonic() + wait_s
    while True:
        infos = await js.consumers_info(STREAM)
        bad = [
            c.name
            for c in infos
            if (c.num_pending or 0)
            or (c.num_ack_pending or 0)
            or c.ack_floor is None
            or c.delivered is None
            or c.ack_floor.stream_seq != c.delivered.stream_seq
        ]
        if (not bad and len(infos) == clients) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return {
        "ok": not bad and len(infos) == clients,
        "consumers": len(infos),
        "not_settled": bad[:5],
        "num_pending": sum(c.num_pending or 0 for c in infos),
        "num_ack_pending": sum(c.num_ack_pending or 0 for c in infos),
        "num_redelivered": sum(c.num_redelivered or 0 for c in infos),
        "delivered": sum(c.delivered.consumer_seq for c in infos if c.delivered),
        "acked": sum(c.ack_floor.consumer_seq for c in infos if c.ack_floor),
        "expected": clients * per_client,
    }


# ------------------------------------------------------------------ one round


def _slices(n: int, k: int) -> list[list[int]]:
    return [list(range(j, n, k)) for j in range(k)]


async def run_round(side: str, label: str, args: argparse.Namespace, base: Path) -> dict:
    import nats

    from natsgate.natsrunner import NatsServer

    run_dir = base / label
    run_dir.mkdir(parents=True)
    n, per, batch = args.clients, args.per_client, args.batch
    stack = contextlib.ExitStack()
    children: list[Child] = []
    nc = None
    out: dict[str, Any] = {"side": side, "label": label}
    try:
        ns = NatsServer(
            store_dir=run_dir / "js", port=-1, http_port=None, log_file=run_dir / "nats.log"
        ).start()
        stack.callback(ns.stop)
        REGISTRY.add(ns.proc.pid)  # type: ignore[union-attr]
        nats_procs = [psutil.Process(ns.proc.pid)]  # type: ignore[union-attr]
        nc = await nats.connect(ns.url, name="acks-setup", max_reconnect_attempts=0)
        gw: Server | None = None
        cfg: dict[str, Any] = {"stream": STREAM, "batch": batch, "per_client": per}
        secret = secrets.token_urlsafe(48)
        if side == "natsgate":
            from natsgate.auth import mint_token

            await nc.jetstream().add_stream(name=STREAM, subjects=["acks.*"])
            gw, url = await start_gateway(ns.url, secret, run_dir, stack, args.natsgate_src)
            await grant_users(nc, n, 30)
            cfg["url"] = url
            tokens = [mint_token(f"u{i}", secret, 3600) for i in range(n)]
        else:
            cfg["nats_url"] = ns.url
            tokens = []
        for j in range(args.procs):
            children.append(
                await Child.start(
                    f"{side}-clients{j}", [sys.executable, "-m", "bench.ackclients", side], run_dir
                )
            )
        for c in children:
            ev = await c.recv(30)
            assert ev["ev"] == "ready", ev
        if side == "natsgate":  # the durables, made on the empty stream and unbound again
            await _bind(children, cfg, n, tokens)
            out["prefill_s"] = round(await fill_stream(nc, n, per, 60), 2)
        else:
            await nc.jetstream().add_stream(name=STREAM, subjects=["acks.*"])
            out["prefill_s"] = round(await fill_stream(nc, n, per, 60), 2)
            await make_consumers(nc, n, batch)
            await _bind(children, cfg, n, tokens)
        out["quiet"] = await wait_quiet(args.noisy, args.quiet_wait)
        # ---------------------------------------------------------- the measured part
        mine = [psutil.Process(), *nats_procs, *(gw.tree() if gw else [])]
        lg_procs = [psutil.Process(c.pid) for c in children]
        gw_procs = gw.tree() if gw else []
        c0 = {
            "gateway": cpu_seconds(gw_procs),
            "nats": cpu_seconds(nats_procs),
            "clients": cpu_seconds(lg_procs),
            "all": cpu_seconds(mine + lg_procs),
        }
        sys0, t0, load0 = system_cpu(), time.monotonic(), os.getloadavg()
        for c in children:
            await c.send({"cmd": "go", "deadline_s": args.deadline})
        answers = await asyncio.gather(*(c.recv(args.deadline + 30) for c in children))
        wall = time.monotonic() - t0
        procs_s, irq_s, steal_s = (b - a for a, b in zip(sys0, system_cpu(), strict=True))
        c1 = {
            "gateway": cpu_seconds(gw_procs),
            "nats": cpu_seconds(nats_procs),
            "clients": cpu_seconds(lg_procs),
            "all": cpu_seconds(mine + lg_procs),
        }
        load1 = os.getloadavg()
        # ---------------------------------------------------------- what it was
        clients = [r for a in answers for r in a["clients"]]
        errors = [r["error"] for r in clients if r["error"]]
        acked = sum(r["acked"] for r in clients)
        first = min((r["first"] for r in clients if r["first"]), default=0.0)
        end = max((r["done_at"] for r in clients), default=0.0)
        span = end - first if first and end > first else float("nan")
        cpu = {k: round(c1[k] - c0[k], 2) for k in c0}
        out.update(
            acked=acked,
            expected=n * per,
            deliveries=sum(r["deliveries"] for r in clients),
            redelivered=sum(r["redelivered"] for r in clients),
            errors=errors[:5],
            error_count=len(errors),
            span_s=round(span, 3),
            rate=round(acked / span, 1) if span == span else 0.0,
            window_s=round(wall, 2),
            cpu_s=cpu,
            cpu_pct={k: round(100 * v / wall, 1) for k, v in cpu.items()},
            cpu_us_per_ack={k: round(1e6 * v / acked, 2) if acked else 0.0 for k, v in cpu.items()},
            # processes outside this benchmark (other engineers' tests), and the kernel's
            # interrupt time (mostly this benchmark's own loopback traffic) and steal
            other_cpu_pct=round(100 * max(0.0, procs_s - cpu["all"]) / wall, 1),
            irq_cpu_pct=round(100 * irq_s / wall, 1),
            steal_cpu_pct=round(100 * steal_s / wall, 1),
            loadavg_before=[round(x, 2) for x in load0],
            loadavg_after=[round(x, 2) for x in load1],
        )
        out["check"] = await check_consumers(nc, n, per, 10)
        out["ok"] = bool(out["check"]["ok"] and not errors and acked == n * per)
    finally:
        for c in children:
            with contextlib.suppress(Exception):
                await c.stop()
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
        stack.close()
    return out


async def _bind(children: list[Child], cfg: dict[str, Any], n: int, tokens: list[str]) -> None:
    k = len(children)
    for c, idx in zip(children, _slices(n, k), strict=True):
        part = {
            **cfg,
            "index": idx,
            "subjects": [f"acks.{i}" for i in idx],
            "users": [f"u{i}" for i in idx],
            "tokens": [tokens[i] for i in idx] if tokens else [],
        }
        await c.send({"cmd": "bind", "cfg": part, "wait_s": 30})
    for c in children:
        ev = await c.recv(60)
        if ev.get("ev") != "bound":
            raise RuntimeError(f"{c.name}: {ev}")


# ------------------------------------------------------------------ the run


def summarize(rounds: list[dict]) -> dict[str, Any]:
    by = {s: [r["rate"] for r in rounds if r["side"] == s and r.get("ok")] for s in SIDES}
    mean = {s: round(statistics.mean(v), 1) if v else 0.0 for s, v in by.items()}
    ratio = round(mean["natsgate"] / mean["nats"], 3) if mean["nats"] else None
    return {"rates": by, "mean": mean, "ratio": ratio}


def table(rounds: list[dict]) -> str:
    rows = [
        "| run | side | acked | s | acked/s | gateway CPU s (%) | nats-server CPU s (%) "
        "| clients CPU s (%) | softirq % | other procs % | load avg (1 min) | proof |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rounds:
        if "cpu_s" not in r:
            rows.append(f"| {r['label']} | {r['side']} | failed: {r.get('failure', '?')} |")
            continue
        cs, cp, ck = r["cpu_s"], r["cpu_pct"], r["check"]
        gw = f"{cs['gateway']:.1f} ({cp['gateway']:.0f} %)" if r["side"] == "natsgate" else "-"
        proof = (
            f"{ck['consumers']} consumers, 0 pending, 0 ack pending"
            if ck["ok"]
            else f"NOT settled: {ck['num_pending']} pending, {ck['num_ack_pending']} ack pending"
        )
        rows.append(
            f"| {r['label']} | {SIDES[r['side']]} | {r['acked']:,} | {r['span_s']:.2f} "
            f"| {r['rate']:,.0f} | {gw} | {cs['nats']:.1f} ({cp['nats']:.0f} %) "
            f"| {cs['clients']:.1f} ({cp['clients']:.0f} %) | {r['irq_cpu_pct']:.0f} "
            f"| {r['other_cpu_pct']:.0f} "
            f"| {r['loadavg_before'][0]:.2f} | {proof} |"
        )
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="natsgate-acks-"))
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result: dict[str, Any] = {
        "benchmark": "acks",
        "started": started,
        "machine": machine(),
        "natsgate_code": natsgate_code(args.natsgate_src),
        "natsgate_src": str(args.natsgate_src or "src/ of this checkout"),
        "params": {
            "clients": args.clients,
            "per_client": args.per_client,
            "batch": args.batch,
            "payload_bytes": PAYLOAD_BYTES,
            "procs": args.procs,
            "deadline_s": args.deadline,
            "prefilled": True,
            "rate_per_s": 0,
        },
        "rounds": [],
    }
    order = [s for _ in range(args.runs) for s in args.sides]
    seen: dict[str, int] = {}
    try:
        for side in order:
            seen[side] = seen.get(side, 0) + 1
            label = f"{side}-{seen[side]}"
            print(f"[acks] {label} ...", flush=True)
            try:
                r = await run_round(side, label, args, base)
            except Exception as exc:  # the other rounds still run; the JSON says why
                r = {"side": side, "label": label, "ok": False, "failure": repr(exc)[:400]}
            result["rounds"].append(r)
            if "rate" in r:
                print(
                    f"[acks] {label}: {r['acked']:,} acked in {r['span_s']:.2f}s = "
                    f"{r['rate']:,.0f}/s; gateway {r['cpu_pct']['gateway']:.0f} %, nats-server "
                    f"{r['cpu_pct']['nats']:.0f} %, clients {r['cpu_pct']['clients']:.0f} %, "
                    f"softirq {r['irq_cpu_pct']:.0f} %, other {r['other_cpu_pct']:.0f} %; "
                    f"prefill {r['prefill_s']}s; check ok={r['check']['ok']}; "
                    f"errors {r['error_count']}",
                    flush=True,
                )
            else:
                print(f"[acks] {label} failed: {r.get('failure')}", flush=True)
    finally:
        kill_leftovers()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    result["summary"] = summarize(result["rounds"])
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"acks-{started}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"[acks] results: {path.relative_to(ROOT)}")
    if args.keep:
        print(f"[acks] logs kept under {base}")
    print(table(result["rounds"]))
    s = result["summary"]
    print(
        f"mean: natsgate {s['mean']['natsgate']:,.0f}/s, nats-py {s['mean']['nats']:,.0f}/s, "
        f"ratio {s['ratio']}"
    )
    return 0 if all(r.get("ok") for r in result["rounds"]) else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.acks", description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-client", type=int, default=2000, help="messages on each subject")
    ap.add_argument("--batch", type=int, default=100, help="js_sub batch / fetch batch")
    ap.add_argument("--procs", type=int, default=2, help="client processes per side")
    ap.add_argument("--runs", type=int, default=2, help="rounds per side, alternating")
    ap.add_argument("--sides", nargs="+", choices=list(SIDES), default=list(SIDES))
    ap.add_argument("--deadline", type=float, default=60.0, help="seconds a round may take")
    ap.add_argument("--noisy", type=float, default=30.0, help="quiet: busy CPU %% under this")
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="wait at most this for quiet")
    ap.add_argument(
        "--natsgate-src",
        type=Path,
        default=None,
        help="run the gateway from this tree (holding natsgate/), e.g. a git archive of a commit",
    )
    ap.add_argument("--keep", action="store_true", help="keep the logs")
    ap.add_argument("--no-save", action="store_true", help="no results file")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 1000 or not 1 <= args.per_client <= 100_000:
        ap.error("--clients 1..1000, --per-client 1..100000")
    args.procs = max(1, min(args.procs, args.clients))
    return args


if __name__ == "__main__":
    from bench.common import install_uvloop

    install_uvloop()
    try:
        sys.exit(asyncio.run(main(parse())))
    except KeyboardInterrupt:
        kill_leftovers()
        sys.exit(130)
