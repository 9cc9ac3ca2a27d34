// online.js: who is in the chat room, from presence (docs/client.md, "Presence"). The page
// joins chat.room.lobby (capability `presence`) with its info — when it came, and whether
// its tab is in the background — and reads the room's members (capability `subjects`). A
// user with several tabs is several members and one name here; a page that reconnects joins
// again, and its list is read again (who left meanwhile goes, who came appears).

import { coveredByAny } from "/natsgate.js";
import { ROOM } from "./chat.js";
import { $, h, toast } from "./dom.js";
import { feed } from "./feed.js";
import { clock, describe, errorCode } from "./format.js";

/** @typedef {import("/natsgate.js").Caps} Caps */
/** @typedef {import("/natsgate.js").NatsgateClient} NatsgateClient */
/** @typedef {import("/natsgate.js").PresenceChange} PresenceChange */
/** @typedef {import("/natsgate.js").PresenceJoin} PresenceJoin */
/** @typedef {import("/natsgate.js").PresenceMember} PresenceMember */
/** @typedef {import("/natsgate.js").PresenceSubscription} PresenceSubscription */
/** @typedef {import("./feed.js").Feed} Feed */

/** @typedef {{since: string, away: boolean}} Info what this page joins with */

/**
 * A member's info as this demo writes it (anything else, e.g. from another app, counts as
 * present, since unknown).
 * @param {unknown} info
 * @returns {Partial<Info>}
 */
function infoOf(info) {
  if (!info || typeof info !== "object") return {};
  const r = /** @type {Record<string, unknown>} */ (info);
  return {
    since: typeof r.since === "string" ? r.since : undefined,
    away: r.away === true,
  };
}

/**
 * The online list of the chat card, and this page's own membership.
 * @param {NatsgateClient} client
 * @param {string} me the signed-in user
 * @param {(user: string) => void} onOffline told when a user's last connection leaves
 * @returns {Feed}
 */
export function onlineWidget(client, me, onOffline) {
  const bar = $("presence");
  const list = $("online-list");
  const count = $("online-count");
  const since = new Date().toISOString();
  /** @type {PresenceSubscription | null} */
  let room = null;
  /** @type {PresenceJoin | null} */
  let joined = null;

  /** Everyone in the room by name, you first, then by name; several tabs, one entry. */
  function render() {
    if (!room) return;
    const users = [...room.users].sort(([a], [b]) => (a === me ? -1 : b === me ? 1 : a.localeCompare(b)));
    count.textContent = String(users.length);
    list.replaceChildren(
      ...users.map(([user, members]) => {
        const infos = members.map((m) => infoOf(m.info));
        const away = infos.every((i) => i.away); // present if any of their tabs is in front
        const first = infos.map((i) => i.since ?? "").filter(Boolean).sort()[0];
        const tabs = members.length > 1 ? ` · ${members.length} tabs` : "";
        const title = `${user}${away ? " (away)" : ""}${first ? ` · here since ${clock(new Date(first))}` : ""}${tabs}`;
        return h(
          "li",
          { class: `online-user${user === me ? " me" : ""}`, testid: "online-user", "data-user": user, "data-away": String(away), title },
          h("span", { class: "avatar", "aria-hidden": "true" }, user.slice(0, 1).toUpperCase()),
          h("span", { class: "name" }, user),
          user === me ? h("span", { class: "you" }, "you") : null,
          members.length > 1 ? h("span", { class: "tabs", testid: "online-tabs", "data-count": members.length }, `×${members.length}`) : null,
        );
      }),
    );
  }

  /** @param {PresenceChange} change */
  function onChange(change) {
    render();
    if (change.op === "leave" && change.last) onOffline(change.member.user);
  }

  /** This tab's info; `away` while the tab is hidden. @returns {Info} */
  const info = () => ({ since, away: document.visibilityState === "hidden" });
  document.addEventListener("visibilitychange", () => {
    if (!joined || joined.ended) return;
    joined.update(info()).catch((/** @type {unknown} */ err) => {
      if (errorCode(err) !== "closed") toast(`Presence: ${describe(err)}`);
    });
  });

  /** Join the room when the capabilities allow it and this page is not in it. @param {Caps} caps */
  function arm(caps) {
    if ((joined && !joined.ended) || !coveredByAny(caps.presence ?? [], ROOM)) return;
    joined = client.join(ROOM, info());
    joined.ready.catch((/** @type {unknown} */ err) => {
      if (errorCode(err) !== "closed") toast(`Presence: ${describe(err)}`);
    });
  }

  const members = feed({
    name: "Who is online",
    pill: $("presence-status"),
    card: bar,
    allowed: (caps) => coveredByAny(caps.subjects ?? [], ROOM),
    open: () => {
      room = client.presence(ROOM, { onChange, onSync: render });
      return room;
    },
  });
  return {
    async arm(caps) {
      arm(caps);
      await members.arm(caps);
    },
  };
}
