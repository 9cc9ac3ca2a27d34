"""The demo's notifications: a durable inbox (stream NOTIFY, durable "inbox" with explicit
acks) that keeps what arrived while the user was logged out, for any browser."""

from __future__ import annotations

import pytest

from natsgate.demo import NOTIFY_STREAM
from natsgate.durables import consumer_name

from .conftest import Backend, Pages, expect, shot, texts, unique

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


def note(page, text: str):  # type: ignore[no-untyped-def]
    return page.get_by_test_id("notify-item").filter(has_text=text)


async def test_notifications_wait_for_the_next_login(pages: Pages, backend: Backend) -> None:
    # Browser A: alice logs in (the durable is made), then out.
    a = await pages.login("alice")
    await expect(a.get_by_test_id("notify-unread")).to_have_text("0")
    await expect(a.get_by_test_id("notify-empty")).to_be_visible()
    await a.get_by_test_id("logout").click()
    await expect(a.get_by_test_id("login")).to_be_visible()

    # While she is logged out everywhere, a service notifies her three times.
    tag = unique("")
    read, kept, last = (f"{what} {tag}" for what in ("invoice paid", "new follower", "reply"))
    seqs = [await backend.notify("alice", text) for text in (read, kept, last)]

    # Browser B (another context: no cookie, no storage of A's) logs in as alice.
    b = await pages.login("alice")
    unread = b.get_by_test_id("notify-unread")
    await expect(unread).to_have_text("3")
    assert await texts(b, "notify-text") == [last, kept, read]  # newest first
    for text in (read, kept, last):
        await expect(note(b, text)).to_have_attribute("data-delivery", "1")
    await expect(b.get_by_test_id("notify-empty")).to_be_hidden()
    await shot(b, "test_notifications_wait_for_the_next_login")

    # Marked read: acked. The item goes once the NATS server has the ack (ackSync).
    await note(b, read).get_by_test_id("notify-read").click()
    await expect(note(b, read)).to_have_count(0)
    await expect(unread).to_have_text("2")
    info = await backend.nc.jetstream().consumer_info(
        NOTIFY_STREAM, consumer_name("alice", "inbox")
    )
    assert info.num_ack_pending == 2 and info.num_pending == 0
    assert info.ack_floor is not None and info.ack_floor.stream_seq == seqs[0]

    # A reload closes the connection: the gateway NAKs the two unread ones and the new page
    # gets them again at once (delivery 2); the read one never comes again.
    await b.reload()
    await expect(b.get_by_test_id("conn-badge")).to_have_attribute("data-state", "open")
    await expect(unread).to_have_text("2")
    for text in (kept, last):
        await expect(note(b, text)).to_have_attribute("data-delivery", "2")
    assert await texts(b, "notify-text") == [last, kept]
    await expect(note(b, kept).locator(".again")).to_have_text("\N{MULTIPLICATION SIGN}2")

    # B goes away; A logs in again and finds the same two, still unread.
    await b.context.close()
    a = await pages.login("alice", a.context)
    await expect(a.get_by_test_id("notify-unread")).to_have_text("2")
    for text in (kept, last):
        await expect(note(a, text)).to_have_attribute("data-delivery", "3")
    await expect(note(a, read)).to_have_count(0)

    # A notification from the page itself ("Notify me" publishes to notify.alice) lands in
    # the stream and in the inbox like any other.
    await a.get_by_test_id("notify-self").click()
    await expect(note(a, "A note to myself")).to_have_count(1)
    await expect(a.get_by_test_id("notify-unread")).to_have_text("3")
    await shot(a, "test_notifications_wait_for_the_next_login-again")
