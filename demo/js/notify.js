// notify.js: the notifications card, an inbox that outlives the page. The JetStream stream
// NOTIFY keeps notify.<me> for a day; the durable "inbox" keeps, on the NATS server, which of
// them this user has read (docs/client.md, "Durable subscriptions"). What arrived while the
// user was logged out is here at the next login, in any browser. "Mark read" acks a
// notification: NATS never delivers it again. One left unread comes again (delivery 2, 3,
// ...) after ACK_WAIT_MS, or at once when the page goes away (the gateway NAKs what a closed
// connection did not answer). "Notify me" publishes to notify.<me>; the stream stores it.
//
// Tabs and browsers of one user share the durable: each unread notification is shown by one
// of them at a time (docs/protocol.md: connections bound to one durable share its messages).

import { coveredByAny } from "/natsgate.js";
import { $, h, say } from "./dom.js";
import { feed } from "./feed.js";
import { describe, errorCode, payloadText, stamp } from "./format.js";

/** @typedef {import("/natsgate.js").NatsgateClient} NatsgateClient */
/** @typedef {import("/natsgate.js").JsAckMessage} JsAckMessage */
/** @typedef {import("./feed.js").Feed} Feed */

const STREAM = "NOTIFY";
const DURABLE = "inbox";
const ACK_WAIT_MS = 60_000; // shown and not marked read for this long: NATS delivers it again
const BATCH = 100; // unread notifications shown at most (NATS holds back the rest)

/**
 * @param {NatsgateClient} client
 * @param {string} me the signed-in user
 * @returns {Feed}
 */
export function notifyWidget(client, me) {
  const subject = `notify.${me}`;
  const list = $("notify-list");
  const empty = $("notify-empty");
  const count = $("notify-unread");
  const error = $("notify-error");
  $("notify-subject").textContent = subject;

  /** @type {Map<number, {msg: JsAckMessage, li: HTMLElement}>} unread, by stream sequence */
  const unread = new Map();
  /** @type {Set<number>} marked read while the connection was down: acked when they return */
  const readHere = new Set();

  function render() {
    count.textContent = String(unread.size);
    count.dataset.count = String(unread.size);
    count.title = `${unread.size} unread`;
    empty.hidden = unread.size > 0;
  }

  /** @param {number} seq */
  async function markRead(seq) {
    const entry = unread.get(seq);
    if (!entry) return;
    const { msg, li } = entry;
    li.dataset.state = "marking";
    const button = li.querySelector("button");
    if (button) button.disabled = true;
    try {
      await msg.ackSync(); // resolves once the NATS server has the ack
      say(error, "");
    } catch (err) {
      // disconnected: it comes again on the new connection, acked then. Anything else (the
      // ack wait ran out and another tab has it now, a timeout): it comes again if unread.
      if (errorCode(err) === "disconnected") readHere.add(seq);
      else say(error, `Not marked read: ${describe(err)}`);
    }
    // a later delivery of the same notification may have taken this entry's place meanwhile
    if (unread.get(seq)?.li === li) unread.delete(seq);
    li.remove();
    render();
  }

  /** @param {JsAckMessage} m */
  function onMessage(m) {
    if (readHere.delete(m.seq)) {
      m.ack();
      return;
    }
    const when = m.time ? new Date(m.time) : new Date();
    const li = h(
      "li",
      { testid: "notify-item", "data-seq": m.seq, "data-delivery": m.delivery },
      h("span", { class: "text", testid: "notify-text" }, payloadText(m.payload)),
      h(
        "span",
        { class: "meta" },
        m.delivery > 1
          ? h("span", { class: "again", title: `delivered ${m.delivery} times: not read yet` }, `×${m.delivery}`)
          : null,
        h("time", { datetime: when.toISOString(), title: when.toLocaleString() }, stamp(when)),
        h(
          "button",
          { type: "button", class: "ghost small", testid: "notify-read", onclick: () => void markRead(m.seq) },
          "Mark read",
        ),
      ),
    );
    // at least once: the same seq again (not acked in time, or a connection was lost)
    // replaces its entry; newest first otherwise
    const old = unread.get(m.seq);
    if (old) old.li.replaceWith(li);
    else list.insertBefore(li, newestBelow(m.seq));
    unread.set(m.seq, { msg: m, li });
    render();
  }

  /**
   * The item a new one with this seq goes above: the one with the largest smaller seq.
   * @param {number} seq
   * @returns {HTMLElement | null}
   */
  function newestBelow(seq) {
    let best = 0;
    for (const s of unread.keys()) if (s < seq && s > best) best = s;
    return unread.get(best)?.li ?? null;
  }

  $("notify-self").addEventListener("click", async () => {
    try {
      await client.publish(subject, { text: "A note to myself, from this tab" });
      say(error, "");
    } catch (err) {
      say(error, `Not sent: ${describe(err)}`);
    }
  });
  render();

  return feed({
    name: "Notifications",
    pill: $("notify-status"),
    allowed: (caps) => coveredByAny(caps.streams?.[STREAM] ?? [], subject),
    open: () => {
      // (re)opened after a revocation: what is still unread comes again from the durable
      unread.clear();
      list.replaceChildren();
      render();
      return client.jsSubscribe(
        STREAM,
        {
          durable: DURABLE, // the position lives on the NATS server, under this name
          ack: "explicit", // a notification is read once acked
          ackWaitMs: ACK_WAIT_MS,
          filter: subject,
          startSeq: 1, // when the durable is first made: everything the stream still has
          batch: BATCH,
        },
        onMessage,
      );
    },
  });
}
