// Durable subscriptions and acknowledgements (docs/protocol.md, "Durable subscriptions and
// acknowledgements"), driven through the fake gateway: what goes on the wire for a bind, a
// rebind, an ack, a nak, a term, an unbind, a delete and a listing; what reaches the handler.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DurableSubscription, JsAckMessage, NatsgateError, decodeDelivery, decodeDurables } from "../natsgate.js";
import { nextEvent, setup, until } from "./fake-server.js";

/** @typedef {import("./fake-server.js").FakeSocket} FakeSocket */

const REPLY = { first_seq: 1, last_seq: 57, durable: "inbox", pending: 3, ack_pending: 0 };

/**
 * A durable's `msg` frame, as the gateway sends it.
 * @param {number} seq
 * @param {{durable?: string, delivery?: number, subject?: string}} [o]
 */
function dmsg(seq, o = {}) {
  /** @type {Record<string, unknown>} */
  const data = { seq, subject: o.subject ?? "notify.alice", payload: { n: seq }, time: "2026-11-30T18:00:00Z" };
  if (o.delivery !== undefined) data.delivery = o.delivery;
  return { op: "msg", target: "js:NOTIFY", durable: o.durable ?? "inbox", sub: "notify.alice", data };
}

/** The js_ack frames a socket carried, without `v`. @param {FakeSocket} sock */
function acks(sock) {
  return sock.sent.filter((e) => e.op === "js_ack").map(({ v: _v, ...rest }) => rest);
}

test("bind: js_sub carries the durable, ack mode, ack wait, start, filter; ready adds pending", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  const sub = client.jsSubscribe("NOTIFY", {
    durable: "inbox", ack: "explicit", ackWaitMs: 30000, batch: 10, filter: "notify.alice", startSeq: 1,
  }, () => {});
  assert.ok(sub instanceof DurableSubscription);
  const reply = await sub.ready;
  assert.deepEqual(reply, { ok: true, ...REPLY });
  const [sent] = net.sockets[0].sent;
  assert.equal(sent.op, "js_sub");
  assert.equal(sent.target, "NOTIFY");
  assert.deepEqual(sent.data, {
    durable: "inbox", ack: "explicit", ack_wait_ms: 30000, batch: 10, filter: "notify.alice", start_seq: 1,
  });
  assert.equal(sub.durable, "inbox");
  assert.equal(sub.ack, "explicit");
  assert.equal(sub.pending, 3);
  assert.equal(sub.ackPending, 0);
  assert.equal(sub.state, "active");
});

test("ack: none (the default) sends no ack mode and hands over plain messages", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {unknown[]} */
  const got = [];
  const sub = client.jsSubscribe("NOTIFY", { durable: "inbox", startTime: new Date(Date.UTC(2026, 0, 1)) }, (m) => got.push(m));
  await sub.ready;
  assert.deepEqual(net.sockets[0].sent[0].data, { durable: "inbox", start_time: "2026-01-01T00:00:00.000Z" });
  net.sockets[0].push(dmsg(41));
  assert.equal(got.length, 1);
  assert.ok(!(got[0] instanceof JsAckMessage));
  assert.equal(/** @type {any} */ (got[0]).ack, undefined, "nothing to ack");
  assert.deepEqual(acks(net.sockets[0]), []);
});

test("ack, nak (with and without a delay) and term send their js_ack; delivery is exposed", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {JsAckMessage[]} */
  const got = [];
  await client.jsSubscribe("NOTIFY", { durable: "inbox", ack: "explicit" }, (m) => got.push(m)).ready;
  const s = net.sockets[0];
  s.push(dmsg(41, { delivery: 1 }), dmsg(42, { delivery: 3 }), dmsg(43, { delivery: 1 }), dmsg(44, { delivery: 1 }));
  assert.deepEqual(got.map((m) => [m.seq, m.delivery, m.subject]), [
    [41, 1, "notify.alice"], [42, 3, "notify.alice"], [43, 1, "notify.alice"], [44, 1, "notify.alice"],
  ]);
  assert.deepEqual(got[0].payload, { n: 41 });
  assert.equal(got[0].time, "2026-11-30T18:00:00Z");
  assert.equal(got[0].settled, null);
  got[0].ack();
  got[1].nak(5000);
  got[2].term();
  got[3].nak();
  assert.deepEqual(acks(s), [
    { op: "js_ack", target: "NOTIFY", data: { durable: "inbox", seq: 41 } },
    { op: "js_ack", target: "NOTIFY", data: { durable: "inbox", seq: 42, nak: true, delay_ms: 5000 } },
    { op: "js_ack", target: "NOTIFY", data: { durable: "inbox", seq: 43, term: true } },
    { op: "js_ack", target: "NOTIFY", data: { durable: "inbox", seq: 44, nak: true } },
  ]);
  assert.deepEqual(got.map((m) => m.settled), ["ack", "nak", "term", "nak"]);
  assert.ok(acks(s).every((e) => e.inbox === undefined), "fire-and-forget: no inbox");
});

test("the first settle counts: a second ack, nak or term sends nothing", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {JsAckMessage[]} */
  const got = [];
  await client.jsSubscribe("NOTIFY", { durable: "inbox", ack: "explicit" }, (m) => got.push(m)).ready;
  net.sockets[0].push(dmsg(41, { delivery: 1 }));
  got[0].ack();
  got[0].ack();
  got[0].nak();
  got[0].term();
  await got[0].ackSync(); // resolves at once: the fire-and-forget ack went out
  assert.equal(acks(net.sockets[0]).length, 1);
  assert.equal(got[0].settled, "ack");
});

test("missing delivery counts as the first", () => {
  assert.equal(decodeDelivery({ op: "msg", data: { seq: 1 } }), 1);
  assert.equal(decodeDelivery({ op: "msg", data: { seq: 1, delivery: 4 } }), 4);
  assert.equal(decodeDelivery({ op: "msg", data: { seq: 1, delivery: "2" } }), 1);
});

test("ackSync sends an inbox and settles with the gateway's reply or error", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {JsAckMessage[]} */
  const got = [];
  await client.jsSubscribe("NOTIFY", { durable: "inbox", ack: "explicit" }, (m) => got.push(m)).ready;
  const s = net.sockets[0];
  s.push(dmsg(43, { delivery: 1 }), dmsg(44, { delivery: 1 }));
  const ok = got[0].ackSync();
  const sent = await s.sentOp("js_ack");
  assert.ok(sent.inbox);
  assert.deepEqual(sent.data, { durable: "inbox", seq: 43 });
  s.reply(sent);
  await ok;
  assert.strictEqual(got[0].ackSync(), got[0].ackSync(), "later calls return the first call's promise");
  const refused = got[1].ackSync();
  const second = await s.sentWhere((e) => e.op === "js_ack" && e.data.seq === 44);
  s.error(second, "bad_request", "message 44 of durable 'inbox' is not awaiting an ack here");
  await assert.rejects(refused, (err) => err instanceof NatsgateError && err.code === "bad_request");
});

test("rebind after a reconnect: the durable by name, no start_seq, no reset; redeliveries reach the handler", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {JsAckMessage[]} */
  const got = [];
  const sub = client.jsSubscribe("NOTIFY", {
    durable: "inbox", ack: "explicit", filter: "notify.alice", startSeq: 1, reset: true, batch: 10,
  }, (m) => got.push(m));
  await sub.ready;
  const s0 = net.sockets[0];
  assert.deepEqual(s0.sent[0].data, {
    durable: "inbox", ack: "explicit", batch: 10, filter: "notify.alice", start_seq: 1, reset: true,
  });
  s0.push(dmsg(41, { delivery: 1 }), dmsg(42, { delivery: 1 }));
  got[0].ack();
  s0.drop(1006); // 42 delivered, not acked when the socket goes
  const s1 = await net.socket(1);
  const rebind = await s1.sentOp("js_sub");
  assert.deepEqual(rebind.data, { durable: "inbox", ack: "explicit", batch: 10, filter: "notify.alice" });
  await until(() => sub.state === "active", "bound again");
  // an ack of a message from the lost binding is not sent: the gateway would refuse it
  await assert.rejects(got[1].ackSync(), { code: "disconnected" });
  assert.deepEqual(acks(s1), []);
  // 42 comes again (delivery 2), and 41 too should the ack have been lost: both reach the handler
  s1.push(dmsg(41, { delivery: 2 }), dmsg(42, { delivery: 2 }), dmsg(43, { delivery: 1 }));
  assert.deepEqual(got.map((m) => `${m.seq}/${m.delivery}`), ["41/1", "42/1", "41/2", "42/2", "43/1"]);
  got[3].ack(); // on the current binding
  assert.deepEqual(acks(s1), [{ op: "js_ack", target: "NOTIFY", data: { durable: "inbox", seq: 42 } }]);
  s1.drop(1006);
  const s2 = await net.socket(2);
  await until(() => sub.state === "active", "bound a third time");
  got[4].ack(); // fire-and-forget for an old binding's message: not sent either
  assert.deepEqual(acks(s2), []);
});

test("a nak'ed message delivered again on the same binding reaches the handler again", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {string[]} */
  const got = [];
  await client.jsSubscribe("NOTIFY", { durable: "inbox", ack: "explicit" }, (m) => {
    got.push(`${m.seq}/${m.delivery}`);
    if (m.delivery === 1) m.nak();
    else m.ack();
  }).ready;
  net.sockets[0].push(dmsg(7, { delivery: 1 }), dmsg(7, { delivery: 2 }));
  assert.deepEqual(got, ["7/1", "7/2"]);
  assert.deepEqual(acks(net.sockets[0]).map((e) => e.data), [
    { durable: "inbox", seq: 7, nak: true }, { durable: "inbox", seq: 7 },
  ]);
});

test("bind options are sent until the first bind is acknowledged, then never again", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.answer.delete("js_sub"); });
  const sub = client.jsSubscribe("NOTIFY", { durable: "inbox", startSeq: 5, reset: true }, () => {});
  const s0 = await net.socket(0);
  assert.deepEqual((await s0.sentOp("js_sub")).data, { durable: "inbox", start_seq: 5, reset: true });
  s0.drop(1006); // before the reply: the durable may not exist yet
  const s1 = await net.socket(1);
  const again = await s1.sentOp("js_sub");
  assert.deepEqual(again.data, { durable: "inbox", start_seq: 5, reset: true });
  s1.reply(again, { ok: true, ...REPLY });
  await sub.ready;
  s1.drop(1006);
  const s2 = await net.socket(2);
  assert.deepEqual((await s2.sentOp("js_sub")).data, { durable: "inbox" });
});

test("routing: a durable's msg goes to that durable only, never to plain subscriptions of the stream", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {string[]} */
  const got = [];
  await Promise.all([
    client.jsSubscribe("NOTIFY", { durable: "inbox", ack: "explicit", filter: "notify.alice" }, (m) => got.push(`inbox:${m.seq}`)).ready,
    client.jsSubscribe("NOTIFY", { durable: "phone", filter: "notify.alice" }, (m) => got.push(`phone:${m.seq}`)).ready,
    client.jsSubscribe("NOTIFY", { filter: "notify.alice" }, (m) => got.push(`plain:${m.seq}`)).ready,
  ]);
  const s = net.sockets[0];
  s.push(dmsg(1, { durable: "inbox", delivery: 1 }));
  s.push(dmsg(1, { durable: "phone" }));
  s.push(dmsg(2, { durable: "phone" }));
  s.push(dmsg(3, { durable: "nobody" }));
  s.push({ op: "msg", target: "js:NOTIFY", sub: "notify.alice", data: { seq: 1, subject: "notify.alice", payload: 0 } });
  s.push(dmsg(2, { durable: "inbox", delivery: 1 }));
  assert.deepEqual(got, ["inbox:1", "phone:1", "phone:2", "plain:1", "inbox:2"]);
});

test("one binding per durable name and client; the same filter under two names is fine", async (t) => {
  const { client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  await client.jsSubscribe("NOTIFY", { durable: "inbox", filter: "notify.alice" }, () => {}).ready;
  await assert.rejects(client.jsSubscribe("NOTIFY", { durable: "inbox" }, () => {}).ready, { code: "bad_request" });
  await client.jsSubscribe("NOTIFY", { durable: "other", filter: "notify.alice" }, () => {}).ready;
  await client.jsSubscribe("OTHER", { durable: "inbox" }, () => {}).ready;
});

test("explicit acks without a durable are refused at once", async (t) => {
  const { net, client } = setup(t);
  await client.ready();
  const sub = client.jsSubscribe("NOTIFY", /** @type {any} */ ({ ack: "explicit" }), () => {});
  await assert.rejects(sub.ready, { code: "bad_request" });
  assert.deepEqual(net.sockets[0].sent, []);
});

test("unsubscribe unbinds (the durable stays); unsubscribe({delete: true}) deletes it", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {JsAckMessage[]} */
  const got = [];
  const a = client.jsSubscribe("NOTIFY", { durable: "inbox", ack: "explicit", filter: "notify.alice" }, (m) => got.push(m));
  const b = client.jsSubscribe("NOTIFY", { durable: "phone" }, () => {});
  await Promise.all([a.ready, b.ready]);
  const s = net.sockets[0];
  s.push(dmsg(9, { delivery: 1 }));
  await a.unsubscribe();
  assert.equal(a.state, "ended");
  const unbind = await s.sentOp("js_unsub");
  assert.deepEqual(unbind.data, { durable: "inbox" });
  got[0].ack(); // after the unbind: nothing to send
  assert.deepEqual(acks(s), []);
  s.push(dmsg(10, { delivery: 1 }));
  assert.equal(got.length, 1, "nothing after the unbind");

  net.answer.delete("js_unsub");
  const deleted = b.unsubscribe({ delete: true });
  assert.equal(b.state, "ended");
  const del = await s.sentWhere((e) => e.op === "js_unsub" && e.data.delete === true, "the delete");
  assert.deepEqual(del.data, { durable: "phone", delete: true });
  assert.ok(del.inbox);
  s.reply(del);
  await deleted;
  assert.equal(client.subscriptions.length, 0);
});

test("deleteDurable: a durable not bound here; refusals reject; one bound here ends", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; n.answer.delete("js_unsub"); });
  const sub = client.jsSubscribe("NOTIFY", { durable: "inbox" }, () => {});
  await sub.ready;
  const s = net.sockets[0];
  const gone = client.deleteDurable("NOTIFY", "old");
  const first = await s.sentWhere((e) => e.op === "js_unsub" && e.data.durable === "old", "delete old");
  assert.deepEqual(first.data, { durable: "old", delete: true });
  s.error(first, "not_found", "no durable old");
  await assert.rejects(gone, { code: "not_found" });
  const done = client.deleteDurable("NOTIFY", "inbox");
  assert.equal(sub.state, "ended");
  const second = await s.sentWhere((e) => e.op === "js_unsub" && e.data.durable === "inbox", "delete inbox");
  s.reply(second);
  await done;
  s.drop(1006);
  const s1 = await net.socket(1);
  await client.ready();
  assert.deepEqual(s1.sent.filter((e) => e.op === "js_sub"), [], "a deleted durable is not bound again");
});

test("durables(stream) sends js_durables and parses the list", async (t) => {
  const { net, client } = setup(t);
  const listing = client.durables("NOTIFY");
  const s = await net.socket(0);
  const sent = await s.sentOp("js_durables");
  assert.equal(sent.target, "NOTIFY");
  assert.ok(sent.inbox);
  s.reply(sent, { durables: [
    { name: "inbox", filter: "notify.alice", pending: 0, ack_pending: 1 },
    { name: "all", filter: null, pending: 12, ack_pending: 0 },
  ] });
  assert.deepEqual(await listing, [
    { name: "inbox", filter: "notify.alice", pending: 0, ackPending: 1 },
    { name: "all", filter: undefined, pending: 12, ackPending: 0 },
  ]);
  const refused = client.durables("NOPE");
  s.error(await s.sentWhere((e) => e.op === "js_durables" && e.target === "NOPE"), "not_found");
  await assert.rejects(refused, { code: "not_found" });
});

test("decodeDurables: skips entries without a name; no list is a protocol error", () => {
  assert.deepEqual(decodeDurables({ durables: [{ name: "a" }, { filter: "x" }, 3] }),
    [{ name: "a", filter: undefined, pending: 0, ackPending: 0 }]);
  assert.throws(() => decodeDurables({ ok: true }), { code: "protocol" });
});

test("a revocation ends the durable's binding, by name or by stream and filter", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  const a = client.jsSubscribe("NOTIFY", { durable: "inbox", filter: "notify.alice" }, () => {});
  const b = client.jsSubscribe("NOTIFY", { durable: "phone", filter: "notify.alice" }, () => {});
  const c = client.jsSubscribe("NOTIFY", { durable: "team", filter: "notify.team" }, () => {});
  await Promise.all([a.ready, b.ready, c.ready]);
  const first = nextEvent(client, "cap_update");
  net.sockets[0].capUpdate({}, [{ op: "js_sub", target: "NOTIFY", durable: "inbox", filter: "notify.alice" }]);
  assert.deepEqual((await first).ended, [a]);
  assert.ok(a.revoked && !b.ended);
  const second = nextEvent(client, "cap_update");
  net.sockets[0].capUpdate({}, [{ op: "js_sub", target: "NOTIFY", filter: "notify.alice" }]);
  assert.deepEqual((await second).ended, [b]);
  assert.ok(b.revoked && !c.ended);
});

test("the client closing rejects a pending ackSync with closed", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = REPLY; });
  /** @type {JsAckMessage[]} */
  const got = [];
  await client.jsSubscribe("NOTIFY", { durable: "inbox", ack: "explicit" }, (m) => got.push(m)).ready;
  net.sockets[0].push(dmsg(1, { delivery: 1 }));
  const pending = got[0].ackSync();
  await net.sockets[0].sentOp("js_ack");
  client.close();
  await assert.rejects(pending, { code: "closed" });
});
