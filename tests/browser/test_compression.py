"""permessage-deflate as Chromium speaks it: the browser offers it on every WebSocket, the
gateway agrees it (``ws.extensions`` as the page sees it), and messages both ways arrive
intact: large JSON, accents and emoji, hundreds of messages in a burst."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from natsgate.auth import mint_token

from .conftest import Backend, GatewayProcess, Pages, T, free_port, unique

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

# A raw WebSocket in the page: every envelope it receives lands in window.got.
OPEN = """async (url) => {
    window.got = [];
    const ws = window.ws = new WebSocket(url);
    ws.onmessage = (e) => {
        for (const line of e.data.split("\\n")) window.got.push(JSON.parse(line));
    };
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    return ws.extensions;
}"""


def big_json(n: int) -> dict[str, Any]:
    """About 40 KB of chat history: accents, emoji, scripts beyond Latin."""
    return {
        "history": [
            {
                "id": i,
                "user": ["zoë", "Łukasz", "山田", "أمينة"][i % 4],
                "text": f"line {i}: naïve café déjà vu — 👋🏽 你好 Привет",
                "ts": 1764470000000 + i,
            }
            for i in range(n)
        ]
    }


async def wait_for(page: Any, js: str, arg: Any = None) -> Any:
    await page.wait_for_function(js, arg=arg, timeout=int(4 * T * 1000))
    return await page.evaluate("() => window.got")


async def open_socket(pages: Pages, backend: Backend, url: str) -> tuple[Any, str, str]:
    user, subject = unique("z"), unique("zip")
    await backend.set_caps(user, {"subjects": [f"{subject}.>"], "publish": [f"{subject}.>"]})
    page = await pages.open()
    ext = await page.evaluate(OPEN, f"{url}/ws?token={mint_token(user, backend.secret, 600)}")
    await page.evaluate(
        """(t) => window.ws.send(JSON.stringify({op: "sub", target: t, inbox: "s"}))""",
        f"{subject}.>",
    )
    await wait_for(page, """() => window.got.some(e => e.op === "reply" && e.inbox === "s")""")
    return page, subject, ext


async def round_trips(page: Any, backend: Backend, subject: str) -> None:
    """NATS -> browser and browser -> NATS, each a large message and a burst of 300."""
    big = big_json(400)
    assert len(json.dumps(big)) > 30_000
    await backend.nc.publish(f"{subject}.big", json.dumps(big).encode())
    for i in range(300):
        await backend.nc.publish(f"{subject}.burst", json.dumps({"i": i, "t": "é" * i}).encode())
    got = await wait_for(page, """() => window.got.filter(e => e.op === "msg").length >= 301""")
    msgs = [e for e in got if e["op"] == "msg"]
    assert msgs[0]["data"] == big
    assert [m["data"] for m in msgs[1:]] == [{"i": i, "t": "é" * i} for i in range(300)]

    received: list[Msg] = []
    all_in = asyncio.Event()

    async def on_msg(m: Msg) -> None:
        received.append(m)
        if len(received) == 301:
            all_in.set()

    sub = await backend.nc.subscribe(f"{subject}.up", cb=on_msg)
    await backend.nc.flush()
    await page.evaluate(
        """([t, big]) => {
            window.ws.send(JSON.stringify({op: "pub", target: t, data: big}));
            for (let i = 0; i < 300; i++)
                window.ws.send(JSON.stringify({op: "pub", target: t, data: {i, t: "ü".repeat(i)}}));
        }""",
        [f"{subject}.up", big],
    )
    async with asyncio.timeout(4 * T):
        await all_in.wait()
    await sub.unsubscribe()
    assert json.loads(received[0].data) == big
    assert [json.loads(m.data) for m in received[1:]] == [
        {"i": i, "t": "ü" * i} for i in range(300)
    ]


async def test_chromium_negotiates_deflate_and_messages_arrive_intact(
    pages: Pages, backend: Backend, gateway: GatewayProcess
) -> None:
    page, subject, ext = await open_socket(pages, backend, gateway.url.replace("http", "ws"))
    assert ext == AGREED  # as Chromium reports the agreed extension to the page
    await round_trips(page, backend, subject)


async def test_with_compression_off_chromium_gets_plain_frames(
    pages: Pages, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPRESSION", "off")
    off = GatewayProcess(backend, free_port(), tmp_path / "gateway-off.log")
    await off.start()
    try:
        pages.gateway = off
        page, subject, ext = await open_socket(pages, backend, off.url.replace("http", "ws"))
        assert ext == ""
        await round_trips(page, backend, subject)
    finally:
        await off.stop()
