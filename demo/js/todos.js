// todos.js: the todo card. Changes go out as commands to the todo service
// (svc.todos.add|toggle|delete); the list is read back ONLY from the KV watch on bucket
// "todos", keys user.<me>.> — so every tab shows the same list, whoever changed it.

import { coveredByAny } from "/natsgate.js";
import { COMMAND_TIMEOUT_MS } from "./commands.js";
import { $, h, say } from "./dom.js";
import { feed } from "./feed.js";
import { describe } from "./format.js";

/** @typedef {import("/natsgate.js").NatsgateClient} NatsgateClient */
/** @typedef {import("/natsgate.js").KvEntry} KvEntry */
/** @typedef {import("./feed.js").Feed} Feed */
/** @typedef {{id: string, text: string, done: boolean}} Todo */

const BUCKET = "todos";

/**
 * A KV entry as a todo, or null when it is a deletion or not shaped like one.
 * @param {KvEntry} entry
 * @returns {Todo | null}
 */
function todoOf(entry) {
  const value = entry.value;
  if (entry.op !== "PUT" || !value || typeof value !== "object") return null;
  if (!("text" in value) || typeof value.text !== "string") return null;
  const id = "id" in value && value.id !== undefined && value.id !== null ? value.id : entry.key.split(".").pop();
  return { id: String(id), text: value.text, done: "done" in value && Boolean(value.done) };
}

/**
 * @param {NatsgateClient} client
 * @param {string} me the signed-in user
 * @returns {Feed}
 */
export function todoWidget(client, me) {
  const pattern = `user.${me}.>`;
  const list = $("todo-list");
  const empty = $("todo-empty");
  const count = $("todo-count");
  const error = $("todo-error");
  /** @type {Map<string, Todo>} key → todo, from KV only */
  const todos = new Map();
  /** @type {Set<string>} ids with a command on its way */
  const busy = new Set();

  /**
   * @param {"add" | "toggle" | "delete"} action
   * @param {{id: string} | {text: string}} payload
   * @returns {Promise<boolean>} whether the service did it
   */
  async function run(action, payload) {
    say(error, "");
    try {
      const reply = await client.command(`svc.todos.${action}`, payload, { timeoutMs: COMMAND_TIMEOUT_MS });
      if (reply && typeof reply === "object" && "ok" in reply && reply.ok === false) {
        const why = "error" in reply && reply.error !== undefined && reply.error !== null ? reply.error : "no";
        say(error, `The todo service said: ${String(why)}`);
        return false;
      }
      return true;
    } catch (err) {
      say(error, `Could not ${action}: ${describe(err)}`);
      return false;
    }
  }

  /** @param {Todo} todo @param {"toggle" | "delete"} action */
  async function act(todo, action) {
    if (busy.has(todo.id)) return;
    busy.add(todo.id);
    render();
    try {
      await run(action, { id: todo.id });
    } finally {
      busy.delete(todo.id);
      render(); // the new state itself arrives through the KV watch
    }
  }

  function render() {
    const items = [...todos.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    list.replaceChildren(
      ...items.map((todo) =>
        h(
          "li",
          {
            class: `todo${todo.done ? " done" : ""}${busy.has(todo.id) ? " busy" : ""}`,
            testid: "todo-item",
            "data-id": todo.id,
            "data-done": String(todo.done),
          },
          h(
            "button",
            {
              type: "button",
              class: "check",
              role: "checkbox",
              "aria-checked": String(todo.done),
              "aria-label": `Done: ${todo.text}`,
              testid: "todo-toggle",
              onclick: () => act(todo, "toggle"),
            },
            todo.done ? "✓" : "",
          ),
          h("span", { class: "text", testid: "todo-text" }, todo.text),
          h(
            "button",
            {
              type: "button",
              class: "icon delete",
              "aria-label": `Delete: ${todo.text}`,
              title: "Delete",
              testid: "todo-delete",
              onclick: () => act(todo, "delete"),
            },
            "×",
          ),
        ),
      ),
    );
    const open = items.filter((t) => !t.done).length;
    empty.hidden = items.length > 0;
    count.textContent = items.length ? `${open} of ${items.length} open` : "";
  }

  $("todo-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("todo-input", HTMLInputElement);
    const text = input.value.trim();
    if (!text) return;
    input.value = ""; // the todo shows up when the KV watch delivers it
    if (!(await run("add", { text })) && !input.value) input.value = text;
  });

  render();
  return feed({
    name: "Todos",
    pill: $("todos-status"),
    allowed: (caps) => coveredByAny(caps.buckets?.[BUCKET] ?? [], pattern),
    open() {
      todos.clear(); // a new watch (after a revocation) starts from its own snapshot
      const sub = client.kvSubscribe(
        BUCKET,
        pattern,
        (entry, { snapshot }) => {
          const todo = todoOf(entry);
          if (todo) todos.set(entry.key, todo);
          else todos.delete(entry.key); // DEL, PURGE (or a value that is not a todo)
          if (!snapshot) render();
        },
        { onResync: () => todos.clear() }, // a re-hydration starts from scratch
      );
      sub.on("synced", render);
      return sub;
    },
  });
}
