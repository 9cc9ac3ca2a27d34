// caps.js: read and write one user's capabilities document. A save goes to the
// capabilities bucket; the gateways apply it to that user's open connections (cap_update,
// with what it revoked). A document the gateway cannot read is refused with the reason.
import * as api from "./api.js";
import { $ } from "./dom.js";

/** @param {(err: unknown) => void} fail */
export function capsWidget(fail) {
  const text = $("caps-text", HTMLTextAreaElement);
  const save = $("caps-save", HTMLButtonElement);
  const result = $("caps-result");
  let user = "";

  $("caps-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const wanted = $("caps-user", HTMLInputElement).value.trim();
    if (!wanted) return;
    try {
      const doc = await api.readCaps(wanted);
      user = doc.user;
      text.value = JSON.stringify(doc.caps ?? {}, null, 2);
      text.disabled = save.disabled = false;
      result.dataset.state = "loaded";
      result.textContent = doc.revision ? `${user}: revision ${doc.revision}` : `${user}: no document yet (grants nothing)`;
    } catch (err) {
      fail(err);
    }
  });

  save.addEventListener("click", async () => {
    if (!user) return;
    try {
      const doc = await api.writeCaps(user, text.value);
      result.dataset.state = "saved";
      result.textContent = `Saved ${user}: revision ${doc.revision}`;
    } catch (err) {
      result.dataset.state = "error";
      result.textContent = err instanceof Error ? err.message : String(err);
    }
  });
}
