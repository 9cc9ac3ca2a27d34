"""The demo's todos, notifications, live capabilities, commands, login and phone layout."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from nats.aio.msg import Msg

from natsgate.auth import mint_token
from natsgate.demo import NOTIFY_STREAM, demo_caps

from .conftest import PASSWORD, Backend, Pages, T, expect, shot, texts, unique

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


def todo(page, text: str):  # type: ignore[no-untyped-def]
    return page.get_by_test_id("todo-item").filter(has_text=text)


async def test_todos_sync_between_tabs(pages: Pages) -> None:
    one = await pages.login("alice")
    two = await pages.login("alice", one.context)  # a second tab, same cookie
    milk, bread = f"buy milk {unique('')}", f"bake bread {unique('')}"

    await one.get_by_test_id("todo-input").fill(milk)
    await one.get_by_test_id("todo-add").click()
    await one.get_by_test_id("todo-input").fill(bread)
    await one.get_by_test_id("todo-input").press("Enter")
    for page in (one, two):
        await expect(todo(page, milk)).to_have_attribute("data-done", "false")
        await expect(todo(page, bread)).to_have_count(1)

    await todo(two, milk).get_by_test_id("todo-toggle").click()  # toggled in the other tab
    for page in (one, two):
        await expect(todo(page, milk)).to_have_attribute("data-done", "true")
        await expect(todo(page, milk).get_by_test_id("todo-toggle")).to_have_attribute(
            "aria-checked", "true"
        )
    await shot(one, "test_todos_sync_between_tabs")

    await todo(one, bread).get_by_test_id("todo-delete").click()
    for page in (one, two):
        await expect(todo(page, bread)).to_have_count(0)
        await expect(todo(page, milk)).to_have_count(1)
    await todo(two, milk).get_by_test_id("todo-toggle").click()
    await expect(todo(one, milk)).to_have_attribute("data-done", "false")
    await expect(one.get_by_test_id("todo-error")).to_be_hidden()


async def test_revoked_capability_stops_the_feed(pages: Pages, backend: Backend) -> None:
    alice = await pages.login("alice")
    items = alice.get_by_test_id("notify-item")
    first = f"first {unique('')}"
    await backend.notify("alice", first)
    await expect(items.filter(has_text=first)).to_have_count(1)  # the feed works

    caps = demo_caps("alice")
    caps["streams"] = {k: v for k, v in caps["streams"].items() if k != NOTIFY_STREAM}
    await backend.set_caps("alice", caps)

    await expect(alice.get_by_test_id("notify-status")).to_have_attribute("data-state", "revoked")
    revoked = alice.get_by_test_id("revoked-item")
    await expect(
        revoked.filter(has_text="Streams").filter(has_text="NOTIFY: notify.alice")
    ).to_have_count(1)
    await expect(
        revoked.filter(has_text="Feed stopped").filter(has_text="NOTIFY notify.alice")
    ).to_have_count(1)
    stream_grants = alice.locator('[data-testid="cap-grant"][data-kind="streams"]')
    await expect(stream_grants).to_have_text(["CHAT: chat.room.*"])
    # the other feeds stay live
    for feed in ("chat", "todos"):
        await expect(alice.get_by_test_id(f"{feed}-status")).to_have_attribute("data-state", "live")

    # Stored after the page saw the cap_update: the protocol says it is not delivered while
    # the grant is gone. So that it would have shown up by now if it were, a chat line
    # published after it must arrive first.
    meanwhile = f"while revoked {unique('')}"
    await backend.notify("alice", meanwhile)
    barrier = f"barrier {unique('')}"
    await backend.chat(barrier, sender="bob")
    await expect(alice.get_by_test_id("chat-line").filter(has_text=barrier)).to_have_count(1)
    assert await texts(alice, "notify-text") == [first]
    await shot(alice, "test_revoked_capability_stops_the_feed")

    # Granted again: the page binds the durable again by itself and gets what is unread, the
    # one stored meanwhile and the first one again (the gateway NAKed it when the revocation
    # ended the binding).
    await backend.set_caps("alice", demo_caps("alice"))
    await expect(alice.get_by_test_id("notify-status")).to_have_attribute("data-state", "live")
    await expect(items.filter(has_text=meanwhile)).to_have_attribute("data-delivery", "1")
    await expect(items.filter(has_text=first)).to_have_attribute("data-delivery", "2")
    again = f"again {unique('')}"
    await backend.nc.publish("notify.alice", json.dumps({"text": again}).encode())  # core NATS
    await expect(items.filter(has_text=again)).to_have_count(1)
    assert await texts(alice, "notify-text") == [again, meanwhile, first]  # newest first
    await expect(alice.get_by_test_id("notify-unread")).to_have_text("3")


async def test_deleted_capabilities_revoke_every_feed(pages: Pages, backend: Backend) -> None:
    alice = await pages.login("alice")
    tag = unique("")
    await backend.chat(f"before {tag}", sender="bob")
    await expect(alice.get_by_test_id("chat-line").filter(has_text=f"before {tag}")).to_have_count(
        1
    )

    await backend.set_caps("alice", None)  # protocol.md §4: deleting the key revokes everything
    for feed in ("chat", "todos", "notify"):
        await expect(alice.get_by_test_id(f"{feed}-status")).to_have_attribute(
            "data-state", "revoked"
        )
    await expect(alice.get_by_test_id("cap-grant")).to_have_count(0)
    stopped = alice.get_by_test_id("revoked-item").filter(has_text="Feed stopped")
    await expect(stopped).to_have_count(3)
    await expect(alice.get_by_test_id("conn-badge")).to_have_attribute("data-state", "open")
    await shot(alice, "test_deleted_capabilities_revoke_every_feed")

    await backend.chat(f"while revoked {tag}", sender="bob")
    await backend.set_caps("alice", demo_caps("alice"))
    for feed in ("chat", "todos", "notify"):
        await expect(alice.get_by_test_id(f"{feed}-status")).to_have_attribute("data-state", "live")
    # the chat picks up after the last line it showed: what came meanwhile, nothing twice
    await expect(
        alice.get_by_test_id("chat-line").filter(has_text=f"while revoked {tag}")
    ).to_have_count(1)
    await expect(alice.get_by_test_id("chat-line").filter(has_text=f"before {tag}")).to_have_count(
        1
    )
    assert await alice.evaluate("natsgateDemo.stats.chatDuplicates") == 0


async def test_wrong_password_shows_an_error(pages: Pages) -> None:
    # the browser logs the 401 of /auth/login itself
    pages.allow(r"Failed to load resource: the server responded with a status of 401")
    page = await pages.open()
    await page.get_by_test_id("login-user").fill("alice")
    await page.get_by_test_id("login-password").fill("not the password")
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("login-error")).to_have_text("Wrong user name or password.")
    await expect(page.get_by_test_id("app")).to_be_hidden()
    await shot(page, "test_wrong_password_shows_an_error")

    # and the right one still works from the same form
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("conn-badge")).to_have_attribute("data-state", "open")
    await expect(page.get_by_test_id("login-error")).to_be_hidden()


async def test_command_errors_are_shown(pages: Pages, backend: Backend) -> None:
    # A service that takes requests and never answers them.
    got: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await backend.nc.subscribe("svc.slow", cb=got.put)
    await backend.nc.flush()
    caps = demo_caps("alice")
    caps["commands"] = [*caps["commands"], "svc.slow", "svc.nobody"]
    await backend.set_caps("alice", caps)
    try:
        alice = await pages.login("alice")
        await expect(alice.get_by_test_id("cap-grant").filter(has_text="svc.slow")).to_have_count(1)

        await alice.get_by_test_id("echo-input").fill("ping 42")
        await alice.get_by_test_id("echo-send").click()
        echo = alice.get_by_test_id("echo-result")
        await expect(echo).to_have_attribute("data-status", "ok")
        await expect(echo).to_contain_text('"text": "ping 42"')

        await alice.get_by_test_id("cmd-console").locator("summary").click()
        result = alice.get_by_test_id("cmd-result")

        async def command(subject: str, timeout_ms: int = 2000) -> None:
            await alice.get_by_test_id("cmd-subject").fill(subject)
            await alice.get_by_test_id("cmd-timeout").fill(str(timeout_ms))
            await alice.get_by_test_id("cmd-send").click()
            await expect(alice.get_by_test_id("cmd-send")).to_be_enabled()

        await command("svc.slow", 1000)
        await expect(result).to_have_attribute("data-code", "timeout")
        await expect(result).to_have_attribute("data-status", "error")
        await expect(result).to_contain_text("Timed out")
        request = await asyncio.wait_for(got.get(), T)
        assert request.headers and request.headers.get("Natsgate-User") == "alice"
        await shot(alice, "test_command_errors_are_shown-timeout")

        await command("svc.admin.reset")
        await expect(result).to_have_attribute("data-code", "forbidden")
        await expect(result).to_have_text(
            re.compile(r"^forbidden\s*Not allowed — .*'svc\.admin\.reset'$")
        )

        await command("svc.nobody")
        await expect(result).to_have_attribute("data-code", "no_responders")

        await alice.get_by_test_id("cmd-payload").fill("{not json")
        await command("svc.echo")
        await expect(result).to_have_attribute("data-code", "payload")

        await alice.get_by_test_id("cmd-payload").fill('{"n": 7}')
        await command("svc.echo")
        await expect(result).to_have_attribute("data-status", "ok")
        await expect(result).to_contain_text('"n": 7')

        # a service's own refusal, in the todo list
        await alice.get_by_test_id("todo-input").evaluate("el => el.removeAttribute('maxlength')")
        await alice.get_by_test_id("todo-input").fill("x" * 501)
        await alice.get_by_test_id("todo-add").click()
        await expect(alice.get_by_test_id("todo-error")).to_contain_text("1 to 500 characters")

        await command("svc.admin.reset")
        await expect(result).to_have_attribute("data-code", "forbidden")
        await shot(alice, "test_command_errors_are_shown")
    finally:
        await sub.unsubscribe()


async def test_phone_layout_and_logout(pages: Pages, backend: Backend) -> None:
    ctx = await pages.context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = await pages.login("bob", ctx)
    tag = unique("")
    await backend.chat(f"morning, bob {tag}", sender="alice")
    await page.get_by_test_id("chat-input").fill(f"morning! {tag}")
    await page.get_by_test_id("chat-send").click()
    await expect(page.get_by_test_id("chat-line").filter(has_text=f"morning! {tag}")).to_have_count(
        1
    )
    await page.get_by_test_id("todo-input").fill("water the plants")
    await page.get_by_test_id("todo-add").click()
    await expect(
        page.get_by_test_id("todo-item").filter(has_text="water the plants")
    ).to_have_count(1)
    await page.get_by_test_id("notify-self").click()
    await expect(page.get_by_test_id("notify-item")).to_have_count(1)
    await page.get_by_test_id("echo-send").click()
    await expect(page.get_by_test_id("echo-result")).to_have_attribute("data-status", "ok")

    # nothing wider than the screen
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide on a 390px screen"
    for testid in ("chat", "todos", "notify", "services", "caps", "logout", "conn-badge"):
        box = await page.get_by_test_id(testid).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (testid, box)
    await shot(page, "test_phone_layout", full_page=False)
    await shot(page, "test_phone_layout-full")

    await page.get_by_test_id("logout").click()
    await expect(page.get_by_test_id("login")).to_be_visible()
    await expect(page.get_by_test_id("app")).to_be_hidden()
    assert await page.evaluate("natsgateDemo.client.state") == "closed"
    me = await ctx.request.get("/auth/me")
    assert me.status == 401, "the jwt cookie outlived the logout"
    await page.reload()
    await expect(page.get_by_test_id("login")).to_be_visible()
    await shot(page, "test_phone_layout-login", full_page=False)


@pytest.mark.parametrize(
    ("name", "width", "height", "scheme"),
    [
        ("tablet", 1024, 768, "light"),
        ("wide-dark", 1440, 900, "dark"),
    ],
)
async def test_layout_at_other_sizes(
    pages: Pages, backend: Backend, name: str, width: int, height: int, scheme: str
) -> None:
    ctx = await pages.context(viewport={"width": width, "height": height}, color_scheme=scheme)
    page = await pages.login("alice", ctx)
    tag = unique("")
    for i in range(3):
        await backend.chat(f"line {i} {tag}", sender="bob" if i % 2 else "alice")
    await expect(page.get_by_test_id("chat-line").filter(has_text=f"line 2 {tag}")).to_have_count(1)
    await page.get_by_test_id("todo-input").fill(f"review the layout ({name})")
    await page.get_by_test_id("todo-add").click()
    await expect(page.get_by_test_id("todo-item").filter(has_text=name)).to_have_count(1)
    await page.get_by_test_id("notify-self").click()
    await expect(page.get_by_test_id("notify-item")).to_have_count(1)
    width_now = await page.evaluate("document.documentElement.scrollWidth")
    assert width_now <= width
    await shot(page, f"test_layout_at_other_sizes-{name}")


async def test_expired_session_ends_with_a_banner(pages: Pages, backend: Backend) -> None:
    """A token that runs out closes the socket (4001); without a way to renew it the client
    stops, and the page says so and offers a new login."""
    ctx = await pages.context()
    token = mint_token("alice", backend.secret, 5)  # the login cookie lasts 12 h: forge a short one
    await ctx.add_cookies([{"name": "jwt", "value": token, "url": pages.gateway.url}])
    page = await pages.open(ctx)
    await page.evaluate("localStorage.setItem('natsgate.demo.user', 'alice')")  # "logged in before"
    await page.reload()
    badge = page.get_by_test_id("conn-badge")
    await expect(badge).to_have_attribute("data-state", "open")

    await expect(badge).to_have_attribute("data-state", "closed")  # when the token runs out
    await expect(page.get_by_test_id("banner")).to_contain_text("The connection has ended")
    await expect(page.get_by_test_id("toast").filter(has_text="token expired")).to_have_count(1)
    await shot(page, "test_expired_session_ends_with_a_banner")

    await page.get_by_test_id("banner-login").click()
    await expect(page.get_by_test_id("login")).to_be_visible()
    await page.get_by_test_id("login-user").fill("alice")
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    await expect(badge).to_have_attribute("data-state", "open")
    await expect(page.get_by_test_id("banner")).to_be_hidden()
