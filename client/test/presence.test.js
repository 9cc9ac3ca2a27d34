// Presence (docs/protocol.md, "Presence"), driven through the fake gateway: what goes on the
// wire for a join, an update, a leave and a member list; what the member list holds and
// which changes it reports, live and after a reconnect; refusals and revocations.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MAX_PRESENCE_INFO, NatsgateError, PresenceJoin, PresenceSubscription, decodePresence, parseRevoked } from "../natsgate.js";
import { nextEvent, setup, until, within } from "./fake-server.js";

/** @typedef {import("./fake-server.js").FakeSocket} FakeSocket */
/** @typedef {import("../natsgate.js").PresenceChange} PresenceChange */

const ROOM = "chat.room.lobby";

/**
 * A presence `msg` frame, as the gateway sends it.
 * @param {"join" | "leave"} op
 * @param {string} user
 * @param {string} conn
 * @param {unknown} [info]
 */
function pmsg(op, user, conn, info = null, subject = ROOM) {
  return { op: "msg", target: `presence:${subject}`, data: { user, conn, op, info } };
}

/** A change as [op, user, conn, flags] for compact asserts. @param {PresenceChange} c */
function brief(c) {
  const flags = [c.snapshot && "snapshot", c.first && "first", c.last && "last"].filter(Boolean).join(",");
  return `${c.op} ${c.member.user}/${c.member.conn}${flags ? ` ${flags}` : ""}`;
}

/** The join/leave/presence ops a socket carried, without `v` and `inbox`. @param {FakeSocket} sock */
function presenceOps(sock) {
  return sock.sent
    .filter((e) => ["join", "leave", "presence_sub", "presence_unsub"].includes(e.op))
    .map(({ v: _v, inbox: _i, ...rest }) => rest);
}

/** A fake gateway that answers join and leave by itself (presence_sub is scripted per test). */
const answersJoins = (/** @type {import("./fake-server.js").FakeNet} */ n) => {
  n.answer.add("join");
  n.answer.add("leave");
  n.answer.add("presence_unsub");
};

/**
 * Answer the socket's presence_sub for `subject` with these members first, then the reply.
 * @param {FakeSocket} sock
 * @param {Array<[user: string, conn: string, info?: unknown]>} members
 */
async function answerRead(sock, members, subject = ROOM) {
  const env = await sock.sentWhere((e) => e.op === "presence_sub" && e.target === subject, "presence_sub");
  sock.push(...members.map(([user, conn, info]) => pmsg("join", user, conn, info ?? null, subject)));
  sock.reply(env);
}

test("join sends the subject and info, is active on the reply; no info is null", async (t) => {
  const { net, client } = setup(t, {}, answersJoins);
  const me = client.join(ROOM, { name: "Alice", away: false });
  assert.ok(me instanceof PresenceJoin);
  assert.equal(me.kind, "join");
  assert.deepEqual(await me.ready, { ok: true });
  assert.equal(me.state, "active");
  const bare = client.join("chat.room.other");
  await bare.ready;
  assert.deepEqual(presenceOps(net.sockets[0]), [
    { op: "join", target: ROOM, data: { name: "Alice", away: false } },
    { op: "join", target: "chat.room.other", data: null },
  ]);
  assert.deepEqual(me.info, { name: "Alice", away: false });
  // one join per subject and client: update() changes the info
  const again = client.join(ROOM, {});
  await assert.rejects(again.ready, (err) => err instanceof NatsgateError && err.code === "bad_request");
  assert.equal(me.state, "active");
});

test("info over 1 KiB of JSON is refused at once, before anything is sent or kept", async (t) => {
  const { net, client } = setup(t, {}, answersJoins);
  await client.ready();
  const big = "é".repeat(MAX_PRESENCE_INFO / 2); // 1024 bytes of UTF-8, 1026 with the quotes
  const me = client.join(ROOM, big);
  await assert.rejects(me.ready, (err) => err instanceof NatsgateError && err.code === "bad_request" && /1026 bytes/.test(err.message));
  assert.equal(me.ended, true);
  const ok = client.join(ROOM, { n: 1 });
  await ok.ready;
  await assert.rejects(ok.update({ big }), (err) => err instanceof NatsgateError && err.code === "bad_request");
  assert.deepEqual(ok.info, { n: 1 }, "the refused info is not kept for the next re-join");
  assert.deepEqual(presenceOps(net.sockets[0]), [{ op: "join", target: ROOM, data: { n: 1 } }]);
});

test("update sends a join with the new info and resolves on the gateway's answer", async (t) => {
  const { net, client } = setup(t, {}, answersJoins);
  const me = client.join(ROOM, { status: "here" });
  await me.ready;
  await me.update({ status: "away" });
  assert.deepEqual(me.info, { status: "away" });
  assert.deepEqual(presenceOps(net.sockets[0]).map((e) => e.data), [{ status: "here" }, { status: "away" }]);
  // refused by the gateway: the promise says so
  net.answer.delete("join");
  const pending = me.update({ status: "busy" });
  const sent = await net.sockets[0].sentWhere((e) => e.op === "join" && e.data?.status === "busy");
  net.sockets[0].error(sent, "limit", "too fast");
  await assert.rejects(pending, (err) => err instanceof NatsgateError && err.code === "limit");
});

test("update while a join is on its way waits for it, then sends the newer info", async (t) => {
  const { net, client } = setup(t);
  const me = client.join(ROOM, { v: 1 });
  const s = await net.socket(0);
  const first = await s.sentOp("join");
  const updated = me.update({ v: 2 });
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(presenceOps(s).length, 1, "nothing more until the first join is answered");
  s.reply(first);
  const second = await s.sentWhere((e) => e.op === "join" && e.data?.v === 2, "the update");
  s.reply(second);
  await updated;
  assert.equal(me.state, "active");
});

test("after a reconnect the client joins again with the latest info, and an update made while away resolves then", async (t) => {
  const { net, client } = setup(t, {}, answersJoins);
  const me = client.join(ROOM, { v: 1 });
  const other = client.join("chat.room.2", { v: 1 });
  await Promise.all([me.ready, other.ready]);
  net.sockets[0].drop(1006);
  await until(() => client.state === "reconnecting", "reconnecting");
  let settled = false;
  const updated = me.update({ v: 2 }).then(() => {
    settled = true;
  });
  assert.equal(settled, false);
  const s1 = await net.socket(1);
  await updated;
  assert.deepEqual(presenceOps(s1), [
    { op: "join", target: ROOM, data: { v: 2 } },
    { op: "join", target: "chat.room.2", data: { v: 1 } },
  ]);
  assert.equal(me.state, "active");
});

test("leave sends leave, resolves on the answer, and is not joined again after a reconnect", async (t) => {
  const { net, client } = setup(t, {}, answersJoins);
  const me = client.join(ROOM, {});
  await me.ready;
  await me.leave();
  assert.equal(me.state, "ended");
  assert.deepEqual(presenceOps(net.sockets[0]).at(-1), { op: "leave", target: ROOM });
  await assert.rejects(me.update({}), (err) => err instanceof NatsgateError && err.code === "closed");
  net.sockets[0].drop(1006);
  const s1 = await net.socket(1);
  await until(() => client.state === "open", "open again");
  assert.deepEqual(presenceOps(s1), []);
});

test("a refused join ends the handle: ready rejects with the gateway's error, no re-join", async (t) => {
  const { net, client } = setup(t);
  const me = client.join(ROOM, {});
  const s = await net.socket(0);
  s.error(await s.sentOp("join"), "forbidden", "no presence grant for chat.room.lobby");
  await assert.rejects(me.ready, (err) => err instanceof NatsgateError && err.code === "forbidden");
  assert.equal(me.state, "ended");
  assert.equal(client.subscriptions.includes(me), false);
});

test("the member list: current members first (snapshot), sync on the reply, then live changes", async (t) => {
  const { net, client } = setup(t, {}, answersJoins);
  /** @type {string[]} */
  const changes = [];
  const room = client.presence(ROOM, (c) => changes.push(brief(c)));
  assert.ok(room instanceof PresenceSubscription);
  assert.equal(room.kind, "presence");
  const synced = nextEventOf(room, "sync");
  const s = await net.socket(0);
  await answerRead(s, [["alice", "c1", { name: "A" }], ["bob", "c2"], ["alice", "c3"]]);
  const members = await synced;
  assert.deepEqual(members.map((/** @type {any} */ m) => m.conn), ["c1", "c2", "c3"]);
  assert.deepEqual(changes, ["join alice/c1 snapshot,first", "join bob/c2 snapshot,first", "join alice/c3 snapshot"]);
  assert.deepEqual(room.members.get("c1"), { user: "alice", conn: "c1", info: { name: "A" } });
  assert.deepEqual([...room.users.keys()], ["alice", "bob"]);
  assert.equal(room.users.get("alice")?.length, 2);
  assert.equal(room.state, "active");

  changes.length = 0;
  s.push(
    pmsg("join", "carol", "c4", { name: "C" }),
    pmsg("join", "carol", "c4", { name: "C" }), // a refresh: the same info is no change
    pmsg("join", "carol", "c4", { name: "Carol" }), // new info
    pmsg("leave", "alice", "c1"), // alice still has c3
    pmsg("leave", "alice", "c3"),
    pmsg("leave", "nobody", "c9"), // not a member: nothing
    pmsg("join", "dave", "c5", null, "chat.room.other"), // another subject: not for this list
  );
  assert.deepEqual(changes, ["join carol/c4 first", "update carol/c4", "leave alice/c1", "leave alice/c3 last"]);
  assert.deepEqual([...room.members.keys()], ["c2", "c4"]);
  assert.equal(room.has("alice"), false);
  assert.equal(room.has("carol"), true);
  assert.deepEqual(room.members.get("c4")?.info, { name: "Carol" });
});

test("events by name: join, update, leave with the change; options {onChange, onSync}", async (t) => {
  const { net, client } = setup(t, {}, answersJoins);
  /** @type {string[]} */
  const seen = [];
  const room = client.presence(ROOM, {
    onChange: (c) => seen.push(`change ${brief(c)}`),
    onSync: (members) => seen.push(`sync ${members.length}`),
  });
  room.on("join", (c) => seen.push(`join ${c.member.user}`));
  room.on("update", (c) => seen.push(`update ${c.member.user} ${JSON.stringify(c.previous?.info)} -> ${JSON.stringify(c.member.info)}`));
  room.on("leave", (c) => seen.push(`leave ${c.member.user}`));
  const s = await net.socket(0);
  await answerRead(s, [["bob", "b1", 1]]);
  await room.ready;
  s.push(pmsg("join", "bob", "b1", 2), pmsg("leave", "bob", "b1"));
  assert.deepEqual(seen, [
    "join bob", "change join bob/b1 snapshot,first", "sync 1",
    "update bob 1 -> 2", "change update bob/b1",
    "leave bob", "change leave bob/b1 last",
  ]);
});

test("after a reconnect the list is read again: the old one stays until the reply, then the difference", async (t) => {
  const { net, client } = setup(t, {}, answersJoins);
  /** @type {string[]} */
  const changes = [];
  const room = client.presence(ROOM, (c) => changes.push(brief(c)));
  const s0 = await net.socket(0);
  await answerRead(s0, [["alice", "a1"], ["bob", "b1", { v: 1 }], ["carol", "c1"]]);
  await room.ready;
  changes.length = 0;

  s0.drop(1006);
  const s1 = await net.socket(1);
  const env = await s1.sentWhere((e) => e.op === "presence_sub", "presence_sub again");
  assert.equal(room.state, "subscribing");
  // while away: alice moved to a new connection, bob changed his info, carol left, dave came
  s1.push(pmsg("join", "alice", "a2"), pmsg("join", "bob", "b1", { v: 2 }), pmsg("join", "dave", "d1"));
  assert.deepEqual(changes, [], "nothing reported before the list is complete");
  assert.deepEqual([...room.members.keys()], ["a1", "b1", "c1"], "the old list stays meanwhile");
  const synced = nextEventOf(room, "sync");
  s1.reply(env);
  const members = await synced;
  // joins and updates first, then leaves: alice never looks offline
  assert.deepEqual(changes, ["join alice/a2", "update bob/b1", "join dave/d1 first", "leave alice/a1", "leave carol/c1 last"]);
  assert.deepEqual(members.map((/** @type {any} */ m) => m.conn).sort(), ["a2", "b1", "d1"]);
  assert.deepEqual([...room.members.keys()].sort(), ["a2", "b1", "d1"]);
  assert.equal(room.state, "active");
  // and live again
  s1.push(pmsg("leave", "dave", "d1"));
  assert.equal(changes.at(-1), "leave dave/d1 last");
});

test("a join and a member list are re-sent in the order they were made; unsubscribe sends presence_unsub", async (t) => {
  const { net, client } = setup(t, {}, (n) => {
    answersJoins(n);
    n.answer.add("presence_sub");
  });
  const me = client.join(ROOM, { v: 1 });
  const room = client.presence(ROOM);
  await Promise.all([me.ready, room.ready]);
  net.sockets[0].drop(1006);
  const s1 = await net.socket(1);
  await until(() => room.state === "active" && me.state === "active", "both back");
  assert.deepEqual(presenceOps(s1), [{ op: "join", target: ROOM, data: { v: 1 } }, { op: "presence_sub", target: ROOM }]);
  await room.unsubscribe();
  assert.deepEqual(presenceOps(s1).at(-1), { op: "presence_unsub", target: ROOM });
  assert.equal(room.state, "ended");
});

test("a cap_update that revokes a join or a member list ends it, and it is not sent again", async (t) => {
  const { net, client } = setup(t, {}, (n) => {
    answersJoins(n);
    n.answer.add("presence_sub");
  });
  const me = client.join(ROOM, {});
  const room = client.presence(ROOM);
  const keep = client.presence("chat.room.other");
  await Promise.all([me.ready, room.ready, keep.ready]);
  const update = nextEvent(client, "cap_update");
  net.sockets[0].capUpdate({ subjects: ["chat.room.other"] }, [
    { op: "join", target: ROOM },
    { op: "presence_sub", target: ROOM },
  ]);
  const { ended } = await update;
  assert.deepEqual(new Set(ended), new Set([me, room]));
  assert.equal(me.state, "revoked");
  assert.equal(room.state, "revoked");
  assert.equal(keep.state, "active");
  net.sockets[0].drop(1006);
  const s1 = await net.socket(1);
  await until(() => keep.state === "active", "the other list back");
  assert.deepEqual(presenceOps(s1), [{ op: "presence_sub", target: "chat.room.other" }]);
});

test("decodePresence and parseRevoked read the presence shapes", () => {
  assert.deepEqual(decodePresence({ user: "bob", conn: "x", op: "join", info: { a: 1 } }), {
    op: "join", member: { user: "bob", conn: "x", info: { a: 1 } },
  });
  assert.deepEqual(decodePresence({ user: "bob", conn: "x", op: "leave" }), {
    op: "leave", member: { user: "bob", conn: "x", info: null },
  });
  assert.equal(decodePresence({ user: "bob", op: "join" }), null);
  assert.equal(decodePresence({ user: "bob", conn: "x", op: "PUT" }), null);
  assert.deepEqual(parseRevoked({ op: "presence_sub", target: ROOM }), { kind: "presence", target: ROOM, pattern: undefined });
  assert.deepEqual(parseRevoked({ op: "join", target: ROOM }), { kind: "join", target: ROOM, pattern: undefined });
  assert.deepEqual(parseRevoked(`presence:${ROOM}`), { kind: "presence", target: ROOM, pattern: undefined });
  assert.deepEqual(parseRevoked(`join:${ROOM}`), { kind: "join", target: ROOM, pattern: undefined });
});

/**
 * The next emission of a subscription event (its first argument).
 * @param {PresenceSubscription} sub
 * @param {"sync" | "join" | "leave" | "update"} name
 * @returns {Promise<any>}
 */
function nextEventOf(sub, name) {
  return within((resolve) => {
    const off = sub.on(name, (/** @type {any} */ arg) => {
      off();
      resolve(arg);
    });
  }, `subscription event ${name}`);
}
