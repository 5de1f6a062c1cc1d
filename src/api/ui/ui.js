// vramd's status page. Reads /v1/status (polled), /v1/events (Server-Sent Events, each with
// the daemon's own sentence in `text`) and /v1/me (whether controls work for this caller).
// Everything the daemon sends is written with textContent and createElement only: a model
// named "<script>" is shown as text.
"use strict";

const POLL_MS = 1000;
const LOG_KEEP = 200;
const LOG_KEY = "vramd.log";
const EVENT_TYPES = [
  "model_loading", "model_loaded", "model_soft_unloaded", "model_unloaded", "model_restored",
  "vae_tiled", "vae_on_cpu", "request_queued", "request_rejected", "request_finished",
  "worker_crashed", "worker_restarted", "memory_pressure",
];

const page = { status: null, me: { may_control: false }, log: loadLog(), statusOk: false, eventsOk: false };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function size(bytes) {
  const units = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
  for (const [u, m] of units) {
    if (bytes >= m) return (bytes / m).toFixed(1).replace(/\.0$/, "") + " " + u;
  }
  return bytes + " B";
}

function ago(secs) {
  if (secs < 60) return Math.round(secs) + " s";
  if (secs < 3600) return Math.round(secs / 60) + " min";
  if (secs < 86400) return (secs / 3600).toFixed(1).replace(/\.0$/, "") + " h";
  return Math.round(secs / 86400) + " d";
}

function ms(v) {
  return v < 1000 ? v + " ms" : (v / 1000).toFixed(1) + " s";
}

function hue(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
  return (h * 137) % 360;
}

function clock(at) {
  return new Date(at * 1000).toLocaleTimeString([], { hour12: false });
}

// ---- connection -------------------------------------------------------------------------

function showConnection() {
  const c = document.getElementById("conn");
  const live = page.statusOk && page.eventsOk;
  c.textContent = live ? "live" : page.status ? "reconnecting…" : "connecting…";
  c.className = "conn " + (live ? "live" : page.status ? "reconnecting" : "connecting");
}

async function poll() {
  try {
    const r = await fetch("/v1/status", { cache: "no-store" });
    if (!r.ok) throw new Error("status " + r.status);
    page.status = await r.json();
    page.statusOk = true;
    render();
  } catch (e) {
    page.statusOk = false;
  }
  showConnection();
  setTimeout(poll, POLL_MS);
}

async function who() {
  try {
    const r = await fetch("/v1/me", { cache: "no-store" });
    if (r.ok) page.me = await r.json();
  } catch (e) {
    page.me = { may_control: false };
  }
  render();
}

let source = null;
function follow() {
  if (source) source.close();
  // On reconnection (a restarted daemon numbers its events from 1 again) the replay may
  // repeat events already shown: they are told apart by id and time.
  source = new EventSource("/v1/events?replay=" + LOG_KEEP);
  source.addEventListener("open", () => {
    page.eventsOk = true;
    showConnection();
    who();
  });
  source.addEventListener("error", () => {
    page.eventsOk = false;
    showConnection();
    // A refused connection can leave the source closed for good: start a new one.
    if (source.readyState === EventSource.CLOSED) setTimeout(follow, 2000);
  });
  for (const t of EVENT_TYPES) source.addEventListener(t, (m) => addEvent(m.data));
  source.addEventListener("lagged", (m) => {
    const missed = JSON.parse(m.data).missed;
    addLine({ id: 0, at: Date.now() / 1000, type: "lagged", text: "Missed " + missed + " events (this page was too slow)" });
  });
}

// ---- the log ------------------------------------------------------------------------------

function loadLog() {
  try {
    const v = JSON.parse(localStorage.getItem(LOG_KEY) || "[]");
    return Array.isArray(v) ? v : [];
  } catch (e) {
    return [];
  }
}

function addEvent(data) {
  let e;
  try {
    e = JSON.parse(data);
  } catch (err) {
    return;
  }
  const took = e.load_ms ?? e.context_ms ?? e.vae_ms ?? (e.waited_ms > 0 ? e.waited_ms : null);
  addLine({ id: e.id, at: e.at, type: e.type, text: e.text || e.type + " " + (e.model || ""), took });
}

function addLine(line) {
  const key = (l) => l.id + "@" + l.at;
  if (line.id && page.log.some((l) => key(l) === key(line))) return;
  page.log.push(line);
  page.log.sort((a, b) => a.at - b.at);
  page.log = page.log.slice(-LOG_KEEP);
  try {
    localStorage.setItem(LOG_KEY, JSON.stringify(page.log));
  } catch (e) {
    /* private mode: the daemon's replay still fills the log */
  }
  renderLog();
}

function renderLog() {
  const ol = document.getElementById("log");
  const items = page.log.slice().reverse().map((l) => {
    const li = el("li", l.type);
    li.append(el("span", "time", clock(l.at)), el("span", "text", l.text));
    li.append(el("span", "took", l.took != null ? ms(l.took) : ""));
    return li;
  });
  ol.replaceChildren(...items);
}

// ---- the memory bar -------------------------------------------------------------------------

// What the bar shows, left to right: each model's weights, KV cache and compute (and what
// NVML sees beyond its own account), what running requests reserved, what something outside
// vramd holds, the configured reserve, and the free rest. Host RAM is never in it.
function segments(s) {
  const m = s.memory;
  const segs = [];
  for (const model of s.models) {
    const b = model.bytes;
    const h = hue(model.name);
    segs.push({ kind: "weights", model: model.name, hue: h, bytes: b.weights, label: model.name + " weights" });
    segs.push({ kind: "context", model: model.name, hue: h, bytes: b.context, label: model.name + " KV cache" });
    segs.push({ kind: "compute", model: model.name, hue: h, bytes: b.compute, label: model.name + " compute" });
    const beyond = Math.max(0, (model.device_bytes || 0) - b.total - model.reserved_bytes);
    segs.push({ kind: "device", model: model.name, hue: h, bytes: beyond, label: model.name + " CUDA context" });
  }
  const reserved = s.models.reduce((n, x) => n + x.reserved_bytes, 0);
  segs.push({ kind: "reserved", bytes: reserved, label: "reserved by running requests" });
  segs.push({ kind: "other", bytes: m.other_bytes || 0, label: "held outside vramd" });
  segs.push({ kind: "reserve", bytes: m.reserve_bytes, label: "kept free (reserve)" });
  const taken = segs.reduce((n, x) => n + x.bytes, 0);
  segs.push({ kind: "free", bytes: Math.max(0, m.total_bytes - taken), label: "free" });
  return segs.filter((x) => x.bytes > 0);
}

function renderBar(s) {
  const total = s.memory.total_bytes || 1;
  const bar = document.getElementById("bar");
  const legend = document.getElementById("legend");
  const parts = segments(s);
  bar.replaceChildren(...parts.map((p) => {
    const d = el("div", "seg " + p.kind);
    d.dataset.kind = p.kind;
    d.dataset.bytes = String(p.bytes);
    if (p.model !== undefined) {
      d.dataset.model = p.model;
      d.style.setProperty("--hue", String(p.hue));
    }
    d.style.width = ((100 * p.bytes) / total).toFixed(3) + "%";
    d.title = p.label + ": " + size(p.bytes);
    return d;
  }));
  legend.replaceChildren(...parts.map((p) => {
    const li = el("li");
    const sw = el("span", "swatch seg " + p.kind);
    if (p.hue !== undefined) sw.style.setProperty("--hue", String(p.hue));
    li.append(sw, el("span", null, p.label + " " + size(p.bytes)));
    return li;
  }));
  const where = s.memory.backend === "nvml" ? "GPU" : "budget";
  document.getElementById("summary").textContent =
    size(s.memory.used_bytes) + " used, " + size(s.memory.free_bytes) + " free of " +
    size(s.memory.total_bytes) + " (" + where + ")";
  const host = s.models.filter((x) => x.bytes.host > 0).map((x) => x.name + " " + size(x.bytes.host));
  document.getElementById("host").textContent = s.memory.host_bytes > 0
    ? "In host RAM, apart from the " + where + ": " + size(s.memory.host_bytes) + " (" + host.join(", ") + ")"
    : "";
}

// ---- the models -----------------------------------------------------------------------------

const STATE_WORDS = {
  unloaded: "unloaded", loading: "loading…", loaded: "loaded", soft_unloaded: "soft-unloaded",
  busy: "busy", unloading: "unloading…", failed: "failed",
};

function stateCell(m) {
  const td = el("td", "state " + m.state);
  td.append(el("span", "word", STATE_WORDS[m.state] || m.state));
  if (m.state === "loading" && m.reserved_bytes > 0) {
    const p = el("progress");
    p.max = m.reserved_bytes + m.bytes.total;
    p.value = m.bytes.total;
    td.append(" ", p);
  }
  if (m.state === "soft_unloaded") td.append(el("div", "sub", "weights kept, working memory set aside"));
  if (m.state === "failed" && m.error) td.append(el("div", "sub", m.error));
  if (m.pinned) td.append(el("span", "pinned", "pinned"));
  return td;
}

function holdsCell(m) {
  const b = m.bytes;
  const td = el("td", null, b.total > 0 ? size(b.total) : "—");
  const parts = [];
  if (b.weights) parts.push("weights " + size(b.weights));
  if (b.context) parts.push("KV " + size(b.context));
  if (b.compute) parts.push("compute " + size(b.compute));
  if (m.reserved_bytes) parts.push("reserved " + size(m.reserved_bytes));
  if (b.host) parts.push("+ " + size(b.host) + " in RAM");
  if (parts.length) td.append(el("div", "sub", parts.join(", ")));
  return td;
}

function idleCell(m, now) {
  if (m.in_flight > 0) return el("td", null, "in use");
  if (m.last_used == null) return el("td", null, "never used");
  return el("td", null, ago(Math.max(0, now - m.last_used)));
}

function rankCell(m) {
  if (m.eviction_rank != null) {
    const n = m.eviction_rank;
    const nth = n === 1 ? "1st" : n === 2 ? "2nd" : n === 3 ? "3rd" : n + "th";
    return el("td", "rank", nth + (n === 1 ? " to go" : ""));
  }
  const why = m.pinned ? "never (pinned)" : m.bytes.total > 0 || m.in_flight > 0 ? "not while busy" : "—";
  return el("td", "rank", why);
}

function cacheCell(m) {
  const pc = m.page_cache || {};
  if (!pc.file_bytes) return el("td", null, "—");
  const pct = Math.round((100 * pc.resident_bytes) / pc.file_bytes);
  return el("td", null, pct + " % in RAM" + (pc.locked ? ", locked" : ""));
}

function requestsCell(m) {
  const td = el("td");
  for (const r of m.running || []) {
    const div = el("div", "running");
    if (r.progress) {
      const p = r.progress;
      div.append("image " + (p.image + 1) + "/" + p.images + ", step " + p.step + "/" + p.steps + " ");
      const bar = el("progress");
      bar.max = p.steps * p.images || 1;
      bar.value = p.image * p.steps + p.step;
      div.append(bar);
    } else {
      div.textContent = m.kind === "image" ? "image starting" : "answering";
    }
    td.append(div);
  }
  if (m.queued > 0) td.append(el("div", "sub", m.queued + " queued"));
  if (!td.childNodes.length) td.textContent = "—";
  return td;
}

async function control(model, action, body) {
  const out = document.getElementById("control-result");
  out.textContent = action + " " + model + "…";
  const init = { method: "POST" };
  if (body) {
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(body);
  }
  try {
    const r = await fetch("/v1/models/" + encodeURIComponent(model) + "/" + action, init);
    const body = await r.json().catch(() => ({}));
    out.textContent = r.ok ? action + " " + model + ": done" : action + " " + model + ": " + ((body.error || {}).message || r.status);
  } catch (e) {
    out.textContent = action + " " + model + ": vramd cannot be reached";
  }
}

function controlsCell(m) {
  const td = el("td", "controls");
  const button = (label, action, body) => {
    const b = el("button", null, label);
    b.type = "button";
    b.dataset.action = action;
    b.addEventListener("click", () => control(m.name, action, body));
    td.append(b);
  };
  if (m.state === "unloaded" || m.state === "failed" || m.state === "soft_unloaded") button("Load", "load");
  if (m.kind === "llm" && m.state === "loaded") button("Unload soft", "unload", { mode: "soft" });
  if (m.state === "loaded" || m.state === "soft_unloaded") button("Unload", "unload", { mode: "hard" });
  button(m.pinned ? "Unpin" : "Pin", m.pinned ? "unpin" : "pin");
  return td;
}

function renderModels(s) {
  const may = !!page.me.may_control;
  for (const th of document.querySelectorAll("th.controls")) th.hidden = !may;
  document.getElementById("no-models").hidden = s.models.length > 0;
  document.getElementById("models").hidden = s.models.length === 0;
  const rows = s.models.map((m) => {
    const tr = el("tr");
    tr.dataset.model = m.name;
    const name = el("td");
    name.append(el("div", "name", m.name), el("div", "kind", m.kind));
    tr.append(name, stateCell(m), holdsCell(m), idleCell(m, s.at), rankCell(m), cacheCell(m), requestsCell(m));
    if (may) tr.append(controlsCell(m));
    return tr;
  });
  document.querySelector("#models tbody").replaceChildren(...rows);
}

function render() {
  if (!page.status) return;
  renderBar(page.status);
  renderModels(page.status);
}

document.addEventListener("DOMContentLoaded", () => {
  renderLog();
  showConnection();
  follow();
  poll();
});
