"""The Autobahn TestSuite (kosoku's port of it) against natsgate's own WebSocket layer.

Two runs, real sockets both: an echo built on ``wsframe``/``wsconn`` (``tests/autobahn``)
must pass every case of groups 1-7, 9 and 10 (OK, NON-STRICT or INFORMATIONAL); the real
gateway's ``/ws``, which is no echo, must fail the connection with a code the case accepts
wherever that is the case's verdict. Compression (12, 13: permessage-deflate with each
parameter set Autobahn offers) runs against the same echo, which agrees deflate as the
gateway does: all 216 cases take 3-5 minutes here (1,000 messages of up to 128 KiB
each way per case), so the suite runs the first five sizes (16 B to 4 KiB) and the
fragmented 8 KiB case of every subgroup, 72 cases; the full groups by hand::

    .venv/bin/python -m tests.autobahn.echo --port 9001 &
    .venv/bin/kosoku 127.0.0.1:9001 -i '12.*' -i '13.*' -p 2 -o /tmp/autobahn
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import pytest
from kosoku import FailureError, run_fuzzingclient

from natsgate.auth import mint_token
from natsgate.wsconn import PARTIAL_INPUT
from tests.autobahn.echo import serve
from tests.conftest import SECRET, Gw, unique
from tests.helpers import T, eventually

GROUPS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
COMPRESSION = [
    f"{g}.{c}"
    for g in [*(f"12.{i}" for i in range(1, 6)), *(f"13.{i}" for i in range(1, 8))]
    for c in (1, 2, 3, 4, 5, 11)
]
ACCEPTABLE = {"OK", "NON-STRICT", "INFORMATIONAL"}
CONCURRENCY = 2  # CI has 2 cores


async def run(url: str, cases: list[str]) -> tuple[list[Any], float]:
    """Every case's result (a failed case is a result too), and the seconds it took."""
    start = time.monotonic()
    try:
        results = await run_fuzzingclient(url, cases=cases, concurrency=CONCURRENCY)
    except FailureError as failure:
        results = failure.results
    return results, time.monotonic() - start


def group(case_id: str) -> str:
    return case_id.split(".")[0]


def fails_the_connection(result: Any) -> bool:
    """The case's verdict is that the server fails the connection: 1000 (a normal close)
    is not among the codes it accepts. Those are the cases where the peer under test must
    close first (an invalid frame, text that is not UTF-8) and the 7.x cases that send a
    close frame the server must answer with 1002 or 1007 (a bad code, a bad reason)."""
    return 1000 not in result.expected_close["closeCode"]


def show(result: Any) -> str:
    return (
        f"{result.case_id}: {result.behavior.value}/{result.behavior_close.value}, "
        f"close {result.remote_close_code} (expected {result.expected_close['closeCode']}): "
        f"{result.result} {result.result_close}"
    )


_echo_run: list[tuple[list[Any], float]] = []  # one run per test session, for both tests


async def echo_results() -> tuple[list[Any], float]:
    """Every case of GROUPS against an echo served on this test's loop (run once)."""
    if not _echo_run:
        server = await serve()
        try:
            _echo_run.append(
                await run(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", GROUPS)
            )
        finally:
            server.close()
            await server.wait_closed()
    return _echo_run[0]


async def test_an_echo_on_natsgates_websocket_layer_passes_autobahn() -> None:
    base = PARTIAL_INPUT.used
    results, seconds = await echo_results()
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        counts[group(r.case_id)][r.behavior.value] += 1
    print(f"\nAutobahn against the echo: {len(results)} cases in {seconds:.1f} s")
    for g in sorted(counts, key=int):
        print(f"  {g}: {sum(counts[g].values())} cases, {dict(counts[g])}")
    assert {group(r.case_id) for r in results} == {g[:-2] for g in GROUPS}
    bad = [
        r
        for r in results
        if r.behavior.value not in ACCEPTABLE or r.behavior_close.value not in ACCEPTABLE
    ]
    assert not bad, "\n".join(show(r) for r in bad)
    await eventually(lambda: PARTIAL_INPUT.used == base, timeout=T)  # nothing left held


async def test_the_gateway_fails_the_connection_with_a_code_autobahn_accepts(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    """The echo's run says which cases fail the connection (the verdict does not depend
    on the server); only those run against /ws, where the rest could only time out
    waiting for an echo. None of group 9 (large messages) is among them."""
    ids = [r.case_id for r in (await echo_results())[0] if fails_the_connection(r)]
    url = f"{gw.ws_url}?token={mint_token(unique('ab'), SECRET, 600)}"
    results, seconds = await run(url, ids)
    assert sorted(r.case_id for r in results) == sorted(ids)
    failing = [r for r in results if fails_the_connection(r)]
    wrong = [r for r in failing if r.remote_close_code not in r.expected_close["closeCode"]]
    per_group = collections.Counter(group(r.case_id) for r in failing)
    print(
        f"\nAutobahn against /ws: {len(results)} cases in {seconds:.1f} s; "
        f"{len(failing)} must fail the connection ({dict(per_group)}), "
        f"{len(failing) - len(wrong)} closed with an expected code"
    )
    assert len(failing) == len(ids) > 100  # the selection did select
    assert not wrong, "\n".join(show(r) for r in wrong)
    await eventually(lambda: not gw.gateway.sessions and not gw.gateway.conns_by_ip, timeout=T)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_echo_passes_autobahns_compression_cases() -> None:
    """Every offer of groups 12 and 13 is agreed (a declined one would be UNIMPLEMENTED)
    and every message comes back intact, in both directions compressed."""
    server = await serve()
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        results, seconds = await run(url, COMPRESSION)
    finally:
        server.close()
        await server.wait_closed()
    counts = collections.Counter(r.behavior.value for r in results)
    print(f"\nAutobahn compression against the echo: {len(results)} cases in {seconds:.1f} s")
    print(f"  {dict(counts)}")
    assert sorted(r.case_id for r in results) == sorted(COMPRESSION)
    bad = [r for r in results if r.behavior.value != "OK" or r.behavior_close.value != "OK"]
    assert not bad, "\n".join(show(r) for r in bad)
