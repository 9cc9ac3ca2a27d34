// natsgate.js: the browser client for the natsgate gateway.
//
// One ES module, no dependencies. The gateway serves it at /natsgate.js; bundlers can import
// it as a file. The wire protocol is the contract (docs/protocol.md); the API is described in
// docs/client.md. Layout: pure helpers first (unit-tested without a socket), then the
// subscription objects, then the client with its connection state machine.

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} ClientState */
/** @typedef {"subscribing" | "active" | "ended" | "revoked"} SubscriptionState */

/**
 * Error codes: the contract's (section 3), then the client's own: `disconnected` (the socket
 * dropped while the request was in flight), `closed` (the client or subscription was closed
 * first), `protocol` (the server sent something the contract does not allow).
 * @typedef {"bad_request" | "unsupported_version" | "unauthorized" | "forbidden" | "not_found"
 *   | "timeout" | "no_responders" | "limit" | "backpressure" | "internal"
 *   | "disconnected" | "closed" | "protocol"} ErrorCode
 */

/** @typedef {Record<string, string | string[]>} Headers */

/**
 * One envelope of the wire protocol, as sent or received.
 * @typedef {object} Envelope
 * @property {number} [v]
 * @property {string} op
 * @property {string} [target]
 * @property {string} [inbox]
 * @property {unknown} [data]
 * @property {string} [sub] core `msg`: the subscribed pattern
 * @property {string} [enc] `"base64"` when `data` is base64 of non-text bytes
 * @property {Headers} [headers]
 * @property {number} [timeout_ms] `cmd` only
 */

/**
 * The capability document (contract section 4). Missing fields grant nothing.
 * @typedef {object} Caps
 * @property {string[]} [subjects]
 * @property {string[]} [publish]
 * @property {string[]} [commands]
 * @property {Record<string, string[]>} [buckets]
 * @property {Record<string, string[]>} [streams]
 */

/**
 * `reply` data for a subscription op. JetStream replies carry the stream's bounds and `gap`.
 * @typedef {{ok?: boolean, first_seq?: number, last_seq?: number, gap?: boolean,
 *   [field: string]: unknown}} ReplyData
 */

/**
 * @typedef {object} CoreMessage
 * @property {string} subject the concrete subject
 * @property {string} sub the pattern this subscription was made with
 * @property {unknown} data the payload (a Uint8Array when the server sent base64)
 * @property {Headers | undefined} headers
 */

/**
 * @typedef {object} KvEntry
 * @property {string} key
 * @property {number} revision
 * @property {"PUT" | "DEL" | "PURGE"} op
 * @property {unknown} value
 */

/**
 * @typedef {object} JsMessage
 * @property {number} seq the stream sequence
 * @property {string} subject
 * @property {unknown} payload
 * @property {string | undefined} time RFC 3339
 * @property {Headers | undefined} headers
 */

/**
 * @typedef {object} JsOptions
 * @property {number} [startSeq] deliver from this stream sequence (inclusive)
 * @property {Date | string} [startTime] deliver from this time
 * @property {number} [batch] messages in flight (server default 100, at most 1000)
 * @property {string} [filter] a subject filter within the stream
 */

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

/**
 * @typedef {object} SubscriptionEvents
 * @property {[state: SubscriptionState, previous: SubscriptionState]} state
 * @property {[error: NatsgateError]} error
 * @property {[]} resync KV only: a re-hydration starts; drop what you hold for this pattern
 * @property {[]} synced KV only: a (re)hydration is complete; what you hold is current
 * @property {[reply: ReplyData]} gap JetStream only: retention dropped messages you missed
 */

/**
 * The part of the WebSocket API the client uses, so tests can inject a fake.
 * @typedef {object} WebSocketLike
 * @property {number} readyState
 * @property {(data: string) => void} send
 * @property {(code?: number, reason?: string) => void} close
 * @property {((ev: unknown) => void) | null} onopen
 * @property {((ev: {data: unknown}) => void) | null} onmessage
 * @property {((ev: {code: number, reason: string}) => void) | null} onclose
 * @property {((ev: unknown) => void) | null} onerror
 */
/** @typedef {new (url: string) => WebSocketLike} WebSocketConstructor */

/**
 * @typedef {object} ConnectOptions
 * @property {WebSocketConstructor} [WebSocket] default `globalThis.WebSocket`
 * @property {string | (() => string | Promise<string>)} [token] sent as `?token=` on each
 *   (re)connect; a function is called before every attempt
 * @property {() => Promise<string>} [refreshToken] fetches a new JWT; sent as the `auth` op
 *   `refreshBeforeMs` before the current token's `exp`, and used after close code 4001
 * @property {number} [refreshBeforeMs] default 30000
 * @property {number} [pingIntervalMs] client-side liveness check; default 25000, 0 turns it off
 * @property {number} [minDelayMs] reconnect backoff floor and base; default 250
 * @property {number} [maxDelayMs] reconnect backoff cap; default 10000
 * @property {number} [stableAfterMs] open this long resets the backoff; default 5000
 * @property {number} [connectTimeoutMs] socket open + first `cap_update`; default 10000
 * @property {number} [requestTimeoutMs] default timeout of `publish` and `command`; default 5000
 * @property {number} [timeoutGraceMs] added to a request's timeout client-side; default 1000
 * @property {() => number} [random] in [0, 1); default Math.random (injectable for tests)
 */

/** @typedef {ReturnType<typeof setTimeout>} Timer */

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

const ERROR_CODES = new Set([
  "bad_request", "unsupported_version", "unauthorized", "forbidden", "not_found", "timeout",
  "no_responders", "limit", "backpressure", "internal", "disconnected", "closed", "protocol",
]);

/** Every failure this library reports: a refusal by the server or a client-side condition. */
export class NatsgateError extends Error {
  /**
   * @param {ErrorCode} code
   * @param {string} message
   * @param {{cause?: unknown, target?: string}} [options]
   */
  constructor(code, message, options = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "NatsgateError";
    /** @type {ErrorCode} */
    this.code = code;
    /** @type {string | undefined} the op's target, when the error concerns one */
    this.target = options.target;
  }
}

/**
 * An `error` envelope as a NatsgateError. An unknown code is the peer breaking the contract.
 * @param {Envelope} env
 */
export function errorFromEnvelope(env) {
  const data = isRecord(env.data) ? env.data : {};
  const raw = typeof data.code === "string" ? data.code : "";
  const message = typeof data.message === "string" ? data.message : raw || "error";
  const code = /** @type {ErrorCode} */ (ERROR_CODES.has(raw) ? raw : "protocol");
  const text = code === raw ? message : `${raw || "no code"}: ${message}`;
  return new NatsgateError(code, text, { target: env.target });
}

// ---------------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------------

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isRecord(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Array.isArray narrows to any[]; this keeps the elements unknown.
 * @param {unknown} value
 * @returns {value is unknown[]}
 */
function isList(value) {
  return Array.isArray(value);
}

/**
 * Reconnect delay: exponential growth, full jitter, a floor and a cap. The jitter spans the
 * whole exponential window (not a fraction of it), so a crowd of clients dropped together by
 * a restart spreads out instead of returning in waves; the floor keeps a flapping server from
 * being hammered at 0 ms.
 * @param {number} attempt failed attempts so far, 0 for the first retry
 * @param {number} [minDelayMs]
 * @param {number} [maxDelayMs]
 * @param {() => number} [random] in [0, 1)
 * @returns {number} milliseconds, in [minDelayMs, maxDelayMs]
 */
export function backoffDelay(attempt, minDelayMs = 250, maxDelayMs = 10000, random = Math.random) {
  const window = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.min(maxDelayMs, Math.floor(minDelayMs + random() * window));
}

/** @typedef {"backoff" | "prompt" | "auth" | "stop"} CloseAction */

/**
 * What the client does after a close code (contract sections 2, 5, 7 and 10): `backoff`
 * reconnects after a growing, jittered delay; `prompt` at once (attempt counter reset);
 * `auth` only with a fresh token; `stop` not at all. A code not listed (1006: the socket
 * dropped without a close frame, a proxy's own code) means `backoff`.
 *
 * This is the gateway's table (`src/natsgate/errors.py`, `CLOSE_INFO`) word for word, one
 * code per line; `tests/test_close_codes.py` reads it from here and compares the two.
 * @type {Readonly<Record<number, Readonly<{meaning: string, action: CloseAction}>>>}
 */
export const CLOSE_CODES = Object.freeze({
  1000: { meaning: "normal closure", action: "backoff" },
  1001: { meaning: "going away", action: "backoff" },
  1002: { meaning: "protocol error", action: "backoff" },
  1007: { meaning: "invalid data: not UTF-8", action: "backoff" },
  1008: { meaning: "policy violation", action: "stop" },
  1009: { meaning: "message too big", action: "backoff" },
  1011: { meaning: "internal error", action: "backoff" },
  1012: { meaning: "gateway restart: reconnect elsewhere now", action: "prompt" },
  1013: { meaning: "try again later: the client was too slow, or the gateway is full", action: "backoff" },
  4000: { meaning: "closed by the client: no cap_update or pong", action: "backoff" },
  4001: { meaning: "unauthorized: the token expired or was revoked", action: "auth" },
  4002: { meaning: "no pong: the server's pings went unanswered", action: "backoff" },
  4003: { meaning: "disconnected by an administrator", action: "stop" },
});

/**
 * @param {number} code a WebSocket close code
 * @returns {CloseAction}
 */
export function closeAction(code) {
  return CLOSE_CODES[code]?.action ?? "backoff";
}

/**
 * NATS subject matching: `*` matches one token, `>` one or more trailing tokens. Used for KV
 * keys and JetStream filters too, which follow the same rules.
 * @param {string} pattern
 * @param {string} subject
 */
export function subjectMatches(pattern, subject) {
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    const token = p[i];
    if (token === ">") return i === p.length - 1 && s.length > i;
    if (i >= s.length) return false;
    if (token === "*" ? s[i] === "" : token !== s[i]) return false;
  }
  return p.length === s.length;
}

/**
 * A frame holds one envelope or several separated by newlines (contract section 1).
 * @param {string} text
 * @returns {string[]}
 */
export function splitFrame(text) {
  return text.split("\n").filter((line) => line.trim() !== "");
}

/**
 * One line of a server frame, checked against the envelope's shape. Throws a NatsgateError
 * with code `protocol`, and nothing else, when the server broke the contract.
 * @param {string} line
 * @returns {Envelope}
 */
export function decodeEnvelope(line) {
  /** @type {unknown} */
  let value;
  try {
    value = JSON.parse(line);
  } catch (cause) {
    throw new NatsgateError("protocol", "server frame is not JSON", { cause });
  }
  if (!isRecord(value) || typeof value.op !== "string") {
    throw new NatsgateError("protocol", "server envelope has no op");
  }
  if (value.v !== undefined && value.v !== 1) {
    throw new NatsgateError("protocol", `unsupported envelope version ${String(value.v)}`);
  }
  /** @type {Envelope} */
  const env = { op: value.op, data: value.data };
  for (const field of /** @type {const} */ (["target", "inbox", "sub", "enc"])) {
    const v = value[field];
    if (typeof v === "string") env[field] = v;
    else if (v !== undefined && v !== null) {
      throw new NatsgateError("protocol", `envelope field ${field} is not a string`);
    }
  }
  const headers = decodeHeaders(value.headers);
  if (headers) env.headers = headers;
  return env;
}

/**
 * @param {unknown} value
 * @returns {Headers | undefined}
 */
function decodeHeaders(value) {
  if (!isRecord(value)) return undefined;
  /** @type {Headers} */
  const out = {};
  for (const [name, v] of Object.entries(value)) {
    if (typeof v === "string") out[name] = v;
    else if (isList(v)) out[name] = v.filter((x) => typeof x === "string");
  }
  return out;
}

/**
 * All envelopes of a frame; a broken line is reported and skipped, the rest still count.
 * @param {string} text
 * @returns {{envelopes: Envelope[], errors: NatsgateError[]}}
 */
export function decodeFrame(text) {
  /** @type {Envelope[]} */
  const envelopes = [];
  /** @type {NatsgateError[]} */
  const errors = [];
  for (const line of splitFrame(text)) {
    try {
      envelopes.push(decodeEnvelope(line));
    } catch (err) {
      errors.push(err instanceof NatsgateError ? err : new NatsgateError("protocol", String(err)));
    }
  }
  return { envelopes, errors };
}

/**
 * A client envelope as compact JSON. `v` is written out so a future server can tell.
 * @param {Envelope} env
 */
export function encodeEnvelope(env) {
  return JSON.stringify({ v: 1, ...env });
}

/**
 * @param {string} text base64
 * @returns {Uint8Array}
 */
export function base64ToBytes(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/**
 * A payload as the application should see it: bytes the server sent as base64 (`enc`
 * beside the value, contract section 3) become a Uint8Array; JSON and text stay as they are.
 * @param {unknown} value
 * @param {unknown} enc
 */
export function decodePayload(value, enc) {
  return enc === "base64" && typeof value === "string" ? base64ToBytes(value) : value;
}

/**
 * A KV `msg`'s data, or null when it is not shaped like one.
 * @param {unknown} data
 * @returns {KvEntry | null}
 */
export function decodeKvEntry(data) {
  if (!isRecord(data) || typeof data.key !== "string") return null;
  const op = data.op === "DEL" || data.op === "PURGE" ? data.op : "PUT";
  const revision = typeof data.revision === "number" ? data.revision : 0;
  return { key: data.key, revision, op, value: decodePayload(data.value, data.enc) };
}

/**
 * The gateway's KV markers: after its own NATS connection came back it re-reads a bucket and
 * frames the fresh snapshot with `{"op": "RESYNC", "pattern"}` ... `{"op": "SYNCED", "pattern"}`
 * (an addition to the contract, see docs/protocol.md).
 * @param {unknown} data
 * @returns {{op: "RESYNC" | "SYNCED", pattern: string | undefined} | null}
 */
export function decodeKvMarker(data) {
  if (!isRecord(data) || data.key !== undefined) return null;
  if (data.op !== "RESYNC" && data.op !== "SYNCED") return null;
  return { op: data.op, pattern: typeof data.pattern === "string" ? data.pattern : undefined };
}

/**
 * A JetStream `msg`'s data, or null when it is not shaped like one.
 * @param {Envelope} env
 * @returns {JsMessage | null}
 */
export function decodeJsMessage(env) {
  const data = env.data;
  if (!isRecord(data) || typeof data.seq !== "number") return null;
  return {
    seq: data.seq,
    subject: typeof data.subject === "string" ? data.subject : "",
    payload: decodePayload(data.payload, data.enc),
    time: typeof data.time === "string" ? data.time : undefined,
    headers: env.headers ?? decodeHeaders(data.headers),
  };
}

/**
 * The gateway URL: absolute ws(s) URLs pass; http(s) become ws(s); a path (or nothing:
 * `/ws`) is resolved against the page, with wss on an https page.
 * @param {string | undefined} url
 * @param {{href: string} | undefined} page the page's location, when there is one
 */
export function resolveUrl(url, page) {
  const u = new URL(url ?? "/ws", page?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}

/**
 * Browsers cannot set headers on a WebSocket upgrade; the contract takes `?token=`.
 * @param {string} url
 * @param {string} token
 */
export function withToken(url, token) {
  const u = new URL(url);
  u.searchParams.set("token", token);
  return u.toString();
}

/**
 * The `exp` of a JWT in epoch milliseconds, read without verifying (the server verifies; we
 * only need to know when to refresh). Undefined when the token has none or is not a JWT.
 * @param {string} token
 * @returns {number | undefined}
 */
export function jwtExpiry(token) {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    /** @type {unknown} */
    const claims = JSON.parse(new TextDecoder().decode(base64ToBytes(b64)));
    return isRecord(claims) && typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Resume bookkeeping for one JetStream subscription: which sequences the handler has seen,
 * and where a re-subscribe must start so that nothing is skipped or repeated (contract:
 * "resuming after a reconnect is js_sub with start_seq = last_seq + 1").
 */
export class StreamCursor {
  /** @type {{startSeq?: number, startTime?: string}} */
  #start;
  /** Stream's last_seq when a "new messages only" subscription was made; -1: not known. */
  #anchor = -1;

  /** @param {{startSeq?: number, startTime?: string}} [start] */
  constructor(start = {}) {
    this.#start = start;
    /** Highest sequence handed to the handler (or startSeq - 1). */
    this.lastSeq = start.startSeq && start.startSeq >= 1 ? start.startSeq - 1 : 0;
  }

  /**
   * Whether a message is new; a sequence at or below the last one seen is a duplicate.
   * @param {number} seq
   */
  accept(seq) {
    if (seq <= this.lastSeq) return false;
    this.lastSeq = seq;
    return true;
  }

  /**
   * A subscription for new messages only is anchored at the stream's last_seq from its first
   * reply, so that messages stored while disconnected are not lost on resume.
   * @param {ReplyData} reply
   */
  noteReply(reply) {
    const fromNow = !(this.#start.startSeq && this.#start.startSeq >= 1) && !this.#start.startTime;
    if (fromNow && this.#anchor < 0 && typeof reply.last_seq === "number") {
      this.#anchor = reply.last_seq;
    }
  }

  /** The start fields of the next `js_sub`. */
  resumeFrom() {
    const positioned = this.lastSeq > 0 || this.#anchor >= 0 || (this.#start.startSeq ?? 0) >= 1;
    if (positioned) return { start_seq: Math.max(this.lastSeq, this.#anchor) + 1 };
    if (this.#start.startTime) return { start_time: this.#start.startTime };
    return {};
  }
}

/**
 * An entry of cap_update's `revoked` list as (kind, target, pattern). The contract leaves its
 * shape open; accepted: the subscribing op itself (`{"op": "kv_sub", "target": "todos",
 * "data": {"pattern": "user.a.>"}}`), the same with `pattern`/`filter` at the top level or
 * `kind`/`type` in place of `op`, and strings: `"chat.>"`, `"kv:todos:user.a.>"`,
 * `"js:CHAT:chat.room.*"`.
 * @param {unknown} item
 * @returns {{kind: "sub" | "kv" | "js", target: string, pattern: string | undefined} | null}
 */
export function parseRevoked(item) {
  if (typeof item === "string") {
    for (const kind of /** @type {const} */ (["kv", "js"])) {
      if (item.startsWith(`${kind}:`)) {
        const [target = "", ...rest] = item.slice(3).split(":");
        return { kind, target, pattern: rest.length ? rest.join(":") : undefined };
      }
    }
    return { kind: "sub", target: item, pattern: item };
  }
  if (!isRecord(item)) return null;
  const tag = item.op ?? item.kind ?? item.type;
  /** @type {Record<string, "sub" | "kv" | "js">} */
  const kinds = { sub: "sub", core: "sub", kv_sub: "kv", kv: "kv", js_sub: "js", js: "js" };
  const kind = typeof tag === "string" ? kinds[tag] : "sub";
  const target = item.target ?? item.subject ?? item.bucket ?? item.stream;
  if (!kind || typeof target !== "string") return null;
  const data = isRecord(item.data) ? item.data : item;
  const p = data.pattern ?? data.filter;
  return { kind, target, pattern: kind === "sub" ? target : typeof p === "string" ? p : undefined };
}

/**
 * An absent KV pattern means all keys, an absent JetStream filter all subjects.
 * @param {string | undefined} pattern
 */
function normPattern(pattern) {
  return pattern === undefined || pattern === "" ? ">" : pattern;
}

/**
 * @template T
 * @returns {{promise: Promise<T>, resolve: (value: T) => void, reject: (reason: unknown) => void}}
 */
function deferred() {
  /** @type {(value: T) => void} */
  let resolve = () => {};
  /** @type {(reason: unknown) => void} */
  let reject = () => {};
  /** @type {Promise<T>} */
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * An exception thrown by an application handler must not break frame processing; it is
 * re-thrown from a fresh task so that it still shows up in the console (or fails a test).
 * @param {unknown} err
 */
function rethrowLater(err) {
  setTimeout(() => {
    throw err;
  }, 0);
}

/**
 * setTimeout overflows (and fires at once) past 2^31-1 ms; a JWT can expire later than that.
 * @param {() => void} fn
 * @param {number} ms
 */
function later(fn, ms) {
  return setTimeout(fn, Math.min(Math.max(ms, 0), 2 ** 31 - 1));
}

/**
 * A small typed event emitter; handlers run in subscription order.
 * @template {Record<string, unknown[]>} M
 */
class Emitter {
  /** @type {{[K in keyof M]?: Set<(...args: M[K]) => void>}} */
  #handlers = {};

  /**
   * @template {keyof M} K
   * @param {K} name
   * @param {(...args: M[K]) => void} handler
   * @returns {() => void} removes the handler
   */
  on(name, handler) {
    /** @type {Set<(...args: M[K]) => void>} */
    const set = this.#handlers[name] ?? new Set();
    this.#handlers[name] = set;
    set.add(handler);
    return () => this.off(name, handler);
  }

  /**
   * @template {keyof M} K
   * @param {K} name
   * @param {(...args: M[K]) => void} handler
   */
  off(name, handler) {
    this.#handlers[name]?.delete(handler);
  }

  /**
   * @template {keyof M} K
   * @param {K} name
   * @param {M[K]} args
   */
  emit(name, ...args) {
    for (const handler of [...(this.#handlers[name] ?? [])]) {
      try {
        handler(...args);
      } catch (err) {
        rethrowLater(err);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

/** @type {Readonly<Record<SubscriptionState, readonly SubscriptionState[]>>} */
const SUBSCRIPTION_TRANSITIONS = {
  subscribing: ["active", "ended", "revoked"],
  active: ["subscribing", "ended", "revoked"],
  ended: [],
  revoked: [],
};

/**
 * A live interest on the server: core subject, KV watch or JetStream consumer. It survives
 * reconnects (the client re-sends it) until `unsubscribe()`, a refusal or a revocation.
 * The underscore methods belong to the client.
 */
export class Subscription {
  /** @type {SubscriptionState} */
  #state = "subscribing";
  /** @type {Emitter<SubscriptionEvents>} */
  #events = new Emitter();
  #settled = false;
  /** @type {ReturnType<typeof deferred<ReplyData>>} */
  #ready = deferred();
  /** @type {((sub: Subscription) => Promise<void>) | null} */
  _release = null;

  /**
   * @param {"sub" | "kv" | "js"} kind
   * @param {string} target subject pattern, bucket or stream
   * @param {string | undefined} pattern core: the subject; KV: the key pattern; JS: the filter
   */
  constructor(kind, target, pattern) {
    this.kind = kind;
    this.target = target;
    this.pattern = pattern;
    /**
     * Settles with the server's first `reply` (its data) or `error` for this subscription.
     * For KV it resolves once the current values have been delivered.
     */
    this.ready = this.#ready.promise;
    this.ready.catch(() => {}); // a refusal nobody awaited is not an unhandled rejection
  }

  get state() {
    return this.#state;
  }

  /** True once the subscription is over for good (unsubscribed, refused, revoked, closed). */
  get ended() {
    return this.#state === "ended" || this.#state === "revoked";
  }

  /** True when a cap_update took the permission away. */
  get revoked() {
    return this.#state === "revoked";
  }

  /**
   * @template {keyof SubscriptionEvents} K
   * @param {K} name
   * @param {(...args: SubscriptionEvents[K]) => void} handler
   */
  on(name, handler) {
    return this.#events.on(name, handler);
  }

  /**
   * @template {keyof SubscriptionEvents} K
   * @param {K} name
   * @param {(...args: SubscriptionEvents[K]) => void} handler
   */
  off(name, handler) {
    this.#events.off(name, handler);
  }

  /** Ends the subscription and tells the server; resolves when the server has acknowledged. */
  unsubscribe() {
    if (this.ended) return Promise.resolve();
    this._end("ended", new NatsgateError("closed", "unsubscribed before it was ready"));
    return this._release ? this._release(this) : Promise.resolve();
  }

  /** @param {SubscriptionState} next */
  #transition(next) {
    const previous = this.#state;
    if (previous === next) return;
    if (!SUBSCRIPTION_TRANSITIONS[previous].includes(next)) {
      throw new Error(`natsgate: subscription cannot go from ${previous} to ${next}`);
    }
    this.#state = next;
    this.#events.emit("state", next, previous);
  }

  /**
   * @template {keyof SubscriptionEvents} K
   * @param {K} name
   * @param {SubscriptionEvents[K]} args
   */
  _emit(name, ...args) {
    this.#events.emit(name, ...args);
  }

  /** Identity on the wire: one live subscription per key and client. */
  _key() {
    return `${this.kind}\u0000${this.target}\u0000${normPattern(this.pattern)}`;
  }

  /** @returns {Envelope} the op that (re)creates this subscription, without inbox */
  _wire() {
    return { op: "sub", target: this.target };
  }

  /** @returns {Envelope} the op that ends it: same target and pattern/filter */
  _unwire() {
    return { op: "unsub", target: this.target };
  }

  /** The socket dropped: no longer active, waiting to be re-sent. */
  _pause() {
    if (!this.ended) this.#transition("subscribing");
  }

  /** The (re)subscribe op is being sent. */
  _subscribing() {
    this._pause();
  }

  /** @param {ReplyData} data */
  _onReply(data) {
    if (this.ended) return;
    this.#transition("active");
    if (!this.#settled) {
      this.#settled = true;
      this.#ready.resolve(data);
    }
  }

  /** @param {NatsgateError} err the server refused the (re)subscribe */
  _onRefused(err) {
    if (this.ended) return;
    const wasSettled = this.#settled;
    this._end("ended", err);
    if (wasSettled) this.#events.emit("error", err);
  }

  /**
   * @param {"ended" | "revoked"} state
   * @param {NatsgateError} [err] rejects `ready` if it has not settled yet
   */
  _end(state, err) {
    if (this.ended) return;
    this.#transition(state);
    if (!this.#settled) {
      this.#settled = true;
      this.#ready.reject(err ?? new NatsgateError("closed", "subscription ended"));
    }
  }
}

/** A core NATS subscription; `handler(data, msg)`. */
export class CoreSubscription extends Subscription {
  /**
   * @param {string} subject
   * @param {(data: unknown, msg: CoreMessage) => void} handler
   */
  constructor(subject, handler) {
    super("sub", subject, subject);
    this.subject = subject;
    this._handler = handler;
  }

  /** @param {CoreMessage} msg */
  _deliver(msg) {
    this._handler(msg.data, msg);
  }
}

/**
 * A KV watch: the current values (with `{snapshot: true}`), then changes. Each re-hydration
 * (after a reconnect, or the gateway's RESYNC marker) is announced with `resync` (and
 * `onResync`) before its first value, and its end with `synced`.
 */
export class KvSubscription extends Subscription {
  /**
   * Last revision handed over per key: drops repeats when two watches overlap.
   * @type {Map<string, number>}
   */
  #revisions = new Map();
  /** Something was delivered since the last (re)hydration started. */
  #dirty = false;
  /** Between the gateway's RESYNC and SYNCED markers. */
  #serverSnapshot = false;

  /**
   * @param {string} bucket
   * @param {string | undefined} pattern
   * @param {(entry: KvEntry, meta: {snapshot: boolean}) => void} handler
   * @param {{onResync?: () => void}} options
   */
  constructor(bucket, pattern, handler, options) {
    super("kv", bucket, pattern);
    this.bucket = bucket;
    this._handler = handler;
    this._onResync = options.onResync;
  }

  /** @returns {Envelope} */
  _wire() {
    return { op: "kv_sub", target: this.target, data: this.#data() };
  }

  /** @returns {Envelope} */
  _unwire() {
    return { op: "kv_unsub", target: this.target, data: this.#data() };
  }

  #data() {
    return this.pattern === undefined ? {} : { pattern: this.pattern };
  }

  _subscribing() {
    super._subscribing();
    this.#serverSnapshot = false;
    if (this.#dirty) this.#beginHydration();
  }

  /** @param {ReplyData} data */
  _onReply(data) {
    if (this.ended) return;
    super._onReply(data);
    this._emit("synced");
  }

  /** @param {"RESYNC" | "SYNCED"} marker */
  _onMarker(marker) {
    if (this.ended) return;
    this.#serverSnapshot = marker === "RESYNC";
    if (marker === "RESYNC") this.#beginHydration();
    else this._emit("synced");
  }

  #beginHydration() {
    this.#dirty = false;
    this.#revisions.clear();
    try {
      this._onResync?.();
    } catch (err) {
      rethrowLater(err);
    }
    this._emit("resync");
  }

  /** @param {string} key */
  _matches(key) {
    return subjectMatches(normPattern(this.pattern), key);
  }

  /**
   * @param {KvEntry} entry
   * @param {boolean} flagged the server marked it `snapshot`
   */
  _deliver(entry, flagged) {
    const seen = this.#revisions.get(entry.key);
    if (seen !== undefined && entry.revision !== 0 && entry.revision <= seen) return;
    this.#revisions.set(entry.key, entry.revision);
    this.#dirty = true;
    this._handler(entry, { snapshot: flagged || this.#serverSnapshot || this.state === "subscribing" });
  }
}

/**
 * A JetStream subscription. Tracks the last sequence handed to the handler, resumes after it
 * on reconnect, and drops anything at or below it.
 */
export class JsSubscription extends Subscription {
  /** @type {JsOptions} */
  #options;

  /**
   * @param {string} stream
   * @param {JsOptions} options
   * @param {(msg: JsMessage) => void} handler
   */
  constructor(stream, options, handler) {
    super("js", stream, options.filter);
    this.stream = stream;
    this.#options = options;
    const startTime = options.startTime instanceof Date ? options.startTime.toISOString() : options.startTime;
    this.cursor = new StreamCursor({ startSeq: options.startSeq, startTime });
    /** True when the latest (re)subscribe reply said retention dropped messages you missed. */
    this.gap = false;
    this._handler = handler;
  }

  /** The last stream sequence the handler saw: persist it and pass it to `jsResume`. */
  get lastSeq() {
    return this.cursor.lastSeq;
  }

  /** @returns {Envelope} */
  _wire() {
    /** @type {Record<string, unknown>} */
    const data = { ...this.cursor.resumeFrom() };
    if (this.#options.batch !== undefined) data.batch = this.#options.batch;
    if (this.#options.filter !== undefined) data.filter = this.#options.filter;
    return { op: "js_sub", target: this.target, data };
  }

  /** @returns {Envelope} */
  _unwire() {
    return { op: "js_unsub", target: this.target, data: this.pattern === undefined ? {} : { filter: this.pattern } };
  }

  /** @param {ReplyData} data */
  _onReply(data) {
    if (this.ended) return;
    this.cursor.noteReply(data);
    this.gap = data.gap === true;
    super._onReply(data);
    if (this.gap) this._emit("gap", data);
  }

  /** @param {string} subject */
  _matches(subject) {
    return subjectMatches(normPattern(this.pattern), subject);
  }

  /** @param {JsMessage} msg */
  _deliver(msg) {
    if (this.cursor.accept(msg.seq)) this._handler(msg);
  }
}

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
  /** @type {ClientState} */
  #state = "connecting";
  /** @type {Emitter<ClientEvents>} */
  #events = new Emitter();
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

  /**
   * @param {string | undefined} url
   * @param {ConnectOptions} [options]
   */
  constructor(url, options = {}) {
    const page = typeof location === "undefined" ? undefined : location;
    this.#url = resolveUrl(url, page);
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("natsgate: no WebSocket; pass options.WebSocket");
    }
    this.#WS = /** @type {WebSocketConstructor} */ (WS);
    this.#opts = {
      token: options.token,
      refreshToken: options.refreshToken,
      refreshBeforeMs: options.refreshBeforeMs ?? 30000,
      pingIntervalMs: options.pingIntervalMs ?? 25000,
      minDelayMs: options.minDelayMs ?? 250,
      maxDelayMs: options.maxDelayMs ?? 10000,
      stableAfterMs: options.stableAfterMs ?? 5000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10000,
      requestTimeoutMs: options.requestTimeoutMs ?? 5000, // the server's CMD_TIMEOUT_MS
      timeoutGraceMs: options.timeoutGraceMs ?? 1000,
      random: options.random ?? Math.random,
    };
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
   * Ordered delivery from a JetStream stream; resumes without gap or duplicate on reconnect.
   * `ready` resolves to the reply data: `{ok, first_seq, last_seq, gap?}`.
   * @param {string} stream
   * @param {JsOptions} options
   * @param {(msg: JsMessage) => void} handler
   */
  jsSubscribe(stream, options, handler) {
    return this.#track(new JsSubscription(stream, options ?? {}, handler));
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

  /** @param {ClientState} next */
  #transition(next) {
    const previous = this.#state;
    if (previous === next) return;
    if (!CLIENT_TRANSITIONS[previous].includes(next)) {
      throw new Error(`natsgate: client cannot go from ${previous} to ${next}`);
    }
    this.#state = next;
    this.#events.emit("state", next, previous);
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
    this.#transition("open");
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
    this.#transition("reconnecting");
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
    this.#transition("closed");
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
   * @returns {Promise<unknown>}
   */
  #request(env, timeoutMs) {
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
    sub._release = (s) => this.#release(s);
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

  /** Token refresh without reconnect: the contract's `auth` op. */
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
      const key = `${r.kind}\u0000${r.target}\u0000${normPattern(r.pattern)}`;
      const sub = this.#subs.get(key);
      if (!sub) continue;
      this.#subs.delete(key);
      sub._end("revoked", new NatsgateError("forbidden", "revoked by a capability update", { target: sub.target }));
      ended.push(sub);
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

  /**
   * Route a `msg`: KV by bucket and key pattern, JetStream by stream and filter, core by the
   * `sub` pattern the server echoes. A `sub` on KV/JS frames is honoured too when present.
   * @param {Envelope} env
   */
  #onMsg(env) {
    const target = env.target ?? "";
    if (target.startsWith("kv:")) {
      const bucket = target.slice(3);
      const marker = decodeKvMarker(env.data);
      if (marker) {
        for (const sub of this.#subs.values()) {
          if (sub instanceof KvSubscription && sub.bucket === bucket && normPattern(sub.pattern) === normPattern(marker.pattern)) {
            this.#deliver(() => sub._onMarker(marker.op));
          }
        }
        return;
      }
      const entry = decodeKvEntry(env.data);
      if (entry) {
        const flagged = isRecord(env.data) && env.data.snapshot === true;
        for (const sub of this.#subs.values()) {
          if (sub instanceof KvSubscription && sub.bucket === bucket && this.#wants(sub, env, entry.key)) {
            this.#deliver(() => sub._deliver(entry, flagged));
          }
        }
        return;
      }
    }
    if (target.startsWith("js:")) {
      const msg = decodeJsMessage(env);
      if (msg) {
        const stream = target.slice(3);
        for (const sub of this.#subs.values()) {
          if (sub instanceof JsSubscription && sub.stream === stream && this.#wants(sub, env, msg.subject)) {
            this.#deliver(() => sub._deliver(msg));
          }
        }
        return;
      }
    }
    /** @param {CoreSubscription} sub */
    const deliver = (sub) => {
      /** @type {CoreMessage} */
      const msg = { subject: target, sub: sub.subject, data: decodePayload(env.data, env.enc), headers: env.headers };
      this.#deliver(() => sub._deliver(msg));
    };
    if (env.sub !== undefined) {
      const sub = this.#subs.get(`sub\u0000${env.sub}\u0000${env.sub}`);
      if (sub instanceof CoreSubscription) deliver(sub);
      return;
    }
    for (const sub of this.#subs.values()) {
      if (sub instanceof CoreSubscription && subjectMatches(sub.subject, target)) deliver(sub);
    }
  }

  /**
   * @param {KvSubscription | JsSubscription} sub
   * @param {Envelope} env
   * @param {string} subject the KV key or the JetStream message subject
   */
  #wants(sub, env, subject) {
    return env.sub !== undefined ? normPattern(env.sub) === normPattern(sub.pattern) : sub._matches(subject);
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
