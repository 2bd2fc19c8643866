// The status page of `dsmirror serve`: polls /dsmirror/status every 2 s and draws what it says.
//
// No build step, no library, no CDN: the page works on a LAN without internet. Every string that
// comes from the server (model names, paths, mirror names, error messages: from manifests,
// registries and the disk) is put in the page with textContent or as an attribute value, never as
// HTML, and the server sends a Content-Security-Policy that allows no inline script.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "dsmirror-token";
const SVG = "http://www.w3.org/2000/svg";
const KIND_NAMES = { hf: "Hugging Face", modelscope: "ModelScope", ollama: "Ollama / OCI", folder: "dsmirror folders" };

// What this page saw at each poll, for the chart between the server's own samples (every 5 s).
const polled = [];

function $(id) {
  return document.getElementById(id);
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  for (const unit of units) {
    if (Math.abs(n) < 1024 || unit === "TiB") {
      return unit === "B" ? `${Math.round(n)} B` : `${n.toFixed(1)} ${unit}`;
    }
    n /= 1024;
  }
  return `${n}`;
}

function formatRate(bps) {
  return `${formatBytes(bps)}/s`;
}

function formatSeconds(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s % 60}s`;
}

function shortRevision(rev) {
  const hex = /^(sha256:)?[0-9a-f]{40,64}$/.test(rev);
  return hex ? rev.replace("sha256:", "").slice(0, 12) : rev;
}

// el("td", {class: "num", title: "..."}, "text", child, ...): an element with attributes and
// children; strings become text nodes (never parsed as HTML).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function setFigure(id, bytes) {
  const node = $(id);
  node.textContent = formatBytes(bytes);
  node.dataset.bytes = String(bytes);
  node.title = `${bytes.toLocaleString("en")} bytes`;
}

// -- sections ---------------------------------------------------------------------------------

function showTraffic(doc) {
  const served = doc.served.bytes, upstream = doc.upstream.bytes, saved = doc.saved_bytes;
  setFigure("served-bytes", served);
  setFigure("upstream-bytes", upstream);
  setFigure("saved-bytes", saved);
  $("saved-ratio").textContent = served > 0
    ? `${Math.round((100 * saved) / served)}% of the bytes served did not come from upstream`
    : "nothing served yet";
  const rows = Object.entries(doc.served.by_kind)
    .filter(([kind, n]) => n > 0 && KIND_NAMES[kind])
    .map(([kind, n]) => el("tr", {}, el("td", {}, KIND_NAMES[kind]), el("td", { class: "num" }, formatBytes(n))));
  fill($("served-by").tBodies[0], rows);
  $("served-by").hidden = rows.length === 0;
  drawChart(doc);
}

function drawChart(doc) {
  const svg = $("chart");
  const width = Math.max(200, svg.clientWidth || 800), height = Math.max(100, svg.clientHeight || 180);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const since = polled.length ? polled[0][0] : Infinity;
  const points = doc.history.samples.filter((p) => p[0] < since).concat(polled);
  const pad = { left: 70, right: 10, top: 10, bottom: 22 };
  const t0 = points.length > 1 ? points[0][0] : doc.time - 60, t1 = Math.max(doc.time, t0 + 1);
  const top = Math.max(1, ...points.map((p) => Math.max(p[1], p[2]))) * 1.1;
  const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
  const parts = [];
  for (const frac of [0, 0.5, 1]) {
    const v = (top / 1.1) * frac, yy = y(v);
    parts.push(svgEl("line", { x1: pad.left, x2: width - pad.right, y1: yy, y2: yy, stroke: "#e2e5ea" }));
    parts.push(svgEl("text", { x: pad.left - 6, y: yy + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7482" }, formatBytes(v)));
  }
  parts.push(svgEl("text", { x: pad.left, y: height - 6, "font-size": 11, fill: "#6b7482" }, `-${formatSeconds(t1 - t0)}`));
  parts.push(svgEl("text", { x: width - pad.right, y: height - 6, "text-anchor": "end", "font-size": 11, fill: "#6b7482" }, "now"));
  for (const [column, color, id] of [[2, "#e8743b", "chart-upstream"], [1, "#1f77b4", "chart-served"]]) {
    const coords = points.map((p) => `${x(p[0]).toFixed(1)},${y(p[column]).toFixed(1)}`).join(" ");
    parts.push(svgEl("polyline", { id, points: coords, fill: "none", stroke: color, "stroke-width": 2.5, "stroke-linejoin": "round" }));
  }
  svg.replaceChildren(...parts);
  $("chart-span").textContent = ` · cumulative bytes, the last ${formatSeconds(t1 - t0)}`;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function showModels(doc) {
  const rows = doc.models.map((m) => {
    let verified;
    if (!m.complete) {
      verified = el("span", { class: "no", title: "some files the model names are not here (or do not match)" },
        "incomplete");
    } else if (m.verified) {
      verified = el("span", { class: "yes", title: "dsmirror checked every file against its digest" }, "verified");
    } else {
      verified = el("span", { class: "no", title: "the others are trusted by their names: not hashed by dsmirror" },
        `no (${m.verified_files} of ${m.files} files checked)`);
    }
    return el(
      "tr",
      { class: "model", "data-name": m.name, "data-format": m.format, "data-size": m.size },
      el("td", { class: "model-name wrap" }, m.name),
      el("td", {}, m.format),
      el("td", { title: m.revision }, shortRevision(m.revision)),
      el("td", { class: "num model-size", title: `${m.size.toLocaleString("en")} bytes` }, formatBytes(m.size)),
      el("td", { class: "num" }, m.complete ? `${m.files}` : `${m.files} (incomplete)`),
      el("td", {}, verified),
    );
  });
  fill($("models").tBodies[0], rows);
  $("models-count").textContent = `(${doc.models.length})`;
  $("models-empty").hidden = rows.length > 0;
}

function showPulls(doc) {
  const pulls = doc.pulls;
  const rows = [];
  for (const p of pulls.recent) {
    const done = p.state === "done" ? p.size : p.streams_pieces ? p.verified_bytes : p.received_bytes;
    const progress = el("progress", { max: Math.max(1, p.size), value: Math.min(done, p.size) });
    const running = p.state === "running";
    const sources = p.sources.map((s) => el("span", { class: "source" }, running
      ? `${s.name}: ${formatRate(s.rate)}, ${formatBytes(s.delivered)} (${s.status})`
      : `${s.name}: ${formatBytes(s.delivered)}`));
    rows.push(el(
      "tr",
      { class: "pull", "data-state": p.state },
      el("td", { class: "wrap" }, p.file, ...sources),
      el("td", { class: `state-${p.state}` }, p.state),
      el("td", { class: "progress" }, progress, ` ${formatBytes(done)} / ${formatBytes(p.size)}`),
      el("td", { class: "num" }, running ? formatRate(p.rate) : ""),
    ));
    if (p.error) {
      rows.push(el("tr", {}, el("td", { colspan: 4, class: "wrap error" }, p.error, p.hint ? ` — ${p.hint}` : "")));
    }
  }
  fill($("pulls").tBodies[0], rows);
  $("pulls-count").textContent = `(${pulls.active} running or queued, ${pulls.done} done, ${pulls.failed} failed)`;
  $("pulls-empty").hidden = rows.length > 0;
  $("pulls-empty").textContent = doc.pull_through === null
    ? "No pulls (start the server with --upstream to pull what is missing)."
    : "No pulls yet.";
}

function showSeeding(doc) {
  const s = doc.seeding;
  const table = $("torrents");
  if (s === null) {
    $("seeding-summary").textContent = "Not seeding (start the server with --seed).";
    table.hidden = true;
    return;
  }
  $("seeding-summary").textContent =
    `Seeding ${s.torrents.length} torrent(s) on port ${s.port}: ${s.peers} peer(s), ` +
    `up ${formatRate(s.upload_rate)}, ${formatBytes(s.uploaded)} uploaded.`;
  const rows = [];
  for (const t of s.torrents) {
    rows.push(el("tr", {}, el("td", { class: "wrap", title: t.info_hash }, t.name), el("td", {}, t.state),
      el("td", { class: "num" }, String(t.peers.length)), el("td", { class: "num" }, formatRate(t.upload_rate)),
      el("td", { class: "num" }, formatBytes(t.uploaded))));
    for (const p of t.peers) {
      rows.push(el("tr", { class: "dim" }, el("td", { class: "wrap" }, `  ${p.address} ${p.client}`),
        el("td", {}, `has ${Math.round(p.progress * 100)}%`), el("td", {}),
        el("td", { class: "num" }, formatRate(p.upload_rate)), el("td", { class: "num" }, formatBytes(p.uploaded))));
    }
  }
  fill(table.tBodies[0], rows);
  table.hidden = rows.length === 0;
}

function showErrors(doc) {
  const items = doc.errors.recent.map((e) => el(
    "li",
    { class: `level-${e.level}` },
    el("span", { class: "when" }, new Date(e.time * 1000).toLocaleTimeString()),
    el("span", { class: "kind" }, e.repeated > 1 ? `${e.kind} · ${e.repeated} times` : e.kind),
    el("span", { class: "message" }, e.message),
    el("span", { class: "hint" }, e.hint),
  ));
  $("errors").replaceChildren(...items);
  $("errors-empty").hidden = items.length > 0;
  const total = Object.values(doc.errors.by_kind).reduce((a, b) => a + b, 0);
  $("errors-count").textContent = total ? `(${total} since start)` : "";
}

function show(doc) {
  polled.push([doc.time, doc.served.bytes, doc.upstream.bytes]);
  const oldest = doc.time - 3600;
  while (polled.length && polled[0][0] < oldest) polled.shift();
  $("version").textContent = `version ${doc.version}`;
  $("uptime").textContent = `up ${formatSeconds(doc.uptime)}`;
  showTraffic(doc);
  showModels(doc);
  showPulls(doc);
  showSeeding(doc);
  showErrors(doc);
}

// -- polling ----------------------------------------------------------------------------------

function badge(state, text) {
  const node = $("live");
  node.className = `badge ${state}`;
  node.textContent = text;
}

async function poll() {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const reply = await fetch("/dsmirror/status", { headers, cache: "no-store" });
    if (reply.status === 401) {
      $("token-form").hidden = false;
      badge("down", "token needed");
      return;
    }
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    const doc = await reply.json();
    $("token-form").hidden = true;
    show(doc);
    document.body.dataset.updated = String(doc.time);
    badge("live", `live · ${new Date(doc.time * 1000).toLocaleTimeString()}`);
  } catch (err) {
    badge("down", `offline (${err.message})`);
  }
}

function start() {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    poll();
  });
  poll();
  setInterval(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
