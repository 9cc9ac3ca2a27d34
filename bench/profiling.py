"""Looking inside the gateway during a cell: a py-spy profile of the throughput window
(summarised by ``bench/profile.py``), and the GC pauses ``bench/gcprobe.py`` logs."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import die_with_parent
from bench.procs import REGISTRY, Server, tail
from bench.settings import ROOT


def start_profiler(
    server: Server, out: Path, window: float, cell_dir: Path, rate: int = 200
) -> Any:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return None
    procs = server.tree()
    pid = procs[-1].pid if len(procs) > 1 else server.proc.pid
    log = open(cell_dir / "py-spy.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            pyspy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "speedscope",
            "--output",
            str(out),
            "--duration",
            str(int(window + 2)),
            "--rate",
            str(rate),
            "--nonblocking",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    REGISTRY.add(proc.pid)
    return (proc, log, cell_dir / "py-spy.log")


def _is_file(path: Path) -> bool:
    return path.is_file()


async def finish_profiler(handle: Any, out: Path) -> dict[str, Any]:
    proc, log, log_path = handle
    try:
        await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    REGISTRY.discard(proc.pid)
    log.close()
    if not _is_file(out):
        return {"error": tail(log_path, 600)}
    from bench.profile import summarize

    summary = summarize(out)
    (out.with_suffix("").with_suffix(".summary.json")).write_text(json.dumps(summary, indent=1))
    return {
        "file": str(out.relative_to(ROOT)),
        **{k: summary[k] for k in ("samples", "busy_seconds", "self_by_package")},
    }


def gc_pauses(log: Path) -> dict[str, Any]:
    """The gateway's full collections and long pauses, from bench/gcprobe.py's lines."""
    pauses = [
        (int(g), float(ms))
        for g, ms in re.findall(r"gcprobe: gen=(\d) ms=([\d.]+)", log.read_text(errors="replace"))
    ]
    full = [ms for g, ms in pauses if g == 2]
    return {
        "full_collections": len(full),
        "full_ms_max": max(full, default=0.0),
        "full_ms_total": round(sum(full), 1),
        "pauses_over_5ms": len([ms for _, ms in pauses if ms >= 5]),
        "pause_ms_max": max((ms for _, ms in pauses), default=0.0),
    }
