// commands.js: the commands card. "Echo" asks svc.echo; the console sends any command
// with a JSON payload and a timeout, and shows what came back or why nothing did (timeout,
// forbidden, no responders, ...), with the error code in data-code.

import { $, h, showResult } from "./dom.js";
import { describe, errorCode, pretty } from "./format.js";

/** @typedef {import("/natsgate.js").NatsgateClient} NatsgateClient */

/** How long the page waits for a service (the echo, the todo service). */
export const COMMAND_TIMEOUT_MS = 5000;
const CONSOLE_TIMEOUT_MS = 2000; // when the console's timeout field is empty

/** @param {NatsgateClient} client */
export function commandWidget(client) {
  $("echo-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("echo-result");
    const button = $("echo-send", HTMLButtonElement);
    const text = $("echo-input", HTMLInputElement).value;
    button.disabled = true;
    const started = performance.now();
    try {
      const reply = await client.command("svc.echo", { text }, { timeoutMs: COMMAND_TIMEOUT_MS });
      const ms = Math.round(performance.now() - started);
      showResult(out, { ok: true, title: `svc.echo replied in ${ms} ms`, body: pretty(reply) });
    } catch (err) {
      showResult(out, { ok: false, code: errorCode(err), title: describe(err) });
    } finally {
      button.disabled = false;
    }
  });

  $("cmd-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("cmd-result");
    const subject = $("cmd-subject", HTMLInputElement).value.trim();
    const timeoutMs = Number($("cmd-timeout", HTMLInputElement).value) || CONSOLE_TIMEOUT_MS;
    /** @type {unknown} */
    let payload;
    try {
      const raw = $("cmd-payload", HTMLTextAreaElement).value.trim();
      payload = raw ? JSON.parse(raw) : null;
    } catch (err) {
      showResult(out, { ok: false, code: "payload", title: `The payload is not JSON: ${describe(err)}` });
      return;
    }
    if (!subject) {
      showResult(out, { ok: false, code: "subject", title: "Give a subject, e.g. svc.echo" });
      return;
    }
    const button = $("cmd-send", HTMLButtonElement);
    button.disabled = true;
    out.hidden = false;
    out.dataset.status = "pending";
    out.replaceChildren(h("span", { class: "result-title" }, `Waiting for ${subject}…`));
    const started = performance.now();
    try {
      const reply = await client.command(subject, payload, { timeoutMs });
      const ms = Math.round(performance.now() - started);
      showResult(out, { ok: true, title: `${subject} replied in ${ms} ms`, body: pretty(reply) });
    } catch (err) {
      showResult(out, { ok: false, code: errorCode(err), title: describe(err) });
    } finally {
      button.disabled = false;
    }
  });
}
