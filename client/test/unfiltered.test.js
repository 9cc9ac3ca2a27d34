// A JetStream subscription (plain or durable) without a filter reads every subject of the
// stream: its `pattern` says so with ">" (it was `undefined`), and the wire still carries
// no filter, on js_sub as on js_unsub (a filter ">" would be another subscription there).
import { test } from "node:test";
import assert from "node:assert/strict";
import { setup } from "./fake-server.js";

test("jsSubscribe without a filter: pattern '>', no filter sent on js_sub nor js_unsub", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = { first_seq: 1, last_seq: 0 }; });
  const sub = client.jsSubscribe("CHAT", { startSeq: 1 }, () => {});
  await sub.ready;
  assert.equal(sub.pattern, ">");
  assert.deepEqual(net.sockets[0].sent[0].data, { start_seq: 1 });
  await sub.unsubscribe();
  const unsub = await net.sockets[0].sentOp("js_unsub");
  assert.deepEqual(unsub.data, {});
  const filtered = client.jsSubscribe("CHAT", { filter: "chat.room.1" }, () => {});
  await filtered.ready;
  assert.equal(filtered.pattern, "chat.room.1");
});

test("a durable without a filter: pattern '>', no filter sent", async (t) => {
  const { net, client } = setup(t, {}, (n) => { n.jsReply = { first_seq: 1, last_seq: 0, durable: "all" }; });
  const sub = client.jsSubscribe("NOTIFY", { durable: "all" }, () => {});
  await sub.ready;
  assert.equal(sub.pattern, ">");
  assert.equal(net.sockets[0].sent[0].data.filter, undefined);
});
