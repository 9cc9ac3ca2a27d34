// feed.js: a card's live feed (a subscription), kept open while the capabilities allow it.
// The card's pill shows the subscription's state; failures become toasts.

import { toast } from "./dom.js";
import { describe, errorCode } from "./format.js";

/** @typedef {import("/natsgate.js").Caps} Caps */
/** @typedef {import("/natsgate.js").Subscription} Subscription */
/** @typedef {import("/natsgate.js").SubscriptionState} SubscriptionState */

/**
 * @typedef {object} Feed
 * @property {(caps: Caps) => Promise<void>} arm open the feed if `caps` allow it and it is
 *   not open already
 */

/** @type {Record<SubscriptionState, [state: string, text: string]>} */
const SUB_PILLS = {
  subscribing: ["syncing", "syncing…"],
  active: ["live", "live"],
  revoked: ["revoked", "revoked"],
  ended: ["off", "off"],
};

/**
 * A feed the page keeps open while the capabilities allow it: opened on the first
 * cap_update, re-opened if a later one grants it again after a revocation. The gateway
 * decides; `allowed` only predicts, so that a feed is not asked for when it would be refused.
 * The state is shown by the pill (if any) and set as `data-feed` on `card` (default: the card
 * the pill is in).
 * @param {{name: string, pill?: HTMLElement, card?: Element, allowed: (caps: Caps) => boolean,
 *   open: () => Subscription | Promise<Subscription>}} spec
 * @returns {Feed}
 */
export function feed({ name, pill, card = pill?.closest(".card") ?? undefined, allowed, open }) {
  /** @type {Subscription | null} */
  let sub = null;
  let opening = false;
  /** @param {string} state @param {string} text */
  const setPill = (state, text) => {
    if (pill) {
      pill.dataset.state = state;
      pill.textContent = text;
    }
    if (card instanceof HTMLElement) card.dataset.feed = state;
  };
  return {
    async arm(caps) {
      if (opening || (sub && !sub.ended)) return;
      if (!allowed(caps)) {
        if (!sub) setPill("off", "not permitted");
        return;
      }
      opening = true;
      try {
        sub = await open();
      } finally {
        opening = false;
      }
      /** @param {SubscriptionState} state */
      const onState = (state) => setPill(...SUB_PILLS[state]);
      onState(sub.state);
      sub.on("state", onState);
      sub.on("error", (err) => toast(`${name}: ${describe(err)}`));
      sub.ready.catch((/** @type {unknown} */ err) => {
        if (errorCode(err) === "closed") return;
        setPill("error", errorCode(err));
        toast(`${name}: ${describe(err)}`);
      });
    },
  };
}
