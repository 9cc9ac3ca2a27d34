// dom.js: find elements by data-testid (the browser tests use the same names) and build
// them with h() (text is always text, never HTML: user ids and addresses come from peers).

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
    throw new Error(`console markup: no ${type?.name ?? "element"} with data-testid="${id}"`);
  }
  return /** @type {E} */ (el);
}

/**
 * Build an element. Props: `class`, `testid`, `on<event>` listeners, other attributes.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, unknown>} [props]
 * @param {...(Node | string | null | undefined)} children
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
  for (const child of children) if (child !== null && child !== undefined) el.append(child);
  return el;
}

/**
 * Show a message in an element, or hide it when there is none.
 * @param {HTMLElement} el
 * @param {string} [text]
 */
export function say(el, text) {
  el.textContent = text || "";
  el.hidden = !text;
}

/** @param {number} n bytes */
export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
