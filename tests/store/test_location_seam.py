"""The location seam: each backend record is chosen by its scheme, and a location answers for it."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from mvh.errors import UsageError
from mvh.store.backends import AZURE, BACKENDS, GCS, S3, backend_for
from mvh.store.location import parse_location, redact_environment


@pytest.mark.parametrize(
    "uri, backend",
    [("s3://b/x.lance", S3), ("s3+ddb://b/x.lance", S3), ("gs://bkt/x.lance", GCS),
     ("az://box/x.lance", AZURE), ("abfs://box/x.lance", AZURE)],
)
def test_a_remote_uri_is_served_by_its_backend(uri: str, backend: object) -> None:
    loc = parse_location(uri, env={})
    assert loc.backend is backend and loc.is_remote and loc.local_path is None


def test_every_scheme_has_one_backend() -> None:
    schemes = [s for b in BACKENDS for s in b.schemes]
    assert len(schemes) == len(set(schemes))
    assert all(backend_for(s) is b for b in BACKENDS for s in b.schemes)


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_a_local_path_has_no_backend_and_a_local_folder(tmp_path, prefix: str) -> None:
    loc = parse_location(f"{prefix}{tmp_path}/x.lance", env={})
    assert loc.backend is None and not loc.is_remote and loc.conditional_put
    assert loc.local_path == tmp_path / "x.lance"
    fs, path = loc.filesystem()
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "x.lance")


def test_an_unknown_scheme_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(UsageError, match="scheme 'ftp' is not supported.*s3://, gs://, az://"):
        parse_location("ftp://host/x.lance", env={})


def test_the_s3_files_beside_the_tables_use_the_options_endpoint() -> None:
    loc = parse_location(
        "s3://bucket/team/x.lance",
        env={"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    )
    fs, path = loc.filesystem()
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/team/x.lance"
    assert loc.conditional_put


def test_the_cache_folder_is_per_location_under_the_cache_root(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path))
    a, b = parse_location("s3://b/a.lance", env={}), parse_location("s3://b/b.lance", env={})
    assert a.cache_dir("index").parent == tmp_path / "index" and a.cache_dir("index") != b.cache_dir("index")
    assert a.cache_dir("index") == parse_location("s3://b/a.lance", env={}).cache_dir("index")


def test_environment_credentials_of_a_backend_are_redacted() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI", "AWS_REGION": "eu-west-1"}
    assert redact_environment("key wJalrXUtnFEMI in eu-west-1", env) == "key *** in eu-west-1"
