"""Store faults: concurrent writers, bit rot, damaged / half-created / legacy stores, disk full, attrs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from mvh.cli import app
from mvh.errors import StoreDamagedError, StoreError, StoreUnusableError, StoreWriteError
from mvh.store import EmbeddingStore, tiles_schema
from mvh.store.integrity import CHECKSUM, NON_FINITE, verify_store
from mvh.store.schema import SLIDES_SCHEMA
from mvh.store.writer import StoreWriter
from tests.reliability._faults import DIM, distinct, fingerprint, rot_bytes, store_with, tiles

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

# Two real processes write the SAME slides; each sleeps between its check of the slides table and its
# append (as on 2 s-latency network storage), so both see the slide as absent and both append.
RACER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from mvh.store import EmbeddingStore
    from mvh.store.writer import StoreWriter
    from tests.reliability._faults import tiles

    original = StoreWriter.append_tiles

    def slow_append(self, slide_id, table):
        time.sleep(float(sys.argv[3]))
        original(self, slide_id, table)

    StoreWriter.append_tiles = slow_append
    store = EmbeddingStore.open(sys.argv[1])
    value = float(sys.argv[2])
    for i in range(3):
        sid = f"s{i}"
        store.add_slide({"slide_id": sid, "path": sid}, tiles(sid, 20), np.full((20, 8), value))
    """
)


def test_two_writers_of_the_same_slides_leave_each_slide_whole_and_unique(tmp_path) -> None:
    store = EmbeddingStore.create(tmp_path / "race.lance", fingerprint())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, store.uri, value, "1.0"], env=env)
        for value in ("1", "2")
    ]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    raw = store.tables.tiles.to_arrow()
    assert raw.num_rows == 2 * 3 * 20  # both appended: the race really happened
    rows, emb = store.all_embeddings()
    assert len(rows) == 60 and rows["tile_id"].is_unique and store.n_tiles == 60
    assert store.slide_ids() == ["s0", "s1", "s2"]
    for sid in ("s0", "s1", "s2"):
        got, _ = store.slide_embeddings(sid)
        assert got.shape == (20, DIM) and np.unique(got).size == 1  # one writer's tiles, never a mixture
    report = verify_store(store)
    assert report.ok and report.orphan_tiles == 60


@pytest.fixture()
def rotted(tmp_path) -> tuple[EmbeddingStore, np.ndarray]:
    a, b = distinct(5, 1), distinct(4, 2)
    store = store_with(tmp_path / "rot.lance", {"a": a, "b": b})
    rot_bytes(tmp_path / "rot.lance", a, 2)
    return EmbeddingStore.open(store.uri), a


@pytest.mark.parametrize(
    "read",
    [
        lambda s: s.slide_embeddings("a"),
        lambda s: s.all_embeddings(),
        lambda s: list(s.iter_slides()),
        lambda s: s.rows_by_tile_ids(["a:896:0:448"], with_embeddings=True),
    ],
    ids=["slide_embeddings", "all_embeddings", "iter_slides", "rows_by_tile_ids"],
)
def test_every_embedding_read_refuses_non_finite_values(rotted, read) -> None:
    store, _ = rotted
    with pytest.raises(
        StoreDamagedError, match=r"non-finite embedding values in slide\(s\) \['a'\].*mvh verify"
    ):
        read(store)
    np.testing.assert_array_equal(store.slide_embeddings("b")[0], distinct(4, 2))  # other slides read


def test_verify_finds_bit_rot_by_checksum_even_when_values_stay_finite(tmp_path) -> None:
    a, b = distinct(5, 1), distinct(4, 2)
    store = store_with(tmp_path / "s.lance", {"a": a, "b": b})
    assert verify_store(store).ok
    rot_bytes(tmp_path / "s.lance", b, 1, value=5.0)
    report = verify_store(EmbeddingStore.open(store.uri))
    assert [(p.slide_id, p.kind) for p in report.problems] == [("b", CHECKSUM)]
    assert report.n_slides == 2 and report.n_tiles == 9 and report.exit_code == 1
    assert verify_store(store, ["a"]).ok


def test_verify_cli_reports_without_modifying(rotted) -> None:
    store, _ = rotted
    version = store.version
    result = runner.invoke(app, ["verify", "--store", store.uri, "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert {(p["slide_id"], p["kind"]) for p in report["problems"]} == {("a", NON_FINITE), ("a", CHECKSUM)}
    assert EmbeddingStore.open(store.uri).version == version
    result = runner.invoke(app, ["verify", "--store", store.uri, "--slide", "b"])
    assert result.exit_code == 0, result.output


def test_a_store_without_meta_is_refused_as_damaged(tmp_path) -> None:
    store = store_with(tmp_path / "m.lance", {"a": distinct(3, 1)})
    shutil.rmtree(Path(store.uri) / "meta.lance")
    with pytest.raises(StoreUnusableError, match="no meta table.*damaged.*Restore its meta.lance"):
        EmbeddingStore.open_or_create(store.uri, fingerprint(weights_sha256="ab" * 32))
    result = runner.invoke(app, ["info", "--store", store.uri])
    assert result.exit_code == 2 and "no meta table" in result.output and "Traceback" not in result.output


def test_a_half_created_store_is_cleaned_up_and_created(tmp_path) -> None:
    """A kill during creation leaves empty tiles/slides tables (or a broken table folder) and no meta."""
    uri = tmp_path / "half.lance"
    EmbeddingStore.create(uri, fingerprint())
    shutil.rmtree(uri / "meta.lance")
    (uri / "slides.lance" / "_versions").mkdir(exist_ok=True)
    for manifest in (uri / "slides.lance" / "_versions").iterdir():
        manifest.write_bytes(b"\0garbage")
    store = EmbeddingStore.open_or_create(uri, fingerprint(weights_sha256="cd" * 32))
    store.add_slide({"slide_id": "a"}, tiles("a", 2), distinct(2, 3))
    assert store.fingerprint.weights_sha256 == "cd" * 32 and store.n_tiles == 2
    assert store.notes and "removed the empty tables ['slides', 'tiles']" in store.notes[0]


def test_a_corrupt_meta_table_is_store_damaged_exit_1(tmp_path) -> None:
    store = store_with(tmp_path / "c.lance", {"a": distinct(3, 1)})
    for path in (Path(store.uri) / "meta.lance").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\xff" * 64)
    with pytest.raises(StoreDamagedError, match="damaged: its meta table cannot be read"):
        EmbeddingStore.open(store.uri)
    result = runner.invoke(app, ["info", "--store", store.uri])
    assert result.exit_code == 1 and "is damaged" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("command", [["info"], ["verify"]])
def test_store_pointing_at_a_regular_file_exits_2(tmp_path, command) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("hello")
    result = runner.invoke(app, [*command, "--store", str(target)])
    assert result.exit_code == 2 and "is a regular file" in result.output
    assert target.read_text() == "hello"


def test_disk_full_is_one_line_and_keeps_committed_slides(tmp_path, monkeypatch) -> None:
    store = store_with(tmp_path / "full.lance", {"a": distinct(3, 1)})

    def enospc(self, slide_id, table) -> None:
        self.write(
            lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")), f"the tiles of {slide_id}"
        )

    monkeypatch.setattr(StoreWriter, "append_tiles", enospc)
    with pytest.raises(StoreWriteError, match="No space left on device.*free space") as info:
        store.add_slide({"slide_id": "b"}, tiles("b", 2), distinct(2, 2))
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert store.slide_ids() == ["a"] and verify_store(store).ok


def test_legacy_store_is_readable_and_refuses_writes(tmp_path) -> None:
    """A store written before commit ids: no `commit`/`checksum`/`attrs` columns."""
    import lancedb

    uri = tmp_path / "old.lance"
    db = lancedb.connect(str(uri))
    old_tiles = pa.schema([f for f in tiles_schema(DIM) if f.name != "commit"])
    old_slides = pa.schema(
        [f for f in SLIDES_SCHEMA if f.name not in ("commit", "checksum", "slide_attrs", "file_hash")]
    )
    emb = distinct(3, 1)
    frame = tiles("a", 3).assign(slide_id="a", model="mv_hybrid_tiny", weights_sha256="random-init")
    frame["embedding"] = list(emb)
    db.create_table(
        "tiles", data=pa.Table.from_pandas(frame[old_tiles.names], schema=old_tiles, preserve_index=False)
    )
    row = {n: None for n in old_slides.names} | {"slide_id": "a", "status": "done", "n_tiles": 3}
    db.create_table("slides", data=pa.Table.from_pylist([row], schema=old_slides))
    meta = {"fingerprint": fingerprint().to_dict(), "mvh_version": "0.0.9", "created": "then"}
    db.create_table(
        "meta", data=pa.table({"key": list(meta), "value": [json.dumps(v) for v in meta.values()]})
    )
    store = EmbeddingStore.open(uri)
    assert store.legacy and store.slide_ids() == ["a"]
    np.testing.assert_array_equal(store.slide_embeddings("a")[0], emb)
    assert store.slide_attrs("a") == {}
    with pytest.raises(StoreUnusableError, match="older mvh.*stays readable"):
        store.add_slide({"slide_id": "b"}, tiles("b", 1), distinct(1, 2))


def test_attrs_are_stored_per_slide_as_a_json_object(tmp_path) -> None:
    store = EmbeddingStore.create(tmp_path / "attrs.lance", fingerprint())
    geometry = {"patch_size_level0": 512, "level0_magnification": 40}
    store.add_slide({"slide_id": "a", "slide_attrs": geometry}, tiles("a", 2), distinct(2, 1))
    store.add_slide({"slide_id": "b"}, tiles("b", 1), distinct(1, 2))
    assert store.slide_attrs("a") == geometry and store.slide_attrs("b") == {}
    assert json.loads(store.slides().set_index("slide_id").loc["a", "slide_attrs"]) == geometry
    with pytest.raises(StoreError, match="slide_attrs must be a JSON object"):
        store.add_slide({"slide_id": "c", "slide_attrs": [1, 2]}, tiles("c", 1), distinct(1, 3))
    with pytest.raises(StoreError, match="the record key `attrs` is now `slide_attrs`"):
        store.add_slide({"slide_id": "c", "attrs": geometry}, tiles("c", 1), distinct(1, 3))


@pytest.mark.parametrize(
    "command", [["index", "build"], ["export", "--out", "{tmp}/out"]], ids=["index", "export"]
)
def test_commands_that_read_embeddings_stop_at_bit_rot_with_exit_1(rotted, tmp_path, command) -> None:
    """The finiteness check sits inside the store's reads, so every command inherits it."""
    store, _ = rotted
    args = [a.format(tmp=tmp_path) for a in command]
    result = runner.invoke(app, [*args, "--store", store.uri])
    assert result.exit_code == 1, result.output
    assert "non-finite embedding values in slide(s) ['a']" in " ".join(result.output.split())
    assert "Traceback" not in result.output
