// The capability covering rule, as the gateway decides it. The table is shared with the
// Python suite (tests/test_client_subjects.py), which runs it through src/natsgate/subjects.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { coveredByAny, covers, subjectMatches } from "../natsgate.js";

/** @type {{cases: [string, string, boolean][]}} */
const table = JSON.parse(readFileSync(new URL("./covers-cases.json", import.meta.url), "utf8"));

test("the shared table of covers cases", () => {
  assert.ok(table.cases.length > 40);
  for (const [grant, pattern, expected] of table.cases) {
    assert.equal(covers(grant, pattern), expected, `covers(${grant}, ${pattern})`);
  }
});

test("the examples the protocol names", () => {
  assert.ok(covers("chat.>", "chat.room.*"));
  assert.ok(!covers("chat.*", "chat.>"));
  assert.ok(covers("a.b", "a.b"));
  assert.ok(!covers("a.b", "a.*"));
  assert.ok(!covers(">", "_INBOX.>"));
  assert.ok(!covers("*.>", "$KV.bucket.>"));
  assert.ok(covers("_INBOX.>", "_INBOX.x.y"));
});

test("coveredByAny: one grant is enough, none covers nothing", () => {
  assert.ok(coveredByAny(["news.*", "chat.>"], "chat.room.*"));
  assert.ok(!coveredByAny(["news.*", "chat.*"], "chat.>"));
  assert.ok(!coveredByAny([], "chat.room"));
  assert.ok(!coveredByAny([">"], "_INBOX.x"));
  assert.ok(coveredByAny([">", "_INBOX.>"], "_INBOX.x"));
});

test("covers is sound: if covers(g, p), every subject p matches, g matches too", () => {
  // valid patterns only (the gateway refuses the rest before asking covers): `>` last
  const tokens = ["a", "b", "*", ">"];
  /** @type {string[]} */
  const patterns = [];
  const grow = (/** @type {string[]} */ prefix) => {
    if (prefix.length) patterns.push(prefix.join("."));
    if (prefix.length < 3 && prefix.at(-1) !== ">") for (const t of tokens) grow([...prefix, t]);
  };
  grow([]);
  const subjects = patterns.filter((p) => !/[*>]/.test(p));
  subjects.push("a.b.a.b");
  let checked = 0;
  for (const g of patterns) {
    for (const p of patterns) {
      if (!covers(g, p)) continue;
      for (const s of subjects) {
        if (subjectMatches(p, s)) {
          assert.ok(subjectMatches(g, s), `covers(${g}, ${p}) but ${s} matches only ${p}`);
          checked += 1;
        }
      }
    }
  }
  assert.ok(checked > 100);
});
