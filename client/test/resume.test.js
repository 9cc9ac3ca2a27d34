import { test } from "node:test";
import assert from "node:assert/strict";
import { StreamCursor } from "../natsgate.js";

test("resumes after the last sequence seen", () => {
  const c = new StreamCursor({ startSeq: 1 });
  assert.deepEqual(c.resumeFrom(), { start_seq: 1 });
  for (const seq of [1, 2, 3]) assert.ok(c.accept(seq));
  assert.equal(c.lastSeq, 3);
  assert.deepEqual(c.resumeFrom(), { start_seq: 4 });
});

test("drops duplicates and anything older than the last seen", () => {
  const c = new StreamCursor({ startSeq: 5 });
  assert.ok(!c.accept(4), "below startSeq");
  assert.ok(c.accept(5));
  assert.ok(c.accept(7));
  assert.ok(!c.accept(7), "duplicate");
  assert.ok(!c.accept(6), "older");
  assert.deepEqual(c.resumeFrom(), { start_seq: 8 });
});

test("jsResume bookkeeping: startSeq = lastSeq + 1 drops lastSeq and before", () => {
  const c = new StreamCursor({ startSeq: 42 });
  assert.equal(c.lastSeq, 41);
  assert.ok(!c.accept(41));
  assert.ok(c.accept(42));
});

test("new-only subscription is anchored at the stream's last_seq from the first reply", () => {
  const c = new StreamCursor({});
  assert.deepEqual(c.resumeFrom(), {}, "before the reply: still new-only");
  c.noteReply({ ok: true, first_seq: 1, last_seq: 10 });
  assert.deepEqual(c.resumeFrom(), { start_seq: 11 }, "messages stored while away are not lost");
  c.noteReply({ ok: true, first_seq: 1, last_seq: 50 });
  assert.deepEqual(c.resumeFrom(), { start_seq: 11 }, "anchored once");
  assert.ok(c.accept(11));
  assert.deepEqual(c.resumeFrom(), { start_seq: 12 });
});

test("anchoring an empty stream resumes from 1", () => {
  const c = new StreamCursor({});
  c.noteReply({ ok: true, first_seq: 0, last_seq: 0 });
  assert.deepEqual(c.resumeFrom(), { start_seq: 1 });
});

test("a message before the reply is not dropped by the anchor", () => {
  const c = new StreamCursor({});
  assert.ok(c.accept(10));
  c.noteReply({ ok: true, last_seq: 10 });
  assert.ok(c.accept(11));
  assert.deepEqual(c.resumeFrom(), { start_seq: 12 });
});

test("start_time is kept until a message is seen, and not anchored by the reply", () => {
  const c = new StreamCursor({ startTime: "2024-01-01T00:00:00Z" });
  c.noteReply({ ok: true, last_seq: 99 });
  assert.deepEqual(c.resumeFrom(), { start_time: "2024-01-01T00:00:00Z" });
  assert.ok(c.accept(3));
  assert.deepEqual(c.resumeFrom(), { start_seq: 4 });
});

test("start_seq 0 means new messages only", () => {
  const c = new StreamCursor({ startSeq: 0 });
  assert.deepEqual(c.resumeFrom(), {});
});
