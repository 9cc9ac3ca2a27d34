// natsgate/subscriptions.js: the subscription objects (core, KV, JetStream), each with its
// state machine, and their identity on the wire.
//
// A subscription knows what to send to (re)create and end itself and what to do with a
// reply, an error, a message; the client owns the socket and calls the underscore methods.
// Durable JetStream subscriptions are in durables.js, routing a `msg` in routing.js.

import { NatsgateError } from "./errors.js";
import { Emitter, StateMachine, rethrowLater } from "./emitter.js";
import { normPattern, subjectMatches } from "./subjects.js";

/** @typedef {import("./wire.js").CoreMessage} CoreMessage */
/** @typedef {import("./wire.js").Envelope} Envelope */
/** @typedef {import("./wire.js").JsMessage} JsMessage */
/** @typedef {import("./wire.js").KvEntry} KvEntry */
/** @typedef {import("./wire.js").ReplyData} ReplyData */
/** @typedef {import("./wire.js").PresenceChange} PresenceChange */
/** @typedef {import("./wire.js").PresenceMember} PresenceMember */
/** @typedef {import("./wire.js").SubscriptionKind} SubscriptionKind */

/** @typedef {"subscribing" | "active" | "ended" | "revoked"} SubscriptionState */

/**
 * What a subscription needs of the client that tracks it (the client hands it over; no
 * import of the client, no circle).
 * @typedef {object} SubscriptionOwner
 * @property {(sub: Subscription) => Promise<void>} release forget it and send its
 *   `_unwire()` when open; resolves on the acknowledgement (or at once when not open)
 * @property {(env: Envelope) => boolean} post send on the current socket without an inbox;
 *   false when not open (nothing is queued)
 * @property {(env: Envelope) => Promise<unknown>} ask send with an inbox on the current
 *   socket (never queued for a later one); the reply's data, or a NatsgateError
 * @property {(stream: string, durable: string) => Promise<void>} deleteDurable
 */

/**
 * @typedef {object} JsOptions
 * @property {number} [startSeq] deliver from this stream sequence (inclusive)
 * @property {Date | string} [startTime] deliver from this time
 * @property {number} [batch] messages in flight (server default 100, at most 1000)
 * @property {string} [filter] a subject filter within the stream
 */

/**
 * @typedef {object} SubscriptionEvents
 * @property {[state: SubscriptionState, previous: SubscriptionState]} state
 * @property {[error: NatsgateError]} error
 * @property {[]} resync KV only: a re-hydration starts; drop what you hold for this pattern
 * @property {[]} synced KV only: a (re)hydration is complete; what you hold is current
 * @property {[reply: ReplyData]} gap JetStream only: retention dropped messages you missed
 * @property {[change: PresenceChange]} join presence only: a member came
 * @property {[change: PresenceChange]} update presence only: a member joined again with new info
 * @property {[change: PresenceChange]} leave presence only: a member went
 * @property {[members: PresenceMember[]]} sync presence only: the member list is complete
 *   (first read, or read again after a reconnect)
 */

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
 * Resume bookkeeping for one JetStream subscription: which sequences the handler has seen,
 * and where a re-subscribe must start so that nothing is skipped or repeated (protocol:
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

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

/**
 * A subscription's identity on the wire: one live subscription per key and client. A
 * cap_update's `revoked` entry and a core `msg`'s `sub` are looked up by it.
 * @param {SubscriptionKind} kind
 * @param {string} target
 * @param {string | undefined} pattern
 */
export function subscriptionKey(kind, target, pattern) {
  return `${kind}\u0000${target}\u0000${normPattern(pattern)}`;
}

/**
 * A durable's identity: one binding per (stream, durable name) and client, whatever its
 * filter; a durable `msg` names it (`"durable"` beside `target`).
 * @param {string} stream
 * @param {string} durable
 */
export function durableKey(stream, durable) {
  return `durable\u0000${stream}\u0000${durable}`;
}

/**
 * Legal subscription transitions: back to `subscribing` while the socket is down (it is
 * re-sent on the next open); `ended` and `revoked` are final.
 * @type {Readonly<Record<SubscriptionState, readonly SubscriptionState[]>>}
 */
const SUBSCRIPTION_TRANSITIONS = {
  subscribing: ["active", "ended", "revoked"],
  active: ["subscribing", "ended", "revoked"],
  ended: [],
  revoked: [],
};

/**
 * A live interest on the server: core subject, KV watch, JetStream consumer, presence join or
 * member list (presence.js). It survives
 * reconnects (the client re-sends it) until `unsubscribe()`, a refusal or a revocation.
 * The underscore methods belong to the client.
 */
export class Subscription {
  /** @type {Emitter<SubscriptionEvents>} */
  #events = new Emitter();
  /** @type {StateMachine<SubscriptionState>} */
  #machine = new StateMachine("subscription", /** @type {SubscriptionState} */ ("subscribing"),
    SUBSCRIPTION_TRANSITIONS, (next, previous) => this.#events.emit("state", next, previous));
  #settled = false;
  /** @type {ReturnType<typeof deferred<ReplyData>>} */
  #ready = deferred();
  /** @type {SubscriptionOwner | null} set by the client that tracks it */
  _owner = null;

  /**
   * @param {SubscriptionKind} kind
   * @param {string} target subject pattern, bucket or stream; presence: the subject
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
    return this.#machine.state;
  }

  /** True once the subscription is over for good (unsubscribed, refused, revoked, closed). */
  get ended() {
    return this.#machine.state === "ended" || this.#machine.state === "revoked";
  }

  /** True when a cap_update took the permission away. */
  get revoked() {
    return this.#machine.state === "revoked";
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
    return this._owner ? this._owner.release(this) : Promise.resolve();
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
    return subscriptionKey(this.kind, this.target, this.pattern);
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
    if (!this.ended) this.#machine.go("subscribing");
  }

  /** The (re)subscribe op is being sent. */
  _subscribing() {
    this._pause();
  }

  /** @param {ReplyData} data */
  _onReply(data) {
    if (this.ended) return;
    this.#machine.go("active");
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
    this.#machine.go(state);
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
    super("js", stream, options.filter ?? ">"); // no filter: every subject of the stream
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
    const filter = this.#options.filter;
    return { op: "js_unsub", target: this.target, data: filter === undefined ? {} : { filter } };
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
