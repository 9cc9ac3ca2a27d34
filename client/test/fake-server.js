// The fake gateway the client tests run against: an injected WebSocket class whose server
// side plays the protocol in memory (records what the client sent, pushes frames), and the
// helpers that wait for events instead of durations. Imported by the *.test.js files.
import assert from "node:assert/strict";
import { connect } from "../natsgate.js";

/** @typedef {{v?: number, op: string, target?: string, inbox?: string, data?: any, sub?: string, timeout_ms?: number}} Env */

/**
 * Resolves when pred() holds; re-checked whenever the fake network sees activity.
 * @template T
 * @param {() => T | undefined | false} pred
 * @param {string} what
 * @returns {Promise<T>}
 */
export function until(pred, what, ms = 2000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => {
      const v = pred();
      if (v) return resolve(v);
      if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(check, 1);
    };
    check();
  });
}

export class FakeSocket {
  /** @param {FakeNet} net @param {string} url */
  constructor(net, url) {
    this.net = net;
    this.url = url;
    this.readyState = 0;
    /** @type {Env[]} */
    this.sent = [];
    /** @type {{code?: number, reason?: string} | null} */
    this.closedByClient = null;
    /** @type {any} */ this.onopen = null;
    /** @type {any} */ this.onmessage = null;
    /** @type {any} */ this.onclose = null;
    /** @type {any} */ this.onerror = null;
    net.sockets.push(this);
    setTimeout(() => net.script(this), 0);
  }

  /** @param {string} data */
  send(data) {
    assert.equal(this.readyState, 1, "client sent on a socket that is not open");
    for (const line of data.split("\n")) {
      const env = JSON.parse(line);
      this.sent.push(env);
      this.net.auto(this, env);
    }
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code, reason) {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // --- the server side ---

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** Push envelopes as one frame (several: newline-separated). @param {...object} envs */
  push(...envs) {
    this.onmessage?.({ data: envs.map((e) => JSON.stringify(e)).join("\n") });
  }

  /** @param {object} [caps] @param {unknown[]} [revoked] */
  capUpdate(caps = {}, revoked = []) {
    this.push({ op: "cap_update", data: { caps, revoked } });
  }

  /** @param {number} code @param {string} [reason] */
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** @param {Env} env @param {unknown} [data] */
  reply(env, data = { ok: true }) {
    this.push({ op: "reply", target: env.target, inbox: env.inbox, data });
  }

  /** @param {Env} env @param {string} code */
  error(env, code, message = code) {
    this.push({ op: "error", target: env.target, inbox: env.inbox, data: { code, message } });
  }

  /** The first sent envelope matching, now or later. @param {(e: Env) => boolean} pred */
  sentWhere(pred, what = "a sent envelope") {
    return until(() => this.sent.find(pred), what);
  }

  /** @param {string} op */
  sentOp(op) {
    return this.sentWhere((e) => e.op === op, `op ${op}`);
  }
}

/**
 * The scripted server. By default it accepts every socket, sends cap_update, and answers
 * sub/unsub/kv_sub/kv_unsub/js_sub/js_unsub/pub/ping; tests override `script` and `answer`.
 */
export class FakeNet {
  constructor() {
    /** @type {FakeSocket[]} */
    this.sockets = [];
    /** @type {object} */
    this.caps = { subjects: [">"] };
    const net = this;
    this.WebSocket = class extends FakeSocket {
      /** @param {string} url */
      constructor(url) {
        super(net, url);
      }
    };
    /** @type {(sock: FakeSocket) => void} */
    this.script = (sock) => {
      sock.open();
      sock.capUpdate(this.caps);
    };
    /** Which ops the fake answers by itself. @type {Set<string>} */
    this.answer = new Set(["sub", "unsub", "kv_sub", "kv_unsub", "js_sub", "js_unsub", "pub", "ping"]);
    /** Extra reply fields for js_sub. */
    this.jsReply = { first_seq: 1, last_seq: 0 };
  }

  /** @param {FakeSocket} sock @param {Env} env */
  auto(sock, env) {
    if (!this.answer.has(env.op)) return;
    setTimeout(() => {
      if (sock.readyState !== 1) return;
      if (env.op === "ping") sock.push({ op: "pong", inbox: env.inbox });
      else if (env.op === "js_sub") sock.reply(env, { ok: true, ...this.jsReply });
      else sock.reply(env);
    }, 0);
  }

  /** @param {number} n the n-th socket (0-based), once it exists */
  socket(n) {
    return until(() => this.sockets[n], `socket #${n}`);
  }
}

/**
 * A client on a fresh fake network, closed after the test.
 * @param {import("node:test").TestContext} t
 * @param {import("../natsgate.js").ConnectOptions} [options]
 * @param {(net: FakeNet) => void} [prepare]
 */
export function setup(t, options = {}, prepare = () => {}) {
  const net = new FakeNet();
  prepare(net);
  const client = connect("ws://gateway.test/ws", {
    WebSocket: net.WebSocket, minDelayMs: 1, maxDelayMs: 5, pingIntervalMs: 0, ...options,
  });
  t.after(() => client.close());
  return { net, client };
}

/**
 * A promise that fails the test instead of hanging it (a hang would cancel the whole file).
 * @template T
 * @param {(resolve: (v: T) => void) => void} executor
 * @param {string} what
 * @returns {Promise<T>}
 */
export function within(executor, what, ms = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    executor((v) => {
      clearTimeout(timer);
      resolve(v);
    });
  });
}

/**
 * The next emission of a client event (its first argument, or all when several).
 * @param {import("../natsgate.js").NatsgateClient} client
 * @param {string} name
 * @returns {Promise<any>}
 */
export function nextEvent(client, name) {
  return within((resolve) => {
    const off = client.on(/** @type {any} */ (name), (/** @type {any[]} */ ...args) => {
      off();
      resolve(args.length > 1 ? args : args[0]);
    });
  }, `event ${name}`);
}
