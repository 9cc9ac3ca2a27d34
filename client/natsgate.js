// natsgate.js: the browser client for the natsgate gateway; the public entry module.
//
// ES modules, no dependencies, no build step: the gateway serves this file at /natsgate.js
// and the modules it imports at /natsgate/*.js; bundlers import it as a file or as the
// `natsgate-client` package (types in types/). The wire protocol is specified in
// docs/protocol.md; the API is described in docs/client.md.
//
//   natsgate/errors.js         NatsgateError, the close-code table, reconnect backoff
//   natsgate/subjects.js       subject matching and the capability covering rule
//   natsgate/wire.js           the envelope: types, encode, decode (pure)
//   natsgate/emitter.js        typed events and the state-machine helper
//   natsgate/options.js        what connect() takes, and its defaults
//   natsgate/subscriptions.js  core, KV and JetStream subscriptions
//   natsgate/durables.js       durable JetStream subscriptions, messages to ack
//   natsgate/presence.js       presence: joining a subject, reading who is on it
//   natsgate/routing.js        which subscriptions a server `msg` is for
//   natsgate/client.js         NatsgateClient and connect(): the connection state machine
//
// Each imports only the ones above it in this list. Everything exported here is the API;
// the rest of what the modules export is theirs to share with each other.

export { CLOSE_CODES, NatsgateError, backoffDelay, closeAction } from "./natsgate/errors.js";
export { coveredByAny, covers, subjectMatches } from "./natsgate/subjects.js";
export {
  base64ToBytes, decodeDelivery, decodeDurables, decodeEnvelope, decodeFrame, decodeJsMessage,
  decodeKvEntry, decodeKvMarker, decodePayload, decodePresence, encodeEnvelope, errorFromEnvelope, jwtExpiry, parseRevoked, resolveUrl,
  splitFrame, withToken,
} from "./natsgate/wire.js";
export {
  CoreSubscription, JsSubscription, KvSubscription, StreamCursor, Subscription,
} from "./natsgate/subscriptions.js";
export { DurableSubscription, JsAckMessage } from "./natsgate/durables.js";
export { MAX_PRESENCE_INFO, PresenceJoin, PresenceSubscription } from "./natsgate/presence.js";
export { CLIENT_TRANSITIONS, NatsgateClient, connect } from "./natsgate/client.js";

/** @typedef {import("./natsgate/errors.js").ErrorCode} ErrorCode */
/** @typedef {import("./natsgate/errors.js").CloseAction} CloseAction */
/** @typedef {import("./natsgate/wire.js").Headers} Headers */
/** @typedef {import("./natsgate/wire.js").Envelope} Envelope */
/** @typedef {import("./natsgate/wire.js").Caps} Caps */
/** @typedef {import("./natsgate/wire.js").ReplyData} ReplyData */
/** @typedef {import("./natsgate/wire.js").CoreMessage} CoreMessage */
/** @typedef {import("./natsgate/wire.js").KvEntry} KvEntry */
/** @typedef {import("./natsgate/wire.js").JsMessage} JsMessage */
/** @typedef {import("./natsgate/wire.js").DurableInfo} DurableInfo */
/** @typedef {import("./natsgate/wire.js").PresenceMember} PresenceMember */
/** @typedef {import("./natsgate/wire.js").PresenceChange} PresenceChange */
/** @typedef {import("./natsgate/wire.js").SubscriptionKind} SubscriptionKind */
/** @typedef {import("./natsgate/wire.js").RevokedEntry} RevokedEntry */
/** @typedef {import("./natsgate/subscriptions.js").SubscriptionState} SubscriptionState */
/** @typedef {import("./natsgate/subscriptions.js").SubscriptionEvents} SubscriptionEvents */
/** @typedef {import("./natsgate/subscriptions.js").JsOptions} JsOptions */
/** @typedef {import("./natsgate/durables.js").DurableOptions} DurableOptions */
/** @typedef {import("./natsgate/durables.js").DurableAckOptions} DurableAckOptions */
/** @typedef {import("./natsgate/durables.js").AckKind} AckKind */
/** @typedef {import("./natsgate/presence.js").PresenceHandler} PresenceHandler */
/** @typedef {import("./natsgate/client.js").ClientState} ClientState */
/** @typedef {import("./natsgate/client.js").ClientEvents} ClientEvents */
/** @typedef {import("./natsgate/client.js").CapUpdate} CapUpdate */
/** @typedef {import("./natsgate/client.js").DisconnectInfo} DisconnectInfo */
/** @typedef {import("./natsgate/options.js").ConnectOptions} ConnectOptions */
/** @typedef {import("./natsgate/options.js").WebSocketLike} WebSocketLike */
/** @typedef {import("./natsgate/options.js").WebSocketConstructor} WebSocketConstructor */
