// caps.js: the capabilities card. Every cap_update redraws the grants (new ones marked)
// and adds what it took away to the "Revoked" list: grants that are gone and the feeds the
// library ended because of them.

import { $, h } from "./dom.js";
import { clock } from "./format.js";

/** @typedef {import("/natsgate.js").Caps} Caps */
/** @typedef {import("/natsgate.js").CapUpdate} CapUpdate */

/** @type {Array<[field: keyof Caps, title: string]>} the card's sections, in order */
const CAP_SECTIONS = [
  ["subjects", "Subscribe"],
  ["publish", "Publish"],
  ["commands", "Commands"],
  ["buckets", "KV buckets"],
  ["streams", "Streams"],
  ["presence", "Presence"],
];

/**
 * Capabilities as a flat list of [section, label] grants.
 * @param {Caps} caps
 * @returns {Array<[field: keyof Caps, grant: string]>}
 */
function grants(caps) {
  /** @type {Array<[keyof Caps, string]>} */
  const out = [];
  for (const [field] of CAP_SECTIONS) {
    const value = caps[field];
    if (Array.isArray(value)) for (const g of value) out.push([field, String(g)]);
    else if (value && typeof value === "object") {
      for (const [name, patterns] of Object.entries(value)) {
        for (const g of Array.isArray(patterns) ? patterns : []) out.push([field, `${name}: ${g}`]);
      }
    }
  }
  return out;
}

/** The card, fed with every cap_update. */
export function capsWidget() {
  const dl = $("caps-list");
  const box = $("caps-revoked");
  const revokedList = $("revoked-list");
  /** @type {Set<string> | null} the last update's grants, as "field\0grant" */
  let previous = null;

  /** @param {Caps} caps @param {Set<string>} added grants to mark as new */
  function render(caps, added) {
    const all = grants(caps);
    dl.replaceChildren();
    for (const [field, title] of CAP_SECTIONS) {
      const mine = all.filter(([f]) => f === field);
      dl.append(
        h("dt", {}, title),
        h(
          "dd",
          {},
          mine.length
            ? h(
                "ul",
                { class: "chips" },
                ...mine.map(([, g]) =>
                  h("li", { class: `chip${added.has(`${field}\u0000${g}`) ? " new" : ""}`, testid: "cap-grant", "data-kind": field }, g),
                ),
              )
            : h("span", { class: "muted" }, "none"),
        ),
      );
    }
  }

  return {
    /** @param {CapUpdate} update */
    update({ caps, ended }) {
      const now = new Set(grants(caps).map(([f, g]) => `${f}\u0000${g}`));
      /** @type {Set<string>} */
      const added = new Set();
      /** @type {Array<[kind: string, what: string]>} what this update took away */
      const lost = ended.map((sub) => {
        if (sub.kind === "join") return ["Left", sub.target]; // no longer shown as online there
        if (sub.kind === "presence") return ["Online list stopped", sub.target];
        if (sub.kind === "sub") return ["Subscription ended", sub.target];
        return ["Feed stopped", `${sub.target} ${sub.pattern ?? ""}`.trim()]; // a card's stream or bucket
      });
      if (previous) {
        for (const [field, title] of CAP_SECTIONS) {
          for (const key of previous) {
            const [f, g = ""] = key.split("\u0000");
            if (f === field && !now.has(key)) lost.push([title, g]);
          }
        }
        for (const key of now) if (!previous.has(key)) added.add(key);
      }
      if (lost.length) {
        box.hidden = false;
        revokedList.prepend(
          h(
            "li",
            { class: "revoked-group" },
            h("time", {}, clock(new Date())),
            h(
              "ul",
              {},
              ...lost.map(([kind, what]) =>
                h("li", { testid: "revoked-item" }, h("span", { class: "kind" }, kind), h("code", {}, what)),
              ),
            ),
          ),
        );
      }
      previous = now;
      render(caps, added);
      $("caps-updated").textContent = `updated ${clock(new Date())}`;
    },
  };
}
