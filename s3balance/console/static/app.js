// s3balance console: draws the page the path names from admin API answers (/api/...).
// The admin token lives in this tab's sessionStorage and goes out as "Authorization: Bearer";
// there is no cookie. Every element is built with the DOM API (never innerHTML), so nothing the
// server or an object key contains is ever run as markup.
"use strict";

const TOKEN_KEY = "s3balance.token";
const NOTE_KEY = "s3balance.note";
const PAGES = ["dashboard", "backends", "buckets", "balancer", "jobs", "stats", "settings"];
const REFRESH_MS = 10000;
// While a job is queued or running its page is drawn again this often (slower after errors).
const POLL_MS = 2000;
let refreshTimer = null;
let pollTimer = null;

// -- small helpers ------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) element.setAttribute(name, String(value));
  for (const child of children) element.append(child instanceof Node ? child : String(child));
  return element;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return (unit === 0 ? String(Math.round(value)) : value.toFixed(value < 10 ? 2 : 1)) + " " + units[unit];
}

function count(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en"); }
function when(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}
function rate(n) { return n >= 100 ? n.toFixed(0) : n >= 1 ? n.toFixed(1) : n.toFixed(2); }

function toast(message) {
  const box = document.getElementById("toast");
  box.textContent = message;
  setTimeout(() => { if (box.textContent === message) box.textContent = ""; }, 6000);
}

function cell(label, ...content) { return h("td", { "data-label": label }, ...content); }
function numCell(label, ...content) { return h("td", { "data-label": label, class: "num" }, ...content); }
function table(headers, rows, extraClass) {
  return h("div", { class: "table-wrap" },
    h("table", { class: "stack " + (extraClass || "") },
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows)));
}

// -- the admin API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.error || (body.errors || []).join("; "))) || "HTTP " + status);
    this.status = status;
    this.body = body || {};
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(method, path, body, explicitToken) {
  const headers = { Authorization: "Bearer " + (explicitToken || token() || "") };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("/api/" + path, init);
  let document_ = null;
  const text = await response.text();
  try { document_ = text ? JSON.parse(text) : null; } catch (e) { document_ = { error: text }; }
  if (response.status === 401 && !explicitToken) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.setItem(NOTE_KEY, "The server refused the saved token; sign in again.");
    location.assign("/web/signin");
    throw new ApiError(401, document_);
  }
  if (!response.ok) throw new ApiError(response.status, document_);
  return document_;
}

function enc(part) { return encodeURIComponent(part); }

// -- the frame ----------------------------------------------------------------------------------

function pageOf(path) {
  const parts = path.replace(/^\/web\/?/, "").split("/").filter(Boolean);
  if (parts.length === 0) return { page: "dashboard" };
  if (parts[0] === "buckets" && parts.length === 2) return { page: "objects", bucket: decodeURIComponent(parts[1]) };
  return { page: parts[0] };
}

function setTitle(text) {
  document.title = text + " · s3balance console";
  return h("h1", { id: "page-title" }, text);
}

function render(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.filter((node) => node !== null && node !== undefined));
}

function failed(error) {
  render(h("h1", {}, "Something went wrong"), h("p", { class: "alert", role: "alert" }, String(error.message || error)));
}

async function start() {
  const where = pageOf(location.pathname);
  if (where.page === "signin") return signIn();
  if (!token()) {
    sessionStorage.setItem(NOTE_KEY, "Sign in with the admin token (api.token).");
    location.replace("/web/signin?next=" + enc(location.pathname + location.search));
    return;
  }
  document.getElementById("top").hidden = false;
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.setItem(NOTE_KEY, "Signed out.");
    location.assign("/web/signin");
  });
  const navPage = where.page === "objects" ? "buckets" : where.page;
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    if (link.dataset.page === navPage) link.setAttribute("aria-current", "page");
  }
  const pages = { dashboard, backends, buckets, objects, balancer, jobs, stats, settings };
  const draw = pages[where.page];
  if (!draw) return failed(new Error("No such page."));
  try { await draw(where); } catch (error) { if (error.status !== 401) failed(error); }
}

function every(draw) {
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => { draw().catch(() => {}); }, REFRESH_MS);
}

// Draws again every `period` ms for as long as draw() answers true (something is still moving),
// never while the tab is hidden, backing off to REFRESH_MS while the API fails. Every link loads a
// new page, which ends it; so does leaving the page for the back-forward cache.
function whileActive(draw, period = POLL_MS) {
  clearTimeout(pollTimer);
  let delay = period;
  const tick = async () => {
    let again = true;
    if (!document.hidden) {
      try { again = await draw(); delay = period; } catch (error) { delay = Math.max(period, Math.min(delay * 2, REFRESH_MS)); }
    }
    if (again) pollTimer = setTimeout(tick, delay);
  };
  pollTimer = setTimeout(tick, delay);
}

window.addEventListener("pagehide", () => { clearTimeout(pollTimer); clearInterval(refreshTimer); });
window.addEventListener("pageshow", (event) => { if (event.persisted) location.reload(); });

// -- sign in ------------------------------------------------------------------------------------

function signIn() {
  const note = sessionStorage.getItem(NOTE_KEY);
  sessionStorage.removeItem(NOTE_KEY);
  const message = h("p", { id: "signin-message", role: "alert", class: "alert" });
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "signin", id: "signin-form" },
    setTitle("Sign in"),
    h("p", { class: "notice", id: "signin-note" }, note || "The console uses the admin API token (api.token)."),
    h("label", { for: "token" }, "Admin token"),
    input,
    h("button", { type: "submit", class: "primary", id: "signin-button" }, "Sign in"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    try {
      await api("GET", "health", undefined, input.value);
    } catch (error) {
      message.textContent = error.status === 401
        ? "Wrong token: the server refused it (" + (error.body.error || "invalid token") + ")."
        : "Could not sign in: " + error.message;
      input.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, input.value);
    const next = new URLSearchParams(location.search).get("next");
    location.assign(next && next.startsWith("/web") && !next.startsWith("/web/signin") ? next : "/web/dashboard");
  });
  render(form);
  input.focus();
}

// -- charts -------------------------------------------------------------------------------------

function lineChart(id, title, samples, field, format) {
  const width = 360, height = 150, left = 56, bottom = 20, top = 10;
  const values = samples.map((sample) => sample[field]);
  const max = Math.max(1e-9, ...values);
  const last = values.length ? values[values.length - 1] : 0;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${title}: last ${format(last)}, highest ${format(values.length ? max : 0)} over ${samples.length} samples` });
  for (const fraction of [0, 0.5, 1]) {
    const y = top + (height - top - bottom) * (1 - fraction);
    svg.append(s("line", { class: "grid", x1: left, x2: width, y1: y, y2: y }),
      s("text", { x: 2, y: y + 4 }, format(values.length ? max * fraction : 0)));
  }
  if (samples.length > 1) {
    const t0 = samples[0].time, t1 = samples[samples.length - 1].time;
    const points = samples.map((sample) => {
      const x = left + (width - left) * ((sample.time - t0) / Math.max(1, t1 - t0));
      const y = top + (height - top - bottom) * (1 - sample[field] / max);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    svg.append(s("polyline", { class: "line", points: points.join(" ") }));
    svg.append(s("text", { x: left, y: height - 4 }, when(t0).slice(11, 16)),
      s("text", { x: width - 32, y: height - 4 }, when(t1).slice(11, 16)));
  } else {
    svg.append(s("text", { x: left + 10, y: height / 2 }, "collecting samples…"));
  }
  return h("figure", { id }, h("figcaption", {}, title + " — now " + format(last)), svg);
}

function barChart(id, title, groups, series) {
  // groups: [{label, values: {name: number}}]; series: [{name, label, cls}]
  const width = 480, height = 190, left = 56, bottom = 34, top = 10;
  const max = Math.max(1, ...groups.flatMap((g) => series.map((x) => g.values[x.name] || 0)));
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": title + ": " + groups.map((g) => g.label + " " + series.map((x) => x.label + " " + count(g.values[x.name] || 0)).join(", ")).join("; ") });
  for (const fraction of [0, 0.5, 1]) {
    const y = top + (height - top - bottom) * (1 - fraction);
    svg.append(s("line", { class: "grid", x1: left, x2: width, y1: y, y2: y }), s("text", { x: 2, y: y + 4 }, count(Math.round(max * fraction))));
  }
  const slot = (width - left) / Math.max(1, groups.length);
  const barWidth = Math.max(2, (slot * 0.8) / series.length);
  groups.forEach((group, i) => {
    series.forEach((x, j) => {
      const value = group.values[x.name] || 0;
      const barHeight = (height - top - bottom) * (value / max);
      svg.append(s("rect", { class: x.cls, x: left + i * slot + slot * 0.1 + j * barWidth, y: height - bottom - barHeight, width: barWidth, height: barHeight },
        s("title", {}, `${group.label} ${x.label}: ${count(value)}`)));
    });
    svg.append(s("text", { x: left + i * slot + 2, y: height - 18 }, group.label.slice(0, 14)));
  });
  series.forEach((x, j) => {
    svg.append(s("rect", { class: x.cls, x: left + j * 110, y: height - 11, width: 10, height: 10 }),
      s("text", { x: left + j * 110 + 14, y: height - 2 }, x.label));
  });
  return h("figure", { id }, h("figcaption", {}, title), svg);
}

// -- dashboard ----------------------------------------------------------------------------------

function usageMeter(used, capacity, label) {
  if (!capacity) return h("span", {}, bytes(used), h("span", { class: "muted" }, " (no limit)"));
  return h("span", {}, h("meter", { min: 0, max: capacity, value: Math.min(used, capacity), high: capacity * 0.9, "aria-label": label }),
    " ", bytes(used), " / ", bytes(capacity));
}

function limitMeter(used, limit, label) {
  if (!limit) return h("span", {}, count(used), h("span", { class: "muted" }, " / unlimited"));
  return h("span", {}, h("meter", { min: 0, max: limit, value: Math.min(used, limit), high: limit * 0.9, "aria-label": label }), " ", count(used), " / ", count(limit));
}

function stateBadge(backend) {
  if (!backend.enabled) return h("span", { class: "badge warn" }, "disabled");
  return backend.healthy ? h("span", { class: "badge ok" }, "healthy") : h("span", { class: "badge bad" }, "unhealthy");
}

function drainBadge(backend) {
  if (!backend.draining) return null;
  return backend.removable ? h("span", { class: "badge ok drain-badge" }, "removable") : h("span", { class: "badge warn drain-badge" }, "draining");
}

async function dashboard() {
  const title = setTitle("Dashboard");
  const draw = async () => {
    const [health, list, history] = await Promise.all([api("GET", "health"), api("GET", "buckets"), api("GET", "history")]);
    const real = list.buckets.filter((b) => !b.virtual);
    const rows = real.map((b) => h("tr", { "data-backend": b.name },
      cell("Backend", h("strong", {}, b.name)),
      cell("State", h("span", {}, stateBadge(b), " ", drainBadge(b))),
      numCell("Probe latency", b.probe_latency_seconds === null ? "–" : (b.probe_latency_seconds * 1000).toFixed(1) + " ms"),
      cell("Last error", b.last_error ? h("span", { class: "bad" }, b.last_error) : h("span", { class: "muted" }, "none")),
      cell("Used", usageMeter(b.used_bytes, b.capacity_bytes, "Space used on " + b.name)),
      numCell("Objects", count(b.object_count)),
      cell("Class A this month", limitMeter(b.class_a_operations, b.class_a_limit, "Class A operations on " + b.name)),
      cell("Class B this month", limitMeter(b.class_b_operations, b.class_b_limit, "Class B operations on " + b.name))));
    const samples = history.samples;
    render(title,
      h("div", { class: "status " + health.status, id: "overall-status", role: "status" },
        h("strong", {}, "Status: " + health.status), " — ", health.reason),
      h("h2", {}, "Backends"),
      table(["Backend", "State", "Probe latency", "Last error", "Used", "Objects", "Class A this month", "Class B this month"], rows, "backends"),
      h("h2", {}, "Traffic, last hour"),
      h("p", { class: "notice" }, `One sample every ${history.period} s, kept in the daemon's memory (${samples.length} so far). Bytes are those written to and read from the backends.`),
      h("div", { class: "charts" },
        lineChart("chart-requests", "Requests per second", samples, "requests_per_second", rate),
        lineChart("chart-errors", "Server errors (5xx) per second", samples, "server_errors_per_second", rate),
        lineChart("chart-client-errors", "Client errors (4xx) per second", samples, "client_errors_per_second", rate),
        lineChart("chart-bytes-in", "Bytes in per second", samples, "bytes_in_per_second", (n) => bytes(n) + "/s"),
        lineChart("chart-bytes-out", "Bytes out per second", samples, "bytes_out_per_second", (n) => bytes(n) + "/s")));
  };
  await draw();
  every(draw);
}

// -- backends -----------------------------------------------------------------------------------

async function backends() {
  const title = setTitle("Backends");
  const draw = async () => {
    const list = await api("GET", "buckets");
    const rows = list.buckets.filter((b) => !b.virtual).map((b) => {
      const weight = h("input", { type: "number", min: 0, step: 1, value: b.weight, id: "weight-" + b.name, class: "weight" });
      const toggle = h("button", { type: "button", id: "toggle-" + b.name, class: b.enabled ? "danger" : "primary",
        onclick: async () => {
          toggle.disabled = true;
          try {
            await api("POST", `buckets/${enc(b.name)}/${b.enabled ? "disable" : "enable"}`);
            toast(`${b.name} ${b.enabled ? "disabled" : "enabled"}.`);
          } catch (error) { toast("Not changed: " + error.message); }
          await draw();
          document.getElementById("toggle-" + b.name).focus();
        } }, b.enabled ? "Disable" : "Enable");
      const save = h("button", { type: "button", id: "save-weight-" + b.name, onclick: async () => {
        try {
          await api("POST", "config", { buckets: [{ name: b.name, weight: Number(weight.value) }] });
          toast(`Weight of ${b.name} is now ${weight.value}.`);
          await draw();
        } catch (error) { toast("Not changed: " + error.message); }
      } }, "Save weight");
      return h("tr", { "data-backend": b.name },
        cell("Backend", h("strong", {}, b.name), h("br"), h("span", { class: "muted mono" }, b.path || b.endpoint + " / " + b.bucket)),
        cell("State", h("span", {}, stateBadge(b), " ", drainBadge(b))),
        cell("Last probe", when(b.last_probe), b.last_error ? h("div", { class: "bad" }, b.last_error) : null),
        cell("Weight", h("label", { for: "weight-" + b.name, class: "muted" }, "Weight of " + b.name + " "), weight, " ", save),
        cell("Enabled", toggle),
        cell("Drain", drainControls(b, draw)));
    });
    render(title,
      h("p", {}, "Changes apply at once to the running daemon (not written to the file: a reload goes back to the file)."),
      h("div", { class: "row" }, h("button", { type: "button", id: "probe-now", onclick: async (event) => {
        event.target.disabled = true;
        try { const result = await api("POST", "health/probe"); toast("Probed: " + result.reason); } catch (error) { toast(error.message); }
        await draw();
        document.getElementById("probe-now").focus();
      } }, "Probe all backends now")),
      table(["Backend", "State", "Last probe", "Weight", "Enabled", "Drain"], rows, "backends"));
    return list.buckets.some((b) => b.draining && JOB_ACTIVE.includes(b.drain_state));
  };
  // Slower than the Jobs page: what a draining bucket still holds is counted in the database.
  if (await draw()) whileActive(draw, REFRESH_MS);
}

const DRAIN_WARNING = "It takes no new writes from now on, and a job moves every object s3balance stored on it to the other " +
  "backends (reads keep working; moving data out of a provider costs its egress). Once the job is done the bucket holds nothing " +
  "s3balance wrote and can be removed from the configuration. Undrain gives it back to placement at any time (also while the " +
  "job runs); what was moved stays moved.";

// A real bucket's drain: the button that starts one, or how far it is and the button that undoes it.
function drainControls(b, draw) {
  const redraw = async (id) => {
    if (await draw()) whileActive(draw, REFRESH_MS);
    const again = document.getElementById(id);
    if (again) again.focus();
  };
  if (!b.draining) {
    return h("button", { type: "button", class: "danger", id: "drain-" + b.name, "aria-label": "Drain " + b.name, onclick: async (event) => {
      if (!confirm(`Drain ${b.name}?\n\n${DRAIN_WARNING}`)) return;
      event.target.disabled = true;
      try {
        const answer = await api("POST", `buckets/${enc(b.name)}/drain`);
        toast(`Draining ${b.name}: job ${answer.job.id} is ${answer.job.state}.`);
      } catch (error) { toast("Not drained: " + error.message); }
      await redraw("undrain-" + b.name);
    } }, "Drain");
  }
  const moving = JOB_ACTIVE.includes(b.drain_state) || b.drain_state === "paused";
  const held = [count(b.held_objects) + " objects (" + bytes(b.held_bytes) + ") left"];
  if (b.uploads_in_progress) held.push(count(b.uploads_in_progress) + " uploads in progress");
  if (b.deletions_pending) held.push(count(b.deletions_pending) + " deletions pending");
  return h("div", { class: "drain", id: "drain-state-" + b.name },
    h("div", {}, h("a", { href: "/web/jobs" }, "Job " + b.drain_job), ": ", h("span", { class: "drain-state" }, b.drain_state)),
    h("div", { class: "muted" }, held.join(", ")),
    b.removable ? h("div", { class: "ok removable" }, "Holds nothing s3balance wrote: it can be removed from the configuration.") : null,
    h("button", { type: "button", id: "undrain-" + b.name, "aria-label": "Undrain " + b.name, onclick: async (event) => {
      if (moving && !confirm(`Undrain ${b.name}? Its drain job stops and it takes new writes again; what was moved stays moved.`)) return;
      event.target.disabled = true;
      try {
        await api("POST", `buckets/${enc(b.name)}/undrain`);
        toast(`${b.name} takes new writes again.`);
      } catch (error) { toast("Not undrained: " + error.message); }
      await redraw("drain-" + b.name);
    } }, "Undrain"));
}

// -- buckets ------------------------------------------------------------------------------------

async function buckets() {
  const title = setTitle("Buckets");
  const draw = async () => {
    const list = await api("GET", "virtual-buckets");
    const rows = list.buckets.map((b) => h("tr", { "data-bucket": b.name },
      cell("Bucket", h("a", { href: "/web/buckets/" + enc(b.name) }, b.name)),
      numCell("Objects", count(b.object_count)),
      numCell("Bytes", bytes(b.bytes)),
      cell("Created", when(b.created)),
      cell("Declared in", b.from_config ? "configuration" : "S3 API / console"),
      cell("Delete", h("button", { type: "button", class: "danger", "aria-label": "Delete bucket " + b.name, disabled: b.object_count > 0 || null,
        title: b.object_count > 0 ? "Only empty buckets can be deleted" : null,
        onclick: async () => {
          if (!confirm(`Delete the empty bucket ${b.name}?`)) return;
          try { await api("DELETE", "buckets/" + enc(b.name)); toast(`Deleted ${b.name}.`); } catch (error) { toast("Not deleted: " + error.message); }
          await draw();
        } }, "Delete"))));
    const name = h("input", { id: "new-bucket", name: "name", required: true, pattern: "[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", autocomplete: "off" });
    const message = h("p", { id: "create-message", role: "alert", class: "alert" });
    const form = h("form", { class: "row", id: "create-bucket" },
      h("label", { for: "new-bucket" }, "New bucket name"), name, h("button", { type: "submit", class: "primary" }, "Create bucket"), message);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try { await api("POST", "buckets", { name: name.value }); toast(`Created ${name.value}.`); await draw(); } catch (error) { message.textContent = "Not created: " + error.message; }
    });
    render(title, form, table(["Bucket", "Objects", "Bytes", "Created", "Declared in", "Delete"], rows, "buckets"));
  };
  await draw();
}

async function objects(where) {
  const bucket = where.bucket;
  const params = new URLSearchParams(location.search);
  const prefix = params.get("prefix") || "";
  const after = params.get("start_after") || "";
  const title = setTitle("Bucket " + bucket);
  const query = new URLSearchParams({ prefix, delimiter: "/", max_keys: "50" });
  if (after) query.set("start_after", after);
  const page = await api("GET", `buckets/${enc(bucket)}/objects?${query}`);
  const link = (p, text) => h("a", { href: `/web/buckets/${enc(bucket)}?${new URLSearchParams({ prefix: p })}` }, text);
  const crumbs = [h("li", {}, link("", bucket))];
  let sofar = "";
  for (const part of prefix.split("/").filter(Boolean)) { sofar += part + "/"; crumbs.push(h("li", {}, link(sofar, part))); }
  const folderRows = page.prefixes.map((p) => h("tr", { class: "folder" },
    cell("Name", link(p, p.slice(prefix.length))), cell("Size", "folder"), ...["Modified", "ETag", "Stored on", "Actions"].map((label) => h("td", { "data-label": label, class: "empty" }))));
  const objectRows = page.objects.map((o) => h("tr", { "data-key": o.key },
    cell("Name", h("span", { class: "mono" }, o.key.slice(prefix.length))),
    numCell("Size", bytes(o.size)),
    cell("Modified", when(o.last_modified)),
    cell("ETag", h("code", {}, o.etag)),
    cell("Stored on", o.locations.map((l, i) => h("div", {}, (i === 0 ? "" : "replica: ") + l.backend))),
    cell("Actions", h("button", { type: "button", class: "download", "aria-label": "Download " + o.key, onclick: () => download(bucket, o.key) }, "Download"), " ",
      h("button", { type: "button", class: "danger", "aria-label": "Delete " + o.key, onclick: async () => {
        if (!confirm(`Delete ${o.key}?`)) return;
        try { await api("DELETE", `buckets/${enc(bucket)}/object?key=${enc(o.key)}`); toast(`Deleted ${o.key}.`); location.reload(); } catch (error) { toast("Not deleted: " + error.message); }
      } }, "Delete"))));
  const paging = h("div", { class: "row" },
    after ? link(prefix, "First page") : null,
    page.truncated ? h("a", { id: "next-page", href: `/web/buckets/${enc(bucket)}?${new URLSearchParams({ prefix, start_after: page.next_start_after })}` }, "Next page") : null);
  render(title,
    h("nav", { "aria-label": "Folder" }, h("ol", { class: "crumbs" }, crumbs)),
    page.objects.length + page.prefixes.length === 0 ? h("p", { class: "notice" }, "Nothing here.") : null,
    table(["Name", "Size", "Modified", "ETag", "Stored on", "Actions"], [...folderRows, ...objectRows], "objects"),
    paging);
}

async function download(bucket, key) {
  // The browser cannot send the token with a plain link, so fetch the (streamed) answer and hand
  // it to the browser as a file.
  toast("Downloading " + key + "…");
  const response = await fetch(`/api/buckets/${enc(bucket)}/download?key=${enc(key)}`,
    { headers: { Authorization: "Bearer " + token() }, cache: "no-store", credentials: "omit" });
  if (!response.ok) { toast("Download failed: HTTP " + response.status); return; }
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const anchor = h("a", { href: url, download: key.split("/").pop() || "object" });
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
  toast("Downloaded " + key + ".");
}

// -- balancer -----------------------------------------------------------------------------------

async function balancer() {
  const title = setTitle("Balancer");
  const state = await api("GET", "balancer");
  const select = h("select", { id: "strategy", name: "strategy" },
    state.strategies.map((name) => h("option", { value: name, selected: name === state.strategy }, name)));
  const current = h("p", { id: "current-strategy" }, "Current strategy: ", h("strong", {}, state.strategy));
  const form = h("form", { class: "row", id: "strategy-form" }, h("label", { for: "strategy" }, "Placement strategy"), select,
    h("button", { type: "submit", class: "primary" }, "Switch"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const result = await api("POST", "strategy", { strategy: select.value });
      current.replaceChildren("Current strategy: ", h("strong", {}, result.strategy));
      toast("Strategy is now " + result.strategy + ".");
    } catch (error) { toast("Not changed: " + error.message); }
  });
  const names = Object.keys(state.decisions);
  const rows = names.map((name) => h("tr", {}, cell("Backend", name), numCell("Decisions", count(state.decisions[name].total)),
    cell("By strategy", Object.entries(state.decisions[name]).filter(([k]) => k !== "total").map(([k, v]) => `${k}: ${count(v)}`).join(", ") || "–")));
  render(title, form, current,
    h("h2", {}, "Placement decisions per backend (since the daemon started)"),
    table(["Backend", "Decisions", "By strategy"], rows, "decisions"),
    barChart("chart-decisions", "Decisions per backend", names.map((n) => ({ label: n, values: { total: state.decisions[n].total } })), [{ name: "total", label: "decisions", cls: "bar-a" }]));
}

// -- jobs ---------------------------------------------------------------------------------------

const JOB_STATES = ["queued", "running", "paused", "done", "failed", "cancelled"];
const JOB_ACTIVE = ["queued", "running"];
const JOB_BADGES = { queued: "warn", running: "ok", paused: "warn", done: "ok", failed: "bad", cancelled: "muted" };
// The states each action is allowed from (the API answers 409 otherwise).
const JOB_ACTIONS = [
  ["pause", "Pause", ["queued", "running"]],
  ["resume", "Resume", ["paused", "failed"]],
  ["cancel", "Cancel", ["queued", "running", "paused", "failed"]],
];

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds > 0 && seconds < 1) return "< 1 s";
  const total = Math.round(seconds);
  if (total < 60) return total + " s";
  if (total < 3600) return Math.floor(total / 60) + " min " + (total % 60) + " s";
  return Math.floor(total / 3600) + " h " + Math.floor((total % 3600) / 60) + " min";
}

function percent(fraction) {
  if (fraction === null || fraction === undefined) return "–";
  const value = fraction * 100;
  return (value === 0 || value >= 10 ? value.toFixed(1) : value >= 0.1 ? value.toFixed(2) : value.toPrecision(2)) + "%";
}

function progressBar(done, left, label, format) {
  if (left === null || left === undefined) {
    return h("div", {}, format(done), h("span", { class: "muted" }, " (total not known yet)"));
  }
  const total = done + left;
  return h("div", {}, h("progress", { max: Math.max(total, 1), value: total ? done : 0, "aria-label": label }), " ",
    h("span", { class: "nowrap" }, format(done) + " / " + format(total)));
}

// Bytes per second: the rate the ETA is computed from while the job runs, else its average.
function jobRate(job) {
  if (job.eta_seconds && job.bytes_left) return job.bytes_left / job.eta_seconds;
  if (job.started && job.finished && job.finished > job.started && job.bytes_done) return job.bytes_done / (job.finished - job.started);
  return null;
}

function jobTarget(job) {
  if (job.kind === "rebalance" && job.params && job.params.mode) return job.params.mode + ", threshold " + job.params.threshold;
  return job.target;
}

function jobRow(job, act) {
  const speed = jobRate(job);
  return h("tr", { "data-job": job.id, "data-state": job.state },
    cell("Job", h("div", {}, h("strong", {}, job.kind), " #" + job.id)),
    cell("Target", h("span", { class: "mono" }, jobTarget(job))),
    cell("State", h("span", { class: "badge job-state " + (JOB_BADGES[job.state] || "") }, job.state)),
    cell("Objects", progressBar(job.objects_done, job.objects_left, `Objects moved by job ${job.id}`, count)),
    cell("Bytes", progressBar(job.bytes_done, job.bytes_left, `Bytes moved by job ${job.id}`, bytes)),
    numCell("Rate", speed === null ? "–" : bytes(speed) + "/s"),
    numCell("ETA", job.state === "running" ? duration(job.eta_seconds) : "–"),
    numCell("Errors", job.errors ? h("span", { class: "bad" }, count(job.errors)) : "0"),
    cell("Last error", job.last_error ? h("span", { class: "bad wrap" }, job.last_error) : h("span", { class: "muted" }, "none")),
    cell("Started", when(job.started)),
    cell("Updated", when(job.finished || job.updated)),
    cell("Actions", h("div", { class: "row actions" }, JOB_ACTIONS.map(([action, label, from]) =>
      h("button", { type: "button", id: `job-${job.id}-${action}`, class: action === "cancel" ? "danger" : null,
        "aria-label": `${label} job ${job.id}`, disabled: !from.includes(job.state), onclick: () => act(job, action, label) }, label)))));
}

function cancelWarning(job) {
  if (job.kind === "drain") return `Cancel job ${job.id}? ${job.target} takes new writes again; what was moved stays moved.`;
  return `Cancel job ${job.id} (${job.kind})? It stops between two objects; what was moved stays moved.`;
}

async function jobs() {
  const title = setTitle("Jobs");
  const message = h("p", { id: "jobs-message", role: "alert", class: "alert" });
  const list = h("div", { id: "jobs-list" });
  const filter = h("select", { id: "job-filter", name: "state" },
    h("option", { value: "" }, "all"), JOB_STATES.map((state) => h("option", { value: state }, state)));
  const act = async (job, action, label) => {
    if (action === "cancel" && !confirm(cancelWarning(job))) return;
    message.textContent = "";
    try {
      const answer = await api("POST", `jobs/${job.id}/${action}`);
      toast(`Job ${job.id} is ${answer.state}.`);
    } catch (error) {
      message.textContent = `${label} job ${job.id}: not done: ${error.message}`;
    }
    await refresh();
  };
  const draw = async () => {
    const focused = document.activeElement && list.contains(document.activeElement) ? document.activeElement.id : null;
    const answer = await api("GET", "jobs" + (filter.value ? "?state=" + enc(filter.value) : ""));
    list.replaceChildren(answer.jobs.length === 0
      ? h("p", { class: "notice", id: "no-jobs" }, filter.value ? `No ${filter.value} job.` : "No job yet: drains start from the Backends page, rebalances here.")
      : table(["Job", "Target", "State", "Objects", "Bytes", "Rate", "ETA", "Errors", "Last error", "Started", "Updated", "Actions"],
        answer.jobs.map((job) => jobRow(job, act)), "jobs"));
    const again = focused && document.getElementById(focused);
    if (again && !again.disabled) again.focus();
    return answer.jobs.some((job) => JOB_ACTIVE.includes(job.state));
  };
  const refresh = async () => { if (await draw()) whileActive(draw); };
  filter.addEventListener("change", () => { refresh().catch((error) => { message.textContent = error.message; }); });
  const panel = await rebalancePanel(refresh);
  render(title,
    h("p", {}, "Background work kept in the database: drains and rebalances. A job survives restarts and resumes where it stopped; this page follows it while one is queued or running."),
    panel,
    h("h2", {}, "Jobs"),
    h("div", { class: "row" }, h("label", { for: "job-filter" }, "Show"), filter),
    message, list);
  await refresh();
}

// -- rebalance ----------------------------------------------------------------------------------

async function rebalancePanel(onStarted) {
  const state = await api("GET", "rebalance");
  const configured = state.settings.rebalance;
  const mode = h("select", { id: "rebalance-mode", name: "mode" },
    [["spread", "spread: even out the used fraction"], ["pack", "pack: fill in order, empty the last"]].map(([value, text]) =>
      h("option", { value, selected: value === configured }, text)));
  const threshold = h("input", { id: "rebalance-threshold", name: "threshold", type: "number", min: 0, max: 1, step: 0.01, value: state.settings.threshold });
  const message = h("p", { id: "rebalance-message", role: "alert", class: "alert" });
  const plan = h("div", { id: "rebalance-plan" });
  const underWay = h("p", { id: "rebalance-under-way", class: "notice" },
    state.job ? `Rebalance job ${state.job.id} is ${state.job.state}.` : "No rebalance under way.",
    " Automatic rebalance: " + configured + (configured === "off" ? "" : ", threshold " + state.settings.threshold) + ".",
    lastCheck(state.last_check));
  let lastPlan = null;
  const settings = () => {
    const value = Number(threshold.value);
    if (threshold.value === "" || !(value >= 0 && value <= 1)) throw new Error("the threshold is a number from 0 to 1");
    return { mode: mode.value, threshold: value };
  };
  const dryRun = async () => {
    message.textContent = "";
    try {
      const answer = await api("POST", "rebalance", { ...settings(), dry_run: true });
      lastPlan = answer.plan;
      plan.replaceChildren(...planView(answer.plan));
    } catch (error) { message.textContent = "No plan: " + error.message; }
  };
  const startJob = async () => {
    message.textContent = "";
    let body;
    try { body = settings(); } catch (error) { message.textContent = "Not started: " + error.message; return; }
    const cost = lastPlan && lastPlan.mode === body.mode && lastPlan.threshold === body.threshold
      ? ` The last dry run would copy ${bytes(lastPlan.bytes)} in ${count(lastPlan.moves)} moves.` : "";
    if (!confirm(`Start a ${body.mode} rebalance, threshold ${body.threshold}? Objects are copied between backends (moving data out of a provider costs its egress).${cost} The job can be paused or cancelled here.`)) return;
    try {
      const answer = await api("POST", "rebalance", body);
      underWay.textContent = `Rebalance job ${answer.job.id} is ${answer.job.state}.`;
      toast(`Rebalance job ${answer.job.id} queued.`);
    } catch (error) {
      message.textContent = "Not started: " + error.message;
    }
    await onStarted();
  };
  return h("section", { id: "rebalance", "aria-labelledby": "rebalance-title" },
    h("h2", { id: "rebalance-title" }, "Rebalance"),
    h("p", { class: "notice" }, "Moves copies between the real buckets: spread evens out their used fraction until each is within the threshold of the mean; pack fills them in order so that the last ones empty. A dry run shows the plan and moves nothing."),
    h("form", { class: "row", id: "rebalance-form", onsubmit: (event) => { event.preventDefault(); dryRun(); } },
      h("label", { for: "rebalance-mode" }, "Mode"), mode,
      h("label", { for: "rebalance-threshold" }, "Threshold (0–1)"), threshold,
      h("button", { type: "submit", id: "rebalance-dry-run" }, "Dry run"),
      h("button", { type: "button", class: "primary", id: "rebalance-start", onclick: startJob }, "Start rebalance")),
    underWay, message, plan);
}

// What the last automatic check (balancer.rebalance) found, if one ran.
function lastCheck(check) {
  if (!check) return null;
  const found = check.started_job !== null ? `started job ${check.started_job}`
    : check.under_way !== null ? `job ${check.under_way} was under way`
    : check.plan ? `nothing to move (${check.plan.stopped})` : "nothing to do";
  return ` Last automatic check ${when(check.time)}: ${found}.`;
}

function listOrNone(names) { return Array.isArray(names) && names.length ? names.join(", ") : "none"; }

function planView(plan) {
  const summary = h("p", { id: "plan-summary" },
    h("strong", {}, `${count(plan.moves)} moves, ${bytes(plan.bytes)} to copy`),
    ` (${plan.mode}, threshold ${plan.threshold}; ${count(plan.examined)} objects examined). Mean used fraction ${percent(plan.mean_fraction)}. `,
    `Out of balance before: ${listOrNone(plan.out_of_balance_before)}; after: ${listOrNone(plan.out_of_balance_after)}. `,
    `Planning stopped: ${plan.stopped}.`,
    plan.held_out && plan.held_out.length ? ` Held out: ${plan.held_out.join(", ")}.` : "");
  const rows = plan.backends.map((b) => h("tr", { "data-plan-backend": b.name },
    cell("Backend", h("strong", {}, b.name)),
    numCell("Used before", bytes(b.used_before)),
    numCell("Used after", bytes(b.used_after)),
    numCell("Fraction", percent(b.fraction_before) + " → " + percent(b.fraction_after)),
    numCell("Moves in / out", count(b.moves_in) + " / " + count(b.moves_out)),
    numCell("Bytes in / out", bytes(b.bytes_in) + " / " + bytes(b.bytes_out)),
    cell("Note", b.note ? h("span", { class: "wrap" }, b.note) : h("span", { class: "muted" }, b.takes_part ? "takes part" : "–"))));
  const moves = plan.first_moves.map((m) => h("tr", {},
    cell("Object", h("span", { class: "mono" }, m.bucket + "/" + m.key)),
    numCell("Size", bytes(m.size)), cell("From", m.source), cell("To", m.target)));
  return [
    summary,
    table(["Backend", "Used before", "Used after", "Fraction", "Moves in / out", "Bytes in / out", "Note"], rows, "plan"),
    moves.length ? h("details", { id: "plan-moves" },
      h("summary", {}, `The first ${count(moves.length)} of ${count(plan.moves)} moves`),
      table(["Object", "Size", "From", "To"], moves, "moves")) : null,
  ];
}

// -- statistics ---------------------------------------------------------------------------------

function monthsBack(n) {
  const now = new Date();
  const start = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - (n - 1), 1));
  const fmt = (d) => d.getUTCFullYear() + "-" + String(d.getUTCMonth() + 1).padStart(2, "0");
  return [fmt(start), fmt(now)];
}

async function stats() {
  const title = setTitle("Statistics");
  const [startMonth, endMonth] = monthsBack(12);
  const [month, range, list] = await Promise.all([api("GET", "stats/monthly"), api("GET", `stats/monthly/range?start=${startMonth}&end=${endMonth}`), api("GET", "buckets")]);
  const limits = Object.fromEntries(list.buckets.filter((b) => !b.virtual).map((b) => [b.name, b]));
  const rows = Object.entries(month.backends).map(([name, c]) => h("tr", {},
    cell("Backend", name),
    cell("Class A", limits[name] ? limitMeter(c.class_a, limits[name].class_a_limit, "Class A on " + name) : count(c.class_a)),
    cell("Class B", limits[name] ? limitMeter(c.class_b, limits[name].class_b_limit, "Class B on " + name) : count(c.class_b)),
    numCell("Bytes in", bytes(c.bytes_in)), numCell("Bytes out", bytes(c.bytes_out))));
  const historyRows = range.months.slice().reverse().map((m) => h("tr", {}, cell("Month", m.month), numCell("Class A", count(m.total.class_a)),
    numCell("Class B", count(m.total.class_b)), numCell("Bytes in", bytes(m.total.bytes_in)), numCell("Bytes out", bytes(m.total.bytes_out))));
  const series = [{ name: "class_a", label: "Class A", cls: "bar-a" }, { name: "class_b", label: "Class B", cls: "bar-b" }];
  render(title,
    h("h2", {}, "This month (" + month.month + ", UTC)"),
    table(["Backend", "Class A", "Class B", "Bytes in", "Bytes out"], rows, "month"),
    barChart("chart-month", "Class A and B operations per backend this month", Object.entries(month.backends).map(([n, c]) => ({ label: n, values: c })), series),
    h("h2", {}, "Last 12 months, all backends"),
    barChart("chart-history", "Class A and B operations per month", range.months.map((m) => ({ label: m.month.slice(2), values: m.total })), series),
    table(["Month", "Class A", "Class B", "Bytes in", "Bytes out"], historyRows, "history"));
}

// -- settings -----------------------------------------------------------------------------------

// The common keys the form edits: [key path, label, kind, hint].
const FORM_FIELDS = [
  ["balancer.strategy", "Placement strategy", "strategy", "How a new object's backend is chosen."],
  ["balancer.retry_attempts", "Retry attempts", "int", "Other backends tried when a write fails."],
  ["balancer.retry_delay", "Retry delay", "text", "A duration, e.g. 1s or 500ms."],
  ["balancer.unhealthy_threshold", "Unhealthy after failed probes", "int", ""],
  ["balancer.healthy_threshold", "Healthy after good probes", "int", ""],
  ["balancer.probe_timeout", "Probe timeout", "text", "A duration, e.g. 5s."],
  ["balancer.health_check_period", "Health check period", "text", "A duration, e.g. 30s."],
  ["s3api.allow_create_bucket", "Clients may create buckets", "bool", ""],
  ["s3api.presign_expiry", "Presigned URL lifetime", "text", "A duration, e.g. 5m."],
  ["multipart.expiry", "Abandoned multipart uploads expire after", "text", "A duration, e.g. 168h."],
];

function getPath(object, path) { return path.split(".").reduce((o, k) => (o ? o[k] : undefined), object); }
function setPath(object, path, value) {
  const keys = path.split(".");
  let node = object;
  for (const key of keys.slice(0, -1)) { node[key] = node[key] || {}; node = node[key]; }
  node[keys[keys.length - 1]] = value;
}
function fieldId(key) { return "field-" + key.replace(/[^a-z0-9]+/gi, "-"); }

function needsRestart(key, restartKeys) { return restartKeys.some((r) => key === r || key.startsWith(r + ".")); }

async function settings() {
  const title = setTitle("Settings");
  const [config, exported, strategies] = await Promise.all([api("GET", "config"), api("GET", "config/yaml"), api("GET", "strategy")]);
  const restartKeys = exported.restart_keys;
  const fields = FORM_FIELDS.map(([key, label, kind, hint]) => {
    const id = fieldId(key);
    const value = getPath(config, key);
    let input;
    if (kind === "strategy") input = h("select", { id, "data-key": key }, strategies.strategies.map((n) => h("option", { value: n, selected: n === value }, n)));
    else if (kind === "bool") input = h("input", { id, type: "checkbox", "data-key": key, checked: Boolean(value) });
    else input = h("input", { id, type: kind === "int" ? "number" : "text", "data-key": key, value: value === undefined ? "" : value });
    input.dataset.kind = kind;
    input.dataset.original = kind === "bool" ? String(Boolean(value)) : String(value === undefined ? "" : value);
    const restart = needsRestart(key, restartKeys);
    return h("div", { class: "field", "data-field": key },
      h("label", { for: id }, label, h("br"), h("code", { class: "muted" }, key)),
      input,
      hint || restart ? h("span", { class: "hint" }, hint, restart ? h("strong", { class: "warn" }, " Needs a restart to take effect.") : null) : null,
      h("p", { class: "problem", id: id + "-problem", role: "alert" }));
  });
  const formMessage = h("div", { id: "form-message", role: "status" });
  const form = h("form", { id: "settings-form" }, fields,
    h("div", { class: "row" },
      h("button", { type: "button", id: "form-validate" }, "Validate"),
      h("button", { type: "submit", class: "primary", id: "form-apply" }, "Apply")),
    formMessage);

  const changedPartial = () => {
    const partial = {};
    for (const input of form.querySelectorAll("[data-key]")) {
      const kind = input.dataset.kind;
      const raw = kind === "bool" ? String(input.checked) : input.value;
      if (raw === input.dataset.original) continue;
      const value = kind === "bool" ? input.checked : kind === "int" && /^-?\d+$/.test(raw) ? Number(raw) : raw;
      setPath(partial, input.dataset.key, value);
    }
    return partial;
  };
  const showFormProblems = (problems) => {
    for (const p of form.querySelectorAll(".problem")) p.textContent = "";
    const elsewhere = [];
    for (const problem of problems) {
      const target = problem.key && document.getElementById(fieldId(problem.key) + "-problem");
      if (target && form.contains(target)) {
        target.textContent = problem.message;
        document.getElementById(fieldId(problem.key)).setAttribute("aria-describedby", target.id);
      } else elsewhere.push(problem.text);
    }
    formMessage.replaceChildren(...(elsewhere.length ? [h("ul", { class: "problems" }, elsewhere.map((t) => h("li", {}, t)))] : []));
  };
  form.querySelector("#form-validate").addEventListener("click", async () => {
    const result = await api("POST", "config/validate", { config: changedPartial() });
    showFormProblems(result.problems);
    if (result.valid) formMessage.replaceChildren(h("p", { class: "ok" }, "Valid: nothing wrong with these values."));
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const partial = changedPartial();
    if (Object.keys(partial).length === 0) { formMessage.replaceChildren(h("p", {}, "Nothing changed.")); return; }
    try {
      const result = await api("POST", "config", partial);
      showFormProblems([]);
      formMessage.replaceChildren(h("p", { class: "ok", id: "applied" }, "Applied."), changesList(result.changes));
      for (const input of form.querySelectorAll("[data-key]")) {
        input.dataset.original = input.dataset.kind === "bool" ? String(input.checked) : input.value;
      }
    } catch (error) {
      if (error.status !== 400) { formMessage.replaceChildren(h("p", { class: "alert" }, error.message)); return; }
      const check = await api("POST", "config/validate", { config: partial });
      showFormProblems(check.problems.length ? check.problems : (error.body.errors || []).map((t) => ({ key: null, text: t })));
    }
  });

  // The YAML editor: everything, all or nothing.
  const editor = h("textarea", { id: "yaml", spellcheck: "false", autocomplete: "off", "aria-describedby": "yaml-help" });
  editor.value = exported.yaml;
  const yamlMessage = h("div", { id: "yaml-message", role: "status" });
  const yamlView = h("div", { id: "yaml-problems", class: "yaml-view", hidden: true, "aria-label": "Problems in the YAML, shown under their keys" });
  const showYamlProblems = (problems) => {
    const lines = editor.value.split("\n");
    const byLine = new Map();
    const loose = [];
    for (const problem of problems) {
      if (problem.line) byLine.set(problem.line, [...(byLine.get(problem.line) || []), problem]);
      else loose.push(problem);
    }
    const rows = [];
    lines.forEach((text, index) => {
      const found = byLine.get(index + 1);
      if (!found) return;
      rows.push(h("div", { class: "ln has-problem" }, String(index + 1).padStart(4) + "  " + text));
      for (const problem of found) {
        rows.push(h("p", { class: "problem", "data-key": problem.key || "" }, "↑ ", problem.key ? h("code", {}, problem.key) : null, problem.key ? ": " : "", problem.message));
      }
    });
    for (const problem of loose) rows.push(h("p", { class: "problem", "data-key": problem.key || "" }, problem.text));
    yamlView.replaceChildren(...rows);
    yamlView.hidden = rows.length === 0;
  };
  const validateYaml = async () => {
    try {
      const result = await api("POST", "config/validate", { yaml: editor.value });
      showYamlProblems(result.problems);
      yamlMessage.replaceChildren(result.valid ? h("p", { class: "ok" }, "Valid.") : h("p", { class: "alert" }, `${result.problems.length} problem(s): nothing was applied.`));
      return result.valid;
    } catch (error) {
      showYamlProblems(error.body.problems || []);
      yamlMessage.replaceChildren(h("p", { class: "alert" }, error.message));
      return false;
    }
  };
  const yamlButtons = h("div", { class: "row" },
    h("button", { type: "button", id: "yaml-validate", onclick: validateYaml }, "Validate YAML"),
    h("button", { type: "button", class: "primary", id: "yaml-apply", onclick: async () => {
      try {
        const result = await api("POST", "config/yaml", { yaml: editor.value });
        showYamlProblems([]);
        yamlMessage.replaceChildren(h("p", { class: "ok", id: "yaml-applied" }, "Applied."), changesList(result.changes));
      } catch (error) {
        showYamlProblems(error.body.problems || []);
        yamlMessage.replaceChildren(h("p", { class: "alert" }, "Refused, nothing changed: " + error.message));
      }
    } }, "Apply YAML"),
    h("button", { type: "button", id: "yaml-export", onclick: async () => {
      const fresh = await api("GET", "config/yaml");
      const url = URL.createObjectURL(new Blob([fresh.yaml], { type: "application/yaml" }));
      const anchor = h("a", { href: url, download: "s3balance.yaml" });
      document.body.append(anchor); anchor.click(); anchor.remove();
      setTimeout(() => URL.revokeObjectURL(url), 30000);
    } }, "Export YAML"),
    h("button", { type: "button", id: "yaml-reload", onclick: async () => {
      editor.value = (await api("GET", "config/yaml")).yaml; showYamlProblems([]); yamlMessage.replaceChildren();
    } }, "Reload from server"));

  render(title,
    h("p", {}, "Changes are validated like the configuration file and applied all or nothing to the running daemon; they are not written to the file (a SIGHUP reload goes back to it). Secrets are shown as *** and kept when left so."),
    h("p", { id: "restart-keys" }, "Keys that need a restart (kept as they run until then): ", restartKeys.map((k, i) => [i ? ", " : "", h("code", {}, k)])),
    h("h2", {}, "Common settings"), form,
    h("h2", {}, "All settings (YAML)"),
    h("label", { for: "yaml" }, "Configuration (YAML)"),
    h("p", { id: "yaml-help", class: "notice" }, "The running configuration in the file's format. A bucket missing from the text is kept; remove one with “- {name: x, remove: true}”."),
    editor, yamlButtons, yamlMessage, yamlView);
}

function changesList(changes) {
  if (!changes || changes.length === 0) return h("p", { class: "notice" }, "No change.");
  return h("ul", { id: "changes" }, changes.map((c) => h("li", {}, c)));
}

document.addEventListener("DOMContentLoaded", start);
