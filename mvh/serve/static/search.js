// The search page: upload or stored tile -> the query as the model sees it beside its hits, at one scale.
"use strict";

function scaleText(store) {
  return store ? `${store.tile_px} px at ${store.mpp} um/px (${(store.tile_px * store.mpp).toFixed(0)} um)` : "";
}

function queryCard(result, store) {
  const q = result.query;
  let scale = scaleText(store);
  if (q.kind === "image" && !q.query_mpp) {
    scale = `scale unknown: the centre ${Math.min(q.width, q.height)} px square of the upload, resized to ` +
      `${store ? store.tile_px : ""} px (give its um/px to match the hits)`;
  }
  return el("div", { class: "queryshown" }, [
    el("img", { src: q.image, alt: "the query as the model sees it" }),
    el("div", { class: "caption", text: "query as the model sees it" }),
    el("div", { text: q.source || "" }),
    el("div", { class: "scale", text: scale }),
  ]);
}

function showResult(result, stores) {
  const store = stores.find((s) => s.name === result.store);
  const groups = groupHits(result.hits);
  const regrouped = result.hits.length - groups.length;
  const status = document.getElementById("status");
  status.textContent = `${result.hits.length} hits (${result.index})` +
    (regrouped ? `; ${regrouped} from identical scans shown with the card of the same place` : "");
  showNotes(document.getElementById("notes"), result.notes);
  document.getElementById("results").replaceChildren(queryCard(result, store),
    ...groups.map((g) => hitCard(g, scaleText(store))));
}

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
  storeSelect.replaceChildren(...stores.map((s) => el("option", { value: s.name,
    text: `${s.name} (${storeWhere(s.location)}; ${s.model}, ${s.n_tiles} tiles)` })));
  const noteStore = () => {
    const store = stores.find((s) => s.name === storeSelect.value);
    document.getElementById("store-where").textContent = store
      ? `${storeWhere(store.location)}: ${store.location.uri}; tiles ${scaleText(store)}` : "";
    document.getElementById("store-note").textContent = store && !store.image_queries ? store.image_queries_reason : "";
    fileInput.disabled = !!(store && !store.image_queries);
  };
  storeSelect.addEventListener("change", noteStore);
  noteStore();
  const previous = lastSearch();
  if (previous && previous.query && stores.some((s) => s.name === previous.store)) {
    storeSelect.value = previous.store;
    noteStore();
    window.mvhSearch.result = previous;
    showResult(previous, stores);
  }

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
    window.mvhSearch.result = null;
    window.mvhSearch.error = null;
    status.textContent = "searching...";
    try {
      const result = await api("/api/search", request);
      rememberSearch(result);
      showResult(result, stores);
      window.mvhSearch.result = result;
    } catch (err) {
      window.mvhSearch.error = err.message;
      status.replaceChildren(el("span", { class: "error", text: err.message }));
    }
  });
}
