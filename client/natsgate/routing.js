// natsgate/routing.js: which subscriptions a server `msg` is for, and which ones a
// cap_update's `revoked` entry ends (docs/client.md, Routing).
//
// KV frames by bucket and key pattern, JetStream frames by stream and filter (a durable's by
// stream and durable name), presence frames by subject, core frames by the `sub` pattern the
// server echoes. Pure: it yields the calls and leaves running them to the client.

import { normPattern, subjectMatches } from "./subjects.js";
import { DurableSubscription } from "./durables.js";
import { PresenceSubscription } from "./presence.js";
import { CoreSubscription, JsSubscription, KvSubscription, durableKey, subscriptionKey } from "./subscriptions.js";
import {
  decodeDelivery, decodeJsMessage, decodeKvEntry, decodeKvMarker, decodePayload, decodePresence, isRecord,
} from "./wire.js";

/** @typedef {import("./wire.js").CoreMessage} CoreMessage */
/** @typedef {import("./wire.js").Envelope} Envelope */
/** @typedef {import("./subscriptions.js").Subscription} Subscription */
/** @typedef {import("./wire.js").RevokedEntry} RevokedEntry */

/**
 * Route a `msg`: KV by bucket and key pattern, JetStream by stream and filter (or, with
 * `durable`, to that durable's subscription only), core by the `sub` pattern the server
 * echoes. A `sub` on KV/JS frames is honoured too when present. Yields one call per
 * subscription the message is for; the caller runs each (guarding against the
 * application's handler throwing). Lazy, so that a handler that ends another subscription
 * is seen by the next step.
 * @param {ReadonlyMap<string, Subscription>} subs the client's subscriptions, by `_key()`
 * @param {Envelope} env
 * @returns {Generator<() => void, void, undefined>}
 */
export function* routeMsg(subs, env) {
  const target = env.target ?? "";
  if (target.startsWith("kv:")) {
    const bucket = target.slice(3);
    const marker = decodeKvMarker(env.data);
    if (marker) {
      for (const sub of subs.values()) {
        if (sub instanceof KvSubscription && sub.bucket === bucket && normPattern(sub.pattern) === normPattern(marker.pattern)) {
          yield () => sub._onMarker(marker.op);
        }
      }
      return;
    }
    const entry = decodeKvEntry(env.data);
    if (entry) {
      const flagged = isRecord(env.data) && env.data.snapshot === true;
      for (const sub of subs.values()) {
        if (sub instanceof KvSubscription && sub.bucket === bucket && wants(sub, env, entry.key)) {
          yield () => sub._deliver(entry, flagged);
        }
      }
      return;
    }
  }
  if (target.startsWith("js:")) {
    const msg = decodeJsMessage(env);
    if (msg) {
      const stream = target.slice(3);
      if (env.durable !== undefined) {
        // a durable's message: for its binding only, never for plain subscriptions
        const sub = subs.get(durableKey(stream, env.durable));
        if (sub instanceof DurableSubscription) {
          const delivery = decodeDelivery(env);
          yield () => sub._deliver(msg, delivery);
        }
        return;
      }
      for (const sub of subs.values()) {
        if (sub instanceof JsSubscription && sub.stream === stream && wants(sub, env, msg.subject)) {
          yield () => sub._deliver(msg);
        }
      }
      return;
    }
  }
  if (target.startsWith("presence:")) {
    const change = decodePresence(env.data);
    if (change) {
      const sub = subs.get(subscriptionKey("presence", target.slice(9), undefined));
      if (sub instanceof PresenceSubscription) yield () => sub._deliver(change.op, change.member);
      return;
    }
  }
  /** @param {CoreSubscription} sub */
  const deliver = (sub) => {
    /** @type {CoreMessage} */
    const msg = { subject: target, sub: sub.subject, data: decodePayload(env.data, env.enc), headers: env.headers };
    return () => sub._deliver(msg);
  };
  if (env.sub !== undefined) {
    const sub = subs.get(subscriptionKey("sub", env.sub, env.sub));
    if (sub instanceof CoreSubscription) yield deliver(sub);
    return;
  }
  for (const sub of subs.values()) {
    if (sub instanceof CoreSubscription && subjectMatches(sub.subject, target)) yield deliver(sub);
  }
}

/**
 * The subscriptions a `cap_update`'s `revoked` entry (as `parseRevoked` reads it) names. A
 * JetStream entry with `durable` names that durable's binding; one without names the plain
 * subscription and every durable bound with the same stream and filter (grants are by
 * stream and filter, so they went too).
 * @param {ReadonlyMap<string, Subscription>} subs the client's subscriptions, by `_key()`
 * @param {RevokedEntry} r
 * @returns {Subscription[]}
 */
export function revokedBy(subs, r) {
  if (r.durable !== undefined) {
    const sub = subs.get(durableKey(r.target, r.durable));
    return sub ? [sub] : [];
  }
  const sub = subs.get(subscriptionKey(r.kind, r.target, r.pattern));
  const out = sub ? [sub] : [];
  if (r.kind !== "js") return out;
  for (const d of subs.values()) {
    if (d instanceof DurableSubscription && d.stream === r.target && normPattern(d.pattern) === normPattern(r.pattern)) out.push(d);
  }
  return out;
}

/**
 * @param {KvSubscription | JsSubscription} sub
 * @param {Envelope} env
 * @param {string} subject the KV key or the JetStream message subject
 */
function wants(sub, env, subject) {
  return env.sub !== undefined ? normPattern(env.sub) === normPattern(sub.pattern) : sub._matches(subject);
}
