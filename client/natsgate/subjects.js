// natsgate/subjects.js: NATS subjects, the browser's copy of `src/natsgate/subjects.py`.
//
// `subjectMatches` routes messages to subscriptions; `covers` is the gateway's capability
// rule, so a page can tell in advance whether the server will allow a subscription (the
// server decides; this only predicts). Pure, no imports.

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
 * Whether every subject `pattern` can match is also matched by `grant`: the rule the gateway
 * checks a subscription against the capability document with (protocol.md §4).
 * `chat.>` covers `chat.room.*`; `chat.*` does not cover `chat.>`; a literal covers only
 * itself. A grant that starts with a wildcard never covers `_INBOX.…` or `$…` (`$JS.`, `$KV.`,
 * `$SYS.`): those must be granted by name.
 *
 * Held to the Python rule case by case (`client/test/covers-cases.json`, run through both by
 * `tests/test_client_subjects.py`).
 * @param {string} grant
 * @param {string} pattern
 */
export function covers(grant, pattern) {
  const g = grant.split(".");
  const p = pattern.split(".");
  if (isWild(g[0]) && isPrivate(p[0])) return false;
  for (let i = 0; i < g.length; i++) {
    const gt = g[i];
    if (gt === ">") return p.length > i;
    if (i >= p.length) return false;
    const pt = p[i];
    if (gt === "*") {
      if (pt === ">") return false;
    } else if (gt !== pt) {
      return false;
    }
  }
  return g.length === p.length;
}

/**
 * Whether one of the grants covers `pattern` (a capability list: `subjects`, `publish`, …).
 * @param {readonly string[]} grants
 * @param {string} pattern
 */
export function coveredByAny(grants, pattern) {
  return grants.some((grant) => covers(grant, pattern));
}

/**
 * An absent KV pattern means all keys, an absent JetStream filter all subjects.
 * @param {string | undefined} pattern
 */
export function normPattern(pattern) {
  return pattern === undefined || pattern === "" ? ">" : pattern;
}

/** @param {string | undefined} token */
function isWild(token) {
  return token === "*" || token === ">";
}

/**
 * `_INBOX` replies and the `$` system namespaces (JetStream, KV, system account).
 * @param {string | undefined} token
 */
function isPrivate(token) {
  return token === "_INBOX" || (token ?? "").startsWith("$");
}
