// The live membership page: polls ./status every second and draws this node, its
// peers (solid links) and the candidates that are not linked (dashed, coloured by
// state, with the cause). Every string goes through textContent: peer names, metadata
// and refusal details come from other parties.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = {
  linked: "#1a7f37", new: "#b58100", dialling: "#b58100", refused: "#c62828",
  timed_out: "#c62828", unreachable: "#c62828", handshake_rejected: "#8250df",
  name_conflict: "#c62828", is_self: "#6b7280",
};

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function ago(t) {
  if (t === null || t === undefined) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? s.toFixed(1) + " s ago" : s < 3600 ? (s / 60).toFixed(0) + " min ago" : (s / 3600).toFixed(1) + " h ago";
}

function ms(seconds) {
  return seconds === null || seconds === undefined ? "-" : (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0) + " ms";
}

function sources(list) {
  return (list || []).map((s) => s.strategy + " (" + ago(s.since) + ")").join(", ") || "dialled us";
}

function row(tbody, cells, attrs) {
  const tr = el("tr", attrs);
  for (const c of cells) {
    const td = el("td", c && c.cls ? { class: c.cls } : {}, c && typeof c === "object" ? c.text : c);
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
}

function fill(id, rows) {
  const tbody = document.querySelector("#" + id + " tbody");
  tbody.replaceChildren();
  rows(tbody);
}

function ring(n, radius, cx, cy, offset) {
  return Array.from({ length: n }, (_, i) => {
    const a = offset + (2 * Math.PI * i) / Math.max(n, 1);
    return [cx + radius * Math.cos(a), cy + radius * Math.sin(a)];
  });
}

// where a label goes: outward from the centre, beyond the circle at (x, y)
function outward(x, y, cx, cy, by) {
  const d = Math.hypot(x - cx, y - cy) || 1;
  const dx = (x - cx) / d, dy = (y - cy) / d;
  const anchor = dx > 0.3 ? "start" : dx < -0.3 ? "end" : "middle";
  const step = anchor === "middle" ? by : by / 2;
  return [x + dx * step, y + dy * by + 4, anchor];
}

function drawMap(status) {
  const svg = document.getElementById("map");
  svg.replaceChildren();
  const cx = 380, cy = 230;  // labels of the outer ring need the margin
  const unlinked = status.candidates.filter((c) => c.state !== "linked" && c.state !== "is_self");
  const peers = status.peers;
  const inner = ring(peers.length, 120, cx, cy, -Math.PI / 2);
  // the outer ring starts between two peers, so its lines do not cover theirs
  const outer = ring(unlinked.length, 180, cx, cy, -Math.PI / 2 + Math.PI / Math.max(peers.length, 2));
  peers.forEach((p, i) => {
    const [x, y] = inner[i];
    svg.appendChild(el("svg:line", { x1: cx, y1: cy, x2: x, y2: y, stroke: COLOURS.linked, "stroke-width": 2 }));
  });
  unlinked.forEach((c, i) => {
    const [x, y] = outer[i];
    svg.appendChild(el("svg:line", { x1: cx, y1: cy, x2: x, y2: y, stroke: COLOURS[c.state] || "#999",
      "stroke-width": 1, "stroke-dasharray": "4 4" }));
  });
  const me = el("svg:g", { "data-node": status.node.name });
  me.appendChild(el("svg:circle", { cx, cy, r: 26, fill: "#0969da" }));
  me.appendChild(el("svg:text", { x: cx + 32, y: cy - 2 }, status.node.name));
  me.appendChild(el("svg:text", { x: cx + 32, y: cy + 12, class: "sub" }, status.node.address));
  svg.appendChild(me);
  peers.forEach((p, i) => {
    const [x, y] = inner[i];
    const g = el("svg:g", { "data-peer": p.name });
    g.appendChild(el("svg:title", {}, p.name + " " + p.address));
    g.appendChild(el("svg:circle", { cx: x, cy: y, r: 16, fill: COLOURS.linked }));
    const [lx, ly, anchor] = outward(x, y, cx, cy, 34);
    g.appendChild(el("svg:text", { x: lx, y: ly - 6, "text-anchor": anchor }, p.name));
    g.appendChild(el("svg:text", { x: lx, y: ly + 7, "text-anchor": anchor, class: "sub" }, "rtt " + ms(p.rtt)));
    svg.appendChild(g);
  });
  unlinked.forEach((c, i) => {
    const [x, y] = outer[i];
    const g = el("svg:g", { "data-candidate": c.endpoint, "data-state": c.state });
    g.appendChild(el("svg:title", {}, c.endpoint + ": " + c.state + (c.detail ? " - " + c.detail : "")));
    g.appendChild(el("svg:circle", { cx: x, cy: y, r: 10, fill: "#fff", stroke: COLOURS[c.state] || "#999", "stroke-width": 3 }));
    const [lx, ly, anchor] = outward(x, y, cx, cy, 26);
    g.appendChild(el("svg:text", { x: lx, y: ly - 6, "text-anchor": anchor }, c.endpoint));
    g.appendChild(el("svg:text", { x: lx, y: ly + 7, "text-anchor": anchor, class: "sub" }, c.state.replace("_", " ")));
    svg.appendChild(g);
  });
}

async function readyz() {
  try {
    const r = await fetch("readyz", { cache: "no-store" });
    return await r.json();
  } catch (e) {
    return null;
  }
}

function render(status, ready) {
  const n = status.node;
  document.title = "peerlink " + n.cluster + "/" + n.name;
  const title = document.getElementById("title");
  title.replaceChildren(document.createTextNode(n.cluster + "/" + n.name + " "));
  const isReady = ready && ready.ready;
  title.appendChild(el("span", { class: "badge " + (isReady ? "ready" : "notready"), id: "readiness" },
    isReady ? "ready" : "not ready"));
  document.getElementById("summary").textContent =
    n.address + " \u00b7 " + status.peers.length + " peer(s) \u00b7 " + n.failure_detection.text +
    " \u00b7 loop lag " + ms(status.loop_lag.last) + " (max " + ms(status.loop_lag.max) + ")" +
    " \u00b7 updated " + new Date().toLocaleTimeString();
  const banner = document.getElementById("banner");
  if (ready && !ready.ready) {
    banner.className = "show warn";
    banner.textContent = "not ready: " + ready.reasons.join("; ");
  } else {
    banner.className = "";
    banner.textContent = "";
  }
  drawMap(status);
  fill("peers", (tb) => status.peers.forEach((p) => row(tb, [p.name, p.address,
    p.direction === "out" ? "we dialled" : "it dialled", ms(p.rtt), ago(p.last_heard), ago(p.joined_at),
    sources(p.sources)], { "data-peer": p.name })));
  fill("candidates", (tb) => status.candidates.forEach((c) => row(tb, [c.endpoint,
    { text: c.state.replace("_", " "), cls: "state-" + c.state },
    c.state === "linked" ? "linked to " + c.peer : c.detail || "", sources(c.sources), c.attempts,
    c.retry_in === null ? "-" : c.retry_in.toFixed(1) + " s"], { "data-candidate": c.endpoint, "data-state": c.state })));
  fill("strategies", (tb) => status.strategies.forEach((s) => row(tb, [s.strategy,
    s.snapshot === null ? "no answer yet" : s.snapshot.length, ago(s.last_success),
    s.last_error ? s.last_error + " (" + ago(s.last_error_at) + ")" : ""])));
}

async function refresh() {
  try {
    const response = await fetch("status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const status = await response.json();
    render(status, await readyz());
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    const banner = document.getElementById("banner");
    banner.className = "show bad";
    banner.textContent = "cannot reach the node: " + e.message;
    document.getElementById("readiness")?.setAttribute("class", "badge down");
  } finally {
    setTimeout(refresh, 1000);
  }
}

refresh();
