// dom.js: the page's DOM helpers. Elements are found by their data-testid (the browser
// tests use the same names), built with h() (text is always text, never HTML), and messages
// go to an element (say), a result box (showResult) or a toast.

/**
 * The element with this data-testid, checked to exist and to be of the given type.
 * @template {HTMLElement} [E=HTMLElement]
 * @param {string} id
 * @param {new () => E} [type] e.g. HTMLInputElement; default HTMLElement
 * @returns {E}
 */
export function $(id, type) {
  const el = document.querySelector(`[data-testid="${id}"]`);
  if (!(el instanceof (type ?? HTMLElement))) {
    throw new Error(`demo markup: no ${type?.name ?? "element"} with data-testid="${id}"`);
  }
  return /** @type {E} */ (el);
}

/** @typedef {Node | string | number | null | undefined | false} Child */

/**
 * A tiny element builder: text children become text nodes (never HTML). Props: `class`,
 * `testid` (data-testid), `on<event>` listeners, and attributes (true: present, false,
 * null or undefined: left out).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, unknown>} [props]
 * @param {...Child} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = String(value);
    else if (key === "testid") el.dataset.testid = String(value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), /** @type {EventListener} */ (value));
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "number" ? String(child) : child);
  }
  return el;
}

/**
 * Show a message in an element, or hide the element when there is none.
 * @param {HTMLElement} el
 * @param {string} [text]
 */
export function say(el, text) {
  el.textContent = text || "";
  el.hidden = !text;
}

/**
 * Fill an <output> with a command's outcome.
 * @param {HTMLElement} el
 * @param {{ok: boolean, code?: string, title: string, body?: string}} r
 */
export function showResult(el, r) {
  el.hidden = false;
  el.dataset.status = r.ok ? "ok" : "error";
  el.dataset.code = r.code ?? "";
  const title = h("span", { class: "result-title" }, r.ok ? null : h("span", { class: "code" }, r.code ?? "error"), r.title);
  el.replaceChildren(title, ...(r.body ? [h("pre", {}, r.body)] : []));
}

/**
 * A message in the corner that goes away by itself after 8 s.
 * @param {string} text
 * @param {"error" | "info"} [kind]
 */
export function toast(text, kind = "error") {
  /** @type {HTMLDivElement} */
  const item = h(
    "div",
    { class: `toast ${kind}`, testid: "toast", role: kind === "error" ? "alert" : "status" },
    h("span", {}, text),
    h("button", { type: "button", class: "icon", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"),
  );
  $("toasts").append(item);
  setTimeout(() => item.remove(), 8000);
}
