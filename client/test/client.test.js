// The client's behaviour, driven through an injected WebSocket class. FakeNet plays the
// server side of the protocol in memory: it records what the client sent and pushes frames.
// Tests wait for events (a frame sent, a state reached), never for fixed durations.
import { test } from "node:test";
import assert from "node:assert/strict";
import { NatsgateError, connect } from "../natsgate.js";
import { FakeSocket, nextEvent, setup, until, within } from "./fake-server.js";

// --- connection ---------------------------------------------------------------------------

test("connect returns at once; open (and ready) only after the first cap_update", async (t) => {
  const { net, client } = setup(t, {}, (n) => {
    n.script = (sock) => sock.open(); // open, but no cap_update yet
  });
  /** @type {string[]} */
  const states = [];
  client.on("state", (s, prev) => states.push(`${prev}->${s}`));
  assert.equal(client.state, "connecting");
  assert.equal(client.caps, null);
  let ready = false;
  const readyP = client.ready().then(() => { ready = true; });
  const sock = await net.socket(0);
  await until(() => sock.readyState === 1, "socket open");
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(ready, false, "socket open is not enough");
  assert.equal(client.state, "connecting");
  const capsSeen = nextEvent(client, "caps");
  sock.capUpdate({ subjects: ["chat.>"] });
  await readyP;
  assert.deepEqual(await capsSeen, { subjects: ["chat.>"] });
  assert.deepEqual(client.caps, { subjects: ["chat.>"] });
  assert.equal(client.state, "open");
  assert.deepEqual(states, ["connecting->open"]);
  await client.ready(); // already open: resolves at once
});

test("a string token goes on the URL as ?token=", async (t) => {
  const { net, client } = setup(t, { token: "abc.def.ghi" });
  await client.ready();
  assert.equal(net.sockets[0].url, "ws://gateway.test/ws?token=abc.def.ghi");
});

test("a token function is called before every attempt", async (t) => {
  let n = 0;
  const { net, client } = setup(t, { token: async () => `tok${++n}` });
  await client.ready();
  net.sockets[0].drop(1006);
  await until(() => client.state === "open" && net.sockets.length === 2, "reconnected");
  assert.deepEqual(net.sockets.map((s) => new URL(s.url).searchParams.get("token")), ["tok1", "tok2"]);
});

test("without a WebSocket the client says so", () => {
  const saved = globalThis.WebSocket;
  // @ts-ignore Node 20 has no WebSocket; make sure of it for this test
  delete globalThis.WebSocket;
  try {
    assert.throws(() => connect("ws://x/ws"), TypeError);
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});

test("several envelopes in one frame are each handled, in order", async (t) => {
  const { net, client } = setup(t, {}, (n) => {
    n.script = (sock) => sock.open();
  });
  /** @type {unknown[]} */
  const got = [];
  client.subscribe("chat.>", (data) => got.push(data));
  const sock = await net.socket(0);
  await until(() => sock.readyState === 1, "open");
  sock.push({ op: "cap_update", data: { caps: {}, revoked: [] } });
  const sub = await sock.sentOp("sub");
  sock.push(
    { op: "reply", inbox: sub.inbox, target: "chat.>", data: { ok: true } },
    { op: "msg", target: "chat.a", sub: "chat.>", data: 1 },
    { op: "msg", target: "chat.b", sub: "chat.>", data: 2 },
  );
  assert.deepEqual(got, [1, 2]);
});

test("every op carries its own inbox", async (t) => {
  const { net, client } = setup(t);
  await client.ready();
  client.subscribe("a", () => {});
  client.subscribe("b", () => {});
  await client.publish("a", 1);
  await client.publish("a", 2);
  const inboxes = net.sockets[0].sent.map((e) => e.inbox);
  assert.equal(inboxes.length, 4);
  assert.equal(new Set(inboxes).size, 4);
  assert.ok(inboxes.every((i) => typeof i === "string" && i.length > 0 && i.length <= 128));
});

// --- core subscriptions -------------------------------------------------------------------

test("core messages go to the subscription named by `sub`, even when patterns overlap", async (t) => {
  const { net, client } = setup(t);
  /** @type {string[]} */
  const wide = [];
  /** @type {string[]} */
  const narrow = [];
  const a = client.subscribe("chat.>", (data, msg) => wide.push(`${msg.subject}:${data}`));
  const b = client.subscribe("chat.room.1", (data, msg) => narrow.push(`${msg.subject}:${data}:${msg.sub}`));
  await Promise.all([a.ready, b.ready]);
  assert.equal(a.state, "active");
  const sock = net.sockets[0];
  sock.push({ op: "msg", target: "chat.room.1", sub: "chat.>", data: "x" });
  sock.push({ op: "msg", target: "chat.room.1", sub: "chat.room.1", data: "y" });
  sock.push({ op: "msg", target: "chat.room.2", sub: "chat.>", data: "z" });
  assert.deepEqual(wide, ["chat.room.1:x", "chat.room.2:z"]);
  assert.deepEqual(narrow, ["chat.room.1:y:chat.room.1"]);
});

test("core messages: base64 payloads become bytes, headers are passed on", async (t) => {
  const { net, client } = setup(t);
  /** @type {any[]} */
  const got = [];
  await client.subscribe("bin.*", (data, msg) => got.push([data, msg.headers])).ready;
  net.sockets[0].push({ op: "msg", target: "bin.x", sub: "bin.*", data: "AAEC", enc: "base64", headers: { "Natsgate-User": "alice" } });
  assert.deepEqual(got, [[new Uint8Array([0, 1, 2]), { "Natsgate-User": "alice" }]]);
});

test("a refused subscription rejects ready with a NatsgateError and ends", async (t) => {
  const { net, client } = setup(t, {}, (n) => n.answer.delete("sub"));
  await client.ready();
  const sub = client.subscribe("secret.>", () => {});
  const env = await net.sockets[0].sentOp("sub");
  net.sockets[0].error(env, "forbidden", "not yours");
  await assert.rejects(sub.ready, (err) => err instanceof NatsgateError && err.name === "NatsgateError" && err.code === "forbidden" && err.message === "not yours");
  assert.equal(sub.state, "ended");
  assert.equal(client.subscriptions.length, 0);
});

test("a second subscription with the same pattern is refused client-side", async (t) => {
  const { client } = setup(t);
  await client.ready();
  client.subscribe("x.>", () => {});
  const dup = client.subscribe("x.>", () => {});
  await assert.rejects(dup.ready, { code: "bad_request" });
});

test("unsubscribe sends the matching op with the same target and pattern/filter", async (t) => {
  const { net, client } = setup(t);
  await client.ready();
  const a = client.subscribe("chat.>", () => {});
  const b = client.kvSubscribe("todos", "user.alice.>", () => {});
  const c = client.jsSubscribe("CHAT", { filter: "chat.room.*" }, () => {});
  await Promise.all([a.ready, b.ready, c.ready]);
  await Promise.all([a.unsubscribe(), b.unsubscribe(), c.unsubscribe()]);
  const sent = net.sockets[0].sent.filter((e) => e.op.endsWith("unsub")).map(({ op, target, data }) => ({ op, target, data }));
  assert.deepEqual(sent, [
    { op: "unsub", target: "chat.>", data: undefined },
    { op: "kv_unsub", target: "todos", data: { pattern: "user.alice.>" } },
    { op: "js_unsub", target: "CHAT", data: { filter: "chat.room.*" } },
  ]);
  assert.ok(a.ended && b.ended && c.ended);
  assert.equal(client.subscriptions.length, 0);
  // nothing is delivered after unsubscribe
  net.sockets[0].push({ op: "msg", target: "chat.a", sub: "chat.>", data: 1 });
});

test("subscriptions made before open are sent once open", async (t) => {
  const { net, client } = setup(t);
  const sub = client.subscribe("early.>", () => {});
  assert.equal(sub.state, "subscribing");
  await sub.ready;
  assert.equal(net.sockets[0].sent[0].op, "sub");
});

// --- publish and command ------------------------------------------------------------------

test("publish resolves on the server's ack and rejects on a refusal", async (t) => {
  const { net, client } = setup(t, {}, (n) => n.answer.delete("pub"));
  await client.ready();
  const sock = net.sockets[0];
  const ok = client.publish("chat.room.1", { text: "hi" });
  const env = await sock.sentOp("pub");
  assert.deepEqual(env.data, { text: "hi" });
  assert.equal(env.target, "chat.room.1");
  sock.reply(env);
  assert.equal(await ok, undefined);
  const bad = client.publish("admin.x", 1);
  const env2 = await sock.sentWhere((e) => e.op === "pub" && e.target === "admin.x");
  sock.error(env2, "forbidden");
  await assert.rejects(bad, { name: "NatsgateError", code: "forbidden" });
});

test("publish before open is queued and sent on open", async (t) => {
  const { net, client } = setup(t);
  const p = client.publish("q.x", 42);
  await p;
  assert.equal(net.sockets[0].sent[0].op, "pub");
});

test("command resolves with the responder's payload and sends timeout_ms", async (t) => {
  const { net, client } = setup(t);
  await client.ready();
  const sock = net.sockets[0];
  const p = client.command("svc.echo", { a: 1 }, { timeoutMs: 1500 });
  const env = await sock.sentOp("cmd");
  assert.equal(env.timeout_ms, 1500);
  assert.deepEqual(env.data, { a: 1 });
  sock.reply(env, { a: 1 });
  assert.deepEqual(await p, { a: 1 });
  const raw = client.command("svc.bin", null);
  const env2 = await sock.sentWhere((e) => e.target === "svc.bin");
  assert.equal(env2.timeout_ms, undefined);
  sock.push({ op: "reply", inbox: env2.inbox, data: "/w==", enc: "base64" });
  assert.deepEqual(await raw, new Uint8Array([255]));
});

test("command errors from the server reject with their code", async (t) => {
  const { net, client } = setup(t);
  await client.ready();
  const p = client.command("svc.none", {});
  net.sockets[0].error(await net.sockets[0].sentOp("cmd"), "no_responders");
  await assert.rejects(p, { code: "no_responders" });
});

test("a command with no answer times out client-side (timeoutMs + grace), late replies are ignored", async (t) => {
  const { net, client } = setup(t, { timeoutGraceMs: 5 });
  await client.ready();
  const p = client.command("svc.slow", {}, { timeoutMs: 10 });
  const env = await net.sockets[0].sentOp("cmd");
  await assert.rejects(p, { name: "NatsgateError", code: "timeout" });
  net.sockets[0].reply(env, "late"); // must not throw or resurrect anything
});

test("commands and publishes in flight reject with `disconnected` when the socket drops", async (t) => {
  const { net, client } = setup(t, {}, (n) => n.answer.delete("pub"));
  await client.ready();
  const cmd = client.command("svc.echo", 1);
  const pub = client.publish("chat.x", 1);
  await net.sockets[0].sentOp("cmd");
  await net.sockets[0].sentOp("pub");
  net.sockets[0].drop(1006);
  await assert.rejects(cmd, { code: "disconnected" });
  await assert.rejects(pub, { code: "disconnected" });
});

// --- reconnect ----------------------------------------------------------------------------

test("after a drop: reconnecting, then open again, every subscription re-sent", async (t) => {
  const { net, client } = setup(t);
  /** @type {string[]} */
  const states = [];
  client.on("state", (s) => states.push(s));
  const a = client.subscribe("chat.>", () => {});
  const b = client.kvSubscribe("todos", undefined, () => {});
  await Promise.all([a.ready, b.ready]);
  const reconnected = nextEvent(client, "reconnect");
  const disconnected = nextEvent(client, "disconnect");
  net.sockets[0].drop(1006, "gone");
  const info = await disconnected;
  assert.equal(info.code, 1006);
  assert.equal(typeof info.reconnectInMs, "number");
  assert.equal(a.state, "subscribing");
  await reconnected;
  await until(() => a.state === "active" && b.state === "active", "subs active again");
  assert.deepEqual(states, ["open", "reconnecting", "open"]);
  const resent = net.sockets[1].sent.map((e) => `${e.op} ${e.target} ${JSON.stringify(e.data)}`);
  assert.deepEqual(resent, ["sub chat.> undefined", "kv_sub todos {}"]);
  assert.notEqual(net.sockets[0].sent[0].inbox, net.sockets[1].sent[0].inbox);
});

test("server restart (1012) reconnects promptly; backpressure (1013) backs off", async (t) => {
  const { net, client } = setup(t, { minDelayMs: 10, maxDelayMs: 10000, random: () => 0.999 });
  await client.ready();
  /** @type {(number|null)[]} */
  const delays = [];
  client.on("disconnect", (i) => delays.push(i.reconnectInMs));
  // no one answers for a while: each failed attempt grows the window
  net.script = (sock) => sock.drop(1013);
  net.sockets[0].drop(1013);
  await until(() => delays.length >= 3, "three backoffs");
  assert.ok(delays[1] > delays[0] && delays[2] > delays[1], `growing: ${delays}`);
  net.script = (sock) => sock.drop(1012);
  await until(() => delays.length >= 5, "restart closes");
  assert.equal(delays.at(-1), 19, "1012 resets to the first attempt");
});

test("the attempt counter resets once a connection has been stable", async (t) => {
  const { net, client } = setup(t, { minDelayMs: 10, maxDelayMs: 10000, random: () => 0.999, stableAfterMs: 100 });
  await client.ready();
  /** @type {(number|null)[]} */
  const delays = [];
  client.on("disconnect", (i) => delays.push(i.reconnectInMs));
  const fail = (/** @type {FakeSocket} */ sock) => sock.drop(1006);
  const accept = net.script;
  net.script = fail;
  net.sockets[0].drop(1006);
  await until(() => delays.length >= 3, "backoffs");
  net.script = accept;
  await until(() => client.state === "open", "open again");
  // drop before it is stable: the counter keeps growing
  net.sockets.at(-1)?.drop(1006);
  await until(() => delays.length >= 4 && client.state === "open", "open again");
  assert.ok(delays[3] > delays[2], `${delays}`);
  await new Promise((r) => setTimeout(r, 150)); // longer than stableAfterMs
  net.sockets.at(-1)?.drop(1006);
  await until(() => delays.length >= 5, "drop after stable");
  assert.equal(delays[4], 19, `${delays}`);
});

test("4001 without a way to get a new token: error, closed, no reconnect", async (t) => {
  const { net, client } = setup(t, { token: "expired" });
  await client.ready();
  /** @type {NatsgateError[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const pending = client.command("svc.x", 1);
  const sub = client.subscribe("a", () => {});
  net.sockets[0].push({ op: "error", data: { code: "unauthorized", message: "token expired" } });
  net.sockets[0].drop(4001, "unauthorized");
  await until(() => client.state === "closed", "closed");
  assert.deepEqual(errors.map((e) => e.code), ["unauthorized"], "one error, not two");
  await assert.rejects(pending, { code: "disconnected" });
  assert.ok(sub.ended);
  await assert.rejects(client.ready(), { code: "closed" });
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(net.sockets.length, 1);
});

test("4001 with a refreshToken callback reconnects with the new token", async (t) => {
  const { net, client } = setup(t, { token: "old", refreshToken: async () => "new" });
  await client.ready();
  const errored = nextEvent(client, "error");
  net.sockets[0].drop(4001);
  assert.equal((await errored).code, "unauthorized");
  await until(() => net.sockets.length === 2 && client.state === "open", "reconnected");
  assert.equal(new URL(net.sockets[1].url).searchParams.get("token"), "new");
});

test("policy closes (1008, 4003) end the client", async (t) => {
  for (const code of [1008, 4003]) {
    const { net, client } = setup(t);
    await client.ready();
    const errored = nextEvent(client, "error");
    net.sockets[0].drop(code, "policy");
    assert.equal((await errored).code, "forbidden");
    assert.equal(client.state, "closed");
  }
});

test("an administrator's disconnect (4003) without a reason: closed, no reconnect, the table's meaning", async (t) => {
  const { net, client } = setup(t);
  await client.ready();
  const errored = nextEvent(client, "error");
  const disconnected = nextEvent(client, "disconnect");
  net.sockets[0].drop(4003);
  const err = await errored;
  assert.equal(err.code, "forbidden");
  assert.match(err.message, /disconnected by an administrator/);
  assert.equal((await disconnected).reconnectInMs, null);
  assert.equal(client.state, "closed");
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(net.sockets.length, 1);
});

test("1000, 1002 and 1007 from the server reconnect after a backoff", async (t) => {
  for (const code of [1000, 1002, 1007]) {
    const { net, client } = setup(t, { minDelayMs: 5, maxDelayMs: 50 });
    await client.ready();
    const disconnected = nextEvent(client, "disconnect");
    net.sockets[0].drop(code);
    const info = await disconnected;
    assert.equal(info.code, code);
    assert.ok(info.reconnectInMs !== null && info.reconnectInMs >= 5, String(code));
    await until(() => net.sockets.length === 2 && client.state === "open", `reconnected after ${code}`);
  }
});

test("a server that never sends cap_update is dropped after connectTimeoutMs and retried", async (t) => {
  const { net, client } = setup(t, { connectTimeoutMs: 10 }, (n) => {
    n.script = (sock) => (n.sockets.length === 1 ? sock.open() : (sock.open(), sock.capUpdate()));
  });
  await client.ready();
  assert.equal(net.sockets.length, 2);
  assert.equal(net.sockets[0].closedByClient?.code, 4000);
});

test("an error event without a close event (Node 20 on a refused connection) still reconnects", async (t) => {
  const { net, client } = setup(t, { connectTimeoutMs: 60_000 }, (n) => {
    n.script = (sock) => {
      if (n.sockets.length === 1) sock.onerror?.({}); // no close, readyState stays CONNECTING
      else { sock.open(); sock.capUpdate(); }
    };
  });
  const disconnected = nextEvent(client, "disconnect");
  await client.ready();
  assert.equal((await disconnected).code, 1006);
  assert.equal(net.sockets.length, 2);
  assert.equal(net.sockets[0].closedByClient?.code, 1000);
});

test("client-side ping: answered pongs keep the socket, silence drops it", async (t) => {
  const { net, client } = setup(t, { pingIntervalMs: 10 });
  await client.ready();
  await until(() => net.sockets[0].sent.filter((e) => e.op === "ping").length >= 3, "pings");
  assert.equal(net.sockets.length, 1, "pongs keep it alive");
  net.answer.delete("ping");
  const disconnected = nextEvent(client, "disconnect");
  assert.equal((await disconnected).code, 4000);
  await until(() => net.sockets.length === 2, "reconnect");
});

test("close(): closed state, pending requests and ready() reject with `closed`", async (t) => {
  const { net, client } = setup(t, {}, (n) => n.answer.delete("pub"));
  await client.ready();
  const p = client.publish("x", 1);
  const sub = client.subscribe("y", () => {});
  await net.sockets[0].sentOp("pub");
  client.close();
  await assert.rejects(p, { code: "closed" });
  assert.equal(client.state, "closed");
  assert.ok(sub.ended);
  assert.ok(net.sockets[0].closedByClient);
  await assert.rejects(client.ready(), { code: "closed" });
  await assert.rejects(client.command("z", 1), { code: "closed" });
  await assert.rejects(client.subscribe("z", () => {}).ready, { code: "closed" });
});

// --- JetStream ----------------------------------------------------------------------------

test("JetStream: ready resolves to the reply; resume after reconnect from last seen + 1, no duplicate", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = { first_seq: 1, last_seq: 3 }; });
  /** @type {number[]} */
  const seqs = [];
  const sub = client.jsSubscribe("CHAT", { startSeq: 1, batch: 50, filter: "chat.room.*" }, (m) => seqs.push(m.seq));
  const reply = await sub.ready;
  assert.deepEqual(reply, { ok: true, first_seq: 1, last_seq: 3 });
  const s0 = net.sockets[0];
  assert.deepEqual(s0.sent[0].data, { start_seq: 1, batch: 50, filter: "chat.room.*" });
  const js = (/** @type {number} */ seq, subject = "chat.room.1") =>
    ({ op: "msg", target: "js:CHAT", data: { seq, subject, payload: { n: seq }, time: "2024-01-01T00:00:00Z" } });
  s0.push(js(1), js(2), js(2), js(3), js(1));
  assert.deepEqual(seqs, [1, 2, 3], "duplicates and older dropped");
  s0.push(js(4, "other.subject"));
  assert.deepEqual(seqs, [1, 2, 3], "filter respected");
  assert.equal(sub.lastSeq, 3);
  s0.drop(1006);
  const s1 = await net.socket(1);
  const resub = await s1.sentOp("js_sub");
  assert.deepEqual(resub.data, { start_seq: 4, batch: 50, filter: "chat.room.*" });
  s1.push(js(3), js(4), js(5));
  assert.deepEqual(seqs, [1, 2, 3, 4, 5]);
});

test("JetStream: a new-only subscription resumes from the stream's last_seq at subscribe time", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = { first_seq: 1, last_seq: 10 }; });
  const sub = client.jsSubscribe("CHAT", {}, () => {});
  await sub.ready;
  assert.deepEqual(net.sockets[0].sent[0].data, {});
  net.sockets[0].drop(1006);
  const s1 = await net.socket(1);
  assert.deepEqual((await s1.sentOp("js_sub")).data, { start_seq: 11 });
});

test("jsResume(stream, lastSeq) = jsSubscribe from lastSeq + 1", async (t) => {
  const { net, client } = setup(t);
  /** @type {number[]} */
  const seqs = [];
  const sub = client.jsResume("CHAT", 41, { batch: 10 }, (m) => seqs.push(m.seq));
  await sub.ready;
  assert.deepEqual(net.sockets[0].sent[0].data, { start_seq: 42, batch: 10 });
  net.sockets[0].push({ op: "msg", target: "js:CHAT", data: { seq: 41, subject: "a", payload: 1 } });
  net.sockets[0].push({ op: "msg", target: "js:CHAT", data: { seq: 42, subject: "a", payload: 1 } });
  assert.deepEqual(seqs, [42]);
});

test("JetStream: startTime is sent as RFC 3339", async (t) => {
  const { net, client } = setup(t);
  await client.jsSubscribe("CHAT", { startTime: new Date(Date.UTC(2024, 0, 2, 3, 4, 5)) }, () => {}).ready;
  assert.deepEqual(net.sockets[0].sent[0].data, { start_time: "2024-01-02T03:04:05.000Z" });
});

test("JetStream: gap in the reply is exposed as a flag and an event", async (t) => {
  const { client } = setup(t, {}, (n) => { n.jsReply = { first_seq: 100, last_seq: 120, gap: true }; });
  const sub = client.jsResume("CHAT", 5, {}, () => {});
  const gap = within((resolve) => sub.on("gap", resolve), "gap");
  const reply = await sub.ready;
  assert.equal(reply.gap, true);
  assert.equal(sub.gap, true);
  assert.deepEqual(await gap, { ok: true, first_seq: 100, last_seq: 120, gap: true });
});

test("JetStream: messages are routed by stream and filter", async (t) => {
  const { net, client } = setup(t);
  /** @type {string[]} */
  const got = [];
  await client.jsSubscribe("CHAT", { filter: "chat.room.1" }, (m) => got.push(`1:${m.seq}`)).ready;
  await client.jsSubscribe("OTHER", {}, (m) => got.push(`o:${m.seq}`)).ready;
  const s = net.sockets[0];
  s.push({ op: "msg", target: "js:CHAT", data: { seq: 1, subject: "chat.room.2", payload: 0 } });
  s.push({ op: "msg", target: "js:CHAT", data: { seq: 2, subject: "chat.room.1", payload: 0 } });
  s.push({ op: "msg", target: "js:OTHER", data: { seq: 9, subject: "x", payload: "AQ==", enc: "base64" } });
  assert.deepEqual(got, ["1:2", "o:9"]);
});

// --- KV -----------------------------------------------------------------------------------

test("KV: snapshot values first, ready after the reply, then live changes", async (t) => {
  const { net, client } = setup(t, {}, (n) => n.answer.delete("kv_sub"));
  /** @type {any[]} */
  const got = [];
  const sub = client.kvSubscribe("todos", "user.alice.>", (e, meta) => got.push([e.key, e.revision, e.op, e.value, meta.snapshot]));
  const s = await net.socket(0);
  const env = await s.sentOp("kv_sub");
  assert.deepEqual(env.data, { pattern: "user.alice.>" });
  let ready = false;
  void sub.ready.then(() => { ready = true; });
  s.push(
    { op: "msg", target: "kv:todos", data: { key: "user.alice.1", revision: 1, op: "PUT", value: { t: "a" } } },
    { op: "msg", target: "kv:todos", data: { key: "user.alice.2", revision: 2, op: "PUT", value: "AQ==", enc: "base64" } },
  );
  await new Promise((r) => setTimeout(r, 2));
  assert.equal(ready, false);
  s.reply(env);
  await sub.ready;
  s.push({ op: "msg", target: "kv:todos", data: { key: "user.alice.1", revision: 3, op: "DEL" } });
  s.push({ op: "msg", target: "kv:todos", data: { key: "user.bob.1", revision: 4, op: "PUT", value: 1 } });
  s.push({ op: "msg", target: "kv:other", data: { key: "user.alice.9", revision: 5, op: "PUT", value: 1 } });
  assert.deepEqual(got, [
    ["user.alice.1", 1, "PUT", { t: "a" }, true],
    ["user.alice.2", 2, "PUT", new Uint8Array([1]), true],
    ["user.alice.1", 3, "DEL", undefined, false],
  ]);
});

test("KV: after a reconnect, resync (and onResync) comes before the re-hydration snapshot", async (t) => {
  const { net, client } = setup(t, {}, (n) => n.answer.delete("kv_sub"));
  /** @type {string[]} */
  const log = [];
  const sub = client.kvSubscribe("todos", undefined, (e, meta) => log.push(`${e.key}@${e.revision}${meta.snapshot ? " snap" : ""}`), {
    onResync: () => log.push("onResync"),
  });
  sub.on("resync", () => log.push("resync"));
  const s0 = await net.socket(0);
  const env0 = await s0.sentOp("kv_sub");
  assert.deepEqual(env0.data, {});
  s0.push({ op: "msg", target: "kv:todos", data: { key: "a", revision: 1, op: "PUT", value: 1 } });
  s0.reply(env0);
  await sub.ready;
  s0.push({ op: "msg", target: "kv:todos", data: { key: "a", revision: 2, op: "PUT", value: 2 } });
  s0.drop(1006);
  assert.deepEqual(log, ["a@1 snap", "a@2"], "no resync while merely offline");
  const s1 = await net.socket(1);
  const env1 = await s1.sentOp("kv_sub");
  s1.push({ op: "msg", target: "kv:todos", data: { key: "a", revision: 2, op: "PUT", value: 2 } });
  s1.reply(env1);
  await until(() => sub.state === "active", "active");
  s1.push({ op: "msg", target: "kv:todos", data: { key: "a", revision: 3, op: "PUT", value: 3 } });
  assert.deepEqual(log, ["a@1 snap", "a@2", "onResync", "resync", "a@2 snap", "a@3"]);
});

test("KV: the gateway's RESYNC/SYNCED markers frame a server-side re-snapshot", async (t) => {
  const { net, client } = setup(t);
  /** @type {string[]} */
  const log = [];
  const sub = client.kvSubscribe("todos", "user.alice.>", (e, meta) => log.push(`${e.key}@${e.revision}${meta.snapshot ? " snap" : ""}`), {
    onResync: () => log.push("onResync"),
  });
  sub.on("resync", () => log.push("resync"));
  sub.on("synced", () => log.push("synced"));
  await sub.ready;
  const s = net.sockets[0];
  const kv = (/** @type {string} */ key, /** @type {number} */ revision, extra = {}) =>
    ({ op: "msg", target: "kv:todos", data: { key, revision, op: "PUT", value: 1, ...extra } });
  s.push(kv("user.alice.1", 5));
  s.push({ op: "msg", target: "kv:todos", data: { op: "RESYNC", pattern: "user.bob.>" } }); // not ours
  s.push({ op: "msg", target: "kv:todos", data: { op: "RESYNC", pattern: "user.alice.>" } });
  s.push(kv("user.alice.1", 5, { snapshot: true }), kv("user.alice.2", 6));
  s.push({ op: "msg", target: "kv:todos", data: { op: "SYNCED", pattern: "user.alice.>" } });
  s.push(kv("user.alice.2", 7));
  assert.deepEqual(log, [
    "synced", // the reply of the first hydration
    "user.alice.1@5",
    "onResync", "resync", "user.alice.1@5 snap", "user.alice.2@6 snap", "synced",
    "user.alice.2@7",
  ]);
  assert.equal(sub.state, "active");
});

test("KV: overlapping watches do not hand the same revision twice to one subscription", async (t) => {
  const { net, client } = setup(t);
  /** @type {string[]} */
  const wide = [];
  const a = client.kvSubscribe("todos", "user.>", (e) => wide.push(`${e.key}@${e.revision}`));
  const b = client.kvSubscribe("todos", "user.alice.>", () => {});
  await Promise.all([a.ready, b.ready]);
  const m = { op: "msg", target: "kv:todos", data: { key: "user.alice.1", revision: 7, op: "PUT", value: 1 } };
  net.sockets[0].push(m, m);
  assert.deepEqual(wide, ["user.alice.1@7"]);
});

// --- capabilities and errors --------------------------------------------------------------

test("cap_update revokes subscriptions: ended as revoked, never re-sent", async (t) => {
  const { net, client } = setup(t);
  /** @type {unknown[]} */
  const got = [];
  const chat = client.subscribe("chat.>", (d) => got.push(d));
  const todos = client.kvSubscribe("todos", "user.alice.>", () => {});
  const keep = client.subscribe("notify.alice", () => {});
  await Promise.all([chat.ready, todos.ready, keep.ready]);
  const update = nextEvent(client, "cap_update");
  const states = within((resolve) => chat.on("state", (s, prev) => resolve(`${prev}->${s}`)), "state");
  net.sockets[0].capUpdate({ subjects: ["notify.alice"] }, [
    { op: "sub", target: "chat.>" },
    { op: "kv_sub", target: "todos", pattern: "user.alice.>" }, // the gateway's shape
  ]);
  const u = await update;
  assert.deepEqual(u.caps, { subjects: ["notify.alice"] });
  assert.equal(u.revoked.length, 2);
  assert.deepEqual(u.ended, [chat, todos]);
  assert.equal(await states, "active->revoked");
  assert.ok(chat.revoked && chat.ended && todos.revoked);
  assert.ok(!keep.ended);
  assert.deepEqual(client.caps, { subjects: ["notify.alice"] });
  net.sockets[0].push({ op: "msg", target: "chat.x", sub: "chat.>", data: "late" });
  assert.deepEqual(got, []);
  net.sockets[0].drop(1006);
  const s1 = await net.socket(1);
  await until(() => keep.state === "active", "restored");
  assert.deepEqual(s1.sent.map((e) => e.target), ["notify.alice"]);
});

test("a re-sent subscription the server now refuses ends with an error event", async (t) => {
  const { net, client } = setup(t);
  const sub = client.subscribe("chat.>", () => {});
  await sub.ready;
  net.answer.delete("sub");
  net.sockets[0].drop(1006);
  const s1 = await net.socket(1);
  const errored = within((resolve) => sub.on("error", resolve), "sub error");
  s1.error(await s1.sentOp("sub"), "forbidden");
  assert.equal(/** @type {NatsgateError} */ (await errored).code, "forbidden");
  assert.equal(sub.state, "ended");
});

test("errors that belong to no request are emitted as `error` events", async (t) => {
  const { net, client } = setup(t);
  await client.ready();
  /** @type {NatsgateError[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e));
  net.sockets[0].push({ op: "error", data: { code: "backpressure", message: "slow" } });
  net.sockets[0].push({ op: "error", inbox: "not-mine", target: "x", data: { code: "limit", message: "too many" } });
  net.sockets[0].onmessage?.({ data: "garbage" });
  assert.deepEqual(errors.map((e) => [e.code, e.target]), [["backpressure", undefined], ["limit", "x"], ["protocol", undefined]]);
  assert.equal(client.state, "open", "still open: the server decides about closing");
});

test("on() returns an off function; off() works too", async (t) => {
  const { net, client } = setup(t);
  await client.ready();
  let n = 0;
  const h = () => { n += 1; };
  const off = client.on("caps", h);
  net.sockets[0].capUpdate({});
  off();
  net.sockets[0].capUpdate({});
  client.on("caps", h);
  client.off("caps", h);
  net.sockets[0].capUpdate({});
  assert.equal(n, 1);
});

// --- token refresh ------------------------------------------------------------------------

/** @param {number} expSeconds */
function jwt(expSeconds, sub = "alice") {
  const b64 = (/** @type {object} */ o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: expSeconds })}.sig`;
}

/** A refreshBeforeMs that makes `token` due for refresh `inMs` from now. @param {string} token */
function dueIn(token, inMs) {
  const exp = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString()).exp * 1000;
  return exp - Date.now() - inMs;
}

test("refreshToken: the auth op goes out before exp; the new token is used on reconnect", async (t) => {
  const now = Math.floor(Date.now() / 1000);
  const first = jwt(now + 60);
  const second = jwt(now + 3600);
  let calls = 0;
  const refreshToken = async () => (++calls === 1 ? second : jwt(now + 7200, "third"));
  const { net, client } = setup(t, { token: first, refreshToken, refreshBeforeMs: dueIn(first, 50) }, (n) => n.answer.add("auth"));
  await client.ready();
  assert.equal(new URL(net.sockets[0].url).searchParams.get("token"), first);
  const auth = await net.sockets[0].sentOp("auth");
  assert.deepEqual(auth.data, { token: second });
  await new Promise((r) => setTimeout(r, 5));
  net.sockets[0].drop(1006);
  await until(() => net.sockets.length === 2, "reconnect");
  assert.equal(new URL(net.sockets[1].url).searchParams.get("token"), second, "the acknowledged token");
  assert.equal(calls, 1, "no refresh needed for the reconnect");
});

test("refreshToken: a token already due is refreshed before connecting", async (t) => {
  const now = Math.floor(Date.now() / 1000);
  const { net, client } = setup(t, { token: jwt(now + 10), refreshToken: async () => "fresh", refreshBeforeMs: 30_000 });
  await client.ready();
  assert.equal(new URL(net.sockets[0].url).searchParams.get("token"), "fresh");
});

test("refreshToken: a refused auth op is reported as an error event", async (t) => {
  const now = Math.floor(Date.now() / 1000);
  const first = jwt(now + 60);
  const { net, client } = setup(t, { token: first, refreshToken: async () => jwt(now + 99, "mallory"), refreshBeforeMs: dueIn(first, 30) });
  await client.ready();
  const errored = nextEvent(client, "error");
  net.sockets[0].error(await net.sockets[0].sentOp("auth"), "forbidden");
  assert.equal((await errored).code, "forbidden");
});
