// The natsgate demo: plain ES modules, no framework, no build step.
//
// Everything on this page goes through one WebSocket (docs/client.md):
//   chat           JetStream stream CHAT, subject chat.room.lobby (history, live, resume)
//   todos          commands svc.todos.add|toggle|delete; state read back ONLY from the KV
//                  watch on bucket "todos", keys user.<me>.>
//   notifications  core subject notify.<me>
//   commands       svc.echo, or any subject (errors such as timeout or forbidden are shown)
//   capabilities   the live cap_update events, with what was revoked
import { connect } from "/natsgate.js";

const ROOM = "chat.room.lobby";
const STREAM = "CHAT";
const BUCKET = "todos";
const HISTORY = 100; // chat lines loaded when the page opens
const USER_HEADER = "natsgate-user"; // set by the gateway alone (contract §3)
const HINT_KEY = "natsgate.demo.user"; // "someone logged in here": the jwt cookie is HttpOnly
const COMMAND_TIMEOUT_MS = 5000;

// --------------------------------------------------------------------------- DOM helpers

/** @param {string} id @param {ParentNode} [root] @returns {any} */
const $ = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);

/**
 * A tiny element builder: text children become text nodes (never HTML).
 * @param {string} tag
 * @param {Record<string, unknown>} [props]
 * @param {...(Node | string | number | null | undefined | false)} children
 */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = String(value);
    else if (key === "testid") el.dataset.testid = String(value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), /** @type {EventListener} */ (value));
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "number" ? String(child) : child);
  }
  return el;
}

/** Show a message in an element, or hide the element when there is none. */
function say(el, text) {
  el.textContent = text || "";
  el.hidden = !text;
}

const clock = (date) =>
  date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/** "14:05" today, "3 Mar 14:05" before. */
function stamp(date) {
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

const ERROR_LABELS = {
  timeout: "Timed out",
  forbidden: "Not allowed",
  no_responders: "No service is listening",
  not_found: "Not found",
  bad_request: "Bad request",
  unauthorized: "Not signed in",
  limit: "Limit reached",
  backpressure: "Too slow",
  internal: "Gateway error",
  disconnected: "Connection lost",
  closed: "Connection closed",
  protocol: "Protocol error",
};

/** A failure as one line for people: "Timed out — no reply to cmd svc.x in 2000 ms". */
function describe(err) {
  if (err && typeof err === "object" && "code" in err && typeof err.code === "string") {
    return `${ERROR_LABELS[err.code] ?? err.code} — ${err.message}`;
  }
  return err instanceof Error ? err.message : String(err);
}

const errorCode = (err) =>
  err && typeof err === "object" && typeof err.code === "string" ? err.code : "error";

/**
 * Fill an <output> with a command's outcome.
 * @param {HTMLElement} el
 * @param {{ok: boolean, code?: string, title: string, body?: string}} r
 */
function showResult(el, r) {
  el.hidden = false;
  el.dataset.status = r.ok ? "ok" : "error";
  el.dataset.code = r.code ?? "";
  const title = h("span", { class: "result-title" }, r.ok ? null : h("span", { class: "code" }, r.code ?? "error"), r.title);
  el.replaceChildren(title, ...(r.body ? [h("pre", {}, r.body)] : []));
}

/** @param {string} text @param {"error" | "info"} [kind] */
function toast(text, kind = "error") {
  const item = h(
    "div",
    { class: `toast ${kind}`, testid: "toast", role: kind === "error" ? "alert" : "status" },
    h("span", {}, text),
    h("button", { type: "button", class: "icon", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"),
  );
  $("toasts").append(item);
  setTimeout(() => item.remove(), 8000);
}

// --------------------------------------------------------------------------- NATS helpers

/**
 * Does a granted pattern cover all of a requested one (contract §4)? The gateway decides;
 * the page only uses this to know which feeds to (re)open after a capability change.
 */
function covers(grant, pattern) {
  const g = grant.split(".");
  const p = pattern.split(".");
  for (let i = 0; i < g.length; i++) {
    if (g[i] === ">") return p.length > i;
    if (i >= p.length) return false;
    if (g[i] === "*") {
      if (p[i] === ">") return false;
    } else if (g[i] !== p[i]) return false;
  }
  return g.length === p.length;
}

const anyCovers = (grants, pattern) =>
  Array.isArray(grants) && grants.some((g) => typeof g === "string" && covers(g, pattern));

/** A header's first value, by case-insensitive name. */
function header(headers, name) {
  if (!headers) return undefined;
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === name) return Array.isArray(value) ? value[0] : value;
  }
  return undefined;
}

function payloadText(payload) {
  if (typeof payload === "string") return payload;
  if (payload && typeof payload === "object" && !(payload instanceof Uint8Array)) {
    for (const field of ["text", "title", "message"]) {
      if (typeof payload[field] === "string") return payload[field];
    }
  }
  if (payload instanceof Uint8Array) return `(${payload.length} bytes)`;
  return JSON.stringify(payload);
}

const pretty = (value) =>
  value instanceof Uint8Array ? `(${value.length} bytes)` : JSON.stringify(value, null, 2);

const SUB_PILLS = {
  subscribing: ["syncing", "syncing…"],
  active: ["live", "live"],
  revoked: ["revoked", "revoked"],
  ended: ["off", "off"],
};

/**
 * A feed the page keeps open while the capabilities allow it: opened on the first
 * cap_update, re-opened if a later one grants it again after a revocation.
 * @param {{name: string, pill: HTMLElement, allowed: (caps: any) => boolean, open: () => any | Promise<any>}} spec
 */
function feed({ name, pill, allowed, open }) {
  let sub = null;
  let opening = false;
  const card = pill.closest(".card");
  const setPill = (state, text) => {
    pill.dataset.state = state;
    pill.textContent = text;
    card.dataset.feed = state;
  };
  return {
    get sub() {
      return sub;
    },
    async arm(caps) {
      if (opening || (sub && !sub.ended)) return;
      if (!allowed(caps)) {
        if (!sub) setPill("off", "not permitted");
        return;
      }
      opening = true;
      try {
        sub = await open();
      } finally {
        opening = false;
      }
      const onState = (state) => setPill(...SUB_PILLS[state]);
      onState(sub.state);
      sub.on("state", onState);
      sub.on("error", (err) => toast(`${name}: ${describe(err)}`));
      sub.ready.catch((err) => {
        if (err?.code === "closed") return;
        setPill("error", errorCode(err));
        toast(`${name}: ${describe(err)}`);
      });
    },
  };
}

// --------------------------------------------------------------------------- widgets

function chatWidget(client, me, stats) {
  const list = $("chat-lines");
  const empty = $("chat-empty");
  const error = $("chat-error");
  const note = $("chat-note");
  /** @type {Map<number, HTMLElement>} rendered lines, keyed by stream sequence */
  const lines = new Map();
  let maxSeq = 0;

  function onMessage(m) {
    if (lines.has(m.seq)) {
      stats.chatDuplicates += 1; // the library promises none; the tests check this stays 0
      return;
    }
    const sender = header(m.headers, USER_HEADER);
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
    let before = null;
    if (m.seq < maxSeq) {
      for (const [seq, el] of lines) if (seq > m.seq && (!before || seq < Number(before.dataset.seq))) before = el;
    }
    // a run of lines from one sender within five minutes shows the sender once
    const prev = before ? before.previousElementSibling : list.lastElementChild;
    if (prev?.dataset.seq && prev.dataset.sender === (sender ?? "") && when - Number(prev.dataset.at) < 300_000) {
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

  const form = $("chat-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("chat-input");
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
    allowed: (caps) => anyCovers(caps?.streams?.[STREAM], ROOM),
    open,
  });
}

function todoWidget(client, me) {
  const pattern = `user.${me}.>`;
  const list = $("todo-list");
  const empty = $("todo-empty");
  const count = $("todo-count");
  const error = $("todo-error");
  /** @type {Map<string, {id: string, text: string, done: boolean}>} key → todo, from KV only */
  const todos = new Map();
  const busy = new Set();

  async function run(action, payload) {
    say(error, "");
    try {
      const reply = await client.command(`svc.todos.${action}`, payload, { timeoutMs: COMMAND_TIMEOUT_MS });
      if (reply && typeof reply === "object" && reply.ok === false) {
        say(error, `The todo service said: ${reply.error ?? "no"}`);
        return false;
      }
      return true;
    } catch (err) {
      say(error, `Could not ${action}: ${describe(err)}`);
      return false;
    }
  }

  async function act(todo, action) {
    if (busy.has(todo.id)) return;
    busy.add(todo.id);
    render();
    try {
      await run(action, { id: todo.id });
    } finally {
      busy.delete(todo.id);
      render(); // the new state itself arrives through the KV watch
    }
  }

  function render() {
    const items = [...todos.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    list.replaceChildren(
      ...items.map((todo) =>
        h(
          "li",
          {
            class: `todo${todo.done ? " done" : ""}${busy.has(todo.id) ? " busy" : ""}`,
            testid: "todo-item",
            "data-id": todo.id,
            "data-done": String(Boolean(todo.done)),
          },
          h(
            "button",
            {
              type: "button",
              class: "check",
              role: "checkbox",
              "aria-checked": String(Boolean(todo.done)),
              "aria-label": `Done: ${todo.text}`,
              testid: "todo-toggle",
              onclick: () => act(todo, "toggle"),
            },
            todo.done ? "✓" : "",
          ),
          h("span", { class: "text", testid: "todo-text" }, todo.text),
          h(
            "button",
            {
              type: "button",
              class: "icon delete",
              "aria-label": `Delete: ${todo.text}`,
              title: "Delete",
              testid: "todo-delete",
              onclick: () => act(todo, "delete"),
            },
            "×",
          ),
        ),
      ),
    );
    const open = items.filter((t) => !t.done).length;
    empty.hidden = items.length > 0;
    count.textContent = items.length ? `${open} of ${items.length} open` : "";
  }

  $("todo-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("todo-input");
    const text = input.value.trim();
    if (!text) return;
    input.value = ""; // the todo shows up when the KV watch delivers it
    if (!(await run("add", { text })) && !input.value) input.value = text;
  });

  render();
  return feed({
    name: "Todos",
    pill: $("todos-status"),
    allowed: (caps) => anyCovers(caps?.buckets?.[BUCKET], pattern),
    open() {
      todos.clear(); // a new watch (after a revocation) starts from its own snapshot
      const sub = client.kvSubscribe(
        BUCKET,
        pattern,
        (entry, { snapshot }) => {
          const todo = entry.value;
          if (entry.op === "PUT" && todo && typeof todo === "object" && typeof todo.text === "string") {
            todos.set(entry.key, { id: String(todo.id ?? entry.key.split(".").pop()), text: todo.text, done: Boolean(todo.done) });
          } else {
            todos.delete(entry.key); // DEL, PURGE (or a value that is not a todo)
          }
          if (!snapshot) render();
        },
        { onResync: () => todos.clear() }, // a re-hydration starts from scratch
      );
      sub.on("synced", render);
      return sub;
    },
  });
}

function notifyWidget(client, me) {
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
    allowed: (caps) => anyCovers(caps?.subjects, subject),
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
        while (list.children.length > 50) list.lastElementChild.remove();
        empty.hidden = true;
      }),
  });
}

function commandWidget(client) {
  $("echo-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("echo-result");
    const button = $("echo-send");
    const text = $("echo-input").value;
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
    const subject = $("cmd-subject").value.trim();
    const timeoutMs = Number($("cmd-timeout").value) || 2000;
    let payload;
    try {
      const raw = $("cmd-payload").value.trim();
      payload = raw ? JSON.parse(raw) : null;
    } catch (err) {
      showResult(out, { ok: false, code: "payload", title: `The payload is not JSON: ${err.message}` });
      return;
    }
    if (!subject) {
      showResult(out, { ok: false, code: "subject", title: "Give a subject, e.g. svc.echo" });
      return;
    }
    const button = $("cmd-send");
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

const CAP_SECTIONS = [
  ["subjects", "Subscribe"],
  ["publish", "Publish"],
  ["commands", "Commands"],
  ["buckets", "KV buckets"],
  ["streams", "Streams"],
];

/** Capabilities as a flat list of [section, label] grants. */
function grants(caps) {
  const out = [];
  for (const [field] of CAP_SECTIONS) {
    const value = caps?.[field];
    if (Array.isArray(value)) for (const g of value) out.push([field, String(g)]);
    else if (value && typeof value === "object") {
      for (const [name, patterns] of Object.entries(value)) {
        for (const g of Array.isArray(patterns) ? patterns : []) out.push([field, `${name}: ${g}`]);
      }
    }
  }
  return out;
}

function capsWidget() {
  const dl = $("caps-list");
  const box = $("caps-revoked");
  const revokedList = $("revoked-list");
  let previous = null;

  function render(caps, added) {
    const all = grants(caps);
    dl.replaceChildren();
    for (const [field, title] of CAP_SECTIONS) {
      const mine = all.filter(([f]) => f === field);
      dl.append(
        h("dt", {}, title),
        h(
          "dd",
          {},
          mine.length
            ? h(
                "ul",
                { class: "chips" },
                ...mine.map(([, g]) =>
                  h("li", { class: `chip${added.has(`${field}\u0000${g}`) ? " new" : ""}`, testid: "cap-grant", "data-kind": field }, g),
                ),
              )
            : h("span", { class: "muted" }, "none"),
        ),
      );
    }
  }

  return {
    /** @param {{caps: any, revoked: unknown[], ended: any[]}} update */
    update({ caps, ended }) {
      const now = new Set(grants(caps).map(([f, g]) => `${f}\u0000${g}`));
      const added = new Set();
      /** @type {[string, string][]} what this update took away: [kind, what] */
      const lost = ended.map((sub) => [
        "Feed stopped",
        `${sub.kind === "sub" ? "" : `${sub.target} `}${sub.pattern ?? sub.target}`,
      ]);
      if (previous) {
        for (const [field, title] of CAP_SECTIONS) {
          for (const key of previous) {
            const [f, g] = key.split("\u0000");
            if (f === field && !now.has(key)) lost.push([title, g]);
          }
        }
        for (const key of now) if (!previous.has(key)) added.add(key);
      }
      if (lost.length) {
        box.hidden = false;
        revokedList.prepend(
          h(
            "li",
            { class: "revoked-group" },
            h("time", {}, clock(new Date())),
            h(
              "ul",
              {},
              ...lost.map(([kind, what]) =>
                h("li", { testid: "revoked-item" }, h("span", { class: "kind" }, kind), h("code", {}, what)),
              ),
            ),
          ),
        );
      }
      previous = now;
      render(caps, added);
      $("caps-updated").textContent = `updated ${clock(new Date())}`;
    },
  };
}

// --------------------------------------------------------------------------- the session

const BADGE_TEXT = {
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  closed: "Offline",
};

function setBadge(state, detail = "") {
  const badge = $("conn-badge");
  badge.dataset.state = state;
  $("conn-badge").querySelector(".badge-text").textContent = BADGE_TEXT[state] ?? state;
  badge.title = detail;
}

/** The debug handle the browser tests (and curious people in devtools) use. */
const debug = { client: null, me: null, states: [], stats: { chatDuplicates: 0 } };
globalThis.natsgateDemo = debug;

const pristineApp = $("app").cloneNode(true);
let session = null;

function startSession(me) {
  // a fresh copy of the app markup for every session: nothing left over from the last one
  const app = pristineApp.cloneNode(true);
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
        h("button", { type: "button", class: "ghost", testid: "banner-login", onclick: () => logout() }, "Log in again"),
      );
    }
  });
  client.on("disconnect", ({ code, reconnectInMs }) => {
    if (reconnectInMs !== null) setBadge("reconnecting", `socket closed (${code}); retrying in ${(reconnectInMs / 1000).toFixed(1)} s`);
  });
  client.on("error", (err) => toast(describe(err)));

  const feeds = [chatWidget(client, me, stats), todoWidget(client, me), notifyWidget(client, me)];
  commandWidget(client);
  const caps = capsWidget();
  client.on("cap_update", (update) => {
    caps.update(update);
    for (const f of feeds) void f.arm(update.caps);
  });
}

async function stopSession() {
  if (!session) return;
  session.stopping = true;
  session.client.close();
  session = null;
}

// --------------------------------------------------------------------------- login / logout

function showLogin(message = "") {
  $("app").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  say($("login-error"), message);
  $("login-user").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = $("login-user").value.trim();
  const password = $("login-password").value;
  const error = $("login-error");
  if (!username || !password) {
    say(error, "Give a user name and a password.");
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  try {
    const response = await fetch("/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username, password }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      localStorage.setItem(HINT_KEY, body.user ?? username);
      $("login-password").value = "";
      say(error, "");
      startSession(body.user ?? username);
    } else if (response.status === 401) {
      say(error, "Wrong user name or password.");
    } else if (response.status === 429) {
      say(error, "Too many failed attempts. Wait a minute and try again.");
    } else {
      say(error, body.error ?? `Login failed (HTTP ${response.status}).`);
    }
  } catch (err) {
    say(error, `Cannot reach the gateway: ${describe(err)}`);
  } finally {
    button.disabled = false;
  }
});

async function logout() {
  await stopSession();
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

// --------------------------------------------------------------------------- boot

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
      const { user } = await response.json();
      startSession(user);
      return;
    }
    localStorage.removeItem(HINT_KEY);
    showLogin(response.status === 401 ? "" : `The gateway answered HTTP ${response.status}.`);
  } catch (err) {
    showLogin(`Cannot reach the gateway: ${describe(err)}`);
  }
}

void boot();
