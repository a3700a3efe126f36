// mvh serve pages: helpers shared by the search, viewer and stores pages. Plain JS, no build step.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const LAST_SEARCH = "mvh.lastSearch";

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) {
    window.location.href = "/login";
    throw new Error("a token is needed");
  }
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children || []) node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  return node;
}

function table(rows, attrs) {
  // rows: [label, value] pairs; a value may be a node
  return el("table", attrs || {}, rows.map(([k, v]) => el("tr", {}, [el("th", { text: k }),
    v instanceof Node ? el("td", {}, [v]) : el("td", { text: v === null || v === undefined ? "" : String(v) })])));
}

function showNotes(target, notes) {
  target.replaceChildren(...(notes || []).map((n) => el("p", { class: "note", text: "note: " + n })));
}

// Hit colour by rank among ALL the hits of the search: red (rank 1) to blue (rank n); the hue stays in
// 0-240 and never wraps. mvh/interop/geojson.py `rank_colour` gives QuPath the same colours.
function rankColour(rank, n) {
  const hue = n > 1 ? Math.min(240, Math.max(0, (240 * (rank - 1)) / (n - 1))) : 0;
  return `hsl(${hue}, 90%, 50%)`;
}

function similarity(score) {
  return `similarity ${score.toFixed(2)}`;
}

function rememberSearch(result) {
  sessionStorage.setItem(LAST_SEARCH, JSON.stringify(result));
}

function lastSearch() {
  const saved = sessionStorage.getItem(LAST_SEARCH);
  return saved ? JSON.parse(saved) : null;
}

function storeWhere(location) {
  // "local", "S3 @tag", "Azure version 3"
  if (!location) return "";
  const pin = location.tag ? ` @${location.tag}` : location.pinned_version ? ` version ${location.pinned_version}` : "";
  return location.kind + pin;
}

// Hits at the same level-0 place of identical scans (same file hash) are one group, best rank first.
function groupHits(hits) {
  const groups = [];
  const byKey = new Map();
  for (const hit of hits) {
    const key = hit.file_hash ? `${hit.file_hash}|${hit.x}|${hit.y}` : `slide|${hit.slide_id}|${hit.x}|${hit.y}`;
    if (byKey.has(key)) byKey.get(key).also.push(hit);
    else {
      const group = { hit, also: [] };
      byKey.set(key, group);
      groups.push(group);
    }
  }
  return groups;
}

function hitCard(group, scale) {
  const hit = group.hit;
  const caption = `#${hit.rank} ${similarity(hit.score)}`;
  const img = el("img", { src: hit.thumbnail_url, alt: `${caption}, ${hit.slide_id} (${hit.x}, ${hit.y})`, loading: "lazy" });
  const lines = [el("div", { class: "caption", text: caption }), el("div", { text: `${hit.slide_id} (${hit.x}, ${hit.y})` })];
  if (scale) lines.push(el("div", { class: "scale", text: scale }));
  const link = el("a", { href: hit.viewer_url, class: "hit-link" }, [img, ...lines]);
  const children = [link];
  if (group.also.length) {
    const also = el("div", { class: "also" }, ["also in: "]);
    group.also.forEach((h, i) => {
      if (i) also.appendChild(document.createTextNode(", "));
      also.appendChild(el("a", { href: h.viewer_url, text: `${h.slide_id} #${h.rank}` }));
    });
    children.push(also);
  }
  return el("div", { class: "hit", "data-rank": String(hit.rank), "data-also": String(group.also.length) }, children);
}
