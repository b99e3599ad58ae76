"""
The page served at ``GET /``: one self-contained HTML document.

It loads nothing from elsewhere (the admin port is often reachable only
through an SSH tunnel, and a status page must work offline) and redraws
itself every few seconds:

* on every role, a summary of the node (state, its registrations, the
  calls through it and its media relay sessions) and the whole ``/status``
  document below it, from ``status``;
* on ring roles, a picture of the ring drawn as SVG by the page's own
  script: the members on a circle by Node-ID, the arc each is
  responsible for, this node's links styled by how they were made
  (plain connect, direct, simultaneous open, low-TTL SYN, relayed), and
  the fingers of a member the operator picks (click a dot, or choose it
  in the list), from ``api/ring-view`` and ``api/peer-tables``.

The ring data needs the role's admin token (it names every member and its
address, and a walk costs the ring one Attach per member).  The page asks
for it in a form, or takes it from the address's fragment
(``#token=...``, which browsers do not send to the server; the page then
removes it from the address bar), and keeps it in the tab's
``sessionStorage`` only.  ``#select=NODE_ID`` in the fragment picks the
member whose fingers are drawn.

The DOM is built with ``textContent`` only: the status contains addresses
and names that other peers chose, which must never be interpreted as
markup.  A red banner is shown while ``status`` says ``"insecure": true``.
"""

from __future__ import annotations

import base64
import hashlib
import html

REFRESH_SECONDS = 5

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em 0; }
h2 { font-size: 1.1em; margin: 1.2em 0 .3em 0; border-bottom: 1px solid #ccc; }
#updated { color: #666; font-size: .9em; }
#updated.stale { color: #b00; font-weight: bold; }
table { border-collapse: collapse; margin: .2em 0; }
th, td { text-align: left; vertical-align: top; padding: .1em .8em .1em 0; }
th { font-weight: 600; color: #444; }
td.value { font-family: ui-monospace, monospace; word-break: break-all; }
ol, ul { margin: 0; padding-left: 1.4em; }
#summary .figure { font-size: 1.6em; font-weight: 600; }
#summary td { padding-right: 2em; }
#ring[hidden], #token-form[hidden] { display: none; }
#ring-error { color: #b00; }
#ring-picture { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
#ring svg { background: #fff; border: 1px solid #ddd; cursor: default; }
#ring .track { fill: none; stroke: #ccc; stroke-width: 1; }
#ring .arc { fill: none; stroke-width: 9; opacity: .55; }
#ring .arc.even { stroke: #7fa7d6; }
#ring .arc.odd { stroke: #b9cce4; }
#ring .arc.selected { stroke: #f0a030; opacity: .9; }
#ring circle.member { fill: #2a6ebb; stroke: #fff; stroke-width: 1.5; cursor: pointer; }
#ring circle.member.this { fill: #1a8f3a; }
#ring circle.member.selected { stroke: #f0a030; stroke-width: 3; }
#ring text { font: 10px ui-monospace, monospace; fill: #333; pointer-events: none; }
#ring .link { fill: none; stroke-width: 2; }
#ring .path-connect { stroke: #777; }
#ring .path-direct { stroke: #1a8f3a; }
#ring .path-simultaneous-open { stroke: #2a6ebb; stroke-dasharray: 6 3; }
#ring .path-low-ttl { stroke: #6a4cb0; stroke-dasharray: 8 3 2 3; }
#ring .path-relayed { stroke: #d0601a; stroke-dasharray: 2 3; }
#ring .finger { fill: none; stroke: #c03090; stroke-width: 1.5; opacity: .8; }
#ring .legend line { stroke-width: 2; }
#ring .legend text { font: 11px system-ui, sans-serif; }
#tables h3 { font-size: 1em; margin: .6em 0 .2em 0; }
#insecure { background: #b00; color: #fff; font-weight: bold; padding: .5em .8em; margin: .5em 0; }
#insecure[hidden] { display: none; }
""".strip()

# The script reads its settings from data attributes of <body>, so the
# script text is the same for every role and its CSP hash is a constant.
_SCRIPT = """
"use strict";
const body = document.body;
const REFRESH_MS = Number(body.dataset.refreshSeconds) * 1000;
const SHOW_RING = body.dataset.ring === "yes";
const HEX_ID = /^[0-9a-f]{32}$/;
const TOKEN_KEY = "p2psip-admin-token";
const SVG_NS = "http://www.w3.org/2000/svg";
const PATHS = ["connect", "direct", "simultaneous-open", "low-ttl", "relayed"];
const PATH_NAMES = {
  "connect": "connect (listener)", "direct": "direct (mediator)",
  "simultaneous-open": "simultaneous open", "low-ttl": "low-TTL SYN", "relayed": "relayed",
};
let selected = null;

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function scalar(value) {
  if (value === null || value === undefined) return "-";
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function count(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function renderValue(value, depth) {
  if (Array.isArray(value)) {
    if (value.length === 0) return el("span", "(none)");
    if (value.every(isPlainObject)) return renderRows(value, depth);
    const list = el("ol");
    for (const item of value) {
      const li = el("li");
      li.appendChild(renderValue(item, depth + 1));
      list.appendChild(li);
    }
    return list;
  }
  if (isPlainObject(value)) return renderObject(value, depth + 1);
  const span = el("span", scalar(value));
  span.className = "value";
  return span;
}

function renderRows(rows, depth) {
  const columns = [];
  for (const row of rows) for (const key of Object.keys(row)) if (!columns.includes(key)) columns.push(key);
  const table = el("table");
  const head = el("tr");
  for (const column of columns) head.appendChild(el("th", column));
  table.appendChild(head);
  for (const row of rows) {
    const tr = el("tr");
    for (const column of columns) {
      const td = el("td");
      td.className = "value";
      td.appendChild(renderValue(row[column] === undefined ? null : row[column], depth + 1));
      tr.appendChild(td);
    }
    table.appendChild(tr);
  }
  return table;
}

function renderObject(object, depth) {
  const table = el("table");
  for (const [key, value] of Object.entries(object)) {
    const tr = el("tr");
    tr.appendChild(el("th", key));
    const td = el("td");
    td.className = "value";
    td.appendChild(renderValue(value, depth));
    tr.appendChild(td);
    table.appendChild(tr);
  }
  return table;
}

// --insecure rings say so in /status; the banner cannot be missed.
function renderInsecure(status) {
  const banner = document.getElementById("insecure");
  banner.hidden = !(isPlainObject(status) && status.insecure === true);
}

function renderStatus(status) {
  renderInsecure(status);
  renderSummary(status);
  const target = document.getElementById("status");
  target.replaceChildren();
  if (!isPlainObject(status)) {
    target.appendChild(renderValue(status, 0));
    return;
  }
  for (const [section, value] of Object.entries(status)) {
    target.appendChild(el("h2", section));
    target.appendChild(renderValue(value, 0));
  }
}

// The node at a glance: registrations, calls and relay sessions, from the
// sip section of /status (absent when the role serves no SIP, and the
// relay part absent until a media relay runs beside the SIP service).
function summaryFigures(status) {
  const sip = isPlainObject(status) && isPlainObject(status.sip) ? status.sip : null;
  const figures = [];
  const add = (key, label, value, note) => figures.push({ key, label, value, note });
  add("state", "state", isPlainObject(status) ? scalar(status.state) : "-", scalar(status && status.role));
  if (sip === null) {
    add("registrations", "registrations", "-", "no SIP service on this role");
    add("calls", "calls", "-", "no SIP service on this role");
    add("relay-sessions", "relay sessions", "-", "no SIP service on this role");
    return figures;
  }
  const registrations = isPlainObject(sip.registrations) ? sip.registrations : {};
  const aors = count(registrations.aors);
  add("registrations", "registrations", aors === null ? "-" : String(aors),
      `${scalar(count(registrations.bindings))} binding(s)`);
  const calls = isPlainObject(sip.calls) ? sip.calls : {};
  const inProgress = count(calls.in_progress);
  add("calls", "calls in progress", inProgress === null ? "-" : String(inProgress),
      `${scalar(count(calls.answered))} answered, ${scalar(count(calls.failed))} failed`);
  const relay = isPlainObject(sip.media_relay) ? sip.media_relay : null;
  const sessions = relay === null ? null : count(relay.sessions);
  const relaying = sessions !== null && relay.policy !== "never";
  add("relay-sessions", "relay sessions", relaying ? String(sessions) : "0",
      relaying ? `media relay policy: ${scalar(relay.policy)}` : "no media relay on this node");
  return figures;
}

function renderSummary(status) {
  const target = document.getElementById("summary");
  const row = el("tr");
  const notes = el("tr");
  for (const figure of summaryFigures(status)) {
    const cell = el("td");
    cell.appendChild(el("div", figure.label));
    const value = el("div", figure.value);
    value.className = "figure";
    value.id = "figure-" + figure.key;
    cell.appendChild(value);
    row.appendChild(cell);
    notes.appendChild(el("td", figure.note));
  }
  const table = el("table");
  table.append(row, notes);
  target.replaceChildren(el("h2", "this node"), table);
}

// -- the admin token ---------------------------------------------------------

function fragmentSettings() {
  const settings = new URLSearchParams(location.hash.slice(1));
  const token = settings.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    settings.delete("token");
    const rest = settings.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
  const wanted = (settings.get("select") || "").toLowerCase();
  if (HEX_ID.test(wanted)) selected = wanted;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function askForToken(why) {
  document.getElementById("token-form").hidden = false;
  document.getElementById("token-why").textContent = why;
}

function setUpTokenForm() {
  const form = document.getElementById("token-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    const given = input.value.trim();
    input.value = "";
    if (!given) return;
    sessionStorage.setItem(TOKEN_KEY, given);
    form.hidden = true;
    refresh();
  });
}

class Unauthorised extends Error {}

async function getJson(path, authorised) {
  const headers = { "Accept": "application/json" };
  if (authorised) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, { cache: "no-store", headers });
  if (response.status === 401) throw new Unauthorised(path + ": the admin token was refused");
  if (!response.ok) {
    let message = "HTTP " + response.status;
    try { message = (await response.json()).error || message; } catch (ignored) { /* not JSON */ }
    throw new Error(path + ": " + message);
  }
  return response.json();
}

// -- the ring picture ----------------------------------------------------------

const SIZE = 460, CENTRE = SIZE / 2, RADIUS = 170;

// Position on the ring as a fraction of 2**128, from the top 53 bits.
function ringFraction(hex) {
  const id = BigInt("0x" + hex);
  return Number(id >> 75n) / 2 ** 53;
}

function point(hex, radius) {
  const angle = ringFraction(hex) * 2 * Math.PI - Math.PI / 2;
  return [CENTRE + radius * Math.cos(angle), CENTRE + radius * Math.sin(angle)];
}

function fixed(value) {
  return value.toFixed(1);
}

// The arc a member is responsible for: clockwise from its predecessor to itself.
function arcPath(fromHex, toHex, share) {
  const [x1, y1] = point(fromHex, RADIUS);
  const [x2, y2] = point(toHex, RADIUS);
  if (share >= 0.999999) {
    const [xo, yo] = [2 * CENTRE - x2, 2 * CENTRE - y2];
    return `M ${fixed(x2)} ${fixed(y2)} A ${RADIUS} ${RADIUS} 0 1 1 ${fixed(xo)} ${fixed(yo)} ` +
      `A ${RADIUS} ${RADIUS} 0 1 1 ${fixed(x2)} ${fixed(y2)}`;
  }
  const large = share > 0.5 ? 1 : 0;
  return `M ${fixed(x1)} ${fixed(y1)} A ${RADIUS} ${RADIUS} 0 ${large} 1 ${fixed(x2)} ${fixed(y2)}`;
}

// A chord bowed towards the centre, so that lines between neighbours stay visible.
function chordPath(fromHex, toHex, bow) {
  const [x1, y1] = point(fromHex, RADIUS);
  const [x2, y2] = point(toHex, RADIUS);
  const cx = (x1 + x2) / 2 * (1 - bow) + CENTRE * bow, cy = (y1 + y2) / 2 * (1 - bow) + CENTRE * bow;
  return `M ${fixed(x1)} ${fixed(y1)} Q ${fixed(cx)} ${fixed(cy)} ${fixed(x2)} ${fixed(y2)}`;
}

function titled(node, text) {
  const tip = svg("title", {});
  tip.textContent = text;
  node.appendChild(tip);
  return node;
}

function validMembers(view) {
  return (Array.isArray(view.members) ? view.members : []).filter(
    (m) => isPlainObject(m) && HEX_ID.test(m.node_id) && HEX_ID.test(m.arc_from));
}

function drawRing(view, tables) {
  const members = validMembers(view);
  const known = new Set(members.map((m) => m.node_id));
  const picture = svg("svg", {
    id: "ring-svg", width: SIZE, height: SIZE + 110, viewBox: `0 0 ${SIZE} ${SIZE + 110}`, role: "img",
    "aria-label": `ring of ${members.length} member(s)`,
  });
  picture.appendChild(svg("circle", { class: "track", cx: CENTRE, cy: CENTRE, r: RADIUS }));
  members.forEach((member, index) => {
    const arc = svg("path", {
      class: "arc " + (index % 2 ? "odd" : "even") + (member.node_id === selected ? " selected" : ""),
      d: arcPath(member.arc_from, member.node_id, Number(member.share)),
      "data-node-id": member.node_id,
    });
    picture.appendChild(titled(arc, `${member.node_id} is responsible for ` +
      `(${member.arc_from}, ${member.node_id}]: ${(100 * Number(member.share)).toFixed(2)}% of the ids`));
  });
  const links = (Array.isArray(view.links) ? view.links : []).filter(
    (l) => isPlainObject(l) && HEX_ID.test(l.peer) && known.has(l.peer) && l.peer !== view.node_id);
  for (const link of links) {
    const path = PATHS.includes(link.path) ? link.path : "connect";
    const line = svg("path", {
      class: `link path-${path}`, d: chordPath(view.node_id, link.peer, 0.15),
      "data-peer": link.peer, "data-path": path,
    });
    picture.appendChild(titled(line, `link to ${link.peer}: ${PATH_NAMES[path]}, ` +
      `${scalar(link.direction)}, ${scalar(link.transport)}, rtt ${scalar(link.rtt_ms)} ms`));
  }
  if (tables !== null && known.has(tables.node_id)) {
    for (const finger of (Array.isArray(tables.fingers) ? tables.fingers : [])) {
      if (!HEX_ID.test(finger) || finger === tables.node_id) continue;
      const line = svg("path", {
        class: "finger", d: chordPath(tables.node_id, finger, 0.6), "data-peer": finger,
      });
      picture.appendChild(titled(line, `finger of ${tables.node_id}: ${finger}`));
    }
  }
  members.forEach((member, index) => {
    const [x, y] = point(member.node_id, RADIUS);
    const classes = ["member"];
    if (member.this) classes.push("this");
    if (member.node_id === selected) classes.push("selected");
    const dot = svg("circle", {
      class: classes.join(" "), cx: fixed(x), cy: fixed(y), r: member.this ? 7 : 6,
      "data-node-id": member.node_id, tabindex: 0,
    });
    titled(dot, `${member.node_id} at ${scalar(member.address)}` + (member.this ? " (this node)" : ""));
    dot.addEventListener("click", () => choose(member.node_id));
    dot.addEventListener("keydown", (event) => { if (event.key === "Enter") choose(member.node_id); });
    picture.appendChild(dot);
    // Alternate label distances, so that members close together stay readable.
    const [lx, ly] = point(member.node_id, RADIUS + (index % 2 ? 36 : 22));
    const label = svg("text", { x: fixed(lx), y: fixed(ly + 3), "text-anchor": "middle" });
    label.textContent = member.node_id.slice(0, 6);
    picture.appendChild(label);
  });
  picture.appendChild(legend());
  return picture;
}

function legend() {
  const group = svg("g", { class: "legend" });
  const entries = [...PATHS.map((p) => [`link path-${p}`, "link: " + PATH_NAMES[p]]),
    ["finger", "finger of the chosen member"]];
  entries.forEach(([cls, text], index) => {
    const x = 10 + (index % 2) * 225, y = SIZE + 15 + Math.floor(index / 2) * 20;
    group.appendChild(svg("path", { class: cls, d: `M ${x} ${y} L ${x + 30} ${y}` }));
    const label = svg("text", { x: x + 36, y: y + 4 });
    label.textContent = text;
    group.appendChild(label);
  });
  return group;
}

function choose(nodeId) {
  selected = nodeId;
  history.replaceState(null, "", location.pathname + location.search + "#select=" + nodeId);
  refresh();
}

function memberTable(view) {
  const rows = validMembers(view).map((m) => ({
    node_id: m.node_id + (m.this ? " (this node)" : ""),
    address: m.address,
    "share of ids": (100 * Number(m.share)).toFixed(2) + "%",
    "links from here": (Array.isArray(m.paths) && m.paths.length) ? m.paths.join(", ") : "-",
  }));
  return renderRows(rows, 0);
}

function chooser(view) {
  const label = el("label", "member whose fingers are drawn: ");
  const select = el("select");
  select.id = "member-select";
  for (const member of validMembers(view)) {
    const option = el("option", member.node_id + (member.this ? " (this node)" : ""));
    option.value = member.node_id;
    option.selected = member.node_id === selected;
    select.appendChild(option);
  }
  select.addEventListener("change", () => choose(select.value));
  label.appendChild(select);
  return label;
}

function tablesPanel(tables, error) {
  const panel = el("div");
  panel.id = "tables";
  if (error !== null) {
    panel.appendChild(el("p", "cannot read the tables of " + selected + ": " + error));
    return panel;
  }
  if (tables === null) return panel;
  panel.dataset.nodeId = tables.node_id;
  panel.appendChild(el("h3", "tables of " + tables.node_id));
  panel.appendChild(el("p", `reported ${scalar(tables.age_seconds)} s ago; up ${scalar(tables.uptime_seconds)} s`));
  for (const key of ["successors", "predecessors", "fingers"]) {
    panel.appendChild(el("h3", key));
    const list = el("ol");
    list.className = "tables-" + key;
    for (const id of (Array.isArray(tables[key]) ? tables[key] : [])) list.appendChild(el("li", scalar(id)));
    panel.appendChild(list.childElementCount ? list : el("p", "(none)"));
  }
  return panel;
}

async function refreshRing() {
  const section = document.getElementById("ring");
  const error = document.getElementById("ring-error");
  if (!token()) {
    section.hidden = true;
    askForToken("The ring picture needs this role's admin token: the file admin-token in its data-dir.");
    return;
  }
  let view;
  try {
    view = await getJson("api/ring-view", true);
  } catch (failure) {
    if (failure instanceof Unauthorised) {
      sessionStorage.removeItem(TOKEN_KEY);
      section.hidden = true;
      askForToken("That admin token was refused; paste the one in the role's data-dir (admin-token).");
      return;
    }
    // Shown above the last picture (if any), which stays as it was.
    error.textContent = "cannot redraw the ring: " + failure.message;
    document.getElementById("token-form").hidden = true;
    section.hidden = false;
    return;
  }
  if (selected === null || !validMembers(view).some((m) => m.node_id === selected)) {
    selected = HEX_ID.test(view.node_id) ? view.node_id : null;
  }
  let tables = null, tablesError = null;
  if (selected !== null) {
    try {
      tables = await getJson("api/peer-tables?node=" + selected, true);
    } catch (failure) {
      tablesError = failure.message;
    }
  }
  error.textContent = "";
  const summary = `${scalar(view.count)} member(s); ring ${view.complete ? "complete" : "not yet complete"}`;
  const picture = document.getElementById("ring-picture");
  const side = el("div");
  side.append(chooser(view), tablesPanel(tables, tablesError));
  picture.replaceChildren(drawRing(view, tables), side);
  document.getElementById("ring-summary").textContent = summary;
  document.getElementById("members").replaceChildren(memberTable(view));
  document.getElementById("token-form").hidden = true;
  section.hidden = false;
  section.dataset.selected = selected || "";
}

// One refresh at a time: a slow answer (a member's tables can take up to
// the request timeout) must not pile up polls that redraw out of order.
let refreshing = false, refreshAgain = false;

async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  const updated = document.getElementById("updated");
  try {
    renderStatus(await getJson("status", false));
    if (SHOW_RING) await refreshRing();
    updated.textContent = "updated " + new Date().toLocaleTimeString();
    updated.className = "";
  } catch (failure) {
    updated.textContent = "cannot refresh (" + failure.message + "); showing older data";
    updated.className = "stale";
  } finally {
    refreshing = false;
  }
  if (refreshAgain) {
    refreshAgain = false;
    refresh();
  }
}

fragmentSettings();
setUpTokenForm();
refresh();
setInterval(refresh, REFRESH_MS);
""".strip()


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


#: Allow only our own inline script and style, and fetches to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"script-src {_csp_hash(_SCRIPT)}; "
    f"style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)


def render_page(title: str, ring_page: bool) -> bytes:
    """The page for a role called ``title``, with the ring picture if ``ring_page``."""
    escaped = html.escape(title)
    ring_flag = "yes" if ring_page else "no"
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escaped}</title>
<style>{_STYLE}</style>
</head>
<body data-refresh-seconds="{REFRESH_SECONDS}" data-ring="{ring_flag}">
<h1>{escaped}</h1>
<div id="updated">loading&hellip;</div>
<div id="insecure" hidden>INSECURE RING (--insecure): self-signed certificates and no CA, so
anyone can join this ring and write any user's registration. For development only.</div>
<noscript><p>This page needs JavaScript; the raw data is at
<a href="status">/status</a> and <a href="metrics">/metrics</a>.</p></noscript>
<div id="summary"></div>
<form id="token-form" hidden>
<h2>ring</h2>
<p id="token-why"></p>
<label>admin token <input id="token-input" type="password" autocomplete="off" size="48"></label>
<button type="submit">show the ring</button>
</form>
<div id="ring" hidden>
<h2>ring</h2>
<p id="ring-summary"></p>
<p id="ring-error"></p>
<div id="ring-picture"></div>
<div id="members"></div>
</div>
<div id="status"></div>
<p><a href="status">status JSON</a> &middot; <a href="metrics">metrics</a></p>
<script>{_SCRIPT}</script>
</body>
</html>
"""
    return document.encode("utf-8")
