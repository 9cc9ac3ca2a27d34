import { test } from "node:test";
import assert from "node:assert/strict";
import {
  NatsgateError, base64ToBytes, decodeEnvelope, decodeFrame, decodeJsMessage, decodeKvEntry,
  decodeKvMarker, decodePayload, encodeEnvelope, errorFromEnvelope, jwtExpiry, parseRevoked, resolveUrl,
  splitFrame, withToken,
} from "../natsgate.js";

test("encodes compact JSON with v: 1", () => {
  const text = encodeEnvelope({ op: "sub", target: "chat.>", inbox: "a.1" });
  assert.equal(text, '{"v":1,"op":"sub","target":"chat.>","inbox":"a.1"}');
  assert.ok(!text.includes("\n"));
});

test("undefined fields are left out", () => {
  assert.equal(encodeEnvelope({ op: "ping", inbox: "x", data: undefined }), '{"v":1,"op":"ping","inbox":"x"}');
});

test("splits frames on newlines and skips blank lines", () => {
  assert.deepEqual(splitFrame('{"op":"a"}\n{"op":"b"}\n'), ['{"op":"a"}', '{"op":"b"}']);
  assert.deepEqual(splitFrame('{"op":"a"}'), ['{"op":"a"}']);
  assert.deepEqual(splitFrame("\n\n"), []);
});

test("decodes an envelope with its optional fields", () => {
  const env = decodeEnvelope('{"v":1,"op":"msg","target":"chat.a","sub":"chat.>","data":{"x":1},"headers":{"H":"1","M":["a","b"]}}');
  assert.deepEqual(env, { op: "msg", target: "chat.a", sub: "chat.>", data: { x: 1 }, headers: { H: "1", M: ["a", "b"] } });
  const durable = decodeEnvelope('{"op":"msg","target":"js:N","durable":"inbox","data":{"seq":1,"delivery":2}}');
  assert.equal(durable.durable, "inbox");
});

test("absent v is version 1; another v is refused", () => {
  assert.equal(decodeEnvelope('{"op":"pong"}').op, "pong");
  assert.throws(() => decodeEnvelope('{"v":2,"op":"pong"}'), { name: "NatsgateError", code: "protocol" });
});

test("a broken line is a protocol error, never a stray exception", () => {
  for (const line of ["not json", "[1,2]", '{"target":"x"}', '{"op":1}', '{"op":"msg","inbox":5}', '{"op":"msg","durable":7}']) {
    assert.throws(() => decodeEnvelope(line), (err) => err instanceof NatsgateError && err.code === "protocol", line);
  }
});

test("decodeFrame keeps the good envelopes of a frame with a bad line", () => {
  const { envelopes, errors } = decodeFrame('{"op":"pong"}\nnope\n{"op":"reply","inbox":"i"}');
  assert.deepEqual(envelopes.map((e) => e.op), ["pong", "reply"]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "protocol");
});

test("base64 payloads become bytes; JSON and text stay", () => {
  assert.deepEqual(base64ToBytes("AAH/"), new Uint8Array([0, 1, 255]));
  assert.deepEqual(decodePayload("AAH/", "base64"), new Uint8Array([0, 1, 255]));
  assert.equal(decodePayload("AAH/", undefined), "AAH/");
  assert.deepEqual(decodePayload({ a: 1 }, undefined), { a: 1 });
});

test("KV entries: value decoded beside enc inside data", () => {
  assert.deepEqual(decodeKvEntry({ key: "k", revision: 3, op: "PUT", value: "AQI=", enc: "base64" }),
    { key: "k", revision: 3, op: "PUT", value: new Uint8Array([1, 2]) });
  assert.deepEqual(decodeKvEntry({ key: "k", revision: 4, op: "DEL" }), { key: "k", revision: 4, op: "DEL", value: undefined });
  assert.equal(decodeKvEntry({ revision: 1 }), null);
  assert.equal(decodeKvEntry("x"), null);
});

test("KV markers are told apart from entries", () => {
  assert.deepEqual(decodeKvMarker({ op: "RESYNC", pattern: "user.a.>" }), { op: "RESYNC", pattern: "user.a.>" });
  assert.deepEqual(decodeKvMarker({ op: "SYNCED" }), { op: "SYNCED", pattern: undefined });
  assert.equal(decodeKvMarker({ key: "k", op: "PUT", revision: 1 }), null);
  assert.equal(decodeKvMarker({ op: "PUT" }), null);
  assert.equal(decodeKvMarker(null), null);
});

test("JetStream messages: payload decoded, headers from the envelope", () => {
  const msg = decodeJsMessage({ op: "msg", target: "js:CHAT", headers: { A: "1" },
    data: { seq: 7, subject: "chat.room.1", payload: "AQ==", enc: "base64", time: "2024-01-01T00:00:00Z" } });
  assert.deepEqual(msg, { seq: 7, subject: "chat.room.1", payload: new Uint8Array([1]), time: "2024-01-01T00:00:00Z", headers: { A: "1" } });
  assert.equal(decodeJsMessage({ op: "msg", data: { subject: "x" } }), null);
});

test("error envelopes become NatsgateError with name, code and target", () => {
  const err = errorFromEnvelope({ op: "error", target: "svc.x", data: { code: "no_responders", message: "nobody" } });
  assert.ok(err instanceof Error);
  assert.equal(err.name, "NatsgateError");
  assert.equal(err.code, "no_responders");
  assert.equal(err.message, "nobody");
  assert.equal(err.target, "svc.x");
  const odd = errorFromEnvelope({ op: "error", data: { code: "weird", message: "m" } });
  assert.equal(odd.code, "protocol");
  assert.match(odd.message, /weird/);
});

test("NatsgateError carries a cause", () => {
  const cause = new Error("root");
  assert.equal(new NatsgateError("internal", "x", { cause }).cause, cause);
});

test("URLs: default /ws on the page, wss on https pages, tokens as query", () => {
  assert.equal(resolveUrl(undefined, { href: "https://app.example/page?x=1" }), "wss://app.example/ws");
  assert.equal(resolveUrl(undefined, { href: "http://localhost:8080/" }), "ws://localhost:8080/ws");
  assert.equal(resolveUrl("/gw/ws", { href: "http://h/" }), "ws://h/gw/ws");
  assert.equal(resolveUrl("ws://other:1/ws", undefined), "ws://other:1/ws");
  assert.equal(resolveUrl("https://other/ws", undefined), "wss://other/ws");
  assert.throws(() => resolveUrl(undefined, undefined));
  assert.equal(withToken("ws://h/ws?a=1", "t.o+k"), "ws://h/ws?a=1&token=t.o%2Bk");
  assert.equal(withToken(withToken("ws://h/ws", "old"), "new"), "ws://h/ws?token=new");
});

test("jwtExpiry reads exp (base64url payload) without verifying", () => {
  const payload = Buffer.from(JSON.stringify({ sub: "alice", exp: 1700000000, n: "ü?>" })).toString("base64url");
  assert.equal(jwtExpiry(`h.${payload}.s`), 1700000000 * 1000);
  assert.equal(jwtExpiry("nope"), undefined);
  assert.equal(jwtExpiry("a.!!!.c"), undefined);
  const noExp = Buffer.from('{"sub":"a"}').toString("base64url");
  assert.equal(jwtExpiry(`h.${noExp}.s`), undefined);
});

test("revoked entries in the shapes a server may send", () => {
  assert.deepEqual(parseRevoked({ op: "sub", target: "chat.>" }), { kind: "sub", target: "chat.>", pattern: "chat.>" });
  assert.deepEqual(parseRevoked({ op: "kv_sub", target: "todos", data: { pattern: "user.a.>" } }), { kind: "kv", target: "todos", pattern: "user.a.>" });
  // what the gateway sends (session.py describe())
  assert.deepEqual(parseRevoked({ op: "kv_sub", target: "todos", pattern: ">" }), { kind: "kv", target: "todos", pattern: ">" });
  assert.deepEqual(parseRevoked({ op: "js_sub", target: "CHAT", filter: "chat.room.*" }), { kind: "js", target: "CHAT", pattern: "chat.room.*" });
  assert.deepEqual(parseRevoked({ op: "js_sub", target: "CHAT" }), { kind: "js", target: "CHAT", pattern: undefined });
  assert.deepEqual(parseRevoked({ op: "js_sub", target: "NOTIFY", durable: "inbox", filter: "notify.a" }), { kind: "js", target: "NOTIFY", pattern: "notify.a", durable: "inbox" });
  assert.deepEqual(parseRevoked({ op: "js_sub", target: "NOTIFY", data: { durable: "inbox" } }), { kind: "js", target: "NOTIFY", pattern: undefined, durable: "inbox" });
  assert.deepEqual(parseRevoked({ kind: "js", stream: "CHAT", filter: "chat.room.*" }), { kind: "js", target: "CHAT", pattern: "chat.room.*" });
  assert.deepEqual(parseRevoked("chat.room.1"), { kind: "sub", target: "chat.room.1", pattern: "chat.room.1" });
  assert.deepEqual(parseRevoked("kv:todos:user.a.>"), { kind: "kv", target: "todos", pattern: "user.a.>" });
  assert.deepEqual(parseRevoked("js:CHAT"), { kind: "js", target: "CHAT", pattern: undefined });
  assert.equal(parseRevoked(42), null);
  assert.equal(parseRevoked({ op: "nope", target: "x" }), null);
});
