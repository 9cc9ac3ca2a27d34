// notify.js: the notifications card. Core NATS subject notify.<me>, newest first, the last
// 50 kept; "Notify me" publishes to it from this tab.

import { coveredByAny } from "/natsgate.js";
import { $, h, say } from "./dom.js";
import { feed } from "./feed.js";
import { clock, describe, payloadText } from "./format.js";

/** @typedef {import("/natsgate.js").NatsgateClient} NatsgateClient */
/** @typedef {import("./feed.js").Feed} Feed */

const KEEP = 50; // notifications shown at most

/**
 * @param {NatsgateClient} client
 * @param {string} me the signed-in user
 * @returns {Feed}
 */
export function notifyWidget(client, me) {
  const subject = `notify.${me}`;
  const list = $("notify-list");
  const empty = $("notify-empty");
  $("notify-subject").textContent = subject;

  $("notify-self").addEventListener("click", async () => {
    const error = $("notify-error");
    try {
      await client.publish(subject, { text: "A note to myself, from this tab" });
      say(error, "");
    } catch (err) {
      say(error, `Not sent: ${describe(err)}`);
    }
  });

  return feed({
    name: "Notifications",
    pill: $("notify-status"),
    allowed: (caps) => coveredByAny(caps.subjects ?? [], subject),
    open: () =>
      client.subscribe(subject, (data) => {
        const now = new Date();
        list.prepend(
          h(
            "li",
            { testid: "notify-item" },
            h("span", { class: "text", testid: "notify-text" }, payloadText(data)),
            h("time", { datetime: now.toISOString() }, clock(now)),
          ),
        );
        while (list.children.length > KEEP) list.lastElementChild?.remove();
        empty.hidden = true;
      }),
  });
}
