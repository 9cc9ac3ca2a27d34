"""The scale benchmark's figures: percentiles read off its latency histogram (pure)."""

from __future__ import annotations

import collections
import math

from bench.scale import hist_pct, needed_sysctls
from bench.settings import BUCKET_US
from hypothesis import given
from hypothesis import strategies as st


@given(
    st.lists(st.integers(0, 5_000_000), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.9, 0.99, 1.0]),
)
def test_histogram_percentile_brackets_the_exact_one(samples_us: list[int], q: float) -> None:
    """The histogram's q-quantile is the upper edge of the bucket holding the exact one:
    never below it, less than one bucket above."""
    hist = collections.Counter(s // BUCKET_US for s in samples_us)
    exact = sorted(samples_us)[max(0, math.ceil(q * len(samples_us)) - 1)]
    got_ms = hist_pct(dict(hist), q)
    assert exact / 1000 <= got_ms + 1e-9
    assert got_ms - exact / 1000 <= BUCKET_US / 1000 + 1e-9


def test_max_is_the_top_bucket() -> None:
    assert hist_pct({0: 5, 30: 1}, 1.0) == 31 * BUCKET_US / 1000


def test_sysctls_asked_only_when_short() -> None:
    """Nothing is raised for a run the machine's settings already allow."""
    assert needed_sysctls(10, 8) == {}
