"""End-to-end in Debian's chromium (Playwright for Python) against a real `mvh serve` process.

Screenshots go to $MVH_BROWSER_OUT when set, else to the test session's temporary folder (printed).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.conftest import REAL, TOKEN

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


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
            viewport={"width": 1280, "height": 800},
        )
        yield context
        context.close()


def _login(page, url: str, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(url + "/")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    page.click("#login")


def test_wrong_token_is_refused(browser, live_server: str) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    browser.clear_cookies()
    _login(page, live_server, "not-the-token")
    assert "Wrong token" in page.content()
    assert page.request.get(live_server + "/api/stores").status == 401
    page.close()


def test_search_viewer_more_like_this_and_heatmap(  # type: ignore[no-untyped-def]
    browser, live_server: str, he_tile: Path, out_dir: Path
) -> None:
    page = browser.new_page()
    browser.clear_cookies()
    _login(page, live_server, TOKEN)
    page.wait_for_selector("#store option", state="attached")
    page.set_input_files("#image", str(he_tile))
    page.fill("#k", "6")
    page.click("#go")
    page.wait_for_function("window.mvhSearch.result !== null || window.mvhSearch.error !== null")
    assert page.evaluate("window.mvhSearch.error") is None
    page.wait_for_function(
        "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth === 224)"
    )
    assert page.locator(".hit").count() == 6
    assert page.evaluate("document.querySelector('.queryshown img').naturalWidth") == 224
    page.screenshot(path=str(out_dir / "search.png"))
    first = page.evaluate("window.mvhSearch.result.hits[0]")

    page.click(".hit[data-rank='1'] a")
    page.wait_for_function("window.mvhViewer && (window.mvhViewer.ready || window.mvhViewer.error)")
    state = page.evaluate("({slide: mvhViewer.slideId, hits: mvhViewer.hits, error: mvhViewer.error})")
    assert state["error"] is None and state["slide"] == first["slide_id"]
    top = next(h for h in state["hits"] if h["rank"] == 1)
    assert (top["x"], top["y"]) == (first["x"], first["y"])
    page.wait_for_function("mvhViewer.viewer.world.getItemAt(0).getFullyLoaded()")
    # the rank-1 box sits on the screen where OpenSeadragon draws level-0 pixel (x, y)
    where = page.evaluate("""() => {
        const box = document.querySelector("rect.hit-box[data-rank='1']").getBoundingClientRect();
        const item = mvhViewer.viewer.world.getItemAt(0), h = mvhViewer.hits[0], s = mvhViewer.sizeL0;
        const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(h.x, h.y));
        const q = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(h.x + s, h.y + s));
        const osd = document.getElementById("osd").getBoundingClientRect();
        return {box: [box.left - osd.left, box.top - osd.top, box.width, box.height],
                want: [p.x, p.y, q.x - p.x, q.y - p.y]};
    }""")
    stroke = where["want"][2] / 14  # the box's stroke straddles its edge
    for got, want in zip(where["box"], where["want"], strict=True):
        assert abs(got - want) <= stroke + 1.5, where
    page.check("#show-grid")
    page.screenshot(path=str(out_dir / "viewer.png"))
    assert page.locator("rect.grid-tile").count() == 54

    # more like this: click the centre of a stored tile in view (the rank-1 hit's tile)
    page.check("#more-like-this")
    target = page.evaluate("""() => {
        const h = mvhViewer.hits[0], t = mvhViewer.grid.find(g => g.x === h.x && g.y === h.y);
        const s = mvhViewer.sizeL0, item = mvhViewer.viewer.world.getItemAt(0);
        const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(t.x + s / 2, t.y + s / 2));
        const osd = document.getElementById("osd").getBoundingClientRect();
        return {x: osd.left + p.x, y: osd.top + p.y, tile: t};
    }""")
    page.mouse.click(target["x"], target["y"])
    page.wait_for_function("mvhViewer.moreLikeThis !== null || mvhViewer.error !== null", timeout=30_000)
    assert page.evaluate("mvhViewer.error") is None, page.inner_text("#status")
    result = page.evaluate("mvhViewer.moreLikeThis")
    assert result["query"]["source"].startswith(f"{REAL}:{target['tile']['x']}:{target['tile']['y']}")
    assert len(result["hits"]) == 10 and page.locator("#more .hit").count() == 10

    # attention heatmap overlay from the --results folder
    page.check("#layer-0")
    assert page.locator("rect.layer-attention").count() == 54
    page.screenshot(path=str(out_dir / "viewer_heatmap.png"))
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


def test_store_page(browser, live_server: str) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(live_server + "/stores")
    if page.url.endswith("/login"):
        page.fill("#token", TOKEN)
        page.click("#login")
        page.goto(live_server + "/stores")
    page.wait_for_selector("tr.slide-row")
    assert page.locator("tr.slide-row").count() == 2
    assert "mv_hybrid_tiny" in page.inner_text("table.fingerprint")
    page.close()


def test_drag_and_drop_a_tile(browser, live_server: str, he_tile: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import base64

    from PIL import Image

    crop = tmp_path / "crop.png"
    Image.open(he_tile).convert("RGB").crop((300, 300, 700, 700)).save(crop)
    page = browser.new_page()
    page.goto(live_server + "/")
    if page.url.endswith("/login"):
        page.fill("#token", TOKEN)
        page.click("#login")
    page.wait_for_selector("#store option", state="attached")
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
