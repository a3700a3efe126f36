// The slide viewer: OpenSeadragon over DeepZoom tiles in level-0 px, with the search's hits, the tile grid
// and result layers drawn as SVG in the same coordinates; state the tests read lives on window.mvhViewer.
"use strict";

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

function viewerUrl(store, hit) {
  return `/slides/${encodeURIComponent(hit.slide_id)}?store=${encodeURIComponent(store)}&x=${hit.x}&y=${hit.y}`;
}

function renderHitList(state, goTo) {
  // every hit of the last search, across slides, coloured by rank among them all
  const list = document.getElementById("hit-list");
  const search = state.search;
  if (!search || !search.hits.length) {
    list.replaceChildren(el("li", { class: "note", text: "no search yet: search from the Search page" }));
    return;
  }
  const n = search.hits.length;
  list.replaceChildren(...search.hits.map((h, i) => {
    const here = h.slide_id === state.slideId && search.store === state.store;
    const item = el("li", { class: "hit-item" + (here ? " here" : ""), "data-rank": String(h.rank) }, [
      el("span", { class: "swatch", style: `background:${rankColour(h.rank, n)}` }),
      el("a", { href: viewerUrl(search.store, h), text: `#${h.rank} ${similarity(h.score)}` }),
      el("span", { class: "where", text: ` ${h.slide_id} (${h.x}, ${h.y})` }),
    ]);
    item.querySelector("a").addEventListener("click", (e) => { e.preventDefault(); goTo(i); });
    return item;
  }));
}

function bindHitSteps(state, goTo) {
  // n / p and the buttons step through the search's hits by rank (to another slide's page if need be)
  const step = (delta) => {
    if (!state.search || !state.search.hits.length) return;
    const last = state.search.hits.length - 1;
    goTo(state.current === null ? 0 : Math.min(last, Math.max(0, state.current + delta)));
  };
  document.getElementById("next-hit").addEventListener("click", () => step(1));
  document.getElementById("prev-hit").addEventListener("click", () => step(-1));
  document.addEventListener("keydown", (e) => {
    const active = document.activeElement;
    const typing = /^(SELECT|TEXTAREA)$/.test(active.tagName) ||
      (active.tagName === "INPUT" && /^(text|number|search|password)$/.test(active.type));
    if (e.ctrlKey || e.metaKey || e.altKey || typing) return;
    if (e.key === "n") step(1);
    else if (e.key === "p") step(-1);
  });
}

async function downloadHits(state) {
  const n = state.search.hits.length;
  const body = JSON.stringify({ hits: state.hits, n_hits: n });
  const url = `/api/stores/${encodeURIComponent(state.store)}/slides/${encodeURIComponent(state.slideId)}/hits.geojson`;
  const response = await fetch(url, { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body });
  if (!response.ok) throw new Error((await response.json()).detail);
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `${state.slideId}.hits.geojson` });
  document.body.appendChild(link);
  link.click();
  link.remove();
}

async function mvhViewerPage() {
  const params = new URLSearchParams(window.location.search);
  const slideId = decodeURIComponent(window.location.pathname.replace(/^\/slides\//, ""));
  const status = document.getElementById("status");
  const state = { slideId, store: params.get("store"), hits: [], grid: [], layers: [], sizeL0: null, mpp: null,
    width: null, height: null, ready: false, moreLikeThis: null, error: null, current: null, search: lastSearch() };
  window.mvhViewer = state;
  document.getElementById("title").textContent = slideId;
  if (typeof OpenSeadragon === "undefined") {
    status.replaceChildren(el("span", { class: "error", text: "OpenSeadragon is not installed: run `make serve-assets` (npm ci in mvh/serve)" }));
    return;
  }
  try {
    if (!state.store) state.store = (await api("/api/stores"))[0].name;
    const base = `/api/stores/${encodeURIComponent(state.store)}/slides/${encodeURIComponent(slideId)}`;
    const [descriptor, tiles, overlays, meta] = await Promise.all([
      api(`/api/dzi/${encodeURIComponent(state.store)}/${encodeURIComponent(slideId)}`),
      api(`${base}/tiles`),
      api(`/api/overlays/${encodeURIComponent(state.store)}/${encodeURIComponent(slideId)}`),
      api(`${base}/metadata`),
    ]);
    state.width = Number(descriptor.Image.Size.Width);
    state.height = Number(descriptor.Image.Size.Height);
    state.sizeL0 = tiles.size_l0;
    state.mpp = meta.mpp;
    state.meta = meta;
    showMetadata(state, meta);
    document.getElementById("tiles-geojson").setAttribute("href", `${base}/tiles.geojson`);
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
    // outlines keep their width in screen px at every zoom (non-scaling-stroke), so they never cover tissue
    const drawGrid = () => {
      groups.grid.replaceChildren(...state.grid.map((t) => svgRect(t.x, t.y, state.sizeL0, state.sizeL0,
        { fill: "none", stroke: "#00e0ff", "stroke-width": 1, "vector-effect": "non-scaling-stroke", class: "grid-tile" })));
      groups.grid.style.display = document.getElementById("show-grid").checked ? "" : "none";
    };
    let labels = [];
    const drawHits = () => {
      const n = state.search ? state.search.hits.length : 0;
      const shown = document.getElementById("show-hits").checked;
      groups.hits.replaceChildren(...state.hits.map((h) => svgRect(h.x, h.y, state.sizeL0, state.sizeL0,
        { fill: "none", stroke: rankColour(h.rank, n), "stroke-width": 2, "vector-effect": "non-scaling-stroke",
          class: "hit-box", "data-rank": String(h.rank) })));
      groups.hits.style.display = shown ? "" : "none";
      labels.forEach((label) => viewer.removeOverlay(label));
      const item = viewer.world.getItemAt(0);
      labels = shown && item ? state.hits.map((h) => {
        const label = el("div", { class: "hit-label", "data-rank": String(h.rank),
          style: `border-color:${rankColour(h.rank, n)}`, text: `#${h.rank} ${h.score.toFixed(2)}` });
        viewer.addOverlay({ element: label, location: item.imageToViewportCoordinates(h.x, h.y),
          placement: OpenSeadragon.Placement.BOTTOM_LEFT });
        return label;
      }) : [];
      document.getElementById("hit-count").textContent = `(${state.hits.length} on this slide of ${n})`;
      document.getElementById("download-hits").disabled = state.hits.length === 0;
    };
    state.setHits = (result) => {
      state.search = result;
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
    document.getElementById("download-hits").addEventListener("click", () => downloadHits(state).catch((err) => {
      state.error = err.message;
      status.replaceChildren(el("span", { class: "error", text: err.message }));
    }));

    const focus = (x, y, immediately) => {
      const item = viewer.world.getItemAt(0), s = state.sizeL0;
      viewer.viewport.fitBounds(item.imageToViewportRectangle(x - 2 * s, y - 2 * s, 5 * s, 5 * s), immediately);
    };
    const goTo = (i, immediately) => {
      const hit = state.search.hits[i];
      if (hit.slide_id !== slideId || state.search.store !== state.store) {
        window.location.href = viewerUrl(state.search.store, hit);
        return;
      }
      state.current = i;
      history.replaceState(null, "", viewerUrl(state.search.store, hit));
      document.querySelectorAll(".hit-item").forEach((li, j) => li.classList.toggle("current", j === i));
      document.getElementById("hit-position").textContent = `hit ${i + 1} of ${state.search.hits.length}`;
      focus(hit.x, hit.y, !!immediately);
    };
    const updateInstruments = installInstruments(state, viewer);

    viewer.addHandler("open", () => {
      const item = viewer.world.getItemAt(0);
      viewer.addOverlay({ element: svg, location: item.imageToViewportRectangle(0, 0, state.width, state.height) });
      drawGrid();
      state.setHits(state.search);
      renderHitList(state, goTo);
      bindHitSteps(state, goTo);
      if (params.has("x") && params.has("y")) {
        const x = Number(params.get("x")), y = Number(params.get("y"));
        focus(x, y, true);
        const i = state.search && state.search.store === state.store
          ? state.search.hits.findIndex((h) => h.slide_id === slideId && h.x === x && h.y === y) : -1;
        if (i >= 0) goTo(i, true);
      }
      updateInstruments();
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
        state.current = null;
        renderHitList(state, goTo);
        status.textContent = `more like ${slideId}:${tile.x}:${tile.y}: ${result.hits.length} hits`;
        document.getElementById("more").replaceChildren(...groupHits(result.hits).map((g) => hitCard(g)));
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
