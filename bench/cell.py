"""One cell of the benchmark (target x workload x subscriber count), from scratch: its
processes start (``bench/rig.py``), then the phases run in order, each returning its part of the
cell's dict:

1. ``set_up``: all clients connect and subscribe; connections per second until the last
   one is subscribed;
2. ``idle_memory``: RSS of the target's processes with every client idle, minus the RSS
   before the first client came, per client (and the idle CPU);
3. ``latency``: a fixed moderate rate; publish to the LAST client that received it, p50
   and p99, the same over every single delivery (each client's latency for each
   message), and loss after a drain, which must be 0;
4. ``throughput``: for a fixed window as fast as the target delivers; deliveries per
   second, loss after a drain, CPU per delivery, the load generators' CPU, and how long
   one more client waits for a ``ping``'s answer meanwhile (``bench/probe.py``);
5. ``connections_at_end``: disconnects, close codes and connections still open.

Then everything of the cell is stopped. Every failure ends up as the cell's ``error``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from bench import hist
from bench.common import Counters
from bench.machine import noise, system_cpu
from bench.probe import Probe
from bench.procs import Child, ChildDied, cpu_seconds, rss_bytes
from bench.profiling import finish_profiler, gc_pauses, start_profiler
from bench.rig import Rig, start_rig
from bench.settings import CellOptions, Mode, budget, latency_rate
from bench.sut import Target, natsgate_code


async def set_up(rig: Rig, proto: str, subjects: list[str], concurrency: int) -> dict[str, Any]:
    """Every load generator connects its share of ``subjects`` (one client each) and
    subscribes."""
    n, k = len(subjects), len(rig.lgs)
    shares = [subjects[i::k] for i in range(k)]
    conc = max(4, concurrency // k)
    t0 = time.time()
    for c, share in zip(rig.lgs, shares, strict=True):
        await c.send(
            {
                "cmd": "connect",
                "proto": proto,
                "url": rig.sut.url,
                "headers": rig.sut.headers,
                "subjects": share,
                "concurrency": conc,
                "timeout_s": 60 + n / 50,
            }
        )
    evs = [await c.recv(120 + n / 20) for c in rig.lgs]
    ok = sum(e["ok"] for e in evs)
    setup_s = max(e["t1"] for e in evs) - t0
    return {
        "connected": ok,
        "failed": sum(e["failed"] for e in evs),
        "deflate_agreed": sum(e.get("deflate_agreed", 0) for e in evs),
        "errors": merge_counts(e["errors"] for e in evs),
        "seconds": round(setup_s, 3),
        "conns_per_s": round(ok / setup_s, 1) if setup_s > 0 else None,
    }


async def idle_memory(rig: Rig, n: int, rss_before: int, mode: Mode) -> dict[str, Any]:
    """The target's RSS per idle client, and its idle CPU (keepalives, timers)."""
    await asyncio.sleep(mode.settle_s)
    i_cpu, i_t = cpu_seconds(rig.server_procs), time.monotonic()
    await asyncio.sleep(mode.idle_s)
    i_cpu = cpu_seconds(rig.server_procs) - i_cpu
    rss1 = rss_bytes(rig.sut_procs)
    return {
        "rss_before": rss_before,
        "rss_idle": rss1,
        "per_conn_bytes": round((rss1 - rss_before) / n),
        "nats_server_rss": rss_bytes(rig.nats_procs) if rig.sut.server else None,
        "idle_server_cpu_pct": round(100 * i_cpu / (time.monotonic() - i_t), 1),
    }


async def latency(
    rig: Rig, pub_subjects: list[str], fanout: int, distinct: bool, mode: Mode
) -> dict[str, Any]:
    """Publish at a fixed moderate rate; per message, the time to the last client, and
    per delivery, the time to each client."""
    rate = latency_rate(fanout, distinct)
    await rig.loadgens_latency(True)
    l_srv, l_nats = cpu_seconds(rig.sut_procs), cpu_seconds(rig.nats_procs)
    everyone = [*rig.server_procs, *rig.lg_procs, *rig.pub_procs, psutil.Process()]
    l_ours, l_sys, l_t = cpu_seconds(everyone), system_cpu(), time.monotonic()
    lat_s = mode.latency_s if fanout < 10_000 else mode.latency_s / 2
    res = await rig.pub.ask(
        {"cmd": "latency", "subjects": pub_subjects, "rate": rate, "duration_s": lat_s},
        lat_s * 3 + 30,
    )
    expected = res["published"] * fanout
    lat_drain = await drain(rig.counters, expected, mode.drain_s)
    l_cpu = cpu_seconds(rig.sut_procs) - l_srv
    if rig.sut.server:
        l_cpu += cpu_seconds(rig.nats_procs) - l_nats
    l_now = system_cpu()
    # other people's processes and other virtual machines (steal)
    l_other = (l_now[0] - l_sys[0]) - (cpu_seconds(everyone) - l_ours) + (l_now[2] - l_sys[2])
    l_other_pct = round(max(0.0, 100 * l_other / (time.monotonic() - l_t)), 1)
    stats = await rig.collect()
    merged = merge_latencies(stats)
    complete = [v for v in merged.values() if v[0] >= fanout]
    lats = sorted((v[1] - v[2]) / 1e6 for v in complete)
    firsts = sorted((v[3] - v[2]) / 1e6 for v in complete)
    delivered = sum(st["delivered"] for st in stats)
    every = hist.merge(st["hist"] for st in stats)
    return {
        "rate_msgs_per_s": rate,
        "published": res["published"],
        "late_publishes": res["late"],
        "samples": len(lats),
        "p50_ms": round(pct(lats, 0.50), 3),
        "p99_ms": round(pct(lats, 0.99), 3),
        "max_ms": round(lats[-1], 3) if lats else None,
        "first_client_p50_ms": round(pct(firsts, 0.50), 3),
        # every delivery: each client's latency for each message (10 us buckets)
        "per_delivery_samples": hist.count(every),
        "per_delivery_p50_ms": round(hist.quantile_ms(every, 0.50), 3),
        "per_delivery_p99_ms": round(hist.quantile_ms(every, 0.99), 3),
        "per_delivery_max_ms": round(hist.quantile_ms(every, 1.0), 3),
        "per_delivery_hist": {str(k): v for k, v in sorted(every.items())},
        # in publish order, when there are few (it shows warm-up and stalls)
        "series_ms": [round((v[1] - v[2]) / 1e6, 1) for _, v in sorted(merged.items())]
        if len(merged) <= 200
        else None,
        "expected": expected,
        "delivered": delivered,
        "loss": expected - delivered,
        "drain_s": round(lat_drain, 2),
        "server_cpu_us_per_delivery": round(l_cpu / delivered * 1e6, 2) if delivered else None,
        "other_cpu_pct": l_other_pct,
    }


async def throughput(
    rig: Rig, pub_subjects: list[str], fanout: int, n: int, mode: Mode, proto: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Publish as fast as the target delivers for a window; the cell's throughput part,
    and the load generators' final counts. One more client (``proto``) pings meanwhile."""
    c_srv, c_nats = cpu_seconds(rig.sut_procs), cpu_seconds(rig.nats_procs)
    c_lg, c_pub = cpu_seconds(rig.lg_procs), cpu_seconds(rig.pub_procs)
    c_lg_each = [cpu_seconds([p]) for p in rig.lg_procs]
    me = psutil.Process()
    c_me, c_sys0 = cpu_seconds([me]), system_cpu()
    probe = Probe(rig.sut.url, rig.sut.headers, proto) if Probe.supported(proto) else None
    if probe is not None:
        await probe.start()
    d0 = rig.counters.total()
    w0 = time.monotonic()
    res = await rig.pub.ask(
        {
            "cmd": "throughput",
            "subjects": pub_subjects,
            "fanout": fanout,
            "budget": budget(n),
            "window_s": mode.throughput_s,
        },
        mode.throughput_s + 60,
    )
    d1 = rig.counters.total()
    window = time.monotonic() - w0
    probed = await probe.stop() if probe is not None else None
    c_srv, c_nats = cpu_seconds(rig.sut_procs) - c_srv, cpu_seconds(rig.nats_procs) - c_nats
    c_lg, c_pub = cpu_seconds(rig.lg_procs) - c_lg, cpu_seconds(rig.pub_procs) - c_pub
    c_lg_each = [cpu_seconds([p]) - c for p, c in zip(rig.lg_procs, c_lg_each, strict=True)]
    c_me, c_sys1 = cpu_seconds([me]) - c_me, system_cpu()
    c_procs, c_irq, c_steal = (b - a for a, b in zip(c_sys0, c_sys1, strict=True))
    ours = c_srv + (c_nats if rig.sut.server else 0.0) + c_lg + c_pub + c_me
    expected = res["published"] * fanout
    tp_drain = await drain(rig.counters, expected + d0, mode.drain_s)
    stats = await rig.collect()
    delivered_total = sum(st["delivered"] for st in stats)
    frames = sum(st["frames"] for st in stats)
    wire, plain = (sum(st.get(k, 0) for st in stats) for k in ("wire_bytes", "plain_bytes"))
    in_window = d1 - d0
    server_cpu = c_srv + (c_nats if rig.sut.server else 0.0)
    part = {
        "window_s": round(window, 3),
        "published": res["published"],
        "publish_rate": round(res["published"] / res["elapsed"], 1),
        "delivered_in_window": in_window,
        "delivered_per_s": round(in_window / window, 1),
        "budget_deliveries": budget(n),
        "last_budget": res["last_budget"],
        "publisher_waits": res["waits"],
        "expected": expected,
        "delivered": delivered_total,
        "loss": expected - delivered_total,
        "drain_s": round(tp_drain, 2),
        "deliveries_per_frame": round(delivered_total / frames, 1) if frames else None,
        # natsgate: frame payloads as they came off the wire, and inflated (permessage-deflate)
        "wire_bytes": wire,
        "plain_bytes": plain,
        "wire_ratio": round(wire / plain, 3) if plain else None,
        "server_cpu_s": round(server_cpu, 3),
        "target_cpu_s": round(c_srv, 3),
        "nats_server_cpu_s": round(c_nats, 3),
        "server_cpu_us_per_delivery": round(server_cpu / in_window * 1e6, 3) if in_window else None,
        "server_cpu_pct": round(100 * server_cpu / window, 1),
        "loadgen_cpu_pct": round(100 * c_lg / window, 1),
        "loadgen_cpu_pct_max_process": round(100 * max(c_lg_each) / window, 1),
        "publisher_cpu_pct": round(100 * c_pub / window, 1),
        "machine_busy_pct": round(100 * (c_procs + c_irq + c_steal) / window, 1),
        # the kernel's interrupt work: mostly moving the benchmark's loopback traffic
        "softirq_cpu_pct": round(100 * c_irq / window, 1),
        # everything else (other people's tests, other virtual machines): the busy
        # process time of the whole machine minus the benchmark's own, plus steal
        "other_cpu_pct": round(max(0.0, 100 * (c_procs - ours + c_steal) / window), 1),
        # one more client's ping round trips meanwhile (bench/probe.py)
        "probe": probed,
    }
    return part, stats


def connections_at_end(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """What became of the clients by the end: disconnects, close codes, still open."""
    return {
        "disconnects": sum(st["disconnects"] for st in stats),
        "close_codes": merge_counts(st["close_reasons"] for st in stats),
        "still_open": sum(st["open"] for st in stats),
    }


async def run_cell(
    t: Target,
    workload: str,
    n: int,
    mode: Mode,
    opts: CellOptions,
    run_dir: Path,
    profile_to: Path | None = None,
    gc_probe: bool = False,
    profile_latency_to: Path | None = None,
) -> dict[str, Any]:
    """``profile_to``: py-spy the gateway's throughput window into that file;
    ``profile_latency_to``: its latency phase (at 1,000 Hz: the phase is mostly idle)."""
    cell: dict[str, Any] = {
        "natsgate_code": natsgate_code(opts.natsgate_src) if t.kind == "natsgate" else None,
        "target": t.name,
        "workload": workload,
        "subscribers": n,
        "subjects": 1 if workload == "fanout" else n,
    }
    distinct = workload == "distinct"
    subjects = [f"bench.d.{i}" for i in range(n)] if distinct else ["bench.fan"] * n
    fanout = 1 if distinct else n
    pub_subjects = sorted(set(subjects)) if distinct else ["bench.fan"]
    cell_dir = Path(tempfile.mkdtemp(prefix=f"{t.name}-{workload}-{n}-", dir=run_dir))
    stack = contextlib.ExitStack()
    children: list[Child] = []
    t_cell = time.monotonic()
    gc_probe = gc_probe or opts.gc_probe
    try:
        rig = await start_rig(t, n, opts, cell_dir, stack, children, gc_probe)
        await asyncio.sleep(mode.settle_s)
        rss_before = rss_bytes(rig.sut_procs)
        cell["setup"] = await set_up(rig, t.proto, subjects, opts.concurrency)
        if cell["setup"]["connected"] < n:
            cell["error"] = (
                f"only {cell['setup']['connected']} of {n} clients subscribed: "
                f"{cell['setup']['errors']}"
            )
            return cell
        cell["memory"] = await idle_memory(rig, n, rss_before, mode)
        lat_profiler = None
        if profile_latency_to is not None and rig.sut.server is not None:
            lat_profiler = start_profiler(
                rig.sut.server, profile_latency_to, mode.latency_s, cell_dir, rate=1000
            )
            await asyncio.sleep(1.0)  # let py-spy attach before the phase starts
        cell["latency"] = await latency(rig, pub_subjects, fanout, distinct, mode)
        if lat_profiler is not None:
            cell["latency_profile"] = await finish_profiler(lat_profiler, profile_latency_to)  # type: ignore[arg-type]
        await rig.loadgens_latency(False)
        rig.refresh()  # workers may have moved
        profiler = None
        if profile_to is not None and rig.sut.server is not None:
            profiler = start_profiler(rig.sut.server, profile_to, mode.throughput_s, cell_dir)
            await asyncio.sleep(1.0)  # let py-spy attach before the window opens
        cell["throughput"], stats = await throughput(rig, pub_subjects, fanout, n, mode, t.proto)
        if profiler is not None:
            cell["profile"] = await finish_profiler(profiler, profile_to)  # type: ignore[arg-type]
        if gc_probe and t.kind == "natsgate" and rig.sut.server is not None:
            cell["gc"] = gc_pauses(rig.sut.server.log)
        cell.update(connections_at_end(stats))
        return cell
    except (ChildDied, AssertionError, OSError, TimeoutError) as exc:
        cell["error"] = f"{type(exc).__name__}: {exc}"[:600]
        return cell
    finally:
        for c in children:
            with contextlib.suppress(Exception):
                await c.stop()
        stack.close()
        cell["cell_seconds"] = round(time.monotonic() - t_cell, 1)
        if not opts.keep:
            shutil.rmtree(cell_dir, ignore_errors=True)


def pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def merge_latencies(stats: list[dict[str, Any]]) -> dict[int, list[int]]:
    """Per sequence number over all load generators: [clients that got it, last arrival,
    publish time, first arrival] (ns)."""
    merged: dict[int, list[int]] = {}
    for st in stats:
        for s, (cnt, last, tp, first) in st["lat"].items():
            m = merged.setdefault(int(s), [0, 0, tp, first])
            m[0] += cnt
            m[1] = max(m[1], last)
            m[3] = min(m[3], first)
    return merged


def merge_counts(items: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in items:
        for kk, v in d.items():
            out[kk] = out.get(kk, 0) + v
    return out


async def drain(counters: Counters, expected: int, limit_s: float) -> float:
    """Wait until the clients counted ``expected`` deliveries, ``limit_s`` seconds pass
    without progress, or 60 s in all; returns the seconds waited."""
    start = last_t = time.monotonic()
    last = -1
    while time.monotonic() - start < max(60.0, limit_s * 4):
        got = counters.total()
        if got >= expected:
            break
        if got != last:
            last, last_t = got, time.monotonic()
        elif time.monotonic() - last_t > limit_s:
            break
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def summary_line(cell: dict[str, Any]) -> str:
    """One line per cell for the terminal."""
    if "error" in cell:
        return f"ERROR {cell['error'][:200]}"
    s, m, la, tp = cell["setup"], cell["memory"], cell["latency"], cell["throughput"]
    return (
        f"{s['conns_per_s']:>8.0f} conn/s {m['per_conn_bytes'] / 1024:6.1f} KiB/conn "
        f"p50 {la['p50_ms']:7.2f} p99 {la['p99_ms']:7.2f} ms "
        f"(each {la['per_delivery_p50_ms']:.2f}/{la['per_delivery_p99_ms']:.2f}) "
        f"loss {la['loss']} | "
        f"{tp['delivered_per_s']:>10.0f} msg/s pub {tp['publish_rate']:>8.0f}/s "
        f"{tp['server_cpu_us_per_delivery']:6.2f} us/dlv loss {tp['loss']} "
        f"lg {tp['loadgen_cpu_pct']:.0f}% other {noise(cell):.0f}% ({cell['cell_seconds']}s)"
        + _probe_note(tp.get("probe"))
    )


def _probe_note(probe: dict[str, Any] | None) -> str:
    if not probe:
        return ""
    if probe.get("error") or not probe.get("answers"):
        return f" probe: {probe.get('error') or 'no answers'}"
    return f" ping {probe['p50_ms']:.1f}/{probe['p99_ms']:.1f}/{probe['max_ms']:.1f} ms"
