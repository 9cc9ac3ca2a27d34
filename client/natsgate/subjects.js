// natsgate/subjects.js: NATS subjects, the browser's copy of `src/natsgate/subjects.py`.
//
// `subjectMatches` routes messages to subscriptions. Pure, no imports.

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
 * An absent KV pattern means all keys, an absent JetStream filter all subjects.
 * @param {string | undefined} pattern
 */
export function normPattern(pattern) {
  return pattern === undefined || pattern === "" ? ">" : pattern;
}
