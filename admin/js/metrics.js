// metrics.js: this gateway's metrics at a glance (the same numbers as /metrics).
import * as api from "./api.js";
import { $, bytes, h } from "./dom.js";

/** @type {Array<[string, string, (v: number) => string]>} name, label, format */
const SHOWN = [
  ["natsgate_open_connections", "Open connections", String],
  ["natsgate_accepted_connections_total", "Accepted", String],
  ["natsgate_hub_subjects", "NATS subjects", String],
  ["natsgate_envelopes_out_total", "Envelopes out", String],
  ["natsgate_bytes_out_total", "Bytes out", bytes],
  ["natsgate_bytes_in_total", "Bytes in", bytes],
  ["natsgate_backpressure_closes_total", "Slow-client closes", String],
  ["natsgate_nats_connected", "NATS connected", (v) => (v ? "yes" : "no")],
];

export function metricsWidget() {
  async function refresh() {
    const { gateway, metrics } = await api.metrics();
    $("metrics-gateway").textContent = gateway;
    const sum = (/** @type {string} */ prefix) =>
      Object.entries(metrics)
        .filter(([k]) => k === prefix || k.startsWith(`${prefix}{`))
        .reduce((total, [, v]) => total + v, 0);
    const items = SHOWN.map(([name, label, format]) =>
      h("div", { testid: "metric", "data-name": name }, h("dt", {}, label), h("dd", {}, format(sum(name)))),
    );
    items.push(h("div", { testid: "metric", "data-name": "natsgate_errors_total" }, h("dt", {}, "Error envelopes"), h("dd", {}, String(sum("natsgate_errors_total")))));
    $("metrics").replaceChildren(...items);
  }
  return { refresh };
}
