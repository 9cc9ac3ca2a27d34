// The natsgate demo: plain ES modules, no framework, no build step (the gateway serves
// them as they are). This module boots the page and signs in and out; the rest is in js/:
//
//   js/dom.js       DOM helpers: $ by data-testid, h() to build elements, toasts
//   js/format.js    text for people: times, failures, payloads
//   js/feed.js      a card's subscription, kept open while the capabilities allow it
//   js/chat.js      chat: JetStream stream CHAT, subject chat.room.lobby (history, live, resume)
//   js/online.js    who is online in the room: presence (join chat.room.lobby, its members)
//   js/typing.js    "… is typing": publish/subscribe on chat.typing.lobby, throttled, expiring
//   js/todos.js     todos: commands svc.todos.add|toggle|delete; state read back ONLY from
//                   the KV watch on bucket "todos", keys user.<me>.>
//   js/notify.js    notifications: stream NOTIFY, subject notify.<me>, through the durable
//                   "inbox": unread until marked read (acked), on any device
//   js/commands.js  commands: svc.echo, or any subject (timeout, forbidden, ... are shown)
//   js/caps.js      capabilities: the live cap_update events, with what was revoked
//   js/session.js   one signed-in session: the client, the cards, the connection badge
//
// Everything on this page goes through one WebSocket (docs/client.md).
import { $, say } from "./js/dom.js";
import { describe } from "./js/format.js";
import { startSession, stopSession } from "./js/session.js";

const HINT_KEY = "natsgate.demo.user"; // "someone logged in here": the jwt cookie is HttpOnly

/**
 * A string field of a JSON body, if it has one.
 * @param {unknown} body
 * @param {string} name
 */
function field(body, name) {
  if (!body || typeof body !== "object") return undefined;
  const value = /** @type {Record<string, unknown>} */ (body)[name];
  return typeof value === "string" ? value : undefined;
}

/** @param {string} me */
function signedIn(me) {
  startSession(me, { signInAgain: () => void logout() });
}

/** @param {string} [message] */
function showLogin(message = "") {
  $("app").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  say($("login-error"), message);
  $("login-user").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = $("login-user", HTMLInputElement).value.trim();
  const password = $("login-password", HTMLInputElement).value;
  const error = $("login-error");
  if (!username || !password) {
    say(error, "Give a user name and a password.");
    return;
  }
  const button = $("login-submit", HTMLButtonElement);
  button.disabled = true;
  try {
    const response = await fetch("/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username, password }),
    });
    /** @type {unknown} */
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      const me = field(body, "user") ?? username;
      localStorage.setItem(HINT_KEY, me);
      $("login-password", HTMLInputElement).value = "";
      say(error, "");
      signedIn(me);
    } else if (response.status === 401) {
      say(error, "Wrong user name or password.");
    } else if (response.status === 429) {
      say(error, "Too many failed attempts. Wait a minute and try again.");
    } else {
      say(error, field(body, "error") ?? `Login failed (HTTP ${response.status}).`);
    }
  } catch (err) {
    say(error, `Cannot reach the gateway: ${describe(err)}`);
  } finally {
    button.disabled = false;
  }
});

async function logout() {
  stopSession();
  localStorage.removeItem(HINT_KEY);
  try {
    // JSON only: the gateway refuses other content types (no cross-site form posts)
    await fetch("/auth/logout", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
  } catch {
    // the cookie stays until it expires; the page is logged out either way
  }
  showLogin();
}

$("logout").addEventListener("click", () => void logout());

async function boot() {
  // /auth/me answers 401 when nobody is logged in, which browsers log as an error: ask only
  // when this browser has logged in before.
  if (!localStorage.getItem(HINT_KEY)) {
    showLogin();
    return;
  }
  try {
    const response = await fetch("/auth/me");
    if (response.ok) {
      /** @type {unknown} */
      const body = await response.json();
      signedIn(field(body, "user") ?? "");
      return;
    }
    localStorage.removeItem(HINT_KEY);
    showLogin(response.status === 401 ? "" : `The gateway answered HTTP ${response.status}.`);
  } catch (err) {
    showLogin(`Cannot reach the gateway: ${describe(err)}`);
  }
}

void boot();
