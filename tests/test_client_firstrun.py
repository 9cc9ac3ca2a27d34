"""The Python client on a first run, against a real gateway: a ``cap_update`` handler
registered after ``await connect()`` still gets the current capabilities; a refused upgrade says
the gateway's reason; a stream subscription without a filter reports the pattern ``>``."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StorageType

from natsgate import client as ng
from natsgate.auth import mint_token

from .conftest import SECRET, unique
from .helpers import Gw, T

FAST: dict[str, Any] = {"min_backoff": 0.05, "max_backoff": 0.5}


async def test_late_cap_update_handler_gets_the_current_caps(gw: Gw) -> None:
    user = unique("u")
    await gw.set_caps(user, {"subjects": ["chat.>"]})
    client = await ng.connect(gw.ws_url, token=mint_token(user, SECRET, 600), **FAST)
    try:
        assert client.caps["subjects"] == ["chat.>"]  # also as a property
        assert client.state is ng.ClientState.OPEN  # state events are transitions only
        updates: list[ng.CapUpdate] = []
        got_caps = asyncio.Event()
        client.on("cap_update", lambda u: (updates.append(u), got_caps.set()))
        async with asyncio.timeout(T):
            await got_caps.wait()
        assert updates[0].caps["subjects"] == ["chat.>"]
        assert updates[0].revoked == [] and updates[0].ended == []
        # then the live updates, each once
        got_caps.clear()
        await gw.set_caps(user, {"subjects": ["news.>"]})
        async with asyncio.timeout(T):
            await got_caps.wait()
        assert [u.caps["subjects"] for u in updates] == [["chat.>"], ["news.>"]]
        # a listener removed before its replay ran is not called
        late: list[Any] = []
        client.on("cap_update", late.append)()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert late == []
    finally:
        await client.close()


async def _refusal(gw: Gw, token: str | None) -> ng.NatsgateError:
    with pytest.raises(ng.NatsgateError) as info:
        await ng.connect(gw.ws_url, token=token, connect_timeout=3 * T, **FAST)
    return info.value


async def test_refused_upgrade_says_why(gw: Gw) -> None:
    expired = jwt.encode({"sub": "ann", "exp": int(time.time()) - 10}, SECRET, "HS256")
    forged = mint_token("ann", "another-secret-0123456789-abcdefghijklmnop", 600)
    for token, reason in (
        (expired, "token expired"),
        (None, "no token"),
        ("not-a-jwt", "invalid token"),
        (forged, "invalid token"),
    ):
        err = await _refusal(gw, token)
        assert err.code == "unauthorized", (reason, err)
        assert f"upgrade refused: {reason} (HTTP 401)" in str(err), str(err)
        assert "Invalid response status" not in str(err)
    with pytest.raises(ng.NatsgateError) as info:
        await ng.connect(
            gw.ws_url,
            token=mint_token("ann", SECRET, 600),
            headers={"Origin": "https://elsewhere.example"},
            **FAST,
        )
    assert info.value.code == "forbidden"
    assert "origin not allowed (HTTP 403)" in str(info.value)


async def test_unfiltered_stream_subscription_pattern(gw: Gw, nc: NATS) -> None:
    user, p, stream = unique("u"), unique("c"), unique("S")
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{p}.>"], storage=StorageType.MEMORY)
    await js.publish(f"{p}.a", json.dumps({"i": 1}).encode())
    await gw.set_caps(user, {"streams": {stream: [f"{p}.>"]}})
    client = await ng.connect(gw.ws_url, token=mint_token(user, SECRET, 600), **FAST)
    try:
        got: asyncio.Queue[ng.JsMessage] = asyncio.Queue()
        sub = await client.js_subscribe(stream, got.put_nowait, start_seq=1)
        assert (sub.pattern, sub.filter) == (">", None)
        async with asyncio.timeout(T):
            assert (await got.get()).payload == {"i": 1}
        # a revocation names it by stream alone, and ends it
        ended = asyncio.Event()
        client.on("cap_update", lambda u: ended.set() if u.ended else None)
        await gw.set_caps(user, {})
        async with asyncio.timeout(T):
            await ended.wait()
        assert sub.state is ng.SubState.REVOKED
    finally:
        await client.close()
