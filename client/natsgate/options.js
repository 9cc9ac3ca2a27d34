// natsgate/options.js: what `connect()` takes, and the defaults it fills in; the timer helper
// every timeout of the client goes through. Imports nothing.

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

/**
 * setTimeout overflows (and fires at once) past 2^31-1 ms; a JWT can expire later than that.
 * @param {() => void} fn
 * @param {number} ms
 */
export function later(fn, ms) {
  return setTimeout(fn, Math.min(Math.max(ms, 0), 2 ** 31 - 1));
}

/**
 * The WebSocket class to dial with: the option, else the platform's.
 * @param {ConnectOptions} options
 * @returns {WebSocketConstructor}
 */
export function webSocketOf(options) {
  const WS = options.WebSocket ?? globalThis.WebSocket;
  if (typeof WS !== "function") {
    throw new TypeError("natsgate: no WebSocket; pass options.WebSocket");
  }
  return /** @type {WebSocketConstructor} */ (WS);
}

/**
 * The options with every default filled in (docs/client.md, `connect`).
 * @param {ConnectOptions} options
 */
export function withDefaults(options) {
  return {
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
}
