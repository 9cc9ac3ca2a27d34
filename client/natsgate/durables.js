// natsgate/durables.js: durable JetStream subscriptions and acknowledgements
// (docs/protocol.md, "Durable subscriptions and acknowledgements").
//
// The position lives on the NATS server under the durable's name, so a rebind after a
// reconnect sends the name and nothing about where to start. Delivery is at least once:
// with explicit acks, a message not acked (or nak'ed) comes again with a higher `delivery`,
// and it reaches the handler again; there is no sequence filter as for plain subscriptions.

import { NatsgateError } from "./errors.js";
import { Subscription, durableKey } from "./subscriptions.js";

/** @typedef {import("./wire.js").Envelope} Envelope */
/** @typedef {import("./wire.js").Headers} Headers */
/** @typedef {import("./wire.js").JsMessage} JsMessage */
/** @typedef {import("./wire.js").ReplyData} ReplyData */

/**
 * A durable subscription whose messages count as handled once the gateway wrote them
 * (`ack: "none"`, the default).
 * @typedef {object} DurableOptions
 * @property {string} durable the name (1-32 of `A-Z a-z 0-9 _ -`); the NATS server keeps
 *   its position for this user and stream, across connections and devices
 * @property {"none"} [ack] default
 * @property {number} [ackWaitMs] redelivery after this long without an ack (1000-600000;
 *   server default 30000)
 * @property {number} [startSeq] where a new durable starts (inclusive); an existing one
 *   keeps its position
 * @property {Date | string} [startTime] where a new durable starts
 * @property {number} [batch] messages in flight (with explicit acks: unacked at a time);
 *   server default 100
 * @property {string} [filter] a subject filter, fixed when the durable is made
 * @property {boolean} [reset] make the durable afresh (its position is lost); needed to
 *   change its filter. Sent until the first binding succeeds, never on a rebind
 */

/**
 * A durable subscription with explicit acks: the handler gets a `JsAckMessage`.
 * @typedef {Omit<DurableOptions, "ack"> & {ack: "explicit"}} DurableAckOptions
 */

/** @typedef {"ack" | "nak" | "term"} AckKind */

/**
 * What a message needs of its subscription to settle itself.
 * @typedef {object} AckTarget
 * @property {(seq: number, kind: AckKind, delayMs: number | undefined, sync: boolean,
 *   binding: number) => Promise<void>} _settle
 */

/**
 * A message of a durable subscription with explicit acks. Settle it once, with `ack()`
 * (handled), `nak(delayMs?)` (deliver it again, after `delayMs`) or `term()` (never again);
 * until then the gateway redelivers it after `ackWaitMs`. The first call counts; later
 * calls do nothing (`ackSync()` then returns the first call's promise).
 */
export class JsAckMessage {
  /** @type {AckTarget} */
  #target;
  #binding;
  /** @type {AckKind | null} */
  #settled = null;
  /** @type {Promise<void>} */
  #done = Promise.resolve();

  /**
   * @param {JsMessage} msg
   * @param {number} delivery
   * @param {AckTarget} target
   * @param {number} binding the subscription's binding the message came on
   */
  constructor(msg, delivery, target, binding) {
    /** the stream sequence: what the ack names */
    this.seq = msg.seq;
    this.subject = msg.subject;
    /** @type {unknown} */
    this.payload = msg.payload;
    /** @type {string | undefined} RFC 3339 */
    this.time = msg.time;
    /** @type {Headers | undefined} */
    this.headers = msg.headers;
    /** 1 the first time; higher after a nak, an ack wait that ran out, or a lost connection */
    this.delivery = delivery;
    this.#target = target;
    this.#binding = binding;
  }

  /** How the message was settled by this object, null before. */
  get settled() {
    return this.#settled;
  }

  /** Handled: fire-and-forget (a refusal is the client's `error` event). */
  ack() {
    this.#settle("ack", undefined, false);
  }

  /**
   * Deliver it again, now or after `delayMs`.
   * @param {number} [delayMs]
   */
  nak(delayMs) {
    this.#settle("nak", delayMs, false);
  }

  /** Never deliver it again, handled or not. */
  term() {
    this.#settle("term", undefined, false);
  }

  /**
   * `ack()`, resolved once the NATS server has the ack; rejects with the gateway's error,
   * `timeout`, or `disconnected` (the message's connection is gone: it will come again).
   * @returns {Promise<void>}
   */
  ackSync() {
    return this.#settle("ack", undefined, true);
  }

  /**
   * @param {AckKind} kind
   * @param {number | undefined} delayMs
   * @param {boolean} sync
   */
  #settle(kind, delayMs, sync) {
    if (this.#settled !== null) return this.#done;
    this.#settled = kind;
    this.#done = this.#target._settle(this.seq, kind, delayMs, sync, this.#binding);
    return this.#done;
  }
}

/**
 * A durable JetStream subscription: bound to a consumer the NATS server keeps by name. After
 * a reconnect it binds again by name (the server resumes where the durable stood); messages
 * delivered and not acked before the loss come again. `M` is what the handler gets:
 * `JsAckMessage` with `ack: "explicit"`, else a plain `JsMessage`.
 * @template {JsMessage} [M=JsMessage]
 */
export class DurableSubscription extends Subscription {
  /** @type {DurableOptions | DurableAckOptions} */
  #options;
  /** A (re)bind has been acknowledged: from now on only the name is sent. */
  #bound = false;
  /** Bumped whenever the binding is lost or re-made: acks of an older one are not sent. */
  #binding = 0;

  /**
   * @param {string} stream
   * @param {DurableOptions | DurableAckOptions} options
   * @param {(msg: M) => void} handler
   */
  constructor(stream, options, handler) {
    super("js", stream, options.filter ?? ">"); // no filter: every subject of the stream
    this.stream = stream;
    this.durable = options.durable;
    /** @type {"none" | "explicit"} */
    this.ack = options.ack === "explicit" ? "explicit" : "none";
    /** True when the latest (re)bind reply said retention dropped messages asked for. */
    this.gap = false;
    /** Messages not yet delivered, from the latest (re)bind reply. */
    this.pending = 0;
    /** Messages delivered and not acked, from the latest (re)bind reply. */
    this.ackPending = 0;
    this.#options = options;
    this._handler = handler;
  }

  /**
   * Unbind (the durable keeps its position), or with `{delete: true}` delete the durable on
   * the server. Unbinding resolves on the acknowledgement, as for every subscription;
   * deleting is a request: it is sent when open (waiting for the next open if need be) and
   * rejects with the gateway's error (`not_found`: no such durable) or `timeout`.
   * @param {{delete?: boolean}} [options]
   * @returns {Promise<void>}
   */
  unsubscribe(options = {}) {
    if (!options.delete) return super.unsubscribe();
    if (!this._owner) return Promise.reject(new NatsgateError("closed", "never subscribed", { target: this.stream }));
    return this._owner.deleteDurable(this.stream, this.durable);
  }

  _key() {
    return durableKey(this.stream, this.durable);
  }

  /** @returns {Envelope} */
  _wire() {
    const o = this.#options;
    /** @type {Record<string, unknown>} */
    const data = { durable: this.durable };
    if (!this.#bound) {
      // where a new durable starts; an existing one ignores it, a rebind never sends it
      if (o.startSeq !== undefined && o.startSeq >= 1) data.start_seq = o.startSeq;
      else if (o.startTime !== undefined) {
        data.start_time = o.startTime instanceof Date ? o.startTime.toISOString() : o.startTime;
      }
      if (o.reset) data.reset = true;
    }
    if (this.ack === "explicit") data.ack = "explicit";
    if (o.ackWaitMs !== undefined) data.ack_wait_ms = o.ackWaitMs;
    if (o.batch !== undefined) data.batch = o.batch;
    if (o.filter !== undefined) data.filter = o.filter;
    return { op: "js_sub", target: this.stream, data };
  }

  /** @returns {Envelope} unbind: the durable keeps its position */
  _unwire() {
    return { op: "js_unsub", target: this.stream, data: { durable: this.durable } };
  }

  _pause() {
    this.#binding += 1;
    super._pause();
  }

  /**
   * @param {"ended" | "revoked"} state
   * @param {NatsgateError} [err]
   */
  _end(state, err) {
    this.#binding += 1;
    super._end(state, err);
  }

  /** @param {ReplyData} data */
  _onReply(data) {
    if (this.ended) return;
    this.#bound = true;
    this.gap = data.gap === true;
    this.pending = typeof data.pending === "number" ? data.pending : 0;
    this.ackPending = typeof data.ack_pending === "number" ? data.ack_pending : 0;
    super._onReply(data);
    if (this.gap) this._emit("gap", data);
  }

  /**
   * Every delivery reaches the handler, a redelivery too (at least once).
   * @param {JsMessage} msg
   * @param {number} delivery
   */
  _deliver(msg, delivery) {
    const m = this.ack === "explicit" ? new JsAckMessage(msg, delivery, this, this.#binding) : msg;
    this._handler(/** @type {M} */ (m));
  }

  /**
   * Send a message's `js_ack`. Not sent when the binding it came on is gone (the gateway
   * would refuse it, and the message comes again on the new binding anyway).
   * @param {number} seq
   * @param {AckKind} kind
   * @param {number | undefined} delayMs
   * @param {boolean} sync with an inbox: resolve on the gateway's reply
   * @param {number} binding
   * @returns {Promise<void>}
   */
  _settle(seq, kind, delayMs, sync, binding) {
    const owner = this._owner;
    if (!owner || binding !== this.#binding || this.ended) {
      if (!sync) return Promise.resolve();
      return Promise.reject(new NatsgateError("disconnected",
        `message ${seq} of durable ${this.durable} came on a binding that is gone; it will be delivered again`,
        { target: this.stream }));
    }
    /** @type {Record<string, unknown>} */
    const data = { durable: this.durable, seq };
    if (kind === "nak") {
      data.nak = true;
      if (delayMs !== undefined) data.delay_ms = delayMs;
    } else if (kind === "term") {
      data.term = true;
    }
    /** @type {Envelope} */
    const env = { op: "js_ack", target: this.stream, data };
    if (sync) return owner.ask(env).then(() => undefined);
    owner.post(env);
    return Promise.resolve();
  }
}
