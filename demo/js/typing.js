// typing.js: "bob is typing…" under the chat. Plain publish/subscribe on chat.typing.lobby
// (not stored: the CHAT stream holds chat.room.* only). While the chat input changes, the
// page publishes {typing: true} at most every THROTTLE_MS; sending the line, or emptying the
// input, publishes {typing: false}. A typist is shown until EXPIRE_MS after their last
// event, their {typing: false}, their next chat line, or their going offline. Who typed is
// the header the gateway sets, never the payload.

import { coveredByAny } from "/natsgate.js";
import { ROOM } from "./chat.js";
import { $ } from "./dom.js";
import { feed } from "./feed.js";
import { senderOf } from "./format.js";

/** @typedef {import("/natsgate.js").Caps} Caps */
/** @typedef {import("/natsgate.js").CoreMessage} CoreMessage */
/** @typedef {import("/natsgate.js").NatsgateClient} NatsgateClient */
/** @typedef {import("./feed.js").Feed} Feed */

export const TYPING = `chat.typing.${ROOM.split(".").pop()}`;
const THROTTLE_MS = 1000; // at most one "typing" per second from a page
const EXPIRE_MS = 3000; // a typist not heard from for this long has stopped

/**
 * @param {string[]} names
 * @returns {string}
 */
function sentence(names) {
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

/**
 * @param {NatsgateClient} client
 * @param {string} me the signed-in user
 * @returns {Feed & {stopped: (user: string) => void}}
 */
export function typingWidget(client, me) {
  const line = $("typing");
  const text = $("typing-text");
  const input = $("chat-input", HTMLInputElement);
  /** @type {Map<string, ReturnType<typeof setTimeout>>} typists and their expiry */
  const typists = new Map();
  /** When this page last said it is typing; 0: it is not. */
  let sentAt = 0;

  function render() {
    const names = [...typists.keys()].sort();
    line.hidden = names.length === 0;
    line.dataset.users = names.join(" ");
    text.textContent = names.length ? sentence(names) : "";
  }

  /** @param {string} user */
  function stopped(user) {
    clearTimeout(typists.get(user));
    if (typists.delete(user)) render();
  }

  /** @param {unknown} data @param {CoreMessage} msg */
  function onTyping(data, msg) {
    const user = senderOf(msg.headers);
    if (!user || user === me) return;
    const typing = !(data && typeof data === "object" && "typing" in data && data.typing === false);
    if (!typing) return stopped(user);
    clearTimeout(typists.get(user));
    typists.set(user, setTimeout(() => stopped(user), EXPIRE_MS));
    render();
  }

  /** @param {boolean} typing */
  function say(typing) {
    if (!coveredByAny(client.caps?.publish ?? [], TYPING) || client.state !== "open") return;
    sentAt = typing ? Date.now() : 0;
    // best effort: a lost "typing" expires by itself on the other side
    client.publish(TYPING, { typing }).catch(() => {});
  }

  input.addEventListener("input", () => {
    if (!input.value.trim()) {
      if (sentAt) say(false);
    } else if (Date.now() - sentAt >= THROTTLE_MS) {
      say(true);
    }
  });
  $("chat-form").addEventListener("submit", () => {
    if (sentAt) say(false);
  });

  const sub = feed({
    name: "Typing",
    card: line,
    allowed: (caps) => coveredByAny(caps.subjects ?? [], TYPING),
    open: () => client.subscribe(TYPING, onTyping),
  });
  return { arm: sub.arm, stopped };
}
