// natsgate/client.js: one logical connection to the gateway, kept alive across sockets.
//
// The client's state machine (connecting, open, reconnecting, closed); dialling with a
// token, the first cap_update, liveness pings, token refresh; requests (`pub`, `cmd`)
// waiting on their inbox; re-sending subscriptions after a reconnect; what each close code
// means for the next attempt (errors.js).

import { CLOSE_CODES, NatsgateError, backoffDelay, closeAction } from "./errors.js";
import { Emitter, StateMachine, rethrowLater } from "./emitter.js";
import { DurableSubscription } from "./durables.js";
import { later, webSocketOf, withDefaults } from "./options.js";
import { PresenceJoin, PresenceSubscription } from "./presence.js";
import { revokedBy, routeMsg } from "./routing.js";
import { CoreSubscription, JsSubscription, KvSubscription, Subscription, durableKey } from "./subscriptions.js";
import {
  decodeDurables, decodeFrame, decodePayload, encodeEnvelope, errorFromEnvelope, isList, isRecord,
  jwtExpiry, parseRevoked, resolveUrl, withToken,
} from "./wire.js";

/** @typedef {import("./wire.js").Caps} Caps */
/** @typedef {import("./wire.js").CoreMessage} CoreMessage */
/** @typedef {import("./wire.js").Envelope} Envelope */
/** @typedef {import("./wire.js").JsMessage} JsMessage */
/** @typedef {import("./wire.js").KvEntry} KvEntry */
/** @typedef {import("./wire.js").DurableInfo} DurableInfo */
/** @typedef {import("./subscriptions.js").JsOptions} JsOptions */
/** @typedef {import("./subscriptions.js").SubscriptionOwner} SubscriptionOwner */
/** @typedef {import("./durables.js").DurableOptions} DurableOptions */
/** @typedef {import("./durables.js").DurableAckOptions} DurableAckOptions */
/** @typedef {import("./durables.js").JsAckMessage} JsAckMessage */
/** @typedef {import("./presence.js").PresenceHandler} PresenceHandler */
/** @typedef {import("./options.js").ConnectOptions} ConnectOptions */
/** @typedef {import("./options.js").Timer} Timer */
/** @typedef {import("./options.js").WebSocketConstructor} WebSocketConstructor */
/** @typedef {import("./options.js").WebSocketLike} WebSocketLike */

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} ClientState */

/**
 * @typedef {object} CapUpdate
 * @property {Caps} caps
 * @property {unknown[]} revoked the server's list, as sent
 * @property {Subscription[]} ended this client's subscriptions that the update ended
 */

/**
 * @typedef {object} DisconnectInfo
 * @property {number} code the WebSocket close code (4000: closed by this client's liveness check)
 * @property {string} reason
 * @property {number | null} reconnectInMs null when the client gives up (state `closed`)
 */

/**
 * @typedef {object} ClientEvents
 * @property {[state: ClientState, previous: ClientState]} state
 * @property {[caps: Caps]} caps
 * @property {[update: CapUpdate]} cap_update
 * @property {[error: NatsgateError]} error
 * @property {[info: {attempts: number}]} reconnect
 * @property {[info: DisconnectInfo]} disconnect
 */

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/**
 * Legal client transitions. `connecting` is the first attempt, `reconnecting` every later
 * one (including the wait before it); `open` starts with the first `cap_update`; `closed` is
 * final.
 * @type {Readonly<Record<ClientState, readonly ClientState[]>>}
 */
export const CLIENT_TRANSITIONS = {
  connecting: ["open", "reconnecting", "closed"],
  open: ["reconnecting", "closed"],
  reconnecting: ["open", "closed"],
  closed: [],
};

/**
 * What an inbox is waiting for.
 * @typedef {{kind: "request", env: Envelope, sent: boolean, timer: Timer,
 *   resolve: (value: unknown) => void, reject: (err: NatsgateError) => void}
 *   | {kind: "sub", sub: Subscription}
 *   | {kind: "unsub", done: () => void}
 *   | {kind: "auth", token: string}
 *   | {kind: "ping"}} Pending
 */

/**
 * One logical connection to the gateway, kept alive across sockets. Create it with
 * `connect()`.
 */
export class NatsgateClient {
  /** @type {Emitter<ClientEvents>} */
  #events = new Emitter();
  /** @type {StateMachine<ClientState>} */
  #machine = new StateMachine("client", /** @type {ClientState} */ ("connecting"),
    CLIENT_TRANSITIONS, (next, previous) => this.#events.emit("state", next, previous));
  #url;
  #WS;
  #opts;
  /** @type {WebSocketLike | null} */
  #ws = null;
  /** @type {Caps | null} */
  #caps = null;
  /** @type {string | undefined} */
  #token;
  #forceFreshToken = false;
  /** Failed attempts since the last stable connection: drives the backoff. */
  #attempt = 0;
  #everOpened = false;
  /** The socket's server already sent `error` unauthorized: the 4001 close says nothing new. */
  #sawUnauthorized = false;
  /** A ping went out and no frame has come in since. */
  #pingOutstanding = false;
  /** @type {string | undefined} */
  #pingInbox;
  #inboxPrefix = Math.random().toString(36).slice(2, 10);
  #inboxSeq = 0;
  /** @type {Map<string, Pending>} */
  #pending = new Map();
  /** @type {Map<string, Subscription>} */
  #subs = new Map();
  /** @type {Array<{resolve: () => void, reject: (err: NatsgateError) => void}>} */
  #waiters = [];
  /** @type {{retry?: Timer, stable?: Timer, connect?: Timer, refresh?: Timer, ping?: ReturnType<typeof setInterval>}} */
  #timers = {};
  /** @type {SubscriptionOwner} handed to every subscription this client tracks */
  #owner = {
    release: (sub) => this.#release(sub),
    post: (env) => this.#send(env),
    ask: (env) => this.#request(env, this.#opts.requestTimeoutMs, { queue: false }),
    deleteDurable: (stream, durable) => this.deleteDurable(stream, durable),
  };

  /**
   * @param {string | undefined} url
   * @param {ConnectOptions} [options]
   */
  constructor(url, options = {}) {
    const page = typeof location === "undefined" ? undefined : location;
    this.#url = resolveUrl(url, page);
    this.#WS = webSocketOf(options);
    this.#opts = withDefaults(options);
    if (typeof options.token === "string") this.#token = options.token;
    void this.#dial();
  }

  get state() {
    return this.#state;
  }

  /** The capabilities from the latest `cap_update`; null before the first. */
  get caps() {
    return this.#caps;
  }

  get url() {
    return this.#url;
  }

  /** The subscriptions that are not ended. */
  get subscriptions() {
    return [...this.#subs.values()];
  }

  /**
   * Resolves when the connection is open and the first `cap_update` has arrived (at once if
   * it is open now); rejects if the client closes first.
   * @returns {Promise<void>}
   */
  ready() {
    if (this.#state === "open") return Promise.resolve();
    if (this.#state === "closed") return Promise.reject(new NatsgateError("closed", "client is closed"));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} name
   * @param {(...args: ClientEvents[K]) => void} handler
   * @returns {() => void} removes the handler
   */
  on(name, handler) {
    return this.#events.on(name, handler);
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} name
   * @param {(...args: ClientEvents[K]) => void} handler
   */
  off(name, handler) {
    this.#events.off(name, handler);
  }

  /**
   * A core subscription. Messages are routed by the pattern the server echoes in `sub`, so
   * overlapping subscriptions each get their own copy.
   * @param {string} subject a subject, wildcards allowed
   * @param {(data: unknown, msg: CoreMessage) => void} handler
   */
  subscribe(subject, handler) {
    return this.#track(new CoreSubscription(subject, handler));
  }

  /**
   * Watch a KV bucket: the current values first (`meta.snapshot` true), then changes.
   * `ready` resolves when the current values are in.
   * @param {string} bucket
   * @param {string | undefined} pattern key pattern; undefined: all keys
   * @param {(entry: KvEntry, meta: {snapshot: boolean}) => void} handler
   * @param {{onResync?: () => void}} [options]
   */
  kvSubscribe(bucket, pattern, handler, options = {}) {
    return this.#track(new KvSubscription(bucket, pattern ?? undefined, handler, options));
  }

  /**
   * A durable subscription with explicit acks: the handler gets `JsAckMessage`s to `ack()`,
   * `nak()` or `term()`; what is not acked comes again (at least once).
   * @overload
   * @param {string} stream
   * @param {DurableAckOptions} options
   * @param {(msg: JsAckMessage) => void} handler
   * @returns {DurableSubscription<JsAckMessage>}
   */
  /**
   * A durable subscription: the NATS server keeps the position under `durable`; after a
   * reconnect it binds again by name. `ready` adds `durable`, `pending`, `ack_pending`.
   * @overload
   * @param {string} stream
   * @param {DurableOptions} options
   * @param {(msg: JsMessage) => void} handler
   * @returns {DurableSubscription<JsMessage>}
   */
  /**
   * Ordered delivery from a JetStream stream; resumes without gap or duplicate on reconnect.
   * `ready` resolves to the reply data: `{ok, first_seq, last_seq, gap?}`.
   * @overload
   * @param {string} stream
   * @param {JsOptions} options
   * @param {(msg: JsMessage) => void} handler
   * @returns {JsSubscription}
   */
  /**
   * @param {string} stream
   * @param {JsOptions | DurableOptions | DurableAckOptions} options
   * @param {((msg: JsMessage) => void) | ((msg: JsAckMessage) => void)} handler
   * @returns {JsSubscription | DurableSubscription<JsMessage> | DurableSubscription<JsAckMessage>}
   */
  jsSubscribe(stream, options, handler) {
    const opts = options ?? {};
    if ("durable" in opts && opts.durable !== undefined) {
      return this.#track(opts.ack === "explicit"
        ? new DurableSubscription(stream, opts, /** @type {(msg: JsAckMessage) => void} */ (handler))
        : new DurableSubscription(stream, opts, /** @type {(msg: JsMessage) => void} */ (handler)));
    }
    const sub = new JsSubscription(stream, opts, /** @type {(msg: JsMessage) => void} */ (handler));
    if ("ack" in opts && opts.ack === "explicit") {
      // the gateway's rule, kept here so the mistake shows at once
      sub._end("ended", new NatsgateError("bad_request", '"ack": "explicit" needs a "durable"', { target: stream }));
      return sub;
    }
    return this.#track(sub);
  }

  /**
   * The user's durables of a stream, with how many messages each has not delivered yet
   * (`pending`) and delivered but not seen acked (`ackPending`).
   * @param {string} stream
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<DurableInfo[]>}
   */
  durables(stream, options = {}) {
    const env = { op: "js_durables", target: stream };
    return this.#request(env, options.timeoutMs ?? this.#opts.requestTimeoutMs).then(decodeDurables);
  }

  /**
   * Delete a durable on the server (its position is gone); ends this client's subscription
   * bound to it, if any. Resolves on the gateway's acknowledgement; rejects with its error
   * (`not_found`: no such durable) or `timeout`. Sent when open, or on the next open.
   * @param {string} stream
   * @param {string} durable
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<void>}
   */
  deleteDurable(stream, durable, options = {}) {
    const key = durableKey(stream, durable);
    const sub = this.#subs.get(key);
    if (sub) {
      this.#subs.delete(key);
      sub._end("ended", new NatsgateError("closed", "durable deleted before it was ready", { target: stream }));
    }
    const env = { op: "js_unsub", target: stream, data: { durable, delete: true } };
    return this.#request(env, options.timeoutMs ?? this.#opts.requestTimeoutMs).then(() => undefined);
  }

  /**
   * `jsSubscribe` from the message after `lastSeq` (one you persisted from `sub.lastSeq`).
   * @param {string} stream
   * @param {number} lastSeq
   * @param {Omit<JsOptions, "startSeq" | "startTime">} options
   * @param {(msg: JsMessage) => void} handler
   */
  jsResume(stream, lastSeq, options, handler) {
    return this.jsSubscribe(stream, { ...options, startSeq: lastSeq + 1 }, handler);
  }

  /**
   * Announce this connection on a subject (capability `presence`); joined again, with the
   * latest info, after every reconnect. `ready` settles with the gateway's answer.
   * @param {string} subject a literal subject
   * @param {unknown} [info] any JSON, at most 1 KiB of it; members see it
   * @returns {PresenceJoin} `update(info)`, `leave()`
   */
  join(subject, info) {
    const handle = new PresenceJoin(subject, info);
    return handle.ended ? handle : this.#track(handle); // ended: info too large
  }

  /**
   * Who is on a subject (capability `subjects`): the current members, then joins and
   * leaves; read again after every reconnect, the difference reported as changes.
   * @param {string} subject a literal subject
   * @param {PresenceHandler} [handler] called with every change, or `{onChange, onSync}`
   * @returns {PresenceSubscription}
   */
  presence(subject, handler) {
    return this.#track(new PresenceSubscription(subject, handler));
  }

  /**
   * Publish a JSON payload; resolves once the gateway has handed it to NATS.
   * @param {string} subject a literal subject
   * @param {unknown} payload any JSON value
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<void>}
   */
  publish(subject, payload, options = {}) {
    const env = { op: "pub", target: subject, data: payload ?? null };
    return this.#request(env, options.timeoutMs ?? this.#opts.requestTimeoutMs).then(() => undefined);
  }

  /**
   * A request to a service; resolves with the responder's payload.
   * @param {string} target a literal subject
   * @param {unknown} payload any JSON value
   * @param {{timeoutMs?: number}} [options] also sent to the gateway as `timeout_ms`
   * @returns {Promise<unknown>}
   */
  command(target, payload, options = {}) {
    /** @type {Envelope} */
    const env = { op: "cmd", target, data: payload ?? null };
    if (options.timeoutMs !== undefined) env.timeout_ms = options.timeoutMs;
    return this.#request(env, options.timeoutMs ?? this.#opts.requestTimeoutMs);
  }

  /** Close for good: no reconnect; pending requests and `ready` promises reject with `closed`. */
  close() {
    this.#shutdown(new NatsgateError("closed", "client closed"));
  }

  // --- state machine ------------------------------------------------------------------------

  /** Not narrowed by TypeScript: handlers we call may close the client under our feet. */
  #isClosed() {
    return this.#state === "closed";
  }

  /** The current state: the state machine's. */
  get #state() {
    return this.#machine.state;
  }

  async #dial() {
    this.#timers.retry = undefined;
    /** @type {string | undefined} */
    let token;
    try {
      token = await this.#nextToken();
    } catch (cause) {
      if (this.#state === "closed") return;
      this.#emitError(new NatsgateError("unauthorized", "token callback failed", { cause }));
      this.#scheduleReconnect();
      return;
    }
    if (this.#state === "closed") return;
    /** @type {WebSocketLike} */
    let ws;
    try {
      ws = new this.#WS(token === undefined ? this.#url : withToken(this.#url, token));
    } catch (cause) {
      this.#emitError(new NatsgateError("bad_request", "cannot open a WebSocket", { cause }));
      this.#shutdown(new NatsgateError("closed", "cannot open a WebSocket", { cause }));
      return;
    }
    this.#ws = ws;
    this.#sawUnauthorized = false;
    this.#pingOutstanding = false;
    // Browsers follow `error` with `close` 1006; some runtimes (Node 20's WebSocket on a
    // refused connection) never do. Either way the socket is lost, and `error` says no more.
    ws.onerror = () => {
      if (this.#ws === ws) this.#drop(1006, "socket error");
    };
    ws.onmessage = (ev) => {
      if (this.#ws === ws) this.#onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.#ws === ws) this.#onSocketGone(ev.code, ev.reason);
    };
    this.#timers.connect = later(() => this.#drop(4000, "no cap_update in time"), this.#opts.connectTimeoutMs);
  }

  /** The token for the next attempt: from the callback, refreshed if near expiry, or kept. */
  async #nextToken() {
    const { token, refreshToken, refreshBeforeMs } = this.#opts;
    const force = this.#forceFreshToken;
    this.#forceFreshToken = false;
    if (typeof token === "function" && !(force && refreshToken)) {
      this.#token = await token();
    } else if (refreshToken) {
      const exp = this.#token === undefined ? undefined : jwtExpiry(this.#token);
      if (force || (exp !== undefined && exp - refreshBeforeMs <= Date.now())) {
        this.#token = await refreshToken();
      }
    }
    return this.#token;
  }

  /** The first `cap_update` of a socket: the session is usable. */
  #opened() {
    clearTimeout(this.#timers.connect);
    const reconnected = this.#everOpened;
    const attempts = this.#attempt;
    // taken before the state event: a subscription made by a handler is sent by #track
    const restore = [...this.#subs.values()];
    this.#everOpened = true;
    this.#machine.go("open");
    if (this.#isClosed()) return; // a handler closed the client
    this.#timers.stable = later(() => {
      this.#attempt = 0;
    }, this.#opts.stableAfterMs);
    if (this.#opts.pingIntervalMs > 0) {
      this.#timers.ping = setInterval(() => this.#ping(), this.#opts.pingIntervalMs);
    }
    for (const sub of restore) if (!sub.ended) this.#sendSub(sub);
    for (const [inbox, p] of this.#pending) {
      if (p.kind === "request" && !p.sent) p.sent = this.#send({ ...p.env, inbox });
    }
    this.#scheduleRefresh();
    for (const waiter of this.#waiters.splice(0)) waiter.resolve();
    if (reconnected) this.#events.emit("reconnect", { attempts });
  }

  /**
   * The socket is gone (closed by the server, the network, or our liveness check). What was
   * in flight on it can no longer be answered; subscriptions wait to be re-sent.
   * @param {number} code
   * @param {string} reason
   */
  #onSocketGone(code, reason) {
    this.#ws = null;
    this.#clearSocketTimers();
    const lost = new NatsgateError("disconnected", `connection lost (${code}${reason ? ` ${reason}` : ""})`);
    for (const [inbox, p] of this.#pending) {
      if (p.kind === "request") {
        if (!p.sent) continue; // never went out: it is sent on the next open
        clearTimeout(p.timer);
        p.reject(lost);
      } else if (p.kind === "unsub") {
        p.done();
      }
      this.#pending.delete(inbox);
    }
    if (this.#state === "closed") return;

    const action = closeAction(code);
    const canRenew = typeof this.#opts.token === "function" || this.#opts.refreshToken !== undefined;
    if (action === "stop" || (action === "auth" && !canRenew)) {
      const err = action === "auth"
        ? new NatsgateError("unauthorized", reason || "unauthorized")
        : new NatsgateError("forbidden", reason || `closed by the server (${code}): ${CLOSE_CODES[code]?.meaning}`);
      if (!(action === "auth" && this.#sawUnauthorized)) this.#emitError(err);
      this.#events.emit("disconnect", { code, reason, reconnectInMs: null });
      this.#shutdown(err);
      return;
    }
    if (action === "auth") {
      if (!this.#sawUnauthorized) this.#emitError(new NatsgateError("unauthorized", reason || "unauthorized"));
      this.#forceFreshToken = true;
    }
    if (action === "prompt") this.#attempt = 0;
    for (const sub of this.#subs.values()) sub._pause();
    if (!this.#isClosed()) this.#scheduleReconnect({ code, reason }); // unless a handler closed it
  }

  /** @param {{code: number, reason: string}} [closed] */
  #scheduleReconnect(closed) {
    const { minDelayMs, maxDelayMs, random } = this.#opts;
    const delay = backoffDelay(this.#attempt, minDelayMs, maxDelayMs, random);
    this.#attempt += 1;
    this.#machine.go("reconnecting");
    if (closed) this.#events.emit("disconnect", { ...closed, reconnectInMs: delay });
    if (this.#isClosed()) return; // a handler closed the client
    this.#timers.retry = later(() => void this.#dial(), delay);
  }

  /**
   * Give up on the current socket without waiting for its close event, which a dead network
   * can delay for minutes.
   * @param {number} code
   * @param {string} reason
   */
  #drop(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    this.#ws = null;
    try {
      ws.close(code >= 3000 && code <= 4999 ? code : 1000, reason); // the codes a client may send
    } catch {
      // closing a socket that never opened may throw; it is gone either way
    }
    this.#onSocketGone(code, reason);
  }

  /** @param {NatsgateError} err */
  #shutdown(err) {
    if (this.#state === "closed") return;
    this.#machine.go("closed");
    const ws = this.#ws;
    this.#ws = null;
    this.#clearSocketTimers();
    clearTimeout(this.#timers.retry);
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        // already closing
      }
    }
    for (const p of this.#pending.values()) {
      if (p.kind === "request") {
        clearTimeout(p.timer);
        p.reject(err);
      } else if (p.kind === "unsub") {
        p.done();
      }
    }
    this.#pending.clear();
    for (const sub of this.#subs.values()) sub._end("ended", err);
    this.#subs.clear();
    for (const waiter of this.#waiters.splice(0)) waiter.reject(err);
  }

  #clearSocketTimers() {
    clearTimeout(this.#timers.connect);
    clearTimeout(this.#timers.stable);
    clearTimeout(this.#timers.refresh);
    clearInterval(this.#timers.ping);
  }

  // --- outgoing -----------------------------------------------------------------------------

  #nextInbox() {
    this.#inboxSeq += 1;
    return `${this.#inboxPrefix}.${this.#inboxSeq}`;
  }

  /**
   * @param {Envelope} env
   * @returns {boolean} whether it went out on an open socket
   */
  #send(env) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1 || this.#state !== "open") return false;
    ws.send(encodeEnvelope(env));
    return true;
  }

  /**
   * A pub or cmd: sent now when open, else on the next open; rejects on its timeout, on a
   * drop while in flight, or on close.
   * @param {Envelope} env
   * @param {number} timeoutMs
   * @param {{queue?: boolean}} [options] queue: false rejects with `disconnected` at once
   *   when it cannot go out on the current socket
   * @returns {Promise<unknown>}
   */
  #request(env, timeoutMs, options = {}) {
    if (this.#state === "closed") return Promise.reject(new NatsgateError("closed", "client is closed"));
    const inbox = this.#nextInbox();
    return new Promise((resolve, reject) => {
      const timer = later(() => {
        this.#pending.delete(inbox);
        reject(new NatsgateError("timeout", `no reply to ${env.op} ${env.target ?? ""} in ${timeoutMs} ms`, { target: env.target }));
      }, timeoutMs + this.#opts.timeoutGraceMs);
      /** @type {Pending} */
      const pending = { kind: "request", env, sent: false, timer, resolve, reject };
      this.#pending.set(inbox, pending);
      pending.sent = this.#send({ ...env, inbox });
      if (!pending.sent && options.queue === false) {
        clearTimeout(timer);
        this.#pending.delete(inbox);
        reject(new NatsgateError("disconnected", `not connected: ${env.op} ${env.target ?? ""} not sent`, { target: env.target }));
      }
    });
  }

  /**
   * @template {Subscription} S
   * @param {S} sub
   * @returns {S}
   */
  #track(sub) {
    if (this.#state === "closed") {
      sub._end("ended", new NatsgateError("closed", "client is closed"));
      return sub;
    }
    const key = sub._key();
    if (this.#subs.has(key)) {
      sub._end("ended", new NatsgateError("bad_request", `already subscribed: ${sub.kind} ${sub.target} ${sub.pattern ?? ""}`, { target: sub.target }));
      return sub;
    }
    sub._owner = this.#owner;
    this.#subs.set(key, sub);
    if (this.#state === "open") this.#sendSub(sub);
    return sub;
  }

  /** @param {Subscription} sub */
  #sendSub(sub) {
    const inbox = this.#nextInbox();
    this.#pending.set(inbox, { kind: "sub", sub });
    sub._subscribing();
    this.#send({ ...sub._wire(), inbox });
  }

  /**
   * @param {Subscription} sub
   * @returns {Promise<void>}
   */
  #release(sub) {
    const key = sub._key();
    if (this.#subs.get(key) === sub) this.#subs.delete(key);
    if (this.#state !== "open") return Promise.resolve();
    return new Promise((resolve) => {
      const inbox = this.#nextInbox();
      this.#pending.set(inbox, { kind: "unsub", done: resolve });
      if (!this.#send({ ...sub._unwire(), inbox })) {
        this.#pending.delete(inbox);
        resolve();
      }
    });
  }

  #ping() {
    if (this.#pingOutstanding) {
      this.#drop(4000, "no pong in time");
      return;
    }
    if (this.#pingInbox) this.#pending.delete(this.#pingInbox);
    const inbox = this.#nextInbox();
    this.#pingInbox = inbox;
    this.#pending.set(inbox, { kind: "ping" });
    this.#pingOutstanding = this.#send({ op: "ping", inbox });
  }

  #scheduleRefresh() {
    clearTimeout(this.#timers.refresh);
    const { refreshToken, refreshBeforeMs, minDelayMs } = this.#opts;
    if (!refreshToken || this.#token === undefined || this.#state !== "open") return;
    const exp = jwtExpiry(this.#token);
    if (exp === undefined) return;
    // never more often than minDelayMs, even if the callback hands back a short-lived token
    const delay = Math.max(minDelayMs, exp - refreshBeforeMs - Date.now());
    this.#timers.refresh = later(() => void this.#refreshNow(), delay);
  }

  /** Token refresh without reconnect: the protocol's `auth` op. */
  async #refreshNow() {
    const refreshToken = this.#opts.refreshToken;
    if (!refreshToken) return;
    /** @type {string} */
    let token;
    try {
      token = await refreshToken();
    } catch (cause) {
      if (this.#state !== "open") return;
      this.#emitError(new NatsgateError("unauthorized", "refreshToken failed", { cause }));
      this.#timers.refresh = later(() => void this.#refreshNow(), Math.max(this.#opts.minDelayMs, 5000));
      return;
    }
    if (this.#state !== "open") {
      this.#token = token; // used by the next attempt
      return;
    }
    const inbox = this.#nextInbox();
    this.#pending.set(inbox, { kind: "auth", token });
    this.#send({ op: "auth", inbox, data: { token } });
  }

  /** @param {NatsgateError} err */
  #emitError(err) {
    this.#events.emit("error", err);
  }

  // --- incoming -----------------------------------------------------------------------------

  /** @param {unknown} data */
  #onFrame(data) {
    this.#pingOutstanding = false;
    if (typeof data !== "string") {
      this.#emitError(new NatsgateError("protocol", "binary frame from the server"));
      return;
    }
    const { envelopes, errors } = decodeFrame(data);
    for (const err of errors) this.#emitError(err);
    for (const env of envelopes) {
      if (this.#state === "closed") return;
      this.#dispatch(env);
    }
  }

  /** @param {Envelope} env */
  #dispatch(env) {
    switch (env.op) {
      case "cap_update":
        return this.#onCapUpdate(env);
      case "msg":
        return this.#onMsg(env);
      case "reply":
        return this.#onReply(env);
      case "error":
        return this.#onError(env);
      case "pong":
        if (env.inbox) this.#pending.delete(env.inbox);
        return;
      default:
        return; // an op from a newer server: ignore
    }
  }

  /** @param {Envelope} env */
  #onCapUpdate(env) {
    const data = isRecord(env.data) ? env.data : {};
    const caps = /** @type {Caps} */ (isRecord(data.caps) ? data.caps : {});
    const revoked = isList(data.revoked) ? data.revoked : [];
    /** @type {Subscription[]} */
    const ended = [];
    for (const item of revoked) {
      const r = parseRevoked(item);
      if (!r) continue;
      for (const sub of revokedBy(this.#subs, r)) {
        this.#subs.delete(sub._key());
        sub._end("revoked", new NatsgateError("forbidden", "revoked by a capability update", { target: sub.target }));
        ended.push(sub);
      }
    }
    this.#caps = caps;
    this.#events.emit("caps", caps);
    this.#events.emit("cap_update", { caps, revoked, ended });
    if (this.#state !== "open" && this.#state !== "closed" && this.#ws) this.#opened();
  }

  /** @param {Envelope} env */
  #onReply(env) {
    const p = env.inbox === undefined ? undefined : this.#pending.get(env.inbox);
    if (!p || env.inbox === undefined) return; // late (timed out) or not ours
    this.#pending.delete(env.inbox);
    switch (p.kind) {
      case "request":
        clearTimeout(p.timer);
        p.resolve(decodePayload(env.data, env.enc));
        return;
      case "sub":
        p.sub._onReply(isRecord(env.data) ? env.data : {});
        return;
      case "unsub":
        p.done();
        return;
      case "auth":
        this.#token = p.token;
        this.#scheduleRefresh();
        return;
      case "ping":
        return;
    }
  }

  /** @param {Envelope} env */
  #onError(env) {
    const err = errorFromEnvelope(env);
    const p = env.inbox === undefined ? undefined : this.#pending.get(env.inbox);
    if (!p || env.inbox === undefined) {
      if (err.code === "unauthorized") this.#sawUnauthorized = true;
      this.#emitError(err);
      return;
    }
    this.#pending.delete(env.inbox);
    switch (p.kind) {
      case "request":
        clearTimeout(p.timer);
        p.reject(err);
        return;
      case "sub": {
        const key = p.sub._key();
        if (this.#subs.get(key) === p.sub) this.#subs.delete(key);
        p.sub._onRefused(err);
        return;
      }
      case "unsub":
        p.done();
        return;
      case "auth":
      case "ping":
        this.#emitError(err);
        return;
    }
  }

  /** @param {Envelope} env */
  #onMsg(env) {
    for (const call of routeMsg(this.#subs, env)) this.#deliver(call);
  }

  /** @param {() => void} fn an application handler call */
  #deliver(fn) {
    try {
      fn();
    } catch (err) {
      rethrowLater(err);
    }
  }
}

/**
 * Connect to a natsgate gateway. Returns at once; await `client.ready()` to know it is open.
 * @param {string} [url] default: `/ws` on the page's own host, ws or wss as the page
 * @param {ConnectOptions} [options]
 */
export function connect(url, options) {
  return new NatsgateClient(url, options);
}
