"""The demo's presence: who is online in the chat room, and who is typing there.

Two users in two browser contexts. Each page joins ``chat.room.lobby`` and reads its
members (docs/client.md, "Presence"); typing goes over plain publish/subscribe on
``chat.typing.lobby``. Each test's gateway writes members to a bucket of its own, so
members left behind by other tests' killed gateways (which stay until ``PRESENCE_TTL``)
are not in its lists.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.errors import NoKeysError

from .conftest import Backend, GatewayProcess, Pages, T, expect, shot, unique

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

TTL_S = 3  # PRESENCE_TTL of these tests' gateways: a killed gateway's members leave by then


@pytest.fixture(autouse=True)
def own_presence_bucket(monkeypatch: pytest.MonkeyPatch) -> str:
    """Set before the ``gateway`` fixture starts its process (autouse fixtures come first)."""
    bucket = unique("presence_")
    monkeypatch.setenv("PRESENCE_BUCKET", bucket)
    monkeypatch.setenv("PRESENCE_TTL", str(TTL_S))
    return bucket


async def online(page, *users: str) -> None:  # type: ignore[no-untyped-def]
    """The page's online list is exactly these users, in this order (you first)."""
    items = page.get_by_test_id("online-user")
    await expect(items).to_have_count(len(users))
    for i, user in enumerate(users):
        await expect(items.nth(i)).to_have_attribute("data-user", user)
    await expect(page.get_by_test_id("online-count")).to_have_text(str(len(users)))


async def no_members(backend: Backend, bucket: str) -> None:
    """Until the presence bucket holds no member (NATS expires them by itself)."""
    kv = await backend.nc.jetstream().key_value(bucket)
    async with asyncio.timeout(TTL_S + 4 * T):
        while True:
            try:
                await kv.keys()
            except NoKeysError:
                return
            await asyncio.sleep(0.1)  # polls NATS's state, bounded by the timeout


async def live(page) -> None:  # type: ignore[no-untyped-def]
    """The page's member list and typing subscription are active."""
    await expect(page.get_by_test_id("presence-status")).to_have_attribute("data-state", "live")
    await expect(page.get_by_test_id("typing")).to_have_attribute("data-feed", "live")


async def test_two_users_see_each_other_typing_and_leaving(pages: Pages) -> None:
    alice = await pages.login("alice")
    await live(alice)
    await online(alice, "alice")
    await expect(alice.get_by_test_id("online-user").first).to_have_class("online-user me")

    bob = await pages.login("bob")
    await live(bob)
    await online(alice, "alice", "bob")  # alice's page: she first, then the others by name
    await online(bob, "bob", "alice")
    await expect(alice.get_by_test_id("typing")).to_be_hidden()

    # bob types: alice sees it, bob does not see himself
    t0 = time.monotonic()
    await bob.get_by_test_id("chat-input").press_sequentially("hello al")
    typing = alice.get_by_test_id("typing")
    await expect(typing).to_be_visible()
    await expect(alice.get_by_test_id("typing-text")).to_have_text("bob is typing…")
    shown_s = time.monotonic() - t0
    await expect(bob.get_by_test_id("typing")).to_be_hidden()
    await shot(alice, "test_presence-typing")

    # sending the line ends it at once
    tag = unique("")
    await bob.get_by_test_id("chat-input").fill(f"hello alice {tag}")
    await bob.get_by_test_id("chat-send").click()
    await expect(alice.get_by_test_id("chat-line").filter(has_text=tag)).to_have_count(1)
    await expect(typing).to_be_hidden()

    # typing and stopping: it goes away by itself after ~3 s without another event
    await bob.get_by_test_id("chat-input").press_sequentially("still th")
    await expect(typing).to_be_visible()
    t1 = time.monotonic()
    await expect(typing).to_be_hidden()
    expired_s = time.monotonic() - t1
    assert expired_s > 1.5, f"typing went away after {expired_s:.2f} s, before it expired"

    # bob's tab goes to the background: his presence info says away (update), and back
    hide = """hidden => {
        const value = hidden ? 'hidden' : 'visible';
        Object.defineProperty(document, 'visibilityState', {value, configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }"""
    bob_item = alice.get_by_test_id("online-user").nth(1)
    await expect(bob_item).to_have_attribute("data-away", "false")
    await bob.evaluate(hide, True)
    await expect(bob_item).to_have_attribute("data-away", "true")
    await bob.evaluate(hide, False)
    await expect(bob_item).to_have_attribute("data-away", "false")

    # bob closes his page: the gateway sees the socket go and alice sees him leave
    t2 = time.monotonic()
    await bob.close()
    await online(alice, "alice")
    left_s = time.monotonic() - t2
    print(
        f"\npresence figures: typing shown {shown_s * 1000:.0f} ms after the first key, "
        f"gone {expired_s:.2f} s after the last, leave seen {left_s * 1000:.0f} ms after close"
    )
    await shot(alice, "test_presence")


async def test_a_second_tab_is_one_name_and_the_list_is_read_again_after_a_restart(
    pages: Pages, gateway: GatewayProcess, backend: Backend, own_presence_bucket: str
) -> None:
    pages.allow(r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws' failed")
    alice = await pages.login("alice")
    bob_ctx = await pages.context()
    bob = await pages.login("bob", bob_ctx)
    bob2 = await pages.login("bob", bob_ctx)  # a second tab: same cookie, second member
    for page in (alice, bob, bob2):
        await live(page)
    await online(alice, "alice", "bob")
    await expect(alice.get_by_test_id("online-tabs")).to_have_attribute("data-count", "2")

    # one of bob's tabs closes: he is still online, in one tab
    await bob2.close()
    await expect(alice.get_by_test_id("online-tabs")).to_have_count(0)
    await online(alice, "alice", "bob")

    # the gateway dies (no leave for anyone); bob goes away while it is down, and the dead
    # gateway's members expire (PRESENCE_TTL) before it comes back
    await gateway.kill()
    t0 = time.monotonic()
    await expect(alice.get_by_test_id("conn-badge")).to_have_attribute("data-state", "reconnecting")
    await bob.close()
    await no_members(backend, own_presence_bucket)
    expired_s = time.monotonic() - t0
    await online(alice, "alice", "bob")  # her page still shows the list it had
    await gateway.start()
    await expect(alice.get_by_test_id("conn-badge")).to_have_attribute("data-state", "open")
    # alice joined again and read the list again: bob is not in it, and her page, which
    # never saw him leave, drops him (and her own member of before the restart)
    await live(alice)
    await online(alice, "alice")
    print(f"\nthe dead gateway's members expired {expired_s:.2f} s after the kill (TTL {TTL_S} s)")
    # her own member from before the restart expires too: one member left, her new one
    await alice.wait_for_function(
        """() => {
            const lists = natsgateDemo.client.subscriptions.filter(s => s.kind === 'presence');
            return lists.length === 1 && lists[0].members.size === 1
                && [...lists[0].members.values()][0].user === 'alice';
        }"""
    )
    states = await alice.evaluate("natsgateDemo.states")
    assert states[-2:] == ["reconnecting", "open"], states
    await shot(alice, "test_presence-after-restart")
