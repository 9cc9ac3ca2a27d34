"""The demo's chat: two users talking, history, and a page that outlives its gateway."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import Backend, GatewayProcess, Pages, chat_lines, expect, shot, unique

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


async def send(page, text: str) -> None:  # type: ignore[no-untyped-def]
    await page.get_by_test_id("chat-input").fill(text)
    await page.get_by_test_id("chat-send").click()
    await expect(page.get_by_test_id("chat-input")).to_have_value("")


def line(page, text: str):  # type: ignore[no-untyped-def]
    return page.get_by_test_id("chat-line").filter(has_text=text)


def todo(page, text: str):  # type: ignore[no-untyped-def]
    return page.get_by_test_id("todo-item").filter(has_text=text)


async def test_two_users_chat(pages: Pages) -> None:
    alice = await pages.login("alice")
    bob = await pages.login("bob")
    tag = unique("")
    hello, reply = f"hello bob {tag}", f"hi alice {tag}"

    await send(alice, hello)
    for page in (alice, bob):
        await expect(line(page, hello).get_by_test_id("chat-sender")).to_have_text("alice")
    await send(bob, reply)
    for page in (alice, bob):
        await expect(line(page, reply).get_by_test_id("chat-sender")).to_have_text("bob")

    # own lines are marked as such, the other's are not
    mine = re.compile(r"\bmine\b")
    await expect(line(alice, hello)).to_have_class(mine)
    await expect(line(alice, reply)).not_to_have_class(mine)
    await expect(line(bob, hello)).not_to_have_class(mine)
    # the same order on both pages
    a = [(x["seq"], x["text"]) for x in await chat_lines(alice) if tag in x["text"]]
    b = [(x["seq"], x["text"]) for x in await chat_lines(bob) if tag in x["text"]]
    assert a == b and [t for _, t in a] == [hello, reply]

    await shot(alice, "test_two_users_chat")
    await shot(bob, "test_two_users_chat-bob")


async def test_gateway_restart_resumes_chat(
    pages: Pages, gateway: GatewayProcess, backend: Backend
) -> None:
    # While the gateway is down the browser logs its refused WebSocket attempts itself.
    pages.allow(r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws' failed")
    alice = await pages.login("alice")
    tag = unique("")
    before = [f"before {i} {tag}" for i in range(2)]
    for text in before:
        await send(alice, text)
    await expect(line(alice, before[-1])).to_have_count(1)
    stale, fresh = f"stale {tag}", f"fresh {tag}"
    await alice.get_by_test_id("todo-input").fill(stale)
    await alice.get_by_test_id("todo-add").click()
    stale_id = await todo(alice, stale).get_attribute("data-id")

    await gateway.kill()
    badge = alice.get_by_test_id("conn-badge")
    await expect(badge).to_have_attribute("data-state", "reconnecting")
    await shot(alice, "test_gateway_restart_resumes_chat-down")

    meanwhile = [f"meanwhile {i} {tag}" for i in range(3)]
    await backend.chat(meanwhile[0], sender="bob")
    await backend.chat(meanwhile[1])  # no Natsgate-User header: not through a gateway
    await backend.chat(meanwhile[2], sender="bob")
    # the todos change behind the page's back: it must rebuild its list, not add to it
    todos = await backend.nc.jetstream().key_value("todos")
    await todos.delete(f"user.alice.{stale_id}")
    await todos.put(
        f"user.alice.{tag}", json.dumps({"id": tag, "text": fresh, "done": True}).encode()
    )

    await gateway.start()  # same port
    await expect(badge).to_have_attribute("data-state", "open")
    await expect(line(alice, meanwhile[-1])).to_have_count(1)
    after = f"after {tag}"
    await send(alice, after)
    await expect(line(alice, after)).to_have_count(1)
    await expect(todo(alice, fresh)).to_have_attribute("data-done", "true")
    await expect(todo(alice, stale)).to_have_count(0)

    rendered = await chat_lines(alice)
    mine = [x for x in rendered if tag in x["text"]]
    assert [x["text"] for x in mine] == [*before, *meanwhile, after]
    assert [x["sender"] for x in mine] == ["alice", "alice", "bob", "via NATS", "bob", "alice"]
    seqs = [x["seq"] for x in rendered]
    assert seqs == sorted(set(seqs)), "chat lines out of order or repeated"
    # the library delivered nothing twice (the page would have dropped it, and counted it)
    assert await alice.evaluate("natsgateDemo.stats.chatDuplicates") == 0
    states = await alice.evaluate("natsgateDemo.states")
    assert states[-2:] == ["reconnecting", "open"], states
    await shot(alice, "test_gateway_restart_resumes_chat")


async def test_history_is_the_last_100_lines_and_survives_a_reload(
    pages: Pages, backend: Backend
) -> None:
    tag = unique("")
    seqs = [await backend.chat(f"old {i} {tag}", sender="bob") for i in range(105)]
    alice = await pages.login("alice")
    await expect(line(alice, f"old 104 {tag}")).to_have_count(1)

    async def check() -> None:
        rendered = await chat_lines(alice)
        # the page reads the last 100 stream sequences (here, all of them on chat.room.lobby)
        got = [x["seq"] for x in rendered]
        assert got == sorted(set(got)) and got[0] >= seqs[-1] - 99 and got[-1] == seqs[-1]
        assert [x["text"] for x in rendered if tag in x["text"]] == [
            f"old {i} {tag}" for i in range(5, 105)
        ]

    await check()
    await alice.reload()  # still logged in: the cookie, and the page remembers who it was
    await expect(alice.get_by_test_id("conn-badge")).to_have_attribute("data-state", "open")
    await expect(line(alice, f"old 104 {tag}")).to_have_count(1)
    await check()
    # the newest line is in view
    await expect(line(alice, f"old 104 {tag}")).to_be_in_viewport()
    await shot(alice, "test_history_is_the_last_100_lines")
