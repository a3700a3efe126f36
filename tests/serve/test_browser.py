"""End-to-end in Debian's chromium (Playwright for Python) against a real `mvh serve` process over two
stores: `embeddings` (the real slide + a synthetic one) and `rescans` (the real slide file registered twice).

Screenshots go to $MVH_BROWSER_OUT when set (`MVH_BROWSER_OUT=docs` re-takes docs/serve_*.png), else to the
test session's temporary folder (printed).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.geojson_checks import check_feature_collection, square_ring
from tests.serve.conftest import REAL, RESCAN, TOKEN

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
ZOOM = "(by) => { const v = mvhViewer.viewer.viewport; v.zoomBy(by, null, true); v.applyConstraints(true); }"
LOADED = "[...document.querySelectorAll('{selector}')].every(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("MVH_BROWSER_OUT") or tmp_path_factory.mktemp("browser"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="mvh-chromium-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1400, "height": 860}, accept_downloads=True,
        )
        yield context
        context.close()


def _login(page, url: str, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(url + "/")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    page.click("#login")


def _open(browser, url: str, path: str):  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(url + path)
    if page.url.endswith("/login"):
        page.fill("#token", TOKEN)
        page.click("#login")
        page.goto(url + path)
    return page


def _search(page, store: str, tile: Path, k: int) -> dict:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#store option", state="attached")
    page.select_option("#store", store)
    page.set_input_files("#image", str(tile))
    page.fill("#k", str(k))
    page.click("#go")
    page.wait_for_function("window.mvhSearch.result !== null || window.mvhSearch.error !== null")
    assert page.evaluate("window.mvhSearch.error") is None
    page.wait_for_function(
        "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth === 224)"
    )
    return page.evaluate("window.mvhSearch.result")


def _viewer_ready(page, current: int | None = None) -> None:  # type: ignore[no-untyped-def]
    extra = "" if current is None else f" && mvhViewer.current === {current}"
    page.wait_for_function(f"window.mvhViewer && (mvhViewer.ready{extra} || mvhViewer.error)")
    assert page.evaluate("mvhViewer.error") is None
    # DeepZoom tiles are made on demand: allow for a busy machine
    page.wait_for_function("mvhViewer.viewer.world.getItemAt(0).getFullyLoaded()", timeout=90_000)


def test_wrong_token_is_refused(browser, live_server: str) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    browser.clear_cookies()
    _login(page, live_server, "not-the-token")
    assert "Wrong token" in page.content()
    assert page.request.get(live_server + "/api/stores").status == 401
    page.close()


def test_identical_scans_are_one_card(browser, live_server: str, he_tile: Path, out_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page = _open(browser, live_server, "/")
    result = _search(page, "rescans", he_tile, 8)
    # the two registrations of one file score the same at every place: 8 hits, 4 cards of 2
    assert {h["slide_id"] for h in result["hits"]} == {REAL, RESCAN}
    assert page.locator(".hit").count() == 4 and page.locator(".hit .also").count() == 4
    first = page.locator(".hit").first
    assert first.get_attribute("data-rank") == "1"
    assert "similarity " in first.inner_text() and "also in: " in first.inner_text()
    other = next(h for h in result["hits"] if h["rank"] == 2)
    assert (other["x"], other["y"]) == (result["hits"][0]["x"], result["hits"][0]["y"])
    # the query is shown as fed to the model, 1:1 beside the hits, with its scale said
    assert page.evaluate("document.querySelector('.queryshown img').naturalWidth") == 224
    assert page.evaluate("document.querySelector('.queryshown img').getBoundingClientRect().width") == 224
    assert "scale unknown" in page.inner_text(".queryshown")
    assert "'um/px of the image'" in page.inner_text("#notes")
    assert "local" in page.inner_text("#store-where")
    page.screenshot(path=str(out_dir / "serve_search.png"), full_page=True)
    page.close()


def test_viewer_hits_scale_and_download(  # type: ignore[no-untyped-def]
    browser, live_server: str, he_tile: Path, out_dir: Path
) -> None:
    page = _open(browser, live_server, "/")
    result = _search(page, "embeddings", he_tile, 6)
    assert page.locator(".hit").count() == 6
    first = result["hits"][0]
    page.click(".hit[data-rank='1'] a.hit-link")
    _viewer_ready(page, current=0)
    state = page.evaluate("({slide: mvhViewer.slideId, hits: mvhViewer.hits, mpp: mvhViewer.mpp})")
    assert state["slide"] == first["slide_id"]
    top = next(h for h in state["hits"] if h["rank"] == 1)
    assert (top["x"], top["y"]) == (first["x"], first["y"])
    # the rank-1 box sits where OpenSeadragon draws level-0 px (x, y), outlined 2 screen px wide
    where = page.evaluate("""() => {
        const box = document.querySelector("rect.hit-box[data-rank='1']").getBoundingClientRect();
        const item = mvhViewer.viewer.world.getItemAt(0), h = mvhViewer.hits[0], s = mvhViewer.sizeL0;
        const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(h.x, h.y));
        const q = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(h.x + s, h.y + s));
        const osd = document.getElementById("osd").getBoundingClientRect();
        return {box: [box.left - osd.left, box.top - osd.top, box.width, box.height],
                want: [p.x, p.y, q.x - p.x, q.y - p.y]};
    }""")
    for got, want in zip(where["box"], where["want"], strict=True):
        assert abs(got - want) <= 2.5, where
    # labels: rank and score of every hit on this slide, coloured by rank among all 6 hits of the search
    labels = page.evaluate("[...document.querySelectorAll('.hit-label')].map(l => l.textContent)")
    assert sorted(labels) == sorted(f"#{h['rank']} {h['score']:.2f}" for h in state["hits"])
    assert page.locator(".hit-item").count() == 6
    colours = page.evaluate(
        "[...document.querySelectorAll('rect.hit-box')].map(r => r.getAttribute('stroke'))")
    assert colours[0] == "hsl(0, 90%, 50%)"

    # scale bar: its screen length is its um in level-0 px as OpenSeadragon draws them, at every zoom
    def scale() -> dict:
        return page.evaluate("""() => {
            const item = mvhViewer.viewer.world.getItemAt(0), bar = mvhViewer.scaleBar;
            const a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
            const end = new OpenSeadragon.Point(bar.um / mvhViewer.mpp, 0);
            const b = item.imageToViewerElementCoordinates(end);
            return {um: bar.um, css: document.querySelector('#scalebar .bar').getBoundingClientRect().width,
                    want: b.x - a.x, mag: document.getElementById('magnification').textContent,
                    perL0: mvhViewer.screenPerL0};
        }""")

    before = scale()
    assert abs(before["css"] - before["want"]) <= 1.5, before  # the 2 px borders are inside the width
    page.evaluate(ZOOM, 0.25)
    page.wait_for_function(f"mvhViewer.scaleBar.um !== {before['um']}")
    after = scale()
    assert after["um"] > before["um"] and abs(after["css"] - after["want"]) <= 1.5, after
    equivalent = 10 / (state["mpp"] / after["perL0"])  # 10x = 1 um per screen px
    assert after["mag"].startswith(f"{equivalent:.0f}x" if equivalent >= 10 else f"{equivalent:.1f}x")
    page.evaluate(ZOOM, 16)
    page.wait_for_function(f"mvhViewer.scaleBar.um < {after['um']}")
    again = scale()
    assert abs(again["css"] - again["want"]) <= 1.5, again

    # cursor read-out in level-0 px and um
    box = page.locator("#osd").bounding_box()
    page.mouse.move(box["x"] + 300, box["y"] + 200)
    cursor = page.evaluate("""() => {
        const item = mvhViewer.viewer.world.getItemAt(0);
        const p = item.viewerElementToImageCoordinates(new OpenSeadragon.Point(300, 200));
        return {want: [Math.round(p.x), Math.round(p.y)], got: mvhViewer.cursor,
                text: document.getElementById('cursor').textContent};
    }""")
    assert [cursor["got"]["x"], cursor["got"]["y"]] == cursor["want"]
    assert f"{cursor['want'][0] * state['mpp']:.1f} um" in cursor["text"]

    # metadata from OpenSlide properties and the label image
    meta = page.inner_text("#metadata")
    assert "aperio CPAPERIOCS" in meta and "20x" in meta and "0.499" in meta
    page.wait_for_function(LOADED.format(selector=".associated img"))
    assert page.locator(".associated img").count() == 2  # label and macro
    page.fill("#brightness", "130")
    page.dispatch_event("#brightness", "input")
    assert "brightness(130%)" in page.evaluate("mvhViewer.viewer.drawer.canvas.style.filter")
    page.fill("#brightness", "100")
    page.dispatch_event("#brightness", "input")

    # GeoJSON of this slide's hits, as QuPath imports it
    with page.expect_download() as info:
        page.click("#download-hits")
    collection = json.loads(Path(info.value.path()).read_text())
    rings = check_feature_collection(collection, "annotation")
    size = page.evaluate("mvhViewer.sizeL0")
    assert rings == [square_ring(h["x"], h["y"], size) for h in state["hits"]]
    # the docs' shot: the whole slide with its labelled hits, the hit list and the scale bar in view
    page.evaluate("mvhViewer.viewer.viewport.goHome(true); document.querySelector('aside').scrollTop = 0")
    page.wait_for_function("mvhViewer.viewer.world.getItemAt(0).getFullyLoaded()", timeout=90_000)
    page.mouse.move(box["x"] + 300, box["y"] + 200)
    page.screenshot(path=str(out_dir / "serve_viewer.png"))
    page.check("#show-grid")
    assert page.locator("rect.grid-tile").count() == 54

    # step through the hits: n, the button, p (another slide's hit opens its page)
    for action, want in (("key", 1), ("button", 2), ("back", 1)):
        if action == "key":
            page.keyboard.press("n")
        elif action == "button":
            page.click("#next-hit")
        else:
            page.keyboard.press("p")
        page.wait_for_load_state()
        _viewer_ready(page, current=want)
        hit = result["hits"][want]
        assert page.evaluate("mvhViewer.slideId") == hit["slide_id"]
        assert f"x={hit['x']}&y={hit['y']}" in page.url
    page.click("#back")
    page.wait_for_function("window.mvhSearch && window.mvhSearch.result !== null")
    assert page.locator(".hit").count() == 6
    page.close()


def test_more_like_this_and_result_layers(browser, live_server: str, out_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page = _open(browser, live_server, f"/slides/{REAL}?store=embeddings")
    _viewer_ready(page)
    page.check("#more-like-this")
    target = page.evaluate("""() => {
        const t = mvhViewer.grid[20], s = mvhViewer.sizeL0, item = mvhViewer.viewer.world.getItemAt(0);
        const around = item.imageToViewportRectangle(t.x - s, t.y - s, 3 * s, 3 * s);
        mvhViewer.viewer.viewport.fitBounds(around, true);
        return t;
    }""")
    point = page.evaluate("""(t) => {
        const s = mvhViewer.sizeL0, item = mvhViewer.viewer.world.getItemAt(0);
        const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(t.x + s / 2, t.y + s / 2));
        const osd = document.getElementById("osd").getBoundingClientRect();
        return {x: osd.left + p.x, y: osd.top + p.y};
    }""", target)
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function("mvhViewer.moreLikeThis !== null || mvhViewer.error !== null", timeout=30_000)
    assert page.evaluate("mvhViewer.error") is None, page.inner_text("#status")
    result = page.evaluate("mvhViewer.moreLikeThis")
    assert result["query"]["source"].startswith(f"{REAL}:{target['x']}:{target['y']}")
    assert len(result["hits"]) == 10 and page.locator("#more .hit").count() == 10
    assert page.locator(".hit-item").count() == 10
    # attention heatmap overlay from the --results folder
    page.check("#layer-0")
    assert page.locator("rect.layer-attention").count() == 54
    page.screenshot(path=str(out_dir / "serve_viewer_heatmap.png"))
    # ST predicted expression per spot, one gene at a time, centred on the spot
    page.uncheck("#layer-0")
    page.check("#layer-1")
    page.select_option("#layer-1-channel", "CD3E")
    spots = page.evaluate("""() => [...document.querySelectorAll('rect.layer-st')].map(r => [
        Number(r.getAttribute('x')) + Number(r.getAttribute('width')) / 2,
        Number(r.getAttribute('data-value'))])""")
    layer = page.evaluate("mvhViewer.layers[1]")
    assert len(spots) == 20 and page.locator("rect.layer-attention").count() == 0
    assert [s[0] for s in spots] == layer["x"] and [s[1] for s in spots] == layer["values"]["CD3E"]
    page.close()


def test_store_page(browser, live_server: str, out_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page = _open(browser, live_server, "/stores")
    page.wait_for_function("window.mvhStores && window.mvhStores.ready")
    assert page.locator("tr.slide-row").count() == 2 + 2
    assert "mv_hybrid_tiny" in page.inner_text("table.fingerprint")
    page.wait_for_function(LOADED.format(selector="img.thumb"))
    assert page.locator("img.thumb").count() == 4
    text = page.inner_text("main")
    assert f"same file as {RESCAN}" in text and f"same file as {REAL}" in text
    assert page.locator("table.by-status").count() == 2
    page.screenshot(path=str(out_dir / "serve_stores.png"), full_page=True)
    page.close()


def test_drag_and_drop_a_tile(browser, live_server: str, he_tile: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import base64

    from PIL import Image

    crop = tmp_path / "crop.png"
    Image.open(he_tile).convert("RGB").crop((300, 300, 700, 700)).save(crop)
    page = _open(browser, live_server, "/")
    page.wait_for_selector("#store option", state="attached")
    page.select_option("#store", "embeddings")
    data = base64.b64encode(crop.read_bytes()).decode()
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "crop.png", {type: "image/png"}));
        return dt;
    }""", data)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    assert page.evaluate("document.getElementById('image').files[0].name") == "crop.png"
    page.fill("#k", "3")
    page.click("#go")
    page.wait_for_function("window.mvhSearch.result !== null || window.mvhSearch.error !== null")
    assert page.evaluate("window.mvhSearch.error") is None
    assert page.evaluate("window.mvhSearch.result.query.source") == "crop.png"
    assert page.locator(".hit").count() == 3
    page.close()
