// A TypeScript application using the library through its package entry, as an npm user
// would. Never run: `tsc -p tsconfig.consumer.json` type-checks it against the emitted
// declarations (types/, resolved through package.json's `exports`), so a wrong or missing
// declaration fails the build. The `@ts-expect-error` lines hold the types to their
// promises: each must be an error, or tsc reports the directive as unused.
import {
  CLOSE_CODES,
  NatsgateError,
  closeAction,
  connect,
  coveredByAny,
  covers,
  type Caps,
  type ClientState,
  type CloseAction,
  type CoreMessage,
  type DurableInfo,
  type DurableOptions,
  DurableSubscription,
  JsAckMessage,
  type ErrorCode,
  type JsMessage,
  type KvEntry,
  type NatsgateClient,
  type PresenceChange,
  PresenceJoin,
  type PresenceMember,
  PresenceSubscription,
  type ReplyData,
  type SubscriptionState,
} from "natsgate-client";

const client: NatsgateClient = connect("wss://gateway.example/ws", {
  token: async () => "header.payload.signature",
  refreshToken: async () => "header.payload.signature",
  pingIntervalMs: 25_000,
});
// @ts-expect-error: options are checked
connect("/ws", { pingIntervalMs: "25s" });

const offState = client.on("state", (state: ClientState, previous: ClientState) => {
  if (state === "closed") console.log(`closed after ${previous}`);
});
offState();
client.on("disconnect", ({ code, reconnectInMs }) => {
  const action: CloseAction = closeAction(code);
  console.log(action, reconnectInMs === null ? "giving up" : `retry in ${reconnectInMs} ms`);
});
client.on("cap_update", ({ caps, ended }) => {
  const subjects: string[] = caps.subjects ?? [];
  for (const sub of ended) console.log(sub.target, sub.revoked);
  console.log(coveredByAny(subjects, "chat.room.*"));
});
// @ts-expect-error: there is no such event
client.on("message", () => {});

async function main(): Promise<void> {
  await client.ready();
  const caps: Caps | null = client.caps;
  console.log(caps?.buckets?.["todos"]);

  // core
  const chat = client.subscribe("chat.room.*", (data: unknown, msg: CoreMessage) => {
    console.log(msg.subject, msg.sub, msg.headers?.["Nats-Msg-Id"], data);
  });
  const state: SubscriptionState = chat.state;
  chat.on("state", (next, previous) => console.log(next satisfies SubscriptionState, previous));
  await chat.ready;
  await client.publish("chat.room.1", { text: "hello" }, { timeoutMs: 2000 });
  // @ts-expect-error: a subject is a string
  await client.publish(1, "x");

  // KV
  const todos = new Map<string, unknown>();
  const watch = client.kvSubscribe(
    "todos",
    "user.alice.>",
    (entry: KvEntry, { snapshot }) => {
      if (entry.op === "PUT") todos.set(entry.key, entry.value);
      else todos.delete(entry.key);
      const revision: number = entry.revision;
      console.log(snapshot, revision);
      // @ts-expect-error: KV ops are PUT, DEL and PURGE
      if (entry.op === "SET") return;
    },
    { onResync: () => todos.clear() },
  );
  watch.on("synced", () => console.log(todos.size));
  const kvReply: ReplyData = await watch.ready;
  console.log(kvReply.ok, state);

  // JetStream
  const stream = client.jsSubscribe("CHAT", { startSeq: 1, filter: "chat.room.*" }, (m: JsMessage) => {
    const seq: number = m.seq;
    console.log(seq, m.subject, m.time, m.payload);
  });
  stream.on("gap", (reply) => console.log(reply.first_seq));
  const { last_seq } = await stream.ready;
  const resumed = client.jsResume("CHAT", stream.lastSeq, { batch: 100 }, (m) => console.log(m.seq));
  console.log(last_seq, resumed.gap);
  // @ts-expect-error: jsResume takes its start from lastSeq
  client.jsResume("CHAT", 1, { startSeq: 5 }, () => {});

  // durable subscriptions: the position lives on the server; explicit acks
  const unread = new Map<number, JsAckMessage>();
  const inbox = client.jsSubscribe(
    "NOTIFY",
    { durable: "inbox", ack: "explicit", ackWaitMs: 60_000, filter: "notify.alice", startSeq: 1 },
    (m) => {
      const delivery: number = m.delivery;
      unread.set(m.seq, m);
      if (delivery > 3) m.term();
      else if (m.payload === null) m.nak(5000);
    },
  );
  const typedInbox: DurableSubscription<JsAckMessage> = inbox;
  const bound = await inbox.ready;
  console.log(bound.durable, bound.pending, bound.ack_pending, typedInbox.ackPending);
  for (const m of unread.values()) {
    m.ack();
    await m.ackSync(); // the first call counts: this one returns at once
    console.log(m.settled satisfies "ack" | "nak" | "term" | null);
  }
  const opts: DurableOptions = { durable: "feed", batch: 50 };
  const feed = client.jsSubscribe("NOTIFY", opts, (m) => {
    console.log(m.seq);
    // @ts-expect-error: messages of an ack: "none" durable have nothing to ack
    m.ack();
  });
  const plain: DurableSubscription<JsMessage> = feed;
  const list: DurableInfo[] = await client.durables("NOTIFY");
  for (const d of list) console.log(d.name, d.filter ?? "whole stream", d.pending, d.ackPending);
  await plain.unsubscribe(); // unbind: the position stays
  await inbox.unsubscribe({ delete: true }); // delete the durable
  await client.deleteDurable("NOTIFY", "feed");
  // @ts-expect-error: explicit acks need a durable
  client.jsSubscribe("NOTIFY", { ack: "explicit" }, () => {});
  // @ts-expect-error: a plain subscription cannot delete anything
  await stream.unsubscribe({ delete: true });

  // presence: announce this connection, read who is on the subject
  const me: PresenceJoin = client.join("chat.room.1", { name: "Alice", away: false });
  await me.ready;
  await me.update({ name: "Alice", away: true });
  const room: PresenceSubscription = client.presence("chat.room.1", {
    onChange: (c: PresenceChange) => {
      if (c.op === "leave" && c.last) console.log(`${c.member.user} went offline`);
      if (c.op === "update") console.log(c.previous?.info, "->", c.member.info);
      // @ts-expect-error: the ops are join, update and leave
      if (c.op === "PUT") return;
    },
    onSync: (members: PresenceMember[]) => console.log(members.map((m) => `${m.user}/${m.conn}`)),
  });
  room.on("leave", ({ member, snapshot }) => console.log(member.user, snapshot));
  await room.ready;
  const users: Map<string, PresenceMember[]> = room.users;
  console.log(room.members.get("conn")?.info, users.size, room.has("bob"), caps?.presence, caps?.admin);
  // @ts-expect-error: the member list is read-only
  room.members.clear();
  await Promise.all([me.leave(), room.unsubscribe()]);

  // commands and errors
  try {
    const reply: unknown = await client.command("svc.echo", { hi: 1 }, { timeoutMs: 2000 });
    console.log(reply);
  } catch (err) {
    if (err instanceof NatsgateError) {
      const code: ErrorCode = err.code;
      if (code === "no_responders") console.log("service down", err.target, err.cause);
      // @ts-expect-error: not an error code
      if (code === "nope") console.log(err.name);
    }
  }
  await Promise.all([chat.unsubscribe(), watch.unsubscribe(), stream.unsubscribe()]);
  client.close();
}

// close codes and the covering rule
const unauthorized: CloseAction = CLOSE_CODES[4001]?.action ?? "backoff";
const meaning: string | undefined = CLOSE_CODES[1012]?.meaning;
const mayWatch: boolean = covers("chat.>", "chat.room.*");
console.log(unauthorized, meaning, mayWatch);
// @ts-expect-error: the table is read-only
CLOSE_CODES[4001] = { meaning: "x", action: "stop" };

void main();
