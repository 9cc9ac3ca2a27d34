"""The machine the benchmark runs on: its facts for the results file (CPU, versions, git
revision), its CPU time as a whole, and the noise of a shared machine (waiting until it is
quiet before a cell; how much other processes used during one)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bench.settings import ROOT


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in (
        "natsgate",
        "aiohttp",
        "nats-py",
        "msgspec",
        "uvloop",
        "python-socketio",
        "python-engineio",
        "picows",
        "psutil",
    ):
        with contextlib.suppress(PackageNotFoundError):
            versions[pkg] = version(pkg)
    with contextlib.suppress(Exception):
        from natsgate.natsrunner import find_binary

        out = subprocess.run(
            [find_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        versions["nats-server"] = out.split()[-1] if out else "?"
    rev = ""
    with contextlib.suppress(Exception):
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        rev += " (src/ modified)" if dirty else ""
    return {
        "cpu": model,
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git": rev,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def system_cpu() -> tuple[float, float, float]:
    """CPU seconds of the whole machine since boot, all cores: (processes, interrupts,
    steal). Interrupt time (softirq) is mostly the kernel moving the benchmark's own
    loopback traffic; steal is other virtual machines on the host."""
    t = psutil.cpu_times()
    procs = t.user + t.nice + t.system
    irq = getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return procs, irq, getattr(t, "steal", 0.0)


def system_busy() -> float:
    """Busy CPU seconds of the whole machine since boot, all cores."""
    return sum(system_cpu())


async def wait_quiet(limit_pct: float, max_wait_s: float) -> dict[str, float]:
    """Between cells nothing of the benchmark runs: wait until the machine's busy CPU has
    stayed under ``limit_pct`` (% of one core) for 2 s running, or ``max_wait_s``."""
    start = time.monotonic()
    quiet = 0
    last = 100.0 * psutil.cpu_count()
    while time.monotonic() - start < max_wait_s:
        b0, t0 = system_busy(), time.monotonic()
        await asyncio.sleep(1.0)
        last = 100 * (system_busy() - b0) / (time.monotonic() - t0)
        quiet = quiet + 1 if last <= limit_pct else 0
        if quiet >= 2:
            break
    return {"waited_s": round(time.monotonic() - start, 1), "busy_pct": round(last, 1)}


def noise(cell: dict[str, Any]) -> float:
    """CPU % (of one core) that processes outside the benchmark used during the latency
    phase or the throughput window, whichever was more; 0 for a failed cell."""
    if "throughput" not in cell:
        return 0.0
    return max(
        cell["throughput"].get("other_cpu_pct", 0.0), cell["latency"].get("other_cpu_pct", 0.0)
    )
