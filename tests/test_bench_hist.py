"""The benchmark's per-delivery latency histogram (pure): its quantiles against the exact
ones of the raw samples, and adding histograms up."""

from __future__ import annotations

import collections
import math

from bench.hist import BUCKET_NS, bucket, count, merge, quantile_ms
from hypothesis import given
from hypothesis import strategies as st

samples = st.lists(st.integers(0, 2_000_000_000), min_size=1, max_size=400)
quantiles = st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])


def pct(sorted_vals: list[float], q: float) -> float:
    """The exact quantile as ``bench.cell.pct`` takes it (not imported: bench.cell needs
    the bench extras, and this test runs without them)."""
    return sorted_vals[min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))]


def hist_of(ns: list[int]) -> dict[int, int]:
    return dict(collections.Counter(bucket(x) for x in ns))


@given(samples, quantiles)
def test_quantile_brackets_the_exact_one(ns: list[int], q: float) -> None:
    """Never below the exact quantile (``cell.pct``'s definition), less than one bucket
    above it."""
    exact_ms = pct(sorted(x / 1e6 for x in ns), q)
    got = quantile_ms(hist_of(ns), q)
    assert exact_ms <= got + 1e-9
    assert got - exact_ms <= BUCKET_NS / 1e6 + 1e-9


@given(st.lists(samples, min_size=1, max_size=4), quantiles)
def test_merged_is_the_histogram_of_all_samples(parts: list[list[int]], q: float) -> None:
    """Load generators' histograms, through JSON (string keys), add up to the one of all
    their samples together."""
    merged = merge({str(k): v for k, v in hist_of(p).items()} for p in parts)
    whole = hist_of([x for p in parts for x in p])
    assert merged == whole
    assert count(merged) == sum(len(p) for p in parts)
    assert quantile_ms(merged, q) == quantile_ms(whole, q)


def test_negative_latency_counts_as_zero_and_empty_is_nan() -> None:
    assert bucket(-5) == 0
    assert quantile_ms({0: 3}, 0.99) == BUCKET_NS / 1e6
    assert math.isnan(quantile_ms({}, 0.5))


def test_the_tail_decides_p99() -> None:
    """99 deliveries at 1 ms and one at 50 ms: p99 is the 99th of 100 (1 ms), the max 50."""
    h = hist_of([1_000_000] * 99 + [50_000_000])
    assert quantile_ms(h, 0.99) == (bucket(1_000_000) + 1) * BUCKET_NS / 1e6
    assert quantile_ms(h, 1.0) == (bucket(50_000_000) + 1) * BUCKET_NS / 1e6
