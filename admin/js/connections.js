// connections.js: every connection of every gateway (one request: the gateway asked
// gathers the others' answers), and disconnecting a connection or a user (close 4003).
// Gateways known to be up that did not answer in time are named: what they hold is not
// in the list, and a disconnect did not reach them.
import * as api from "./api.js";
import { $, bytes, h, say } from "./dom.js";

/**
 * @param {string[]} missing gateways that did not answer
 * @returns {string}
 */
function unanswered(missing) {
  return missing.length ? ` Not answering (try again): ${missing.join(", ")}.` : "";
}

/** @param {(err: unknown) => void} fail */
export function connectionsWidget(fail) {
  const body = $("conns-body");
  const result = $("disconnect-result");

  /** @param {{user: string} | {conn: string}} who */
  async function disconnect(who) {
    try {
      const { closed, missing } = await api.disconnect(who);
      const what = "user" in who ? `user ${who.user}` : `connection ${who.conn}`;
      say(result, `Disconnected ${what}: ${closed} connection${closed === 1 ? "" : "s"} closed.${unanswered(missing)}`);
      await refresh();
    } catch (err) {
      fail(err);
    }
  }

  /** @param {api.Connection} c */
  function row(c) {
    return h(
      "tr",
      { testid: "conn-row", "data-user": c.user, "data-conn": c.conn, "data-gateway": c.gateway },
      h("td", { testid: "conn-user" }, c.user),
      h("td", {}, c.gateway),
      h("td", { class: "mono" }, c.conn),
      h("td", {}, new Date(c.since).toLocaleString()),
      h("td", {}, c.address),
      h("td", { class: "num" }, String(c.subs)),
      h("td", { class: "num" }, String(c.feeds)),
      h("td", { class: "num" }, bytes(c.queued_bytes)),
      h("td", { class: "num" }, bytes(c.bytes_in)),
      h("td", { class: "num" }, bytes(c.bytes_out)),
      h(
        "td",
        {},
        h("button", { type: "button", class: "danger small", testid: "conn-disconnect", onclick: () => void disconnect({ conn: c.conn }) }, "Disconnect"),
      ),
    );
  }

  async function refresh() {
    const { connections, gateways, missing } = await api.connections();
    connections.sort((a, b) => a.user.localeCompare(b.user) || a.since.localeCompare(b.since));
    body.replaceChildren(...connections.map(row));
    const n = connections.length;
    $("conns-summary").textContent = `${n} on ${gateways.length} gateway${gateways.length === 1 ? "" : "s"}${unanswered(missing)}`;
  }

  $("disconnect-user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("disconnect-user", HTMLInputElement).value.trim();
    if (user) void disconnect({ user });
  });
  return { refresh };
}
