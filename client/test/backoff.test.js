import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, closeAction, CLOSE_CODES } from "../natsgate.js";

test("attempt 0 with random 0 waits exactly the floor", () => {
  assert.equal(backoffDelay(0, 250, 10000, () => 0), 250);
});

test("the jitter window doubles per attempt until the cap", () => {
  const top = () => 0.999999;
  // window = min(max, min * 2^attempt); delay = min + random * window, capped
  assert.equal(backoffDelay(0, 100, 10000, top), 199);
  assert.equal(backoffDelay(1, 100, 10000, top), 299);
  assert.equal(backoffDelay(2, 100, 10000, top), 499);
  assert.equal(backoffDelay(3, 100, 10000, top), 899);
});

test("never exceeds the cap, however many attempts", () => {
  for (const attempt of [10, 20, 31, 64, 1000, Infinity]) {
    assert.equal(backoffDelay(attempt, 250, 10000, () => 0.999999), 10000);
  }
});

test("full jitter: once capped, the delay spans the whole range [min, max]", () => {
  const at = (/** @type {number} */ r) => backoffDelay(20, 250, 10000, () => r);
  assert.equal(at(0), 250);
  assert.equal(at(0.5), 5250);
  assert.equal(at(0.999999), 10000);
});

test("bounds hold for random draws", () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt, 250, 10000);
      assert.ok(d >= 250 && d <= 10000, `attempt ${attempt}: ${d}`);
      assert.ok(Number.isInteger(d));
    }
  }
});

test("negative attempts are treated as the first", () => {
  assert.equal(backoffDelay(-3, 100, 1000, () => 0.5), 150);
});

test("close codes: what the client does after each", () => {
  assert.equal(closeAction(1012), "prompt");
  assert.equal(closeAction(1013), "backoff");
  assert.equal(closeAction(4001), "auth");
  assert.equal(closeAction(1008), "stop");
  assert.equal(closeAction(4003), "stop"); // an administrator: not back at once, not at all
  for (const code of [1000, 1001, 1002, 1007, 1009, 1011, 4000, 4002]) {
    assert.equal(closeAction(code), "backoff", String(code));
  }
});

test("close codes: a code not in the table backs off", () => {
  for (const code of [1005, 1006, 1003, 3000, 4004, 4999]) {
    assert.equal(closeAction(code), "backoff", String(code));
  }
});

test("close codes: the table is frozen and says something for each", () => {
  assert.ok(Object.isFrozen(CLOSE_CODES));
  for (const [code, { meaning, action }] of Object.entries(CLOSE_CODES)) {
    assert.ok(Number(code) >= 1000 && Number(code) <= 4999, code);
    assert.ok(meaning.length > 0, code);
    assert.ok(["backoff", "prompt", "auth", "stop"].includes(action), code);
  }
});
