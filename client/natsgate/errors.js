// natsgate/errors.js: what can go wrong, and what the client does about it.
//
// The error class every failure is reported with, the close-code table (the gateway's
// `src/natsgate/errors.py` word for word) with the action each code calls for, and the
// reconnect backoff. No imports.

/**
 * Error codes: the protocol's (protocol.md §3), then the client's own: `disconnected` (the socket
 * dropped while the request was in flight), `closed` (the client or subscription was closed
 * first), `protocol` (the server sent something the protocol does not allow).
 * @typedef {"bad_request" | "unsupported_version" | "unauthorized" | "forbidden" | "not_found"
 *   | "timeout" | "no_responders" | "limit" | "backpressure" | "internal"
 *   | "disconnected" | "closed" | "protocol"} ErrorCode
 */

/** @type {ReadonlySet<string>} */
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
 * Whether a string is one of the codes above (an `error` envelope's code from the server).
 * @param {string} code
 * @returns {code is ErrorCode}
 */
export function isErrorCode(code) {
  return ERROR_CODES.has(code);
}

// ---------------------------------------------------------------------------------------------
// After a close
// ---------------------------------------------------------------------------------------------

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
 * What the client does after a close code (protocol.md §2, §6 and §7 and security.md): `backoff`
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
