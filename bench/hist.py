"""Per-delivery latency as a histogram (pure): every client's latency for every message is
one count in a 10 µs bucket, so a load generator reports a few hundred numbers instead of
one per delivery, and the orchestrator adds the load generators' histograms up.

The quantile matches ``bench.cell.pct`` on the raw samples (the sample at index
``round(q * (n - 1))`` of the sorted list), read off as its bucket's upper edge: never
below the exact value, less than one bucket above it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BUCKET_NS = 10_000  # 10 µs


def bucket(latency_ns: int) -> int:
    """The bucket of one delivery's latency (a negative one, clock jitter, goes in 0)."""
    return max(0, latency_ns) // BUCKET_NS


def merge(hists: Iterable[Mapping[str | int, int]]) -> dict[int, int]:
    """Add histograms up (keys may be strings: they came through JSON)."""
    out: dict[int, int] = {}
    for h in hists:
        for k, v in h.items():
            b = int(k)
            out[b] = out.get(b, 0) + v
    return out


def count(hist: Mapping[int, int]) -> int:
    return sum(hist.values())


def quantile_ms(hist: Mapping[int, int], q: float) -> float:
    """The q-quantile in ms: the upper edge of the bucket holding the sample at index
    ``round(q * (n - 1))`` of the sorted samples; NaN for an empty histogram."""
    n = count(hist)
    if n == 0:
        return float("nan")
    i = min(n - 1, max(0, round(q * (n - 1))))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen > i:
            return (b + 1) * BUCKET_NS / 1e6
    return (max(hist) + 1) * BUCKET_NS / 1e6  # not reached: seen ends at n > i
