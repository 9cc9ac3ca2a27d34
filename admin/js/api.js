// api.js: the admin API of the gateway (docs/protocol.md, "The admin API"). Every call
// carries the jwt cookie of /auth/login; a failure is an ApiError with the HTTP status and
// the gateway's reason.

/**
 * @typedef {{gateway: string, conn: string, user: string, since: string, address: string,
 *   subs: number, feeds: number, queued_bytes: number, bytes_in: number, bytes_out: number}} Connection
 * @typedef {{connections: Connection[], gateways: string[], missing: string[]}} Connections
 * @typedef {{user: string, caps: unknown, revision: number}} CapsDoc
 * @typedef {{gateway: string, metrics: Record<string, number>}} Metrics
 */

export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   */
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/**
 * @template T what the route answers
 * @param {string} method
 * @param {string} path
 * @param {string} [body] JSON text
 * @returns {Promise<T>}
 */
async function call(method, path, body) {
  /** @type {RequestInit} */
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.body = body;
    init.headers = { "Content-Type": "application/json" };
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  /** @type {unknown} */
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (!resp.ok) {
    const reason = data && typeof data === "object" && "error" in data ? String(data.error) : "";
    throw new ApiError(resp.status, reason || `HTTP ${resp.status}`);
  }
  return /** @type {T} */ (data);
}

/** @returns {Promise<{user: string, caps: {admin?: boolean}}>} */
export const me = () => call("GET", "/auth/me");

/**
 * @param {string} username
 * @param {string} password
 * @returns {Promise<{user: string}>}
 */
export const login = (username, password) =>
  call("POST", "/auth/login", JSON.stringify({ username, password }));

export const logout = () => call("POST", "/auth/logout", "{}");

/** @returns {Promise<Connections>} */
export const connections = () => call("GET", "/admin/api/connections");

/**
 * @param {{user: string} | {conn: string}} who
 * @returns {Promise<{closed: number, missing: string[]}>}
 */
export const disconnect = (who) => call("POST", "/admin/api/disconnect", JSON.stringify(who));

/**
 * @param {string} user
 * @returns {Promise<CapsDoc>}
 */
export const readCaps = (user) => call("GET", `/admin/api/caps/${encodeURIComponent(user)}`);

/**
 * @param {string} user
 * @param {string} text the document as JSON text (the gateway checks it)
 * @returns {Promise<CapsDoc>}
 */
export const writeCaps = (user, text) =>
  call("PUT", `/admin/api/caps/${encodeURIComponent(user)}`, text);

/** @returns {Promise<Metrics>} */
export const metrics = () => call("GET", "/admin/api/metrics");
