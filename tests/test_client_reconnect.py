"""The Python client's reconnect decision (natsgate.client.reconnect.decide): pure, so no
sockets; properties over every close code, refusal, attempt count and option."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from natsgate.client.reconnect import (
    Closed,
    Decision,
    Outcome,
    Policy,
    Refused,
    Retry,
    Unreachable,
    Verdict,
    backoff_delay,
    decide,
)
from natsgate.errors import CLOSE_INFO, CloseAction, CloseCode, close_action

unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
seconds = st.floats(min_value=0.0, max_value=120.0)
codes = st.one_of(st.sampled_from(list(CloseCode)), st.integers(1000, 4999))
closed = st.builds(Closed, codes, st.text(max_size=8), st.one_of(st.none(), seconds))
outcomes: st.SearchStrategy[Outcome] = st.one_of(
    closed,
    st.builds(Refused, st.sampled_from([401, 403, 404, 429, 500, 503]), st.text(max_size=8)),
    st.builds(Unreachable, st.text(max_size=8)),
)
retries = st.builds(Retry, st.integers(0, 100), st.booleans(), st.booleans())


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    lo = draw(st.floats(min_value=0.0, max_value=5.0))
    hi = draw(st.floats(min_value=lo, max_value=60.0))
    return Policy(lo, hi, draw(seconds), draw(st.booleans()))


def run(outcome: Outcome, retry: Retry, policy: Policy, r: float) -> Decision:
    return decide(outcome, retry, policy, lambda: r)


@given(outcomes, retries, policies(), unit)
def test_delays_are_within_zero_and_the_cap(
    outcome: Outcome, retry: Retry, policy: Policy, r: float
) -> None:
    d = run(outcome, retry, policy, r)
    if d.verdict is Verdict.STOP:
        assert d.delay is None and d.error in ("unauthorized", "forbidden") and d.message
    else:
        assert d.delay is not None and 0.0 <= d.delay <= policy.max_backoff
        assert d.retry.attempt >= 1


@given(closed, retries, policies(), unit)
def test_stop_codes_never_reconnect(
    outcome: Closed, retry: Retry, policy: Policy, r: float
) -> None:
    d = run(outcome, retry, policy, r)
    if close_action(outcome.code) is CloseAction.STOP:
        assert d.verdict is Verdict.STOP and d.error == "forbidden"
    elif close_action(outcome.code) is not CloseAction.AUTH:
        assert d.verdict is not Verdict.STOP


@given(st.text(max_size=8), st.one_of(st.none(), seconds), retries, policies(), unit)
def test_prompt_resets_the_attempt_counter(
    reason: str, open_for: float | None, retry: Retry, policy: Policy, r: float
) -> None:
    d = run(Closed(CloseCode.RESTART, reason, open_for), retry, policy, r)
    assert d.retry.attempt == 1  # this one was attempt 0
    assert d.delay == r * policy.min_backoff  # U(0, min_backoff)


@given(st.text(max_size=8), st.one_of(st.none(), seconds), retries, policies(), unit)
def test_4001_reconnects_only_with_a_new_token(
    reason: str, open_for: float | None, retry: Retry, policy: Policy, r: float
) -> None:
    d = run(Closed(CloseCode.UNAUTHORIZED, reason, open_for), retry, policy, r)
    if policy.fresh_tokens:
        assert d.verdict is Verdict.NEW_TOKEN and d.retry.token_retried
    else:
        assert d.verdict is Verdict.STOP and d.error == "unauthorized"


@given(st.integers(0, 4999).filter(lambda c: c not in set(CloseCode)), retries, policies(), unit)
def test_codes_outside_the_table_back_off(
    code: int, retry: Retry, policy: Policy, r: float
) -> None:
    d = run(Closed(code, "", None), retry, policy, r)
    assert d.verdict is Verdict.RECONNECT
    assert d.delay == backoff_delay(retry.attempt, policy.min_backoff, policy.max_backoff, r)
    assert d.retry.attempt == retry.attempt + 1


@given(codes, seconds, retries, policies(), unit)
def test_a_stable_connection_starts_the_count_over(
    code: int, open_for: float, retry: Retry, policy: Policy, r: float
) -> None:
    d = run(Closed(code, "", open_for), retry, policy, r)
    if d.verdict is Verdict.STOP:
        return
    assert d.retry.opened and d.retry.token_retried == (code == CloseCode.UNAUTHORIZED)
    if open_for >= policy.stable_after:
        assert d.retry.attempt == 1
    # after a lost connection a provider is asked again, whatever the code
    assert (d.verdict is Verdict.NEW_TOKEN) == policy.fresh_tokens


@given(policies(), unit)
def test_a_refused_token(policy: Policy, r: float) -> None:
    """401 on the first connect stops; later, one new token is tried, then it stops."""
    first = run(Refused(401, "bad"), Retry(), policy, r)
    assert first.verdict is Verdict.STOP and first.error == "unauthorized"
    assert first.message == "upgrade refused: bad"
    lost = run(Closed(1006, "", 1.0), Retry(3), policy, r).retry
    again = run(Refused(401, "bad"), lost, policy, r)
    if not policy.fresh_tokens:
        assert again.verdict is Verdict.STOP
        return
    assert again.verdict is Verdict.NEW_TOKEN
    last = run(Refused(401, "bad"), again.retry, policy, r)
    assert (last.verdict, last.message) == (Verdict.STOP, "fresh token refused")
    origin = run(Refused(403, "origin"), again.retry, policy, r)
    assert (origin.verdict, origin.error) == (Verdict.STOP, "forbidden")


def test_the_messages_people_read() -> None:
    policy = Policy(fresh_tokens=False)
    d = decide(Closed(CloseCode.ADMIN_DISCONNECT), Retry(), policy)
    assert d.message == f"closed by the gateway (4003): {CLOSE_INFO[CloseCode(4003)].meaning}"
    d = decide(Closed(CloseCode.POLICY, "origin"), Retry(), policy)
    assert d.message == "closed by the gateway (1008): origin"
    assert decide(Closed(CloseCode.UNAUTHORIZED), Retry(), policy).message == "token expired"


@given(st.integers(0, 40), unit)
def test_same_backoff_as_the_browser_library(attempt: int, r: float) -> None:
    """natsgate.js ``backoffDelay(attempt, 250, 10000, () => r)`` is this in ms, floored."""
    window = min(10000, 250 * 2 ** min(attempt, 30))
    js_ms = min(10000, int(250 + r * window))
    assert abs(backoff_delay(attempt, 0.25, 10.0, r) * 1000 - js_ms) < 1.0 + 1e-6
