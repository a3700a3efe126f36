// The stores page: each served store as tables (where it lives, what made it, its slides with thumbnails).
"use strict";

function headed(head, rows, cls) {
  return el("table", { class: cls }, [el("tr", {}, head.map((h) => el("th", { text: h }))),
    ...rows.map((r) => el("tr", {}, r.map((v) => v instanceof Node ? el("td", {}, [v]) : el("td", { text: v === null || v === undefined ? "" : String(v) }))))]);
}

function shortHash(hash) {
  if (!hash) return el("span", { text: "" });
  const [kind, hex] = hash.includes(":") ? hash.split(":") : ["", hash];
  return el("code", { title: hash, text: `${kind ? kind + ":" : ""}${hex.slice(0, 12)}` });
}

function slideTable(store, slides) {
  const byHash = new Map();
  for (const r of slides) if (r.file_hash) byHash.set(r.file_hash, [...(byHash.get(r.file_hash) || []), r.slide_id]);
  const rows = slides.map((r) => {
    const base = `/api/stores/${encodeURIComponent(store.name)}/slides/${encodeURIComponent(r.slide_id)}`;
    const done = r.status === "done";
    const thumb = done ? el("img", { class: "thumb", src: `${base}/thumbnail.jpg`, alt: `${r.slide_id} thumbnail`, loading: "lazy" }) : "";
    const link = done
      ? el("a", { href: `/slides/${encodeURIComponent(r.slide_id)}?store=${encodeURIComponent(store.name)}`, text: r.slide_id })
      : el("span", { text: r.slide_id });
    const same = (byHash.get(r.file_hash) || []).filter((s) => s !== r.slide_id);
    return [thumb, link, r.status, r.n_tiles ?? "", r.width ? `${r.width} x ${r.height}` : "",
      r.mpp ? `${r.mpp} (${r.mpp_source})` : "", shortHash(r.file_hash), same.length ? `same file as ${same.join(", ")}` : "", r.error || ""];
  });
  const t = headed(["", "slide", "status", "tiles", "size (px)", "um/px", "file hash", "re-scans", "error"], rows, "slides");
  [...t.querySelectorAll("tr")].slice(1).forEach((tr) => tr.classList.add("slide-row"));
  return t;
}

async function mvhStoresPage() {
  const main = document.getElementById("stores");
  window.mvhStores = { ready: false };
  try {
    const stores = await api("/api/stores");
    for (const s of stores) {
      main.appendChild(el("h2", { text: s.name }));
      main.appendChild(table([
        ["lives", `${storeWhere(s.location)}: ${s.location.uri}`], ["model", s.model], ["weights sha256", s.weights_sha256],
        ["tiles", `${s.tile_px} px at ${s.mpp} um/px (${(s.tile_px * s.mpp).toFixed(0)} um a side)`],
        ["embedding", `${s.fingerprint.embedding_dtype} x ${s.embed_dim}`], ["tiles stored", s.n_tiles],
        ["store version", s.version], ["created", `${s.created} by mvh ${s.mvh_version}`],
        ["image queries", s.image_queries ? "yes" : s.image_queries_reason],
      ], { class: "fingerprint" }));
      const side = el("div", { class: "tables" });
      side.appendChild(el("div", {}, [el("h3", { text: "slides by status" }),
        headed(["status", "slides"], Object.entries(s.slides_by_status || {}), "by-status")]));
      if (s.tags && Object.keys(s.tags).length) {
        side.appendChild(el("div", {}, [el("h3", { text: "tags" }), headed(["tag", "table versions"],
          Object.entries(s.tags).map(([tag, v]) => [tag, Object.entries(v).map(([t, n]) => `${t} ${n}`).join(", ")]), "tags")]));
      }
      if (s.versions) {
        side.appendChild(el("div", {}, [el("h3", { text: "table versions" }), headed(["table", "version"], Object.entries(s.versions), "versions")]));
      }
      if (s.card && Object.keys(s.card).length) {
        side.appendChild(el("div", {}, [el("h3", { text: "dataset card" }), headed(["field", "value"], Object.entries(s.card), "card")]));
      }
      main.appendChild(side);
      const slides = await api(`/api/stores/${encodeURIComponent(s.name)}/slides`);
      main.appendChild(slideTable(s, slides));
    }
    window.mvhStores.ready = true;
  } catch (err) {
    main.replaceChildren(el("p", { class: "error", text: err.message }));
  }
}
