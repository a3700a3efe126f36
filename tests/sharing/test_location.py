"""Store locations: URIs, tags, versions, credentials from the standard places, never shown."""

from __future__ import annotations

import pytest

from mvh.errors import UsageError
from mvh.store.location import parse_location, redact

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLETOKEN",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
}


def test_local_path_is_not_remote_and_gets_no_aws_options(tmp_path):
    loc = parse_location(tmp_path / "e.lance", env=S3_ENV)
    assert not loc.is_remote and loc.storage_options == {} and loc.tag is None


def test_s3_uri_takes_credentials_region_and_endpoint_from_the_environment():
    loc = parse_location("s3://bucket/team/e.lance", env=S3_ENV)
    assert loc.is_remote and loc.uri == "s3://bucket/team/e.lance"
    assert loc.storage_options == {
        "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG",
        "aws_session_token": "FwoGZXIvYXdzEXAMPLETOKEN", "aws_region": "eu-west-1",
        "aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true",
    }


@pytest.mark.parametrize("endpoint, allowed", [
    ("http://127.0.0.1:9000", True), ("http://localhost:9000", True), ("http://[::1]:9000", True),
    ("http://10.0.0.5:9000", False), ("https://s3.example.org", False),
])
def test_plain_http_is_allowed_without_a_flag_only_on_loopback(endpoint, allowed):
    loc = parse_location("s3://b/e.lance", env={"AWS_ENDPOINT_URL": endpoint})
    assert ("allow_http" in loc.storage_options) is allowed


def test_storage_option_flags_win_over_the_environment():
    loc = parse_location("s3://b/e.lance", storage_options=["aws_region=us-west-2", "allow_http=false"],
                         env=S3_ENV)
    assert loc.storage_options["aws_region"] == "us-west-2" and loc.storage_options["allow_http"] == "false"


def test_aws_profile_is_read_from_the_shared_files(tmp_path):
    (tmp_path / "credentials").write_text(
        "[team]\naws_access_key_id = AKPROFILE\naws_secret_access_key = s3cr3tprofile\n"
    )
    (tmp_path / "config").write_text("[profile team]\nregion = ap-south-1\n")
    env = {"AWS_PROFILE": "team", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
           "AWS_CONFIG_FILE": str(tmp_path / "config")}
    loc = parse_location("s3://b/e.lance", env=env)
    assert loc.storage_options == {"aws_access_key_id": "AKPROFILE", "aws_secret_access_key": "s3cr3tprofile",
                                   "aws_region": "ap-south-1"}
    with pytest.raises(UsageError, match="AWS_PROFILE=nope"):
        parse_location("s3://b/e.lance", env={**env, "AWS_PROFILE": "nope"})


def test_tags_and_versions_pin_a_snapshot(tmp_path):
    loc = parse_location("s3://b/e.lance@paper-2026", env={})
    assert (loc.uri, loc.tag, loc.pinned, loc.describe()) == ("s3://b/e.lance", "paper-2026", True,
                                                              "s3://b/e.lance@paper-2026")
    assert parse_location("s3://b/e.lance", version=3, env={}).describe() == "s3://b/e.lance (version 3)"
    odd = tmp_path / "lab@home.lance"
    odd.mkdir()
    assert parse_location(odd, env={}).tag is None  # an existing local path is taken as written
    with pytest.raises(UsageError, match="give one of them"):
        parse_location("s3://b/e.lance@t1", version=2, env={})
    with pytest.raises(UsageError, match="versions start at 1"):
        parse_location("s3://b/e.lance", version=0, env={})


@pytest.mark.parametrize("bad", ["", "ftp://host/x.lance", "s3://b/e.lance@bad tag"])
def test_bad_store_arguments_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_location(bad, env={})


def test_secrets_never_appear_in_repr_messages_or_public_options():
    loc = parse_location("s3://b/e.lance", env=S3_ENV)
    text = f"{loc!r} {loc.describe()} {loc.public_options()}"
    for secret in (S3_ENV["AWS_SECRET_ACCESS_KEY"], S3_ENV["AWS_SESSION_TOKEN"], S3_ENV["AWS_ACCESS_KEY_ID"]):
        assert secret not in text
    assert loc.public_options()["aws_region"] == "eu-west-1"
    message = f"denied for {S3_ENV['AWS_SECRET_ACCESS_KEY']} with token {S3_ENV['AWS_SESSION_TOKEN']}"
    assert loc.redact(message) == "denied for *** with token ***"
    assert redact("nothing secret here", loc.storage_options) == "nothing secret here"
