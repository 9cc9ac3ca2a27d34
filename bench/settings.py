"""What a benchmark run is asked to do: where things go, the two modes (their sizes and
windows), the options every cell shares, and the rates and bounds derived from them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"

# COMPRESSION (the gateway's own variable, inherited by it) set and not "off": the load
# generators offer permessage-deflate, and nats-server's listener has compression on
COMPRESSION = os.environ.get("COMPRESSION", "off")
DEFLATE = COMPRESSION != "off"


@dataclass(frozen=True)
class Mode:
    name: str
    sizes: tuple[int, ...]  # subscribers on one subject
    distinct: int  # clients on as many distinct subjects (0: skip)
    latency_s: float
    throughput_s: float
    drain_s: float
    settle_s: float
    idle_s: float


QUICK = Mode("quick", (100, 1000), 1000, 3.0, 3.0, 4.0, 0.5, 1.0)
FULL = Mode("full", (10, 100, 1000, 10_000), 1000, 30.0, 8.0, 8.0, 1.5, 3.0)


@dataclass(frozen=True)
class CellOptions:
    """The command line's options that shape every cell."""

    loadgens: int  # load generator processes
    concurrency: int  # connection set-ups in flight, over all load generators
    gc_probe: bool  # natsgate under bench/gcprobe.py in every cell
    keep: bool  # keep each cell's logs
    natsgate_src: Path | None  # --natsgate-src: that tree's natsgate; None: this checkout's


def latency_rate(subscribers_per_msg: int, distinct: bool) -> float:
    """Messages per second for the latency phase: about 2,000 deliveries a second,
    between 2 and 100 messages a second (2 msg/s at 1,000 subscribers)."""
    if distinct:
        return 100.0
    return max(2.0, min(100.0, 2000.0 / subscribers_per_msg))


def budget(total_subscribers: int) -> int:
    """The publisher's in-flight bound, in deliveries (see bench/publisher.py)."""
    return min(200_000, 2000 * total_subscribers)


BUCKET_US = 100  # the scale benchmark's latency histogram resolution (bench/scale.py)
