// The natsgate admin console: plain ES modules, no framework, no build step (the gateway
// serves them at /admin as they are). It signs in with the gateway's /auth/login (the
// same cookie as the app) and then only talks to /admin/api/*:
//
//   js/api.js          the admin API, typed
//   js/connections.js  every gateway's connections; disconnect a connection or a user
//   js/caps.js         read and write a user's capabilities (the revocation follows)
//   js/metrics.js      this gateway's metrics at a glance
//   js/dom.js          DOM helpers
import * as api from "./js/api.js";
import { capsWidget } from "./js/caps.js";
import { connectionsWidget } from "./js/connections.js";
import { $, say } from "./js/dom.js";
import { metricsWidget } from "./js/metrics.js";

const REFRESH_MS = 5000;
/** @type {number | undefined} */
let timer;

/** @param {"login" | "denied" | "console"} view */
function show(view) {
  $("admin-login").hidden = view !== "login";
  $("admin-denied").hidden = view !== "denied";
  $("admin-console").hidden = view !== "console";
  $("admin-session").hidden = view === "login";
}

/** @param {unknown} err */
function fail(err) {
  if (err instanceof api.ApiError && (err.status === 401 || err.status === 403)) {
    void boot(); // signed out, or no longer an administrator
    return;
  }
  say($("admin-error"), err instanceof Error ? err.message : String(err));
}

const conns = connectionsWidget(fail);
const metrics = metricsWidget();
capsWidget(fail);

async function refresh() {
  try {
    await Promise.all([conns.refresh(), metrics.refresh()]);
    say($("admin-error"));
  } catch (err) {
    fail(err);
  }
}

async function boot() {
  window.clearInterval(timer);
  let who;
  try {
    who = await api.me();
  } catch {
    show("login");
    return;
  }
  $("admin-whoami").textContent = who.user;
  if (!who.caps.admin) {
    $("admin-denied-user").textContent = who.user;
    show("denied");
    return;
  }
  show("console");
  await refresh();
  timer = window.setInterval(() => void refresh(), REFRESH_MS);
}

$("admin-login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("admin-login-user", HTMLInputElement).value.trim();
  const password = $("admin-login-password", HTMLInputElement).value;
  try {
    await api.login(user, password);
    say($("admin-login-error"));
    await boot();
  } catch (err) {
    say($("admin-login-error"), err instanceof Error ? err.message : String(err));
  }
});
$("admin-logout").addEventListener("click", async () => {
  await api.logout().catch(() => undefined);
  await boot();
});
$("admin-refresh").addEventListener("click", () => void refresh());
void boot();
