"""How many connections one machine holds: ``python -m bench.scale --connections 100000
--workers 2 --seconds 60``.

Starts nats-server (the bundled one) and ``natsgate serve --workers W`` (SO_REUSEPORT),
opens N WebSocket clients from ``bench/scaleclient.py`` processes at a bounded rate, spread
over loopback source addresses 127.0.0.2-127.0.0.9 (one address's ephemeral ports would
not do), each subscribed to one shared subject and to one of its own; then publishes one
broadcast a second (sequence number + publish time) and checks that every connection got
every sequence number. At the end, one message to each connection's own subject.

Limits: RLIMIT_NOFILE is raised to its hard limit in every process (children inherit it);
sysctls only as root, only when the run needs more than they allow, each one printed and
restored on the way out. The gateway runs with ``MAX_CONNS_PER_USER=0`` (every client is
the bench user) and ``MAX_CONNS_PER_IP=0``.

Results: ``bench/results/scale-<UTC time>.json`` and a short table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import install_uvloop, payload
from bench.machine import machine
from bench.procs import REGISTRY, Child, cpu_seconds, kill_leftovers
from bench.settings import BUCKET_US, RESULTS
from bench.sut import Target, natsgate_code, start_target

BCAST = "bench.bcast.all"
OWN = "bench.user."
ADDRS = [f"127.0.0.{i}" for i in range(2, 10)]
PER_PROCESS = 12_500  # clients per client process (each under the fd limit, 20,000 here)
FD_RESERVE = 100  # descriptors a gateway worker holds besides its clients


# ------------------------------------------------------------------ limits


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return " ".join(sysctl_path(name).read_text().split())
    except OSError:
        return None


def needed_sysctls(n: int, addrs: int) -> dict[str, str]:
    """The sysctls this run needs raised, with their new values (none when the current
    ones suffice)."""
    want: dict[str, str] = {}
    ports = read_sysctl("net.ipv4.ip_local_port_range")
    if ports:
        lo, hi = (int(x) for x in ports.split())
        if (hi - lo) * addrs < n * 1.2:
            want["net.ipv4.ip_local_port_range"] = "1024 65535"
    ct = read_sysctl("net.netfilter.nf_conntrack_max")
    if ct and int(ct) < n * 1.3 + 10_000:  # one entry per loopback connection
        want["net.netfilter.nf_conntrack_max"] = str(int(n * 2 + 10_000))
    return want


class Sysctls:
    """Set sysctls as root, print each change, put every one back."""

    def __init__(self) -> None:
        self.saved: dict[str, str] = {}
        self.changed: list[dict[str, str]] = []

    def apply(self, want: dict[str, str]) -> list[str]:
        refused = []
        for name, value in want.items():
            old = read_sysctl(name)
            if old is None or os.geteuid() != 0:
                refused.append(f"{name}: needs {value}, is {old} (not root: not changed)")
                continue
            try:
                sysctl_path(name).write_text(value)
            except OSError as exc:
                refused.append(f"{name}: needs {value}, is {old} ({exc})")
                continue
            self.saved[name] = old
            self.changed.append({"name": name, "from": old, "to": value})
            print(f"sysctl {name}: {old} -> {value} (restored at the end)", flush=True)
        return refused

    def restore(self) -> None:
        for name, old in self.saved.items():
            with contextlib.suppress(OSError):
                sysctl_path(name).write_text(old)
                print(f"sysctl {name}: restored to {old}", flush=True)
        self.saved.clear()


def raise_nofile() -> tuple[int, int, int]:
    """Soft RLIMIT_NOFILE to the hard limit (children inherit it): (before, soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, *resource.getrlimit(resource.RLIMIT_NOFILE)


def sockstat() -> str:
    """The kernel's TCP socket count and memory (``mem`` in pages) on this machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                return line
    return ""


def usable_addrs(addrs: list[str]) -> list[str]:
    ok = []
    for a in addrs:
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind((a, 0))
            ok.append(a)
    return ok


def utc_today(hhmm: str) -> float:
    """``HH:MM`` UTC today, as a Unix time."""
    h, m = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    return time.mktime((now.tm_year, now.tm_mon, now.tm_mday, h, m, 0, 0, 0, 0)) - (
        time.mktime(time.gmtime(0))
    )


async def wait_quiet(max_load: float, wait_s: float, start_by: str | None) -> float:
    """Wait (at most ``wait_s``, and not past ``start_by`` UTC) for a 1-minute load average
    under ``max_load``; a shared machine that stays busier than that is not measured."""
    end = time.time() + wait_s
    if start_by:
        end = min(end, utc_today(start_by))
    while (load := os.getloadavg()[0]) >= max_load:
        if time.time() >= end:
            raise SystemExit(f"not started: load {load:.2f} >= {max_load} until the deadline")
        print(f"{time.strftime('%X')} load {load:.2f} >= {max_load}: waiting", flush=True)
        await asyncio.sleep(10)
    if start_by and time.time() > utc_today(start_by):
        raise SystemExit(f"not started: past --start-by {start_by} UTC")
    return load


# ------------------------------------------------------------------ figures


def pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def hist_pct(hist: dict[int, int], q: float) -> float:
    """The q-quantile of a latency histogram, in ms (the bucket's upper edge)."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    seen, rank = 0, q * total
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return (b + 1) * BUCKET_US / 1000
    return (max(hist) + 1) * BUCKET_US / 1000


class CpuClock:
    """CPU seconds of named processes between two marks, as % of one core."""

    def __init__(self, procs: dict[str, list[psutil.Process]]) -> None:
        self.procs = procs
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(v) for k, v in procs.items()}
        self.m0 = psutil.cpu_times()

    def read(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        out = {k: round(100 * (cpu_seconds(v) - self.c0[k]) / dt, 1) for k, v in self.procs.items()}
        m1 = psutil.cpu_times()
        busy = sum(m1) - m1.idle - m1.iowait - (sum(self.m0) - self.m0.idle - self.m0.iowait)
        out["machine_busy"] = round(100 * busy / dt, 1)
        ours = sum(v for k, v in out.items() if k != "machine_busy" and not is_one_client(k))
        out["others"] = round(out["machine_busy"] - ours, 1)  # processes not of this run
        return out


def is_one_client(name: str) -> bool:
    """``client3``: one of the client processes, already in ``clients``."""
    return name.startswith("client") and name[-1].isdigit()


def rss(p: psutil.Process) -> int:
    with contextlib.suppress(psutil.Error):
        return int(p.memory_info().rss)
    return 0


def fds(p: psutil.Process) -> int:
    with contextlib.suppress(psutil.Error):
        return int(p.num_fds())
    return 0


# ------------------------------------------------------------------ the run


async def ask_all(clients: list[Child], cmds: list[dict[str, Any]], wait_s: float) -> list[Any]:
    for c, cmd in zip(clients, cmds, strict=True):
        await c.send(cmd)
    return list(await asyncio.gather(*(c.recv(wait_s) for c in clients)))


async def collect(clients: list[Child], last: int) -> dict[str, Any]:
    stats = await ask_all(clients, [{"cmd": "collect", "last": last}] * len(clients), 120)
    per_seq: dict[int, list[int]] = {}
    hist: dict[int, int] = {}
    for st in stats:
        for k, (cnt, last_ns, pub_ns, first_ns) in st["per_seq"].items():
            e = per_seq.setdefault(int(k), [0, 0, pub_ns, first_ns])
            e[0] += cnt
            e[1] = max(e[1], last_ns)
            e[3] = min(e[3], first_ns)
        for k, v in st["hist"].items():
            hist[int(k)] = hist.get(int(k), 0) + v
    keys = (
        "clients",
        "open",
        "delivered",
        "clients_short",
        "missing",
        "dups",
        "own_got",
        "own_clients",
        "disconnects",
    )
    out: dict[str, Any] = {k: sum(st[k] for st in stats) for k in keys}
    codes: dict[str, int] = {}
    for st in stats:
        for k, v in st["close_codes"].items():
            codes[k] = codes.get(k, 0) + v
    out.update(close_codes=codes, per_seq=per_seq, hist=hist)
    return out


async def run(a: argparse.Namespace) -> dict[str, Any]:
    from natsgate.natsrunner import NatsServer

    n, w = a.connections, a.workers
    res: dict[str, Any] = {"connections": n, "workers": w, "seconds": a.seconds}
    res["load_before"] = round(await wait_quiet(a.max_load, a.wait_load, a.start_by), 2)
    res["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    before, soft, hard = raise_nofile()
    res["limits"] = {"nofile_before": before, "nofile_soft": soft, "nofile_hard": hard}
    per_worker = math.ceil(n / w)
    if per_worker + FD_RESERVE > hard:
        res["limits"]["warning"] = (
            f"RLIMIT_NOFILE hard limit {hard} < {per_worker + FD_RESERVE} descriptors a worker "
            f"needs for {per_worker} clients: at most ~{w * (hard - FD_RESERVE)} fit in {w} workers"
        )
        print("WARNING:", res["limits"]["warning"], flush=True)
    addrs = usable_addrs(ADDRS[: a.addrs])
    res["source_addrs"] = addrs
    sysctls = Sysctls()
    res["sysctls_refused"] = sysctls.apply(needed_sysctls(n, len(addrs)))
    res["sysctls_changed"] = sysctls.changed
    res["sysctls_seen"] = {
        k: read_sysctl(k)
        for k in (
            "net.core.somaxconn",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_max_syn_backlog",
            "net.netfilter.nf_conntrack_max",
            "fs.file-max",
            "fs.nr_open",
            "net.ipv4.tcp_mem",
        )
    }
    children: list[Child] = []
    stack = contextlib.ExitStack()
    tmp = Path(tempfile.mkdtemp(prefix="natsgate-scale-"))
    nc: Any = None
    try:
        nats = NatsServer(
            store_dir=tmp / "js",
            port=-1,
            http_port=None,
            websocket_port=None,
            log_file=tmp / "nats-server.log",
        ).start()
        stack.callback(nats.stop)
        REGISTRY.add(nats.proc.pid)  # type: ignore[union-attr]
        nats_p = psutil.Process(nats.proc.pid)  # type: ignore[union-attr]
        target = Target(f"natsgate-w{w}", "natsgate", "natsgate", w)
        os.environ["MAX_CONNS_PER_IP"] = "0"
        sut = await start_target(target, nats, tmp, stack)
        assert sut.server is not None
        tree = sut.server.tree()
        sup, workers = tree[0], (tree[1:] or tree[:1])
        rss0 = {p.pid: rss(p) for p in tree}
        nproc = a.clients or max(2, math.ceil(n / PER_PROCESS))
        for i in range(nproc):
            children.append(
                await Child.start(f"client{i}", [sys.executable, "-m", "bench.scaleclient"], tmp)
            )
        for c in children:
            assert (await c.recv(30))["ev"] == "ready"
        cprocs = [psutil.Process(c.pid) for c in children]
        procs = {
            "supervisor": [sup],
            "nats_server": [nats_p],
            "clients": cprocs,
            "orchestrator": [psutil.Process()],
        }
        procs.update({f"worker{i}": [p] for i, p in enumerate(workers)})
        procs.update({f"client{i}": [p] for i, p in enumerate(cprocs)})

        # connect
        share = [n // nproc + (1 if i < n % nproc else 0) for i in range(nproc)]
        firsts = [sum(share[:i]) for i in range(nproc)]
        cmds = [
            {
                "cmd": "connect",
                "url": sut.url,
                "headers": sut.headers,
                "addrs": addrs,
                "first": firsts[i],
                "count": share[i],
                "rate": a.rate / nproc,
                "concurrency": max(1, a.concurrency // nproc),
                "subject": BCAST,
                "own_prefix": None if a.no_own else OWN,
                "max_failed": math.ceil(a.max_failed / nproc) if a.max_failed else 0,
            }
            for i in range(nproc)
        ]
        print(f"connecting {n} clients from {nproc} processes at {a.rate}/s ...", flush=True)
        clock = CpuClock(procs)
        conn = await ask_all(children, cmds, n / a.rate + 600)
        connected = sum(c["ok"] for c in conn)
        secs = max(c["t1"] for c in conn) - min(c["t0"] for c in conn)
        errors: dict[str, int] = {}
        for c in conn:
            for k, v in c["errors"].items():
                errors[k] = errors.get(k, 0) + v
        res["connect"] = {
            "connected": connected,
            "failed": sum(c["failed"] for c in conn),
            "not_tried": sum(c["skipped"] for c in conn),
            "errors": errors,
            "seconds": round(secs, 1),
            "per_s": round(connected / secs, 1) if secs else None,
            "cpu_pct": clock.read(),
        }
        print(json.dumps(res["connect"]), flush=True)
        await asyncio.sleep(a.settle)
        tree = sut.server.tree()
        res["memory"] = {
            "workers": [
                {
                    "pid": p.pid,
                    "rss_before_mib": round(rss0.get(p.pid, 0) / 2**20, 1),
                    "rss_idle_mib": round(rss(p) / 2**20, 1),
                    "fds": fds(p),
                }
                for p in workers
            ],
            "supervisor_rss_mib": round(rss(sup) / 2**20, 1),
            "nats_server_rss_mib": round(rss(nats_p) / 2**20, 1),
            "clients_rss_mib": round(sum(rss(p) for p in cprocs) / 2**20, 1),
            "machine_available_gib": round(psutil.virtual_memory().available / 2**30, 2),
            "conntrack_count": read_sysctl("net.netfilter.nf_conntrack_count"),
            "sockstat": sockstat(),
        }
        grown = sum(rss(p) - rss0.get(p.pid, 0) for p in workers)
        res["memory"]["kib_per_conn"] = round(grown / 1024 / connected, 2) if connected else None
        print(json.dumps(res["memory"]), flush=True)

        # broadcast, one a second
        import nats as nats_py

        nc = await nats_py.connect(nats.url, name="bench-scale", max_reconnect_attempts=0)
        clock = CpuClock(procs)
        start = time.monotonic()
        late = 0
        for seq in range(1, a.seconds + 1):
            if (delay := start + seq - 1 - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                late += 1
            await nc.publish(BCAST, payload(seq, time.time_ns()))
            await nc.flush(timeout=5)
            if seq % 10 == 0:
                print(f"broadcast {seq}/{a.seconds}", flush=True)
        await asyncio.sleep(1.0)
        cpu = clock.read()
        expected = connected * a.seconds
        deadline = time.monotonic() + 60
        while True:
            got = await collect(children, a.seconds)
            if got["delivered"] >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        per_seq = got["per_seq"]
        to_last = sorted((e[1] - e[2]) / 1e6 for e in per_seq.values())
        to_first = sorted((e[3] - e[2]) / 1e6 for e in per_seq.values())
        hist = got["hist"]
        res["broadcast"] = {
            "published": a.seconds,
            "late_publishes": late,
            "expected": expected,
            "delivered": got["delivered"],
            "loss": expected - got["delivered"],
            "clients_short": got["clients_short"],
            "dups": got["dups"],
            "seqs_reaching_all": sum(1 for e in per_seq.values() if e[0] == connected),
            "to_last_ms": {
                "p50": round(pct(to_last, 0.5), 1),
                "p99": round(pct(to_last, 0.99), 1),
                "max": round(to_last[-1], 1) if to_last else None,
            },
            "to_first_ms_p50": round(pct(to_first, 0.5), 2),
            # publish -> last client, broadcast by broadcast: steady, or falling behind?
            "to_last_ms_series": [
                round((per_seq[k][1] - per_seq[k][2]) / 1e6) for k in sorted(per_seq)
            ],
            "per_delivery_ms": {
                "p50": hist_pct(hist, 0.5),
                "p99": hist_pct(hist, 0.99),
                "max": hist_pct(hist, 1.0),
                "samples": sum(hist.values()),
            },
            "cpu_pct": cpu,
            "worker_rss_mib": [round(rss(p) / 2**20, 1) for p in workers],
            "open_after": got["open"],
            "disconnects": got["disconnects"],
            "close_codes": got["close_codes"],
        }

        # one message to each connection's own subject
        if not a.no_own:
            t0 = time.monotonic()
            for i in range(n):
                await nc.publish(f"{OWN}{i}", b'{"own":1}')
                if i % 1000 == 999:
                    await nc.flush(timeout=10)
            await nc.flush(timeout=10)
            deadline = time.monotonic() + 60
            while True:
                got = await collect(children, a.seconds)
                if got["own_clients"] >= connected or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            res["own_subjects"] = {
                "published": n,
                "clients_got_theirs": got["own_clients"],
                "received": got["own_got"],
                "seconds": round(time.monotonic() - t0, 2),
            }
        log = sut.server.log.read_text(errors="replace")
        res["gateway_log"] = {
            "lines": log.count("\n"),
            "emfile": log.count("Too many open files") + log.count("Errno 24"),
            "tracebacks": log.count("Traceback"),
            "tail": log[-1500:],
        }
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        for c in children:
            with contextlib.suppress(Exception):
                await c.send({"cmd": "close"})
        for c in children:
            with contextlib.suppress(Exception):
                await c.stop()
        stack.close()
        kill_leftovers()
        shutil.rmtree(tmp / "js", ignore_errors=True)  # the logs stay for a look
        sysctls.restore()
    res["load_after"] = round(os.getloadavg()[0], 2)
    return res


def table(r: dict[str, Any]) -> str:
    c, m, b = r["connect"], r["memory"], r.get("broadcast", {})
    cpu = b.get("cpu_pct", {})
    rows = [
        (
            "connections",
            f"{c['connected']:,} of {r['connections']:,} ({c['failed']} failed, "
            f"{c['not_tried']} not tried)",
        ),
        (
            "workers",
            f"{r['workers']} (RSS idle "
            + ", ".join(f"{x['rss_idle_mib']} MiB/{x['fds']} fds" for x in m["workers"])
            + ")",
        ),
        ("KiB per connection", f"{m['kib_per_conn']}"),
        ("connect", f"{c['seconds']} s, {c['per_s']}/s"),
        (
            "broadcasts",
            f"{b.get('published')} x {c['connected']:,}: loss {b.get('loss')}, "
            f"clients short {b.get('clients_short')}",
        ),
        (
            "publish -> last client",
            "p50 {p50} / p99 {p99} / max {max} ms".format(**b.get("to_last_ms", {})),
        ),
        (
            "per delivery",
            "p50 {p50} / p99 {p99} / max {max} ms".format(**b.get("per_delivery_ms", {})),
        ),
        (
            "CPU % (broadcast)",
            ", ".join(
                f"{k} {v}" for k, v in cpu.items() if not k.startswith("client") or k == "clients"
            ),
        ),
    ]
    if "own_subjects" in r:
        o = r["own_subjects"]
        rows.append(
            (
                "own subjects",
                f"{o['clients_got_theirs']:,} of {c['connected']:,} clients got theirs",
            )
        )
    return "\n".join(f"{k:<24} {v}" for k, v in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=60, help="broadcasts, one a second")
    ap.add_argument("--rate", type=float, default=2000, help="new connections a second, at most")
    ap.add_argument("--concurrency", type=int, default=256, help="set-ups in flight, at most")
    ap.add_argument("--clients", type=int, default=0, help="client processes (0: 1 per 12,500)")
    ap.add_argument("--addrs", type=int, default=len(ADDRS), help="source addresses to use")
    ap.add_argument(
        "--max-failed",
        type=int,
        default=1000,
        help="stop opening after so many failures (0: never)",
    )
    ap.add_argument("--no-own", action="store_true", help="no per-connection subject")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--max-load", type=float, default=99.0, help="wait for a lower load average")
    ap.add_argument("--wait-load", type=float, default=600.0)
    ap.add_argument("--start-by", default=None, help="HH:MM UTC: do not start after it")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    install_uvloop()
    res = {"machine": machine(), "natsgate_code": natsgate_code(None), **asyncio.run(run(a))}
    out = a.out or RESULTS / f"scale-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
