import { test } from "node:test";
import assert from "node:assert/strict";
import { subjectMatches } from "../natsgate.js";

test("literal subjects match only themselves", () => {
  assert.ok(subjectMatches("chat.room.1", "chat.room.1"));
  assert.ok(!subjectMatches("chat.room.1", "chat.room.2"));
  assert.ok(!subjectMatches("chat.room", "chat.room.1"));
  assert.ok(!subjectMatches("chat.room.1", "chat.room"));
});

test("* matches exactly one token", () => {
  assert.ok(subjectMatches("chat.*.1", "chat.room.1"));
  assert.ok(subjectMatches("*", "chat"));
  assert.ok(!subjectMatches("chat.*", "chat"));
  assert.ok(!subjectMatches("chat.*", "chat.room.1"));
  assert.ok(!subjectMatches("chat.*", "chat."));
});

test("> matches one or more trailing tokens", () => {
  assert.ok(subjectMatches("chat.>", "chat.room"));
  assert.ok(subjectMatches("chat.>", "chat.room.1.x"));
  assert.ok(!subjectMatches("chat.>", "chat"));
  assert.ok(subjectMatches(">", "anything.at.all"));
  assert.ok(subjectMatches("user.alice.>", "user.alice.todo-1"));
  assert.ok(!subjectMatches("user.alice.>", "user.bob.todo-1"));
});

test("> anywhere but last matches nothing", () => {
  assert.ok(!subjectMatches("chat.>.x", "chat.a.x"));
});

test("mixed wildcards", () => {
  assert.ok(subjectMatches("*.room.>", "chat.room.1.msg"));
  assert.ok(!subjectMatches("*.room.>", "chat.hall.1"));
});
