"""GCS store locations (`gs://`): untested against a server (no emulator works with LanceDB's object store
here), so the seam's part is pinned down: URL parsing, credentials from GOOGLE_* and --storage-option,
redaction, and the filesystem the FAISS index and card files would use.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest

from mvh.errors import StoreError, UsageError
from mvh.store.location import parse_location, redact_environment

PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
SERVICE_KEY = json.dumps(
    {
        "type": "service_account",
        "client_email": "mvh@lab.iam.gserviceaccount.com",
        "private_key_id": "0123456789abcdef0123",
        "private_key": PRIVATE_KEY,
    }
)


def test_gs_uri_is_remote_and_takes_credentials_from_the_google_variables():
    env = {
        "GOOGLE_SERVICE_ACCOUNT": "/keys/lab.json",
        "AWS_SECRET_ACCESS_KEY": "not-for-gcs",
        "AZURE_STORAGE_ACCOUNT_KEY": "not-for-gcs-either",
    }
    loc = parse_location("gs://lab-bucket/team/e.lance", env=env)
    assert loc.is_remote and loc.uri == "gs://lab-bucket/team/e.lance"
    assert loc.storage_options == {"google_service_account": "/keys/lab.json"}


def test_storage_options_win_over_the_google_variables():
    loc = parse_location(
        "gs://lab-bucket/e.lance",
        storage_options=[f"google_service_account_key={SERVICE_KEY}"],
        env={"GOOGLE_SERVICE_ACCOUNT_KEY": "{}"},
    )
    assert loc.storage_options == {"google_service_account_key": SERVICE_KEY}


def test_tags_pin_a_gcs_snapshot():
    loc = parse_location("gs://lab-bucket/e.lance@v2", env={})
    assert (loc.uri, loc.tag) == ("gs://lab-bucket/e.lance", "v2")


@pytest.mark.parametrize("bad", ["gs://Lab_Bucket/e.lance", "gs://ab/e.lance", "gs:///e.lance"])
def test_a_bad_bucket_name_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="GCS bucket name"):
        parse_location(bad, env={})


def test_a_service_account_key_and_its_private_key_are_never_shown():
    env = {"GOOGLE_SERVICE_ACCOUNT_KEY": SERVICE_KEY}
    loc = parse_location("gs://lab-bucket/e.lance", env=env)
    shown = f"{loc!r} {loc.public_options()}"
    assert "BEGIN PRIVATE KEY" not in shown and "0123456789abcdef0123" not in shown
    message = f"signing failed with key {PRIVATE_KEY} (id 0123456789abcdef0123)"
    for text in (loc.redact(message), redact_environment(message, env)):
        assert (
            "MIIEvQIB" not in text
            and "0123456789abcdef0123" not in text
            and text.startswith("signing failed")
        )


def test_sidecar_files_use_application_default_credentials_or_say_what_to_set():
    fs, path = parse_location("gs://lab-bucket/team/e.lance", env={}).filesystem()
    assert isinstance(fs, pafs.GcsFileSystem) and path == "lab-bucket/team/e.lance"
    loc = parse_location("gs://lab-bucket/e.lance", env={"GOOGLE_SERVICE_ACCOUNT_KEY": SERVICE_KEY})
    with pytest.raises(StoreError, match="GOOGLE_APPLICATION_CREDENTIALS") as refused:
        loc.filesystem()
    assert "PRIVATE KEY" not in str(refused.value)
