// Viewer instruments: scale bar, magnification read-out, cursor position, brightness/contrast.
// Magnification follows the convention of mvh (and TRIDENT): 10x = 1 um per pixel, so mag = 10 / (um/px).
"use strict";

const SCALE_STEPS = [1, 2, 5];
const SCALE_MIN_PX = 80;

function niceLength(umPerScreenPx) {
  // the smallest 1/2/5 x 10^k um that spans at least SCALE_MIN_PX screen pixels
  const wanted = umPerScreenPx * SCALE_MIN_PX;
  let power = Math.pow(10, Math.floor(Math.log10(wanted)));
  for (;;) {
    for (const step of SCALE_STEPS) if (step * power >= wanted) return step * power;
    power *= 10;
  }
}

function formatUm(um) {
  return um >= 1000 ? `${um / 1000} mm` : `${um} um`;
}

function installInstruments(state, viewer) {
  const bar = document.getElementById("scalebar");
  const barLine = bar.querySelector(".bar");
  const barText = bar.querySelector(".label");
  const mag = document.getElementById("magnification");
  const cursor = document.getElementById("cursor");
  const update = () => {
    const item = viewer.world.getItemAt(0);
    if (!item) return;
    const screenPerL0 = item.viewportToImageZoom(viewer.viewport.getZoom(true));
    state.screenPerL0 = screenPerL0;
    if (!state.mpp) {
      bar.hidden = true;
      mag.textContent = `${(100 * screenPerL0).toFixed(1)}% of level 0 (no um/px for this slide)`;
      return;
    }
    const umPerScreenPx = state.mpp / screenPerL0;
    const um = niceLength(umPerScreenPx);
    const px = um / umPerScreenPx;
    barLine.style.width = `${px.toFixed(1)}px`;
    barText.textContent = formatUm(um);
    state.scaleBar = { um, px };
    const equivalent = 10 / umPerScreenPx;
    mag.textContent = `${equivalent >= 10 ? equivalent.toFixed(0) : equivalent.toFixed(1)}x equivalent ` +
      `(${umPerScreenPx.toPrecision(3)} um per screen px; 10x = 1 um/px)`;
    state.magnification = equivalent;
  };
  viewer.addHandler("animation", update);
  viewer.addHandler("animation-finish", update);
  viewer.addHandler("resize", update);
  new OpenSeadragon.MouseTracker({
    element: viewer.container,
    moveHandler: (e) => {
      const item = viewer.world.getItemAt(0);
      if (!item) return;
      const p = item.viewerElementToImageCoordinates(e.position);
      const x = Math.round(p.x), y = Math.round(p.y);
      const um = state.mpp ? `; ${(x * state.mpp).toFixed(1)} um, ${(y * state.mpp).toFixed(1)} um` : "";
      cursor.textContent = `x ${x}, y ${y} px (level 0)${um}`;
      state.cursor = { x, y };
    },
  });
  const brightness = document.getElementById("brightness");
  const contrast = document.getElementById("contrast");
  const filter = () => {
    viewer.drawer.canvas.style.filter = `brightness(${brightness.value}%) contrast(${contrast.value}%)`;
    document.getElementById("bc-values").textContent = `brightness ${brightness.value}%, contrast ${contrast.value}%`;
  };
  brightness.addEventListener("input", filter);
  contrast.addEventListener("input", filter);
  document.getElementById("bc-reset").addEventListener("click", () => {
    brightness.value = 100;
    contrast.value = 100;
    filter();
  });
  filter();
  return update;
}

function showMetadata(state, meta) {
  const mag = meta.objective_power ? `${meta.objective_power}x` : "not recorded";
  const scan = meta.mpp_x ? `${meta.mpp_x}${meta.mpp_y && meta.mpp_y !== meta.mpp_x ? " x " + meta.mpp_y : ""} um/px` : "not recorded";
  const rows = [
    ["scanner", meta.scanner || "not recorded"], ["objective", mag], ["scan um/px", scan],
    ["um/px used", meta.mpp ? `${meta.mpp} (${meta.mpp_source})` : "unknown"],
    ["size", meta.width ? `${meta.width} x ${meta.height} px` : ""],
    ["file hash", meta.file_hash ? el("code", { title: meta.file_hash, text: meta.file_hash.slice(0, 24) + "..." }) : ""],
  ];
  const images = Object.entries(meta.associated_urls).filter(([name]) => name !== "thumbnail").map(([name, url]) =>
    el("a", { href: url, target: "_blank", class: "associated" }, [el("img", { src: url, alt: `${name} image` }), el("div", { text: name })]));
  document.getElementById("metadata").replaceChildren(table(rows, { class: "meta" }), el("div", { class: "associated-row" }, images));
}
