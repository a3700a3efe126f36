"""Ray extraction cases; run by test_ray_extract.py inside a loopback-only network namespace.

Not collected on their own (the file name does not start with test_): outside the namespace Ray would
advertise a non-loopback address.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mvh.errors import UsageError
from mvh.extractor.extract import run_extract
from mvh.extractor.extract_config import ExtractConfig
from mvh.progress import SLIDES, TILES, Event, Recorder

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

BASE = {"model": "mv_hybrid_tiny", "random_init": True, "workers": 0, "batch_size": 32}


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes (one CPU each) on 127.0.0.1, no dashboard, no usage stats."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}, "Ray must only bind loopback here"
    yield c
    ray.shutdown()
    c.shutdown()


def _copies(sample_slide: Path, folder: Path, n: int, corrupt: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"slide{i}.svs"
        shutil.copyfile(sample_slide, path)
        paths.append(path)
    if corrupt:
        bad = folder / "corrupt.svs"
        bad.write_bytes(sample_slide.read_bytes()[:30000])  # a truncated copy
        paths.append(bad)
    return paths


def _rows(store_path: Path):
    from mvh.store import EmbeddingStore

    store = EmbeddingStore.open(str(store_path))
    frame, emb = store.all_embeddings(columns=("slide_id", "tile_id"))
    return store, frame, emb


def test_same_rows_as_one_process_and_a_corrupt_slide_fails_alone(cluster, sample_slide, tmp_path):
    slides = tuple(_copies(sample_slide, tmp_path / "slides", 2, corrupt=True))
    one = run_extract(ExtractConfig(**BASE, slides=slides, store=str(tmp_path / "one.lance")))
    on_ray = run_extract(
        ExtractConfig(**BASE, slides=slides, store=str(tmp_path / "ray.lance"), ray_address=cluster.address)
    )
    status = {r.slide_id: r.status for r in on_ray.slides}
    assert status == {"slide0": "done", "slide1": "done", "corrupt": "failed"} and on_ray.exit_code == 1
    assert {r.slide_id: r.status for r in one.slides} == status
    _, rows_one, emb_one = _rows(tmp_path / "one.lance")
    store, rows_ray, emb_ray = _rows(tmp_path / "ray.lance")
    assert rows_ray["tile_id"].tolist() == rows_one["tile_id"].tolist() and rows_ray["tile_id"].is_unique
    assert np.array_equal(emb_ray, emb_one)  # bit-identical on CPU
    assert "corrupt" in store.slides(status="failed")["slide_id"].tolist()
    again = run_extract(
        ExtractConfig(
            **BASE, slides=slides[:2], store=str(tmp_path / "ray.lance"), ray_address=cluster.address
        )
    )
    assert [r.status for r in again.slides] == ["skipped", "skipped"]


def _kill_one_worker_after_first_commit(store_path: Path, killed: list[int]) -> None:
    from mvh.store import EmbeddingStore

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if EmbeddingStore.exists(str(store_path)) and EmbeddingStore.open(str(store_path)).slide_ids():
                break
        except Exception:  # noqa: BLE001 (the store is being created by the run)
            pass
        time.sleep(0.2)
    found = _embedding_actors()
    if found:
        os.kill(found[0], signal.SIGKILL)
        killed.append(found[0])


def _embedding_actors() -> list[int]:
    """Pids of the embedding actors of the test's own cluster (its nodes are this process's children)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    ours = {os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= more
        grew = bool(more)
    actors = []
    for pid in sorted(ours):
        try:
            if b"ray::SlideEmbedder" in (Path("/proc") / str(pid) / "cmdline").read_bytes():
                actors.append(pid)
        except OSError:
            continue
    return actors


def test_a_killed_worker_is_survived_without_loss_or_duplicates(cluster, sample_slide, tmp_path):
    slides = tuple(_copies(sample_slide, tmp_path / "slides", 6, corrupt=False))
    store_path = tmp_path / "killed.lance"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_one_worker_after_first_commit, args=(store_path, killed))
    killer.start()
    result = run_extract(
        ExtractConfig(**BASE, slides=slides, store=str(store_path), ray_address=cluster.address)
    )
    killer.join()
    assert killed, "no embedding worker was found to kill"
    assert [r.status for r in result.slides] == ["done"] * 6, [r.error for r in result.slides]
    store, rows, _ = _rows(store_path)
    assert rows["tile_id"].is_unique and len(rows) == 6 * 54
    assert store.slides(status="done")["n_tiles"].tolist() == [54] * 6


def test_json_is_all_of_stdout_when_a_worker_dies_and_the_retry_is_counted(cluster, sample_slide, tmp_path):
    """`mvh extract --json` as a process: Ray's driver prints the worker's death; stdout stays JSON."""
    slides = _copies(sample_slide, tmp_path / "slides", 4, corrupt=False)
    store_path = tmp_path / "json.lance"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_one_worker_after_first_commit, args=(store_path, killed))
    killer.start()
    command = [sys.executable, "-m", "mvh", "extract", *map(str, slides), "--store", str(store_path),
               "--model", "mv_hybrid_tiny", "--random-init", "--workers", "0", "--batch-size", "32",
               "--ray-address", cluster.address, "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    killer.join()
    assert killed, "no embedding worker was found to kill"
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # nothing but the JSON
    assert [s["status"] for s in result["slides"]] == ["done"] * 4
    assert result["retries"] >= 1 and result["retries"] == sum(s["retries"] for s in result["slides"])


def test_devices_run_one_worker_per_device_and_progress_names_each_workers_device(
    cluster, sample_slide, tmp_path
):
    slides = tuple(_copies(sample_slide, tmp_path / "slides", 3, corrupt=False))
    progress = Recorder()
    result = run_extract(
        ExtractConfig(**BASE, slides=slides, store=str(tmp_path / "dev.lance"), devices=("cpu", "cpu")),
        progress=progress,
    )
    assert [r.status for r in result.slides] == ["done"] * 3
    assert result.devices == ["cpu@127.0.0.1"] and {r.device for r in result.slides} == {"cpu@127.0.0.1"}
    _, rows, _ = _rows(tmp_path / "dev.lance")
    assert rows["tile_id"].is_unique and len(rows) == 3 * 54
    status = [d for e, t, _, d in progress.calls if e == Event.STATUS and t == SLIDES]
    assert status[0] == "2 embedding workers: cpu@127.0.0.1 x2"
    assert sorted(status[1:]) == [f"slide{i} done on cpu@127.0.0.1" for i in range(3)]
    assert progress.count(Event.ADVANCE, TILES) == progress.count(Event.TOTAL, TILES) == 3 * 54
    assert progress.count(Event.ADVANCE, SLIDES) == progress.count(Event.TOTAL, SLIDES) == 3


def test_a_worker_that_cannot_build_its_model_stops_the_run_with_its_error(cluster, sample_slide, tmp_path):
    """fp16 needs CUDA: every CPU actor fails alike, so the run stops with that one line (exit 2), instead of
    retrying every slide on new actors and recording each as failed."""
    slides = tuple(_copies(sample_slide, tmp_path / "slides", 2, corrupt=False))
    store = tmp_path / "fp16.lance"
    cfg = ExtractConfig(
        **BASE, precision="fp16", slides=slides, store=str(store), ray_address=cluster.address
    )
    with pytest.raises(UsageError) as stopped:
        run_extract(cfg)
    message = str(stopped.value)
    assert message.startswith("embedding worker cpu@127.0.0.1 cannot start: --precision fp16 needs")
    assert "\n" not in message and "\x1b" not in message
    assert stopped.value.exit_code == 2
    from mvh.store import EmbeddingStore

    assert EmbeddingStore.open(str(store)).slides().empty  # no slide was tried, none recorded as failed


def _alive_nodes() -> int:
    return sum(n["Alive"] for n in ray.nodes())


def _wait_for(condition, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_local_store_that_another_node_sees_as_another_folder_is_refused(cluster, sample_slide, tmp_path):
    """A third node in its own mount namespace has its own folder at the store's path: refused.

    Runs last: it adds a node to the shared cluster and takes it away again.
    """
    slides = tuple(_copies(sample_slide, tmp_path / "slides", 3, corrupt=False))
    store = tmp_path / "private" / "emb.lance"
    store.mkdir(parents=True)
    ray_cli = Path(sys.executable).parent / "ray"
    inner = (
        f"mount -t tmpfs tmpfs {store.parent} && mkdir -p {store} && exec {ray_cli} start --block "
        f"--address {cluster.address} --node-ip-address 127.0.0.1 --num-cpus 1 --disable-usage-stats"
    )
    before = _alive_nodes()
    node = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", inner],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _alive_nodes() == before + 1, "the third node")
        _wait_for(lambda: ray.available_resources().get("CPU", 0) == 3, "the third node's CPU to be free")
        on_ray = {"ray_address": cluster.address, "ray_workers": 3}  # one worker per node
        with pytest.raises(UsageError) as refused:
            run_extract(ExtractConfig(**BASE, slides=slides, store=str(store), **on_ray))
        message = str(refused.value)
        assert "\n" not in message and "1 embedding worker(s) do not see this folder" in message
        assert "object-store URI" in message
        assert not list(store.glob(".mvh-reachable-*")), "the probe file must be removed"
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
        _wait_for(lambda: _alive_nodes() == before, "the third node to leave")
