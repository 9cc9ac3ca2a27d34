// format.js: text for people — times, failures and payloads as the cards show them.

import { NatsgateError } from "/natsgate.js";

/** @typedef {import("/natsgate.js").ErrorCode} ErrorCode */
/** @typedef {import("/natsgate.js").Headers} Headers */

const USER_HEADER = "natsgate-user"; // set by the gateway alone (docs/protocol.md)

/**
 * Who sent a message through the gateway: its `Natsgate-User` header (any case), which the
 * gateway sets on every `pub` and `cmd`. Never the payload: a user could write anything there.
 * Undefined for a message published straight to NATS.
 * @param {Headers | undefined} headers
 * @returns {string | undefined}
 */
export function senderOf(headers) {
  if (!headers) return undefined;
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === USER_HEADER) return Array.isArray(value) ? value[0] : value;
  }
  return undefined;
}

/**
 * "14:05:09".
 * @param {Date} date
 */
export const clock = (date) =>
  date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/**
 * "14:05" today, "3 Mar 14:05" before.
 * @param {Date} date
 */
export function stamp(date) {
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

/** @type {Record<ErrorCode, string>} */
const ERROR_LABELS = {
  timeout: "Timed out",
  forbidden: "Not allowed",
  no_responders: "No service is listening",
  not_found: "Not found",
  bad_request: "Bad request",
  unsupported_version: "Unsupported protocol version",
  unauthorized: "Not signed in",
  limit: "Limit reached",
  backpressure: "Too slow",
  internal: "Gateway error",
  disconnected: "Connection lost",
  closed: "Connection closed",
  protocol: "Protocol error",
};

/**
 * A failure as one line for people: "Timed out — no reply to cmd svc.x in 2000 ms".
 * @param {unknown} err
 */
export function describe(err) {
  if (err instanceof NatsgateError) return `${ERROR_LABELS[err.code]} — ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

/**
 * The library's error code of a failure, or "error" for anything else.
 * @param {unknown} err
 * @returns {string}
 */
export const errorCode = (err) => (err instanceof NatsgateError ? err.code : "error");

/**
 * A message's payload as one line: a string as it is, the `text`, `title` or `message` of
 * an object, the size of bytes, JSON otherwise.
 * @param {unknown} payload
 * @returns {string}
 */
export function payloadText(payload) {
  if (typeof payload === "string") return payload;
  if (payload instanceof Uint8Array) return `(${payload.length} bytes)`;
  if (payload && typeof payload === "object") {
    const record = /** @type {Record<string, unknown>} */ (payload);
    for (const field of ["text", "title", "message"]) {
      const value = record[field];
      if (typeof value === "string") return value;
    }
  }
  return JSON.stringify(payload);
}

/**
 * A reply, indented, for a <pre>.
 * @param {unknown} value
 */
export const pretty = (value) =>
  value instanceof Uint8Array ? `(${value.length} bytes)` : JSON.stringify(value, null, 2);
