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
from mvh.errors import StoreDamagedError, StoreError, StoreUnusableError, StoreWriteError, UsageError
from mvh.store import EmbeddingStore, tiles_schema
from mvh.store.integrity import CHECKSUM, LOST, NON_FINITE, verify_store
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


@pytest.fixture()
def tagged(tmp_path) -> EmbeddingStore:
    """Two slides committed (slides versions 2 and 3 can be opened) and a tag `v1`."""
    store = store_with(tmp_path / "t.lance", {"a": distinct(3, 1), "b": distinct(2, 2)})
    store.create_tag("v1")
    return store


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "--store", "{uri}@nosuchtag"], "{uri} has no tag 'nosuchtag' (tags: v1)"),
        (["info", "--store", "{uri}", "--store-version", "99999"], "no version 99999 to open (versions 2..3"),
        (["info", "--store", "{uri}", "--store-version", "1"], "has no version 1 to open (versions 2..3"),
        (["verify", "--store", "{uri}", "--slide", "NOSUCH"], "--slide NOSUCH: not a done slide of {uri} "
                                                              "(done slides: a, b)"),
        (["tag", "delete", "nosuchtag", "--store", "{uri}"], "no tag 'nosuchtag' in {uri}"),
    ],
)  # fmt: skip
def test_unknown_tags_versions_and_slides_are_usage_errors_naming_what_exists(tagged, args, message) -> None:
    uri = tagged.uri
    result = runner.invoke(app, [a.format(uri=uri) for a in args])
    assert result.exit_code == 2, result.output
    assert message.format(uri=uri) in result.stderr and "damaged" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_extract_into_a_snapshot_is_a_usage_error(tagged) -> None:
    with pytest.raises(UsageError, match=r"names a past snapshot, which is read-only.*drop --store-version"):
        EmbeddingStore.open_or_create(f"{tagged.uri}@v1", fingerprint())


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_verify_reports_a_damaged_tiles_data_file_and_exits_1(tmp_path, damage) -> None:
    store = store_with(tmp_path / "d.lance", {"a": distinct(3, 1), "b": distinct(2, 2)})
    data = sorted((tmp_path / "d.lance" / "tiles.lance" / "data").iterdir())
    if damage == "truncated":
        with data[0].open("r+b") as fh:
            fh.truncate(100)
    else:
        data[0].unlink()
    result = runner.invoke(app, ["verify", "--store", store.uri, "--json"])
    assert result.exit_code == 1, result.output
    kinds = {(p["slide_id"], p["kind"]) for p in json.loads(result.stdout)["problems"]}
    unreadable = {s for s, k in kinds if k == "unreadable"}
    assert "(tiles table)" in unreadable and {"a", "b"} & unreadable


@pytest.mark.parametrize("table", ["slides", "tiles"])
def test_verify_reports_a_deleted_manifest(tmp_path, table) -> None:
    """Lance opens the version before a deleted manifest without a word: the store loses its newest slides."""
    store = store_with(tmp_path / "m.lance", {"a": distinct(3, 1), "b": distinct(2, 2)})
    assert verify_store(store).ok
    versions = tmp_path / "m.lance" / f"{table}.lance" / "_versions"
    newest = min(versions.glob("*.manifest"))  # Lance names manifests u64::MAX - version
    newest.unlink()
    report = verify_store(EmbeddingStore.open(store.uri))
    lost = [p for p in report.problems if p.kind == LOST]
    assert [p.slide_id for p in lost] == [f"({table} table)"] and report.exit_code == 1
    assert "Lance committed version 3 but the newest readable one is 2" in lost[0].detail


@pytest.fixture()
def finite_rot(tmp_path) -> EmbeddingStore:
    """Slide b's bytes changed on disk to other finite values: only its commit checksum can tell."""
    a, b = distinct(5, 1), distinct(4, 2)
    store = store_with(tmp_path / "f.lance", {"a": a, "b": b})
    rot_bytes(tmp_path / "f.lance", b, 1, value=5.0)
    return EmbeddingStore.open(store.uri)


@pytest.mark.parametrize(
    "read",
    [lambda s: s.slide_embeddings("b"), lambda s: s.all_embeddings(), lambda s: list(s.iter_slides())],
    ids=["slide_embeddings", "all_embeddings", "iter_slides"],
)
def test_reads_of_whole_slides_check_the_commit_checksum(finite_rot, read) -> None:
    with pytest.raises(StoreDamagedError, match=r"slide\(s\) \['b'\] differ from those committed"):
        read(finite_rot)
    np.testing.assert_array_equal(finite_rot.slide_embeddings("a")[0], distinct(5, 1))  # other slides read


@pytest.mark.parametrize(
    "command",
    [["index", "build"], ["export", "--out", "{tmp}/out"], ["overlap", "--store", "{uri}"]],
    ids=["index", "export", "overlap"],
)
def test_commands_that_read_every_vector_stop_at_finite_bit_rot_naming_the_slide(
    finite_rot, tmp_path, command
) -> None:
    args = [a.format(tmp=tmp_path, uri=finite_rot.uri) for a in command]
    result = runner.invoke(app, [*args, "--store", finite_rot.uri])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "the embeddings of slide(s) ['b'] differ from those committed" in errors[0]


# Kills itself (SIGKILL) when Lance is asked to tag the second table: the tag exists on one table only.
KILLED_TAG = textwrap.dedent(
    """
    import os, signal, sys
    from mvh.store import EmbeddingStore

    store = EmbeddingStore.open(sys.argv[1])
    tags = type(store.tables.tiles.tags)
    original, calls = tags.create, []

    def create(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    tags.create = create
    store.create_tag("v1")
    """
)


@pytest.mark.parametrize("then", ["create", "delete"])
def test_a_tag_creation_killed_midway_is_repaired_by_the_next_create_or_delete(tmp_path, then) -> None:
    store = store_with(tmp_path / "k.lance", {"a": distinct(3, 1)})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", KILLED_TAG, store.uri], env=env, timeout=120)
    assert done.returncode == -9  # killed between the first and the second table
    store = EmbeddingStore.open(store.uri)
    parts = {name: "v1" in t.tags.list() for name, t in store.tables.by_name().items()}
    assert sum(parts.values()) == 1 and store.tags() == {}  # half made, and hidden
    result = runner.invoke(app, ["tag", then, "v1", "--store", store.uri])
    assert result.exit_code == 0, result.output
    store = EmbeddingStore.open(store.uri)
    if then == "create":
        assert store.tags() == {"v1": store.table_versions()}
    else:
        assert not any("v1" in t.tags.list() for t in store.tables.by_name().values())
