// natsgate/presence.js: who is here on a subject (docs/protocol.md, "Presence").
//
// Two subscription kinds, so the client keeps them across sockets like any other: a
// `PresenceJoin` announces this connection (`join`; `leave` ends it) and is sent again,
// with the latest info, after every reconnect; a `PresenceSubscription` reads the member
// list (`presence_sub`): the current members, then joins and leaves. After a reconnect it
// reads the list again and reports the difference to what it held, so a page sees who came
// and went while it was away instead of an empty list filling up again.

import { NatsgateError } from "./errors.js";
import { rethrowLater } from "./emitter.js";
import { Subscription } from "./subscriptions.js";

/** @typedef {import("./wire.js").Envelope} Envelope */
/** @typedef {import("./wire.js").PresenceChange} PresenceChange */
/** @typedef {import("./wire.js").PresenceMember} PresenceMember */
/** @typedef {import("./wire.js").ReplyData} ReplyData */

/** The gateway refuses a join whose info is larger (its JSON, in bytes). */
export const MAX_PRESENCE_INFO = 1024;

/**
 * Checks a join's info the way the gateway will, so that a mistake shows at once (and is
 * not kept, to be refused again by every re-join after a reconnect).
 * @param {unknown} info
 * @param {string} subject
 * @returns {NatsgateError | null}
 */
function checkInfo(info, subject) {
  /** @type {string | undefined} */
  let text;
  try {
    text = JSON.stringify(info);
  } catch (cause) {
    return new NatsgateError("bad_request", "presence info is not JSON", { cause, target: subject });
  }
  if (text === undefined) return new NatsgateError("bad_request", "presence info is not JSON", { target: subject });
  const size = new TextEncoder().encode(text).length;
  if (size > MAX_PRESENCE_INFO) {
    return new NatsgateError("bad_request", `presence info is ${size} bytes of JSON; at most ${MAX_PRESENCE_INFO}`, { target: subject });
  }
  return null;
}

/**
 * This connection announced on a subject, from `client.join(subject, info)`. The client
 * joins again (with the latest info) after every reconnect, until `leave()`, a refusal or a
 * revocation. `ready` settles with the gateway's first answer; `state` is that of every
 * subscription (`subscribing` while a (re)join is on its way).
 */
export class PresenceJoin extends Subscription {
  /** @type {unknown} */
  #info;
  /** Bumped by every update(); what the gateway has acknowledged is `#acked`. */
  #version = 0;
  /** The version the latest (re)join sent by the client carried. */
  #wireVersion = 0;
  #acked = -1;

  /**
   * @param {string} subject a literal subject
   * @param {unknown} info any JSON, at most 1 KiB of it
   */
  constructor(subject, info) {
    super("join", subject, undefined);
    this.subject = subject;
    this.#info = info ?? null;
    const err = checkInfo(this.#info, subject);
    if (err) this._end("ended", err);
  }

  /** The info this connection is announced with (the latest given). */
  get info() {
    return this.#info;
  }

  /**
   * Announce new info: sent as a `join` again (members see an `update`), and with every
   * re-join after a reconnect. Resolves once the gateway has acknowledged this info (or a
   * later one); while disconnected, that is on the re-join. Rejects when the handle ends
   * first, or with the gateway's refusal.
   * @param {unknown} info any JSON, at most 1 KiB of it
   * @returns {Promise<void>}
   */
  update(info) {
    const value = info ?? null;
    const err = this.ended ? new NatsgateError("closed", "left already", { target: this.subject }) : checkInfo(value, this.subject);
    if (err) return Promise.reject(err);
    this.#info = value;
    this.#version += 1;
    return this.#until(this.#version);
  }

  /** Leave: members see a `leave`; resolves on the gateway's acknowledgement. */
  leave() {
    return this.unsubscribe();
  }

  /**
   * @param {number} version
   * @returns {Promise<void>}
   */
  async #until(version) {
    for (;;) {
      if (this.#acked >= version) return;
      if (this.ended || !this._owner) throw new NatsgateError("closed", "left before the update was sent", { target: this.subject });
      if (this.state !== "active") {
        await this.#nextMove();
        continue;
      }
      const sent = this.#version;
      try {
        await this._owner.ask({ op: "join", target: this.subject, data: this.#info });
      } catch (err) {
        // lost with the socket: the re-join carries the latest info
        if (err instanceof NatsgateError && err.code === "disconnected") continue;
        throw err;
      }
      this.#acked = Math.max(this.#acked, sent);
    }
  }

  /** @returns {Promise<void>} resolves on the next state change */
  #nextMove() {
    return new Promise((resolve) => {
      const off = this.on("state", () => {
        off();
        resolve();
      });
    });
  }

  /** @returns {Envelope} */
  _wire() {
    this.#wireVersion = this.#version;
    return { op: "join", target: this.subject, data: this.#info };
  }

  /** @returns {Envelope} */
  _unwire() {
    return { op: "leave", target: this.subject };
  }

  /** @param {ReplyData} data */
  _onReply(data) {
    if (this.ended) return;
    this.#acked = Math.max(this.#acked, this.#wireVersion);
    super._onReply(data);
  }
}

/**
 * What `client.presence` takes besides the subject: a function called with every change, or
 * handlers by name.
 * @typedef {((change: PresenceChange) => void) | {onChange?: (change: PresenceChange) => void,
 *   onSync?: (members: PresenceMember[]) => void}} PresenceHandler
 */

/**
 * The members of a subject, from `client.presence(subject, handler)`: `members` (by
 * connection) and `users` are kept current; every change is reported (`join`, `update`,
 * `leave` events and the handler) and every complete read (`sync`). After a reconnect the
 * list is read again; until that read is complete the old list stays, then the difference
 * is reported as changes (joins and updates first, then leaves) and `sync` follows.
 */
export class PresenceSubscription extends Subscription {
  /** @type {Map<string, PresenceMember>} */
  #members = new Map();
  /** @type {Map<string, PresenceMember> | null} a re-read in progress (members first) */
  #fresh = null;
  #synced = false;

  /**
   * @param {string} subject a literal subject
   * @param {PresenceHandler | undefined} handler
   */
  constructor(subject, handler) {
    super("presence", subject, undefined);
    this.subject = subject;
    const h = typeof handler === "function" ? { onChange: handler } : handler ?? {};
    this._onChange = h.onChange;
    if (h.onSync) this.on("sync", h.onSync);
  }

  /** The members, by connection id, in the order they came. Do not change it. */
  get members() {
    return /** @type {ReadonlyMap<string, PresenceMember>} */ (this.#members);
  }

  /**
   * The members by user, in the order they came: a user with two tabs has two entries.
   * @returns {Map<string, PresenceMember[]>}
   */
  get users() {
    /** @type {Map<string, PresenceMember[]>} */
    const out = new Map();
    for (const m of this.#members.values()) {
      const list = out.get(m.user);
      if (list) list.push(m);
      else out.set(m.user, [m]);
    }
    return out;
  }

  /**
   * Whether a user has a connection in the list.
   * @param {string} user
   */
  has(user) {
    for (const m of this.#members.values()) if (m.user === user) return true;
    return false;
  }

  /** @returns {Envelope} */
  _wire() {
    return { op: "presence_sub", target: this.subject };
  }

  /** @returns {Envelope} */
  _unwire() {
    return { op: "presence_unsub", target: this.subject };
  }

  _subscribing() {
    super._subscribing();
    // the first read fills the list as it comes; a re-read (or one after a first read that
    // was cut short) is compared with it at the end
    this.#fresh = this.#synced || this.#members.size > 0 ? new Map() : null;
  }

  /** @param {ReplyData} data */
  _onReply(data) {
    if (this.ended) return;
    const fresh = this.#fresh;
    this.#fresh = null;
    super._onReply(data);
    if (fresh) this.#reconcile(fresh);
    this.#synced = true;
    this._emit("sync", [...this.#members.values()]);
  }

  /**
   * A presence `msg` for this subject.
   * @param {"join" | "leave"} op
   * @param {PresenceMember} member
   */
  _deliver(op, member) {
    if (this.ended) return;
    if (this.#fresh) {
      // a re-read: the current members, held back until the reply
      if (op === "join") this.#fresh.set(member.conn, member);
      else this.#fresh.delete(member.conn);
      return;
    }
    if (op === "join") this.#put(member, !this.#synced);
    else this.#remove(member.conn);
  }

  /**
   * The re-read list replaces the old one: what is new joins, what changed updates, what
   * is missing leaves (in that order, so a user who moved to a new connection stays online).
   * @param {Map<string, PresenceMember>} fresh
   */
  #reconcile(fresh) {
    for (const m of fresh.values()) this.#put(m, !this.#synced);
    for (const conn of [...this.#members.keys()]) if (!fresh.has(conn)) this.#remove(conn);
  }

  /**
   * @param {PresenceMember} member
   * @param {boolean} snapshot
   */
  #put(member, snapshot) {
    const previous = this.#members.get(member.conn);
    if (previous && sameJson(previous.info, member.info) && previous.user === member.user) return;
    const first = !previous && !this.has(member.user);
    this.#members.set(member.conn, member);
    if (previous) this.#report({ op: "update", member, previous, snapshot, first: false, last: false });
    else this.#report({ op: "join", member, snapshot, first, last: false });
  }

  /** @param {string} conn */
  #remove(conn) {
    const member = this.#members.get(conn);
    if (!member) return;
    this.#members.delete(conn);
    this.#report({ op: "leave", member, snapshot: false, first: false, last: !this.has(member.user) });
  }

  /** @param {PresenceChange} change */
  #report(change) {
    this._emit(change.op, change);
    try {
      this._onChange?.(change);
    } catch (err) {
      rethrowLater(err); // the rest of a re-read's changes are still reported
    }
  }
}

/**
 * Whether two JSON values are the same (a refresh of a member that did not change its info
 * is not an update).
 * @param {unknown} a
 * @param {unknown} b
 */
function sameJson(a, b) {
  return a === b || JSON.stringify(a) === JSON.stringify(b);
}
