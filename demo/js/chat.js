// chat.js: the chat card. JetStream stream CHAT, subject chat.room.lobby: the last HISTORY
// lines when the page opens, then live; after a revocation and a new grant it resumes where
// it stopped. The sender is the header the gateway sets (docs/protocol.md), never the payload.

import { coveredByAny } from "/natsgate.js";
import { $, h, say } from "./dom.js";
import { feed } from "./feed.js";
import { describe, payloadText, senderOf, stamp } from "./format.js";

/** @typedef {import("/natsgate.js").NatsgateClient} NatsgateClient */
/** @typedef {import("/natsgate.js").JsMessage} JsMessage */
/** @typedef {import("/natsgate.js").JsOptions} JsOptions */
/** @typedef {import("./feed.js").Feed} Feed */

export const ROOM = "chat.room.lobby";
const STREAM = "CHAT";
const HISTORY = 100; // chat lines loaded when the page opens
const RUN_MS = 300_000; // a run of lines from one sender within this shows the sender once

/**
 * @param {NatsgateClient} client
 * @param {string} me the signed-in user
 * @param {{chatDuplicates: number}} stats counted for the browser tests
 * @param {(sender: string) => void} [onLine] told who sent each new line (their typing ended)
 * @returns {Feed}
 */
export function chatWidget(client, me, stats, onLine) {
  const list = $("chat-lines");
  const empty = $("chat-empty");
  const error = $("chat-error");
  const note = $("chat-note");
  /** @type {Map<number, HTMLElement>} rendered lines, keyed by stream sequence */
  const lines = new Map();
  let maxSeq = 0;

  /** @param {JsMessage} m */
  function onMessage(m) {
    if (lines.has(m.seq)) {
      stats.chatDuplicates += 1; // the library promises none; the tests check this stays 0
      return;
    }
    const sender = senderOf(m.headers);
    if (sender) onLine?.(sender);
    const when = m.time ? new Date(m.time) : new Date();
    const li = h(
      "li",
      { class: `line${sender === me ? " mine" : ""}`, testid: "chat-line", "data-seq": m.seq },
      h(
        "div",
        { class: "meta" },
        sender
          ? h("span", { class: "sender", testid: "chat-sender" }, sender)
          : h("span", { class: "sender anon", testid: "chat-sender", title: "published straight to NATS" }, "via NATS"),
        h("time", { datetime: when.toISOString(), title: when.toLocaleString() }, stamp(when)),
      ),
      h("div", { class: "bubble", testid: "chat-text" }, payloadText(m.payload)),
    );
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
    /** @type {HTMLElement | null} the line this one goes before, when it arrives late */
    let before = null;
    if (m.seq < maxSeq) {
      for (const [seq, el] of lines) if (seq > m.seq && (!before || seq < Number(before.dataset.seq))) before = el;
    }
    const prev = before ? before.previousElementSibling : list.lastElementChild;
    if (
      prev instanceof HTMLElement &&
      prev.dataset.seq &&
      prev.dataset.sender === (sender ?? "") &&
      when.getTime() - Number(prev.dataset.at) < RUN_MS
    ) {
      li.classList.add("cont");
    }
    li.dataset.sender = sender ?? "";
    li.dataset.at = String(when.getTime());
    list.insertBefore(li, before);
    lines.set(m.seq, li);
    maxSeq = Math.max(maxSeq, m.seq);
    empty.hidden = true;
    if (stick || sender === me) list.scrollTop = list.scrollHeight;
  }

  async function open() {
    /** @type {JsOptions} */
    const options = { filter: ROOM };
    if (maxSeq > 0) return client.jsResume(STREAM, maxSeq, options, onMessage); // re-granted
    // The last HISTORY messages: ask the stream where it ends, then read from there.
    let startSeq = 1;
    try {
      const probe = client.jsSubscribe(STREAM, options, () => {});
      const info = await probe.ready;
      await probe.unsubscribe();
      startSeq = Math.max(1, info.first_seq ?? 1, (info.last_seq ?? 0) - HISTORY + 1);
    } catch {
      // refused: the subscription below is refused too and says why
    }
    const sub = client.jsSubscribe(STREAM, { ...options, startSeq }, onMessage);
    sub.on("gap", () => say(note, "Older messages have been trimmed from the stream."));
    return sub;
  }

  $("chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("chat-input", HTMLInputElement);
    const text = input.value.trim();
    if (!text) return;
    // cleared at once, so the next line can be typed while this one is on its way
    input.value = "";
    try {
      await client.publish(ROOM, { text });
      say(error, "");
    } catch (err) {
      say(error, `Not sent: ${describe(err)}`);
      if (!input.value) input.value = text; // give it back to retry
    }
  });

  return feed({
    name: "Chat",
    pill: $("chat-status"),
    allowed: (caps) => coveredByAny(caps.streams?.[STREAM] ?? [], ROOM),
    open,
  });
}
