"""natsgate's benchmark, one command: ``python -m bench.run [--quick]``.

For every target and workload ("cell") it starts, each in its own process: a fresh
nats-server (JetStream on, temporary store), the system under test, one publisher (nats-py)
and ``--loadgens`` load generators (picows + uvloop, thousands of clients each), and
measures set-up, idle memory, latency and throughput (``bench/cell.py``). Then everything
of the cell is stopped, and the next cell starts from scratch. Results go to
``bench/results/<timestamp>.json`` and ``bench/results/latest.json``; the tables and plots
in ``docs/benchmarks.md`` are regenerated (``bench/report.py``).

This module is the command line and the run's plan: which cells, in what order, measured
once more when the machine was noisy, and the diagnostic cells (py-spy, GC probe). The
rest is by concern: ``settings`` (modes, paths, options), ``procs`` (processes),
``sut`` (the targets), ``cell`` (one cell's phases), ``profiling``, ``machine``.

Every loop is bounded in count and time; every process started here is stopped on the way
out, also on Ctrl-C, SIGTERM and errors (and dies with this one if it is killed: the
children get PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cell import run_cell, summary_line
from bench.common import CHAT, install_uvloop, raise_nofile
from bench.machine import machine, noise, wait_quiet
from bench.procs import kill_leftovers
from bench.settings import COMPRESSION, DOCS, FULL, QUICK, RESULTS, ROOT, CellOptions, Mode
from bench.sut import TARGETS, Target, workers_supported


def cell_options(args: argparse.Namespace) -> CellOptions:
    return CellOptions(
        loadgens=args.loadgens,
        concurrency=args.concurrency,
        gc_probe=args.gc_probe,
        keep=args.keep,
        natsgate_src=args.natsgate_src,
    )


def natsgate_src_label(args: argparse.Namespace) -> str:
    return str(args.natsgate_src) if args.natsgate_src else "src/ of this checkout"


async def diagnostics(
    mode: Mode, args: argparse.Namespace, run_dir: Path, result: dict[str, Any]
) -> None:
    """Diagnostic cells, kept apart from the measurements: py-spy (and the GC probe) at
    1,000 subscribers; the GC probe alone at the largest size."""
    diag: list[dict[str, Any]] = []
    sizes = sorted({1000, max(mode.sizes)})
    for n in sizes:
        out = RESULTS / f"profile-natsgate-{n}.speedscope.json" if n == 1000 else None
        what = "py-spy + GC probe" if out else "GC probe"
        cell = await diagnostic_cell(
            f"{n:>6} ({what})", what, n, mode, args, run_dir, profile_to=out, gc_probe=True
        )
        diag.append(cell)
        if out is not None:
            result["profile"] = cell
    result["diagnostics"] = diag


async def diagnostic_cell(
    label: str,
    what: str,
    n: int,
    mode: Mode,
    args: argparse.Namespace,
    run_dir: Path,
    **probes: Any,
) -> dict[str, Any]:
    """One natsgate fan-out cell with ``probes`` (run_cell's profiler and GC options),
    started once the machine is quiet, said on the terminal and marked as a diagnostic."""
    print(f"[{time.strftime('%H:%M:%S')}] diagnostic: natsgate {label} ...", end=" ", flush=True)
    before = await wait_quiet(args.noisy, args.quiet_wait)
    cell = await run_cell(
        TARGETS["natsgate"], "fanout", n, mode, cell_options(args), run_dir, **probes
    )
    cell["diagnostic"] = what
    cell["before"] = before
    print(summary_line(cell), flush=True)
    return cell


async def latency_profile(
    mode: Mode, args: argparse.Namespace, run_dir: Path, result: dict[str, Any]
) -> None:
    """``--profile-latency``: one more natsgate cell at 1,000 subscribers on one subject
    with py-spy on its latency phase (where a burst's time goes, socket by socket)."""
    out = RESULTS / "profile-natsgate-1000-latency.speedscope.json"
    result["latency_profile"] = await diagnostic_cell(
        "  1000 (py-spy, latency)",
        "py-spy on the latency phase",
        1000,
        mode,
        args,
        run_dir,
        profile_latency_to=out,
    )


async def diagnostics_only(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """``--diagnostics-only``: run the diagnostic cells again into an existing results file
    (for instance against the same natsgate source as its tables, with --natsgate-src)."""
    params = result["meta"]["params"]
    mode = dataclasses.replace(
        QUICK if result["meta"]["mode"] == "quick" else FULL,
        sizes=tuple(params["sizes"]),
        latency_s=params["latency_s"],
        throughput_s=params["throughput_s"],
    )
    raise_nofile(65_536)
    run_dir = Path(tempfile.mkdtemp(prefix="natsgate-bench-"))
    try:
        await diagnostics(mode, args, run_dir, result)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    result["meta"]["diagnostics_command"] = "python -m bench.run " + (args.command_line or "")
    result["meta"]["diagnostics_at"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result["meta"]["diagnostics_natsgate_src"] = natsgate_src_label(args)
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    mode = QUICK if args.quick else FULL
    if args.sizes:
        mode = dataclasses.replace(mode, sizes=tuple(args.sizes))
    if args.distinct is not None:
        mode = dataclasses.replace(mode, distinct=args.distinct)
    if args.latency_s is not None:
        mode = dataclasses.replace(mode, latency_s=args.latency_s)
    if args.throughput_s is not None:
        mode = dataclasses.replace(mode, throughput_s=args.throughput_s)
    names = args.targets or list(TARGETS)
    opts = cell_options(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    nofile = raise_nofile(65_536)
    started = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    result: dict[str, Any] = {
        "meta": {
            "timestamp": stamp,
            "mode": mode.name,
            "command": "python -m bench.run"
            + ("" if args.command_line is None else " " + args.command_line),
            "machine": machine(),
            "nofile": nofile,
            "natsgate_src": natsgate_src_label(args),
            "params": {
                "sizes": list(mode.sizes),
                "distinct": mode.distinct,
                "latency_s": mode.latency_s,
                "throughput_s": mode.throughput_s,
                "drain_s": mode.drain_s,
                "loadgens": args.loadgens,
                "concurrency": args.concurrency,
                "payload_bytes": 100,
                "payload": "chat" if CHAT else "padded",
                "compression": COMPRESSION,
            },
        },
        "targets": {},
        "cells": [],
    }
    ok, why = workers_supported()
    for name in names:
        t = TARGETS[name]
        avail = not (t.workers > 1 and not ok)
        result["targets"][name] = {
            "label": t.label + (compression_note(t) if t.deflate else ""),
            "available": avail,
            "why": "" if avail else why,
        }
    run_dir = Path(tempfile.mkdtemp(prefix="natsgate-bench-"))
    try:
        plan: list[tuple[str, int]] = [("fanout", n) for n in mode.sizes]
        if mode.distinct:
            plan.append(("distinct", mode.distinct))
        deadline = time.monotonic() + args.max_minutes * 60
        for workload, n in plan:
            for name in names:
                t = TARGETS[name]
                if not result["targets"][name]["available"]:
                    continue
                if time.monotonic() > deadline:
                    result["cells"].append(
                        {
                            "target": name,
                            "workload": workload,
                            "subscribers": n,
                            "error": "skipped: time limit",
                        }
                    )
                    continue
                print(
                    f"[{time.strftime('%H:%M:%S')}] {t.name:12} {workload:8} {n:>6} ...",
                    end=" ",
                    flush=True,
                )
                before = await wait_quiet(args.noisy, args.quiet_wait)
                cell = await run_cell(t, workload, n, mode, opts, run_dir)
                cell["before"] = before
                for _ in range(args.retries):
                    # a shared machine: when other people's processes took more than
                    # --noisy % of a core during the measurements, measure again and keep
                    # the quieter attempt
                    if noise(cell) <= args.noisy:
                        break
                    print(f"noisy ({noise(cell):.0f}% other CPU), again ...", end=" ", flush=True)
                    before = await wait_quiet(args.noisy, args.quiet_wait)
                    again = await run_cell(t, workload, n, mode, opts, run_dir)
                    again["before"] = before
                    tries = [*cell.get("attempts", [noise(cell)]), noise(again)]
                    if "error" not in again and noise(again) < noise(cell):
                        cell = again
                    cell["attempts"] = tries
                if t.workers > 1 and "error" in cell and cell.get("setup") is None:
                    result["targets"][name].update(available=False, why=cell["error"])
                result["cells"].append(cell)
                print(summary_line(cell), flush=True)
        if args.profile and "natsgate" in names:
            await diagnostics(mode, args, run_dir, result)
        if args.profile_latency:
            await latency_profile(mode, args, run_dir, result)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    result["meta"]["seconds"] = round(time.time() - started, 1)
    result["meta"]["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def compression_note(t: Target) -> str:
    """What compression means for a target's label."""
    if t.kind == "natsgate":
        return f", COMPRESSION={t.compressing}"
    if t.kind == "nats":
        return ", compression: true"
    return " (no compression)"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="about 2 minutes: 100 and 1,000 "
        "subscribers on one subject, 1,000 on distinct subjects, short windows",
    )
    ap.add_argument("--targets", nargs="+", choices=list(TARGETS), default=None)
    ap.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=None,
        help="subscriber counts on one subject (default: by mode)",
    )
    ap.add_argument(
        "--distinct",
        type=int,
        default=None,
        help="clients on as many distinct subjects (0: skip; full mode: 1000)",
    )
    ap.add_argument(
        "--latency-s", type=float, default=None, help="latency phase seconds (default: by mode)"
    )
    ap.add_argument(
        "--throughput-s",
        type=float,
        default=None,
        help="throughput window seconds (default: by mode)",
    )
    ap.add_argument("--loadgens", type=int, default=2, help="load generator processes")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=96,
        help="connection set-ups in flight, over all load generators",
    )
    ap.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy the gateway at 1,000 subscribers (default: on in full mode)",
    )
    ap.add_argument(
        "--profile-latency",
        action="store_true",
        help="one more natsgate cell at 1,000 subscribers with py-spy on its latency phase "
        "(bench/results/profile-natsgate-1000-latency.speedscope.json)",
    )
    ap.add_argument(
        "--noisy",
        type=float,
        default=30.0,
        help="other processes' CPU %% above which a cell is measured again",
    )
    ap.add_argument("--retries", type=int, default=1, help="re-measurements of a noisy cell")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait, before each cell, for the machine to be quiet "
        "(busy CPU under --noisy %%); 0: do not wait",
    )
    ap.add_argument("--max-minutes", type=float, default=45, help="skip cells after this")
    ap.add_argument(
        "--gc-probe",
        action="store_true",
        help="run natsgate under bench/gcprobe.py and report its GC pauses",
    )
    ap.add_argument(
        "--natsgate-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="benchmark the natsgate package under DIR (e.g. a `git archive` of "
        "a commit) instead of this checkout's src/",
    )
    ap.add_argument(
        "--diagnostics-only",
        action="store_true",
        help="only the diagnostic cells (py-spy, GC probe), into --into",
    )
    ap.add_argument(
        "--into",
        type=Path,
        default=RESULTS / "latest.json",
        help="the results file --diagnostics-only completes",
    )
    ap.add_argument("--keep", action="store_true", help="keep each cell's logs (in /tmp)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument(
        "--no-latest",
        action="store_true",
        help="do not overwrite bench/results/latest.json (a partial run's results file "
        "only; latest.json stays the last full run's)",
    )
    args = ap.parse_args(argv)
    if args.profile is None:
        args.profile = not args.quick
    if args.natsgate_src is not None:
        args.natsgate_src = args.natsgate_src.resolve()
    args.command_line = " ".join(argv if argv is not None else sys.argv[1:]) or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    install_uvloop()
    try:
        if args.diagnostics_only:
            previous = json.loads(args.into.read_text())
            result = asyncio.run(diagnostics_only(args, previous))
        else:
            result = asyncio.run(main_async(args))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        kill_leftovers()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result['meta']['timestamp']}.json"  # diagnostics-only: the same file
    text = json.dumps(result, indent=1)
    path.write_text(text)
    if not args.no_latest:
        (RESULTS / "latest.json").write_text(text)
    print(f"results: {path.relative_to(ROOT)}" + ("" if args.no_latest else " (and latest.json)"))
    if not args.no_docs:
        from bench.report import write_docs

        write_docs(result, DOCS, RESULTS)
        print(f"tables and plots: {DOCS.relative_to(ROOT)}, bench/results/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
