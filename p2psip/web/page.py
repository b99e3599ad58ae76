"""
The status page served at ``GET /``: one self-contained HTML document.

It loads nothing from elsewhere (the admin port is often reachable only
through an SSH tunnel, and a status page must work offline), polls
``status`` and, on the bootstrap, ``api/ring`` every few seconds, and builds
the DOM with ``textContent`` only: the status contains addresses and names
that other peers chose, which must never be interpreted as markup.  A red
banner is shown while ``status`` says ``"insecure": true`` (``--insecure``).
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
#ring svg { background: #fff; border: 1px solid #ddd; }
#ring circle.node { fill: #2a6ebb; }
#ring circle.track { fill: none; stroke: #999; stroke-width: 1.5; }
#ring text { font: 10px ui-monospace, monospace; fill: #333; }
#insecure { background: #b00; color: #fff; font-weight: bold; padding: .5em .8em; margin: .5em 0; }
#insecure[hidden] { display: none; }
""".strip()

# The script reads two values from data attributes of <body>, so the script
# text is the same for every role and its CSP hash is a constant.
_SCRIPT = """
"use strict";
const body = document.body;
const REFRESH_MS = Number(body.dataset.refreshSeconds) * 1000;
const SHOW_RING = body.dataset.ring === "yes";
const HEX_ID = /^[0-9a-fA-F]{1,32}$/;

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function scalar(value) {
  if (value === null) return "-";
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
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

// Position on the ring as a fraction of 2**128, from the top 53 bits.
function ringFraction(hex) {
  const id = BigInt("0x" + hex.padStart(32, "0"));
  return Number(id >> 75n) / 2 ** 53;
}

function renderRing(ring) {
  const target = document.getElementById("ring");
  target.replaceChildren();
  target.appendChild(el("h2", "ring"));
  const nodes = (Array.isArray(ring.nodes) ? ring.nodes : [])
    .filter((n) => isPlainObject(n) && typeof n.node_id === "string" && HEX_ID.test(n.node_id));
  const size = 420, centre = size / 2, radius = 150;
  const picture = svg("svg", { width: size, height: size, viewBox: `0 0 ${size} ${size}`, role: "img" });
  picture.appendChild(svg("circle", { class: "track", cx: centre, cy: centre, r: radius }));
  for (const node of nodes) {
    const angle = ringFraction(node.node_id) * 2 * Math.PI - Math.PI / 2;
    const x = centre + radius * Math.cos(angle), y = centre + radius * Math.sin(angle);
    const dot = svg("circle", { class: "node", cx: x.toFixed(1), cy: y.toFixed(1), r: 5 });
    const tip = svg("title", {});
    tip.textContent = node.node_id + " " + scalar(node.address);
    dot.appendChild(tip);
    picture.appendChild(dot);
    const lx = centre + (radius + 22) * Math.cos(angle), ly = centre + (radius + 22) * Math.sin(angle);
    const label = svg("text", { x: lx.toFixed(1), y: ly.toFixed(1), "text-anchor": "middle" });
    label.textContent = node.node_id.slice(0, 6);
    picture.appendChild(label);
  }
  target.appendChild(picture);
  const summary = `${nodes.length} node(s); ring ${ring.complete ? "complete" : "not yet complete"}`;
  target.appendChild(el("p", summary));
  target.appendChild(renderRows(nodes.map((n) => ({ node_id: n.node_id, address: n.address })), 0));
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

async function refresh() {
  const updated = document.getElementById("updated");
  try {
    renderStatus(await getJson("status"));
    if (SHOW_RING) renderRing(await getJson("api/ring"));
    updated.textContent = "updated " + new Date().toLocaleTimeString();
    updated.className = "";
  } catch (error) {
    updated.textContent = "cannot refresh (" + error.message + "); showing older data";
    updated.className = "stale";
  }
}

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
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
)


def render_page(title: str, ring_page: bool) -> bytes:
    """The status page for a role called ``title``, with the ring drawing if asked."""
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
<div id="ring"></div>
<div id="status"></div>
<p><a href="status">status JSON</a> &middot; <a href="metrics">metrics</a></p>
<script>{_SCRIPT}</script>
</body>
</html>
"""
    return document.encode("utf-8")
