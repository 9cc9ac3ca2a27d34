// natsgate/wire.js: the wire protocol as the browser sees it (docs/protocol.md).
//
// The envelope's types; encoding a client envelope, decoding a server frame (checked, one
// error type); payloads (base64 bytes), KV entries and markers, JetStream messages, the
// `revoked` list of a cap_update; the gateway URL and the JWT's expiry. Pure: no socket, no
// timer, unit-tested on their own.

import { NatsgateError, isErrorCode } from "./errors.js";

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
 * @property {string} [durable] a durable's JetStream `msg`: its name
 * @property {string} [enc] `"base64"` when `data` is base64 of non-text bytes
 * @property {Headers} [headers]
 * @property {number} [timeout_ms] `cmd` only
 */

/**
 * The capability document (protocol.md §4). Missing fields grant nothing.
 * @typedef {object} Caps
 * @property {string[]} [subjects]
 * @property {string[]} [publish]
 * @property {string[]} [commands]
 * @property {Record<string, string[]>} [buckets]
 * @property {Record<string, string[]>} [streams]
 * @property {string[]} [presence] subjects the user may `join` (reading who is there needs
 *   `subjects`)
 * @property {boolean} [admin] may use the gateway's administration endpoints
 */

/**
 * `reply` data for a subscription op. JetStream replies carry the stream's bounds and `gap`;
 * a durable's also its name, `pending` (not yet delivered) and `ack_pending` (delivered,
 * not acked).
 * @typedef {{ok?: boolean, first_seq?: number, last_seq?: number, gap?: boolean,
 *   durable?: string, pending?: number, ack_pending?: number,
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
 * One connection announced on a subject (`join`): `user` is set by the gateway, `conn` is an
 * opaque id of the connection (a user with two tabs is two members), `info` what it joined
 * with.
 * @typedef {object} PresenceMember
 * @property {string} user
 * @property {string} conn
 * @property {unknown} info
 */

/**
 * A change of a presence member list, as a `PresenceSubscription` reports it. `join`: a
 * member came (or, after a reconnect, was found); `update`: a member joined again with new
 * info (`previous` is the old member); `leave`: a member went (or, after a reconnect, was
 * found gone). `snapshot`: the member was in the list when it was first read. `first`: the
 * member is its user's only connection in the list (the user came online); `last`: the user
 * has no connection left in it (the user went offline).
 * @typedef {object} PresenceChange
 * @property {"join" | "update" | "leave"} op
 * @property {PresenceMember} member
 * @property {PresenceMember} [previous] `update` only
 * @property {boolean} snapshot
 * @property {boolean} first
 * @property {boolean} last
 */

/**
 * What a subscription object stands for on the server: a core subscription, a KV watch, a
 * JetStream consumer, a presence `join`, a presence member list (`presence_sub`).
 * @typedef {"sub" | "kv" | "js" | "join" | "presence"} SubscriptionKind
 */

/**
 * A `cap_update`'s `revoked` entry as `parseRevoked` reads it.
 * @typedef {{kind: SubscriptionKind, target: string, pattern: string | undefined,
 *   durable?: string}} RevokedEntry
 */

/**
 * One of the user's durables of a stream, as `js_durables` lists it.
 * @typedef {object} DurableInfo
 * @property {string} name
 * @property {string | undefined} filter undefined: the whole stream
 * @property {number} pending messages not yet delivered
 * @property {number} ackPending delivered and not acked yet
 */

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
export function isRecord(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Array.isArray narrows to any[]; this keeps the elements unknown.
 * @param {unknown} value
 * @returns {value is unknown[]}
 */
export function isList(value) {
  return Array.isArray(value);
}

/**
 * An `error` envelope as a NatsgateError. An unknown code is the peer breaking the protocol.
 * @param {Envelope} env
 */
export function errorFromEnvelope(env) {
  const data = isRecord(env.data) ? env.data : {};
  const raw = typeof data.code === "string" ? data.code : "";
  const message = typeof data.message === "string" ? data.message : raw || "error";
  const code = isErrorCode(raw) ? raw : "protocol";
  const text = code === raw ? message : `${raw || "no code"}: ${message}`;
  return new NatsgateError(code, text, { target: env.target });
}

/**
 * A frame holds one envelope or several separated by newlines (protocol.md §1).
 * @param {string} text
 * @returns {string[]}
 */
export function splitFrame(text) {
  return text.split("\n").filter((line) => line.trim() !== "");
}

/**
 * One line of a server frame, checked against the envelope's shape. Throws a NatsgateError
 * with code `protocol`, and nothing else, when the server broke the protocol.
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
  for (const field of /** @type {const} */ (["target", "inbox", "sub", "enc", "durable"])) {
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
 * beside the value, protocol.md §3) become a Uint8Array; JSON and text stay as they are.
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
 * (an addition to the protocol, see docs/protocol.md).
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
 * A presence `msg`'s data (target `presence:<subject>`): `{"user", "conn", "op": "join" |
 * "leave", "info"}`, or null when it is not shaped like one. A `join` of a connection that is
 * a member already carries its new info.
 * @param {unknown} data
 * @returns {{op: "join" | "leave", member: PresenceMember} | null}
 */
export function decodePresence(data) {
  if (!isRecord(data) || typeof data.conn !== "string") return null;
  if (data.op !== "join" && data.op !== "leave") return null;
  const user = typeof data.user === "string" ? data.user : "";
  return { op: data.op, member: { user, conn: data.conn, info: data.info ?? null } };
}

/**
 * How often a durable's message has been delivered (`data.delivery`, 1 the first time;
 * sent with explicit acks only). 1 when absent.
 * @param {Envelope} env
 */
export function decodeDelivery(env) {
  const n = isRecord(env.data) ? env.data.delivery : undefined;
  return typeof n === "number" && Number.isInteger(n) && n >= 1 ? n : 1;
}

/**
 * The `reply` to `js_durables`: `{"durables": [{name, filter, pending, ack_pending}]}`.
 * Throws a `protocol` NatsgateError when there is no such list; entries without a name
 * are skipped.
 * @param {unknown} data
 * @returns {DurableInfo[]}
 */
export function decodeDurables(data) {
  if (!isRecord(data) || !isList(data.durables)) {
    throw new NatsgateError("protocol", "js_durables reply without a durables list");
  }
  /** @type {DurableInfo[]} */
  const out = [];
  for (const d of data.durables) {
    if (!isRecord(d) || typeof d.name !== "string") continue;
    out.push({
      name: d.name,
      filter: typeof d.filter === "string" ? d.filter : undefined,
      pending: typeof d.pending === "number" ? d.pending : 0,
      ackPending: typeof d.ack_pending === "number" ? d.ack_pending : 0,
    });
  }
  return out;
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
 * Browsers cannot set headers on a WebSocket upgrade; the protocol takes `?token=`.
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
 * An entry of cap_update's `revoked` list as (kind, target, pattern). The protocol leaves its
 * shape open; accepted: the subscribing op itself (`{"op": "kv_sub", "target": "todos",
 * "data": {"pattern": "user.a.>"}}`), the same with `pattern`/`filter` at the top level or
 * `kind`/`type` in place of `op`, and strings: `"chat.>"`, `"kv:todos:user.a.>"`,
 * `"js:CHAT:chat.room.*"`. A `durable` name (top level or in `data`) of a `js_sub` entry is
 * passed on. Presence: `{"op": "join" | "presence_sub", "target": "<subject>"}` (a join
 * or a member list that the update ended), and strings `"join:<subject>"`,
 * `"presence:<subject>"`.
 * @param {unknown} item
 * @returns {RevokedEntry | null}
 */
export function parseRevoked(item) {
  if (typeof item === "string") {
    for (const kind of /** @type {const} */ (["join", "presence"])) {
      if (item.startsWith(`${kind}:`)) return { kind, target: item.slice(kind.length + 1), pattern: undefined };
    }
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
  /** @type {Record<string, SubscriptionKind>} */
  const kinds = {
    sub: "sub", core: "sub", kv_sub: "kv", kv: "kv", js_sub: "js", js: "js",
    join: "join", presence_sub: "presence", presence: "presence",
  };
  const kind = typeof tag === "string" ? kinds[tag] : "sub";
  const target = item.target ?? item.subject ?? item.bucket ?? item.stream;
  if (!kind || typeof target !== "string") return null;
  if (kind === "join" || kind === "presence") return { kind, target, pattern: undefined };
  const data = isRecord(item.data) ? item.data : item;
  const p = data.pattern ?? data.filter;
  const pattern = kind === "sub" ? target : typeof p === "string" ? p : undefined;
  const durable = item.durable ?? data.durable;
  return kind === "js" && typeof durable === "string" ? { kind, target, pattern, durable } : { kind, target, pattern };
}

