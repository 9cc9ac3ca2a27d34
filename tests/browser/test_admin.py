"""The admin console in Chromium: an administrator edits a user's capabilities and the
user's open page loses the revoked feed; a disconnect closes that page's socket with 4003
and it stays closed; a user who is no administrator gets 403 from the API."""

from __future__ import annotations

import json

import pytest

from natsgate.demo import NOTIFY_STREAM, demo_caps

from .conftest import PASSWORD, Backend, Pages, expect, shot

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


async def test_console_edits_caps_and_disconnects(pages: Pages, backend: Backend) -> None:
    pages.allow(r"status of 40[013]")  # the browser logs the 401 before sign-in, 403, 400 below
    await backend.set_caps("bob", {**demo_caps("bob"), "admin": True})
    alice = await pages.login("alice")
    await alice.evaluate(
        """() => { window.closeCodes = [];
        natsgateDemo.client.on("disconnect", (e) => window.closeCodes.push(e.code)); }"""
    )
    # alice is no administrator: the API says 403, the console says so too
    status = await alice.evaluate("fetch('/admin/api/connections').then(r => r.status)")
    assert status == 403
    denied = await pages.open(alice.context)
    await denied.goto("/admin")
    await expect(denied.get_by_test_id("admin-denied")).to_be_visible()
    await expect(denied.get_by_test_id("admin-denied-user")).to_have_text("alice")
    await denied.close()

    admin = await pages.open()
    await admin.goto("/admin")
    await admin.get_by_test_id("admin-login-user").fill("bob")
    await admin.get_by_test_id("admin-login-password").fill(PASSWORD)
    await admin.get_by_test_id("admin-login-submit").click()
    await expect(admin.get_by_test_id("admin-whoami")).to_have_text("bob")
    rows = admin.locator('[data-testid="conn-row"][data-user="alice"]')
    await expect(rows).to_have_count(1)
    await expect(
        admin.locator('[data-testid="metric"][data-name="natsgate_open_connections"] dd')
    ).not_to_have_text("0")

    # the capabilities editor: a document the gateway cannot read is refused with the reason
    await admin.get_by_test_id("caps-user").fill("alice")
    await admin.get_by_test_id("caps-load").click()
    text = admin.get_by_test_id("caps-text")
    await expect(text).to_be_enabled()
    assert json.loads(await text.input_value()) == demo_caps("alice")
    await text.fill('{"subjects": "chat.>"}')
    await admin.get_by_test_id("caps-save").click()
    result = admin.get_by_test_id("caps-result")
    await expect(result).to_have_attribute("data-state", "error")
    await expect(result).to_contain_text("subjects must be a list")

    # a save without the NOTIFY grant: alice's open page gets the revocation
    caps = demo_caps("alice")
    caps["streams"] = {k: v for k, v in caps["streams"].items() if k != NOTIFY_STREAM}
    await text.fill(json.dumps(caps, indent=2))
    await admin.get_by_test_id("caps-save").click()
    await expect(result).to_have_attribute("data-state", "saved")
    await expect(alice.get_by_test_id("notify-status")).to_have_attribute("data-state", "revoked")
    await expect(
        alice.get_by_test_id("revoked-item").filter(has_text="NOTIFY: notify.alice")
    ).to_have_count(1)
    for feed in ("chat", "todos"):
        await expect(alice.get_by_test_id(f"{feed}-status")).to_have_attribute("data-state", "live")
    await shot(admin, "test_admin_console")

    # disconnect alice: 4003, and her page does not come back by itself
    await admin.get_by_test_id("disconnect-user").fill("alice")
    await admin.get_by_test_id("disconnect-user-submit").click()
    await expect(admin.get_by_test_id("disconnect-result")).to_contain_text("1 connection closed")
    await expect(alice.get_by_test_id("conn-badge")).to_have_attribute("data-state", "closed")
    await expect(alice.get_by_test_id("banner")).to_be_visible()
    assert await alice.evaluate("window.closeCodes") == [4003]
    states = await alice.evaluate("natsgateDemo.states")
    assert states[-1] == "closed" and "reconnecting" not in states, states
    await expect(rows).to_have_count(0)
    await shot(alice, "test_admin_disconnected_page")
