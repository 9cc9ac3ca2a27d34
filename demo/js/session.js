// session.js: one signed-in session — a fresh copy of the app's markup, one client
// (one WebSocket), the five cards wired to it (the chat with who is online and who is
// typing), and the connection badge. Also the debug
// handle `natsgateDemo` that the browser tests (and curious people in devtools) read.

import { connect } from "/natsgate.js";
import { capsWidget } from "./caps.js";
import { chatWidget } from "./chat.js";
import { commandWidget } from "./commands.js";
import { $, h, toast } from "./dom.js";
import { describe } from "./format.js";
import { notifyWidget } from "./notify.js";
import { onlineWidget } from "./online.js";
import { todoWidget } from "./todos.js";
import { typingWidget } from "./typing.js";

/** @typedef {import("/natsgate.js").NatsgateClient} NatsgateClient */
/** @typedef {import("/natsgate.js").ClientState} ClientState */

/** @type {Record<ClientState, string>} */
const BADGE_TEXT = {
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  closed: "Offline",
};

/**
 * @param {ClientState} state
 * @param {string} [detail] the badge's tooltip
 */
function setBadge(state, detail = "") {
  const badge = $("conn-badge");
  badge.dataset.state = state;
  const text = badge.querySelector(".badge-text");
  if (text) text.textContent = BADGE_TEXT[state];
  badge.title = detail;
}

/**
 * What the browser tests read: the client, who is signed in, every client state in order,
 * and how many chat lines arrived twice (must stay 0).
 * @type {{client: NatsgateClient | null, me: string | null, states: ClientState[],
 *   stats: {chatDuplicates: number}}}
 */
const debug = { client: null, me: null, states: [], stats: { chatDuplicates: 0 } };
Object.assign(globalThis, { natsgateDemo: debug });

// the app's markup as the page loaded it; each session starts from a copy
const pristineApp = $("app").cloneNode(true);

/** @type {{client: NatsgateClient, me: string, stopping: boolean} | null} */
let session = null;

/**
 * Show the app for `me` and connect.
 * @param {string} me
 * @param {{signInAgain: () => void}} hooks what the banner's "Log in again" does
 */
export function startSession(me, { signInAgain }) {
  // a fresh copy of the app markup for every session: nothing left over from the last one
  const app = /** @type {HTMLElement} */ (pristineApp.cloneNode(true));
  $("app").replaceWith(app);
  $("login").hidden = true;
  app.hidden = false;
  $("session").hidden = false;
  $("whoami").textContent = me;
  setBadge("connecting");

  const client = connect(undefined, { maxDelayMs: 5000 });
  const stats = { chatDuplicates: 0 };
  Object.assign(debug, { client, me, states: [client.state], stats });
  const current = { client, me, stopping: false };
  session = current;

  client.on("state", (state) => {
    debug.states.push(state);
    setBadge(state);
    if (state === "closed" && !current.stopping) {
      const banner = $("banner");
      banner.hidden = false;
      banner.replaceChildren(
        h("span", {}, "The connection has ended (signed out or no longer allowed)."),
        h("button", { type: "button", class: "ghost", testid: "banner-login", onclick: signInAgain }, "Log in again"),
      );
    }
  });
  client.on("disconnect", ({ code, reconnectInMs }) => {
    if (reconnectInMs !== null) setBadge("reconnecting", `socket closed (${code}); retrying in ${(reconnectInMs / 1000).toFixed(1)} s`);
  });
  client.on("error", (err) => toast(describe(err)));

  const typing = typingWidget(client, me);
  const feeds = [
    chatWidget(client, me, stats, typing.stopped), // a line ends its sender's typing
    onlineWidget(client, me, typing.stopped), // so does going offline
    typing,
    todoWidget(client, me),
    notifyWidget(client, me),
  ];
  commandWidget(client);
  const caps = capsWidget();
  client.on("cap_update", (update) => {
    caps.update(update);
    for (const f of feeds) void f.arm(update.caps);
  });
}

/** Close the session's connection (on purpose: no "connection has ended" banner). */
export function stopSession() {
  if (!session) return;
  session.stopping = true;
  session.client.close();
  session = null;
}
