"""Safety rules: loopback by default, the token, no request parameter used as a path, upload limits,
read-only."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mvh.errors import UsageError
from mvh.serve import ServeConfig, create_app
from mvh.serve.config import is_loopback
from tests.serve.conftest import REAL, TOKEN

EVIL = ["..", "../../etc/passwd", "/etc/passwd", "..\\..\\windows", "%2e%2e%2f", "~root", "embeddings/../x"]


def test_host_rules(serve_store: str) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert ServeConfig(stores=[serve_store]).host == "127.0.0.1"
    with pytest.raises(UsageError, match="--token"):
        ServeConfig(stores=[serve_store], host="0.0.0.0")
    ServeConfig(stores=[serve_store], host="0.0.0.0", token="t0ken")
    ServeConfig(stores=[serve_store], host="0.0.0.0", insecure_no_token=True)
    with pytest.raises(UsageError, match="--token is empty"):
        ServeConfig(stores=[serve_store], token=" ")


@pytest.fixture(scope="module")
def token_client(serve_store: str) -> TestClient:
    return TestClient(create_app(ServeConfig(stores=[serve_store], token=TOKEN)))


@pytest.mark.parametrize(
    "path", ["/api/health", "/api/stores", f"/api/tiles/{REAL}/1120/896.jpg", "/openapi.json"]
)
def test_token_required_everywhere(token_client: TestClient, path: str) -> None:
    assert token_client.get(path).status_code == 401
    assert token_client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert token_client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert token_client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_login_cookie_and_page_redirects(serve_store: str) -> None:
    client = TestClient(create_app(ServeConfig(stores=[serve_store], token=TOKEN)))
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert client.get("/login").status_code == 200
    assert client.post("/login", data={"token": "nope"}, follow_redirects=False).status_code == 401
    assert client.get("/api/stores").status_code == 401
    ok = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert ok.status_code == 303 and TOKEN not in ok.headers["set-cookie"]
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/stores").status_code == 200 and client.get("/").status_code == 200


def _opened_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file OpenSlide or Pillow is asked to open."""
    import openslide
    from PIL import Image as PILImage

    opened: list[str] = []
    real_os, real_img = openslide.OpenSlide.__init__, PILImage.open
    real_detect = openslide.OpenSlide.detect_format

    def os_init(self, filename):  # type: ignore[no-untyped-def]
        opened.append(str(filename))
        return real_os(self, filename)

    def img_open(fp, *a, **k):  # type: ignore[no-untyped-def]
        if isinstance(fp, (str, os.PathLike)):
            opened.append(str(fp))
        return real_img(fp, *a, **k)

    def detect(filename):  # type: ignore[no-untyped-def]
        opened.append(str(filename))
        return real_detect(filename)

    monkeypatch.setattr(openslide.OpenSlide, "__init__", os_init)
    monkeypatch.setattr(PILImage, "open", img_open)
    monkeypatch.setattr(openslide.OpenSlide, "detect_format", staticmethod(detect))
    return opened


@pytest.mark.parametrize("evil", EVIL)
def test_no_parameter_is_a_path(
    app_client: TestClient, serve_store: str, monkeypatch: pytest.MonkeyPatch, evil: str
) -> None:
    opened = _opened_paths(monkeypatch)
    e = quote(evil, safe="")
    urls = [
        f"/api/stores/{e}/slides", f"/api/stores/embeddings/slides/{e}/tiles",
        f"/api/stores/{e}/slides/{REAL}/tiles",
        f"/api/overlays/embeddings/{e}", f"/api/overlays/{e}/{REAL}", f"/api/tiles/{e}/1120/896.jpg",
        f"/api/tiles/{REAL}/1120/896.jpg?store={e}", f"/api/dzi/{e}/{REAL}", f"/api/dzi/embeddings/{e}",
        f"/api/dzi/embeddings/{e}/0/0_0.jpeg", f"/api/dzi/{e}/{REAL}/0/0_0.jpeg", f"/slides/{e}",
        f"/static/{e}", f"/vendor/openseadragon/{e}", f"/api/queries/{e}.png",
        f"/api/stores/embeddings/slides/{e}/metadata", f"/api/stores/{e}/slides/{REAL}/metadata",
        f"/api/stores/embeddings/slides/{REAL}/associated/{e}.jpg",
        f"/api/stores/embeddings/slides/{e}/associated/label.jpg",
        f"/api/stores/embeddings/slides/{e}/thumbnail.jpg", f"/api/stores/{e}/slides/{REAL}/thumbnail.jpg",
        f"/api/stores/embeddings/slides/{e}/tiles.geojson", f"/api/stores/{e}/slides/{REAL}/tiles.geojson",
    ]
    for url in urls:
        response = app_client.get(url)
        if response.request.url.path == "/":  # the client resolved a dot segment: the search page
            continue
        assert response.status_code in (400, 404, 405, 422), (url, response.status_code, response.text)
    for body in ({"tile": f"{evil}:0:0"}, {"tile": f"{REAL}:1120:896", "store": evil}, {"tile": evil}):
        response = app_client.post("/api/search", json=body)
        assert 400 <= response.status_code < 500, (body, response.text)
    hits = {"hits": [{"rank": 1, "x": 1120, "y": 896, "score": 0.5}], "n_hits": 1}
    for url in (f"/api/stores/embeddings/slides/{e}/hits.geojson",
                f"/api/stores/{e}/slides/{REAL}/hits.geojson"):
        response = app_client.post(url, json=hits)
        assert response.status_code in (400, 404, 405, 422), (url, response.text)
    with io.BytesIO() as buffer:
        Image.new("RGB", (32, 32), "white").save(buffer, format="PNG")
        response = app_client.post("/api/search", files={"image": (evil, buffer.getvalue(), "image/png")},
                                   data={"store": evil})
    assert response.status_code == 404
    recorded = Path(serve_store).parent
    assert all(Path(p).resolve().parent == recorded.resolve() for p in opened), opened


def _png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side x side px, a few KB on disk (zlib of zero rows)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * ((side // 8 + 1) * side), 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 180)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        (b"", 415, "empty"),
        (b"just some text, not an image", 415, "not an image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", 415, "not an image"),
        (_png((64, 64))[:60], 415, "damaged or truncated"),
        (b"GIF89a" + _png((4, 4))[6:], 415, "not an image"),
        (_png_bomb(20000), 413, "pixel"),
    ],
)
def test_uploads_refused_with_4xx(app_client: TestClient, payload: bytes, status: int, words: str) -> None:
    response = app_client.post("/api/search", files={"image": ("q.png", payload, "image/png")})
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_upload_size_cap(serve_store: str) -> None:
    client = TestClient(create_app(ServeConfig(stores=[serve_store], max_upload_mb=0.05)))
    big = os.urandom(60_000)
    response = client.post("/api/search", files={"image": ("q.png", big, "image/png")})
    assert response.status_code == 413 and "upload cap" in response.json()["detail"]
    huge = os.urandom(200_000)  # refused from Content-Length, before the body is parsed
    response = client.post("/api/search", files={"image": ("q.png", huge, "image/png")})
    assert response.status_code == 413


def test_gif_is_refused_by_format(app_client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buffer, format="GIF")
    response = app_client.post("/api/search", files={"image": ("q.gif", buffer.getvalue(), "image/gif")})
    assert response.status_code == 415 and "GIF" in response.json()["detail"]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_read_only(app_client: TestClient, serve_store: str, he_tile: Path) -> None:
    before = _tree(Path(serve_store))
    for url in ["/api/stores", "/api/stores/embeddings/slides", f"/api/tiles/{REAL}/1120/896.jpg",
                f"/api/dzi/embeddings/{REAL}", f"/api/stores/embeddings/slides/{REAL}/tiles",
                f"/api/stores/embeddings/slides/{REAL}/metadata",
                f"/api/stores/embeddings/slides/{REAL}/thumbnail.jpg",
                f"/api/stores/embeddings/slides/{REAL}/associated/label.jpg",
                f"/api/stores/embeddings/slides/{REAL}/tiles.geojson"]:
        assert app_client.get(url).status_code == 200
    with he_tile.open("rb") as fh:
        assert app_client.post("/api/search", files={"image": ("he.png", fh, "image/png")}).status_code == 200
    assert app_client.post("/api/search", json={"tile": f"{REAL}:1120:896"}).status_code == 200
    assert _tree(Path(serve_store)) == before
    for method in ("put", "delete", "patch"):
        assert getattr(app_client, method)("/api/stores").status_code == 405


def test_uploads_never_touch_the_disk(
    app_client: TestClient, he_tile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real tile is 2 MB: a spooling form parser (Starlette's default) would write it to a temporary file
    assert he_tile.stat().st_size > 2**20

    def no_disk(self: object) -> None:
        raise AssertionError("an upload was spooled to disk")

    monkeypatch.setattr("tempfile.SpooledTemporaryFile.rollover", no_disk)
    with he_tile.open("rb") as fh:
        response = app_client.post("/api/search", files={"image": ("he.png", fh)}, data={"k": "2"})
    assert response.status_code == 200 and len(response.json()["hits"]) == 2
    malformed = app_client.post("/api/search", content=b"--x\r\nnot a part",
                                headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= malformed.status_code < 500


def test_a_chunked_upload_without_content_length_is_cut_at_the_cap(serve_store: str) -> None:
    client = TestClient(create_app(ServeConfig(stores=[serve_store], max_upload_mb=0.05)))

    def body():
        for _ in range(40):  # 40 x 16 KB, well over the 50 KB cap
            yield b"--x\r\n" + os.urandom(16_000)

    kind = {"content-type": "multipart/form-data; boundary=x"}
    response = client.post("/api/search", content=body(), headers=kind)
    assert response.status_code == 413 and "upload cap (0.11 MB with the form" in response.json()["detail"]
