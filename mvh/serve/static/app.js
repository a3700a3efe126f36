// mvh serve pages: search, slide viewer, stores. Plain JS; state the tests read lives on window.mvh*.
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
  for (const child of children || []) node.appendChild(child);
  return node;
}

function showNotes(target, notes) {
  target.replaceChildren(...(notes || []).map((n) => el("p", { class: "note", text: "note: " + n })));
}

function hitCard(hit) {
  const caption = `#${hit.rank} ${hit.slide_id} (${hit.x}, ${hit.y}) ${hit.score.toFixed(4)}`;
  const img = el("img", { src: hit.thumbnail_url, alt: caption, loading: "lazy" });
  const link = el("a", { href: hit.viewer_url, class: "hit-link" }, [img, el("div", { text: caption })]);
  return el("div", { class: "hit", "data-rank": String(hit.rank) }, [link]);
}

function rememberSearch(result) {
  sessionStorage.setItem(LAST_SEARCH, JSON.stringify({ store: result.store, hits: result.hits }));
}

// ------------------------------------------------------------------------------------------ search page
async function mvhSearchPage() {
  window.mvhSearch = { result: null, error: null };
  const form = document.getElementById("query");
  const fileInput = document.getElementById("image");
  const drop = document.getElementById("drop");
  const status = document.getElementById("status");
  const storeSelect = document.getElementById("store");
  let stores = [];
  try {
    stores = await api("/api/stores");
  } catch (err) {
    status.replaceChildren(el("span", { class: "error", text: err.message }));
    return;
  }
  storeSelect.replaceChildren(...stores.map((s) => el("option", { value: s.name, text: `${s.name} (${s.model}, ${s.n_tiles} tiles)` })));
  const noteStore = () => {
    const store = stores.find((s) => s.name === storeSelect.value);
    const note = document.getElementById("store-note");
    note.textContent = store && !store.image_queries ? store.image_queries_reason : "";
    fileInput.disabled = !!(store && !store.image_queries);
  };
  storeSelect.addEventListener("change", noteStore);
  noteStore();

  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) fileInput.files = e.dataTransfer.files;
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const k = document.getElementById("k").value || "10";
    const slideLevel = document.getElementById("slide_level").checked;
    const tile = document.getElementById("tile").value.trim();
    let request;
    if (fileInput.files.length) {
      const data = new FormData();
      data.append("image", fileInput.files[0]);
      data.append("k", k);
      data.append("store", storeSelect.value);
      data.append("slide_level", String(slideLevel));
      const mpp = document.getElementById("query_mpp").value;
      if (mpp) data.append("query_mpp", mpp);
      request = { method: "POST", body: data };
    } else if (tile) {
      request = {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ tile: tile, k: Number(k), store: storeSelect.value, slide_level: slideLevel }),
      };
    } else {
      status.replaceChildren(el("span", { class: "error", text: "choose an image or type SLIDE:X:Y" }));
      return;
    }
    status.textContent = "searching...";
    try {
      const result = await api("/api/search", request);
      window.mvhSearch.result = result;
      rememberSearch(result);
      status.textContent = `${result.hits.length} hits (${result.index})`;
      showNotes(document.getElementById("notes"), result.notes);
      const shown = el("div", { class: "queryshown" }, [
        el("img", { src: result.query.image, alt: "query as fed to the model" }),
        el("div", { text: `query as fed to the model: ${result.query.source}` }),
      ]);
      document.getElementById("results").replaceChildren(shown, ...result.hits.map(hitCard));
    } catch (err) {
      window.mvhSearch.error = err.message;
      status.replaceChildren(el("span", { class: "error", text: err.message }));
    }
  });
}

// ------------------------------------------------------------------------------------------ stores page
async function mvhStoresPage() {
  const main = document.getElementById("stores");
  try {
    const stores = await api("/api/stores");
    for (const s of stores) {
      const rows = [
        ["uri", s.uri], ["model", s.model], ["weights", s.weights_sha256], ["tiles", `${s.tile_px} px at ${s.mpp} um/px`],
        ["embedding", `${s.fingerprint.embedding_dtype} x ${s.embed_dim}`], ["slides", JSON.stringify(s.slides_by_status)],
        ["tiles stored", String(s.n_tiles)], ["store version", String(s.version)],
        ["created", `${s.created} by mvh ${s.mvh_version}`],
        ["image queries", s.image_queries ? "yes" : s.image_queries_reason],
      ];
      if (s.tags) rows.push(["tags", JSON.stringify(s.tags)]);
      if (s.versions) rows.push(["table versions", JSON.stringify(s.versions)]);
      if (s.card && Object.keys(s.card).length) rows.push(["dataset card", JSON.stringify(s.card)]);
      main.appendChild(el("h2", { text: s.name }));
      main.appendChild(el("table", { class: "fingerprint" }, rows.map(([k, v]) => el("tr", {}, [el("th", { text: k }), el("td", { text: v })]))));
      const slides = await api(`/api/stores/${encodeURIComponent(s.name)}/slides`);
      const head = el("tr", {}, ["slide", "status", "tiles", "size", "um/px", "error"].map((h) => el("th", { text: h })));
      const body = slides.map((r) => {
        const link = r.status === "done"
          ? el("a", { href: `/slides/${encodeURIComponent(r.slide_id)}?store=${encodeURIComponent(s.name)}`, text: r.slide_id })
          : el("span", { text: r.slide_id });
        return el("tr", { class: "slide-row" }, [el("td", {}, [link]), el("td", { text: r.status }), el("td", { text: String(r.n_tiles ?? "") }),
          el("td", { text: r.width ? `${r.width} x ${r.height}` : "" }), el("td", { text: r.mpp ? `${r.mpp} (${r.mpp_source})` : "" }),
          el("td", { text: r.error || "" })]);
      });
      main.appendChild(el("table", { class: "slides" }, [head, ...body]));
    }
  } catch (err) {
    main.replaceChildren(el("p", { class: "error", text: err.message }));
  }
}

// ------------------------------------------------------------------------------------------ viewer page
function rankColour(rank, n) {
  const hue = n > 1 ? (240 * (rank - 1)) / (n - 1) : 0;
  return `hsl(${hue}, 90%, 50%)`;
}

function rampColour(t) {
  // dark purple (low) -> yellow (high), like matplotlib's inferno
  const hue = 270 + 150 * t;
  return `hsl(${hue % 360}, 85%, ${15 + 45 * t}%)`;
}

function percentiles(values) {
  const order = values.map((v, i) => [v, i]).filter(([v]) => v !== null).sort((a, b) => a[0] - b[0]);
  const out = values.map(() => null);
  order.forEach(([, i], r) => { out[i] = order.length > 1 ? r / (order.length - 1) : 1; });
  return out;
}

function svgRect(x, y, w, h, attrs) {
  const r = document.createElementNS(SVG_NS, "rect");
  for (const [k, v] of Object.entries(Object.assign({ x, y, width: w, height: h }, attrs))) r.setAttribute(k, v);
  return r;
}

async function mvhViewerPage() {
  const params = new URLSearchParams(window.location.search);
  const slideId = decodeURIComponent(window.location.pathname.replace(/^\/slides\//, ""));
  const status = document.getElementById("status");
  const state = { slideId, store: params.get("store"), hits: [], grid: [], layers: [], sizeL0: null,
    width: null, height: null, ready: false, moreLikeThis: null, error: null };
  window.mvhViewer = state;
  document.getElementById("title").textContent = slideId;
  if (typeof OpenSeadragon === "undefined") {
    status.replaceChildren(el("span", { class: "error", text: "OpenSeadragon is not installed: run `make serve-assets` (npm ci in mvh/serve)" }));
    return;
  }
  try {
    if (!state.store) state.store = (await api("/api/stores"))[0].name;
    const base = `/api/stores/${encodeURIComponent(state.store)}/slides/${encodeURIComponent(slideId)}`;
    const [descriptor, tiles, overlays] = await Promise.all([
      api(`/api/dzi/${encodeURIComponent(state.store)}/${encodeURIComponent(slideId)}`),
      api(`${base}/tiles`),
      api(`/api/overlays/${encodeURIComponent(state.store)}/${encodeURIComponent(slideId)}`),
    ]);
    state.width = Number(descriptor.Image.Size.Width);
    state.height = Number(descriptor.Image.Size.Height);
    state.sizeL0 = tiles.size_l0;
    state.grid = tiles.x.map((x, i) => ({ x, y: tiles.y[i] }));
    state.layers = overlays.layers;
    showNotes(document.getElementById("notes"), overlays.results.flatMap((r) => r.notes));
    state.figures = overlays.figures;
    document.getElementById("figures").replaceChildren(...overlays.figures.map((f) => el("div", { class: "figure" }, [
      el("a", { href: f.url, target: "_blank", text: `figure ${f.key} (${f.results}: ${f.file})` }),
      ...(f.slide_id ? [el("img", { src: f.url, alt: f.key, class: "figure-img" })] : []),
    ])));
    document.getElementById("grid-count").textContent = `(${state.grid.length})`;

    const viewer = OpenSeadragon({
      element: document.getElementById("osd"), prefixUrl: "/vendor/openseadragon/images/",
      tileSources: descriptor, showNavigator: true, crossOriginPolicy: false,
      gestureSettingsMouse: { clickToZoom: true },
    });
    state.viewer = viewer;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${state.width} ${state.height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("id", "overlay");
    svg.style.pointerEvents = "none";
    const groups = {};
    for (const name of ["layers", "grid", "hits"]) {
      groups[name] = document.createElementNS(SVG_NS, "g");
      groups[name].setAttribute("id", `overlay-${name}`);
      svg.appendChild(groups[name]);
    }
    state.groups = groups;

    const drawGrid = () => {
      groups.grid.replaceChildren(...state.grid.map((t) => svgRect(t.x, t.y, state.sizeL0, state.sizeL0,
        { fill: "none", stroke: "#00e0ff", "stroke-width": state.sizeL0 / 40, class: "grid-tile" })));
      groups.grid.style.display = document.getElementById("show-grid").checked ? "" : "none";
    };
    const drawHits = () => {
      const n = state.hits.length;
      groups.hits.replaceChildren(...state.hits.map((h) => svgRect(h.x, h.y, state.sizeL0, state.sizeL0,
        { fill: "none", stroke: rankColour(h.rank, n), "stroke-width": state.sizeL0 / 14, class: "hit-box",
          "data-rank": String(h.rank) })));
      groups.hits.style.display = document.getElementById("show-hits").checked ? "" : "none";
      document.getElementById("hit-count").textContent = `(${n} on this slide)`;
    };
    state.setHits = (result) => {
      state.hits = result && result.store === state.store
        ? result.hits.filter((h) => h.slide_id === slideId).map((h) => ({ rank: h.rank, x: h.x, y: h.y, score: h.score }))
        : [];
      drawHits();
    };
    const drawLayer = (layer, channel) => {
      const values = percentiles(layer.values[channel]);
      const size = state.sizeL0;
      return layer.x.map((x, i) => {
        if (values[i] === null) return null;
        const left = layer.anchor === "centre" ? x - size / 2 : x;
        const top = layer.anchor === "centre" ? layer.y[i] - size / 2 : layer.y[i];
        return svgRect(left, top, size, size, { fill: rampColour(values[i]), "fill-opacity": 0.55,
          class: `layer-${layer.kind}`, "data-value": String(layer.values[channel][i]) });
      }).filter((r) => r !== null);
    };
    const layerBox = document.getElementById("layers");
    state.activeLayers = {};
    const redrawLayers = () => {
      const rects = [];
      state.layers.forEach((layer, i) => {
        const active = state.activeLayers[i];
        if (active) rects.push(...drawLayer(layer, active));
      });
      groups.layers.replaceChildren(...rects);
    };
    state.layers.forEach((layer, i) => {
      const box = el("input", { type: "checkbox", id: `layer-${i}`, class: "layer-toggle" });
      const pick = el("select", { id: `layer-${i}-channel` }, layer.channels.map((c) => el("option", { value: c, text: c })));
      const update = () => { state.activeLayers[i] = box.checked ? pick.value : null; redrawLayers(); };
      box.addEventListener("change", update);
      pick.addEventListener("change", update);
      const title = layer.kind === "attention" ? "attention heatmap" : "ST predicted expression";
      layerBox.appendChild(el("label", {}, [box, el("span", { text: ` ${title}: ${layer.label} ` }), pick]));
      layerBox.appendChild(el("div", { class: "legend", text: "colour: percentile within slide (dark = low, yellow = high)" }));
    });

    document.getElementById("show-grid").addEventListener("change", drawGrid);
    document.getElementById("show-hits").addEventListener("change", drawHits);

    viewer.addHandler("open", () => {
      const item = viewer.world.getItemAt(0);
      viewer.addOverlay({ element: svg, location: item.imageToViewportRectangle(0, 0, state.width, state.height) });
      drawGrid();
      const last = sessionStorage.getItem(LAST_SEARCH);
      state.setHits(last ? JSON.parse(last) : null);
      const x = Number(params.get("x")), y = Number(params.get("y"));
      if (params.has("x") && params.has("y")) {
        const s = state.sizeL0;
        viewer.viewport.fitBounds(item.imageToViewportRectangle(x - 2 * s, y - 2 * s, 5 * s, 5 * s), true);
      }
      state.ready = true;
    });
    viewer.addHandler("open-failed", (e) => { state.error = e.message; status.textContent = e.message; });
    viewer.addHandler("canvas-click", async (e) => {
      if (!document.getElementById("more-like-this").checked || !e.quick) return;
      e.preventDefaultAction = true;
      const p = viewer.world.getItemAt(0).viewerElementToImageCoordinates(e.position);
      const s = state.sizeL0;
      const tile = state.grid.find((t) => p.x >= t.x && p.x < t.x + s && p.y >= t.y && p.y < t.y + s);
      if (!tile) { status.textContent = `no stored tile at (${Math.round(p.x)}, ${Math.round(p.y)})`; return; }
      status.textContent = `searching with ${slideId}:${tile.x}:${tile.y} ...`;
      try {
        const result = await api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ tile: `${slideId}:${tile.x}:${tile.y}`, store: state.store, k: 10 }) });
        state.moreLikeThis = result;
        rememberSearch(result);
        state.setHits(result);
        status.textContent = `more like ${slideId}:${tile.x}:${tile.y}: ${result.hits.length} hits`;
        document.getElementById("more").replaceChildren(...result.hits.map(hitCard));
      } catch (err) {
        state.error = err.message;
        status.replaceChildren(el("span", { class: "error", text: err.message }));
      }
    });
  } catch (err) {
    state.error = err.message;
    status.replaceChildren(el("span", { class: "error", text: err.message }));
  }
}
