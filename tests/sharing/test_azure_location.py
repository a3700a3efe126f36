"""Azure store locations: container URLs, credentials from AZURE_STORAGE_* and --storage-option, redaction.

No emulator needed: these check the seam's arithmetic (which options LanceDB and pyarrow get). The tests
against Azurite are in test_azure_store.py.
"""

from __future__ import annotations

import logging

import pyarrow.fs as pafs
import pytest

from mvh.cli._app import guarded
from mvh.errors import StoreError, UsageError
from mvh.store.location import parse_location, redact_environment

KEY = "c2VjcmV0LWFjY291bnQta2V5LW9mLXRoZS10ZXN0LWFjY291bnQ="  # base64, as account keys are
SAS = "sv=2019-12-12&ss=b&srt=sco&sp=rl&se=2030-01-01T00%3A00%3A00Z&spr=https&sig=AbC%2Bd3f%3D"
SIGNATURE = "AbC+d3f="  # the sig above, decoded: an HTTP client may quote either form


def test_account_and_key_come_from_the_standard_variables():
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "labacct", "AZURE_STORAGE_ACCOUNT_KEY": KEY}
    loc = parse_location("az://embeddings/team/e.lance", env=env)
    assert loc.is_remote and loc.uri == "az://embeddings/team/e.lance"
    assert loc.storage_options == {"azure_storage_account_name": "labacct", "azure_storage_account_key": KEY}


def test_the_az_cli_spellings_are_read_and_the_documented_ones_win():
    env = {"AZURE_STORAGE_ACCOUNT": "cliacct", "AZURE_STORAGE_KEY": "cli-key-value"}
    assert parse_location("az://c0n/e.lance", env=env).storage_options == {
        "azure_storage_account_name": "cliacct",
        "azure_storage_account_key": "cli-key-value",
    }
    env["AZURE_STORAGE_ACCOUNT_NAME"] = "named"
    assert (
        parse_location("az://c0n/e.lance", env=env).storage_options["azure_storage_account_name"] == "named"
    )


def test_a_connection_string_gives_account_key_and_endpoint_and_variables_override_it():
    connection = (
        f"DefaultEndpointsProtocol=https;AccountName=connacct;AccountKey={KEY};"
        "BlobEndpoint=https://connacct.blob.example.net;QueueEndpoint=https://q.example.net"
    )
    loc = parse_location("az://box/e.lance", env={"AZURE_STORAGE_CONNECTION_STRING": connection})
    assert loc.storage_options == {
        "azure_storage_account_name": "connacct",
        "azure_storage_account_key": KEY,
        "azure_storage_endpoint": "https://connacct.blob.example.net",
    }
    sovereign = "AccountName=gov;AccountKey=k3y-value;EndpointSuffix=core.usgovcloudapi.net"
    loc = parse_location(
        "az://box/e.lance",
        env={"AZURE_STORAGE_CONNECTION_STRING": sovereign, "AZURE_STORAGE_ACCOUNT_KEY": KEY},
    )
    assert loc.storage_options["azure_storage_endpoint"] == "https://gov.blob.core.usgovcloudapi.net"
    assert loc.storage_options["azure_storage_account_key"] == KEY
    with pytest.raises(UsageError, match="AZURE_STORAGE_CONNECTION_STRING"):
        parse_location("az://box/e.lance", env={"AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;garbage"})


def test_storage_options_win_and_object_store_aliases_mean_the_same_option():
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "envacct", "AZURE_STORAGE_ACCOUNT_KEY": KEY}
    loc = parse_location(
        "az://box/e.lance", storage_options=["account_name=flagacct", f"sas_token=?{SAS}"], env=env
    )
    assert loc.storage_options["azure_storage_account_name"] == "flagacct"
    assert loc.storage_options["azure_storage_sas_token"] == SAS  # the leading ? of a copied token is dropped


def test_the_emulator_flag_becomes_an_explicit_loopback_endpoint_with_the_published_account():
    env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": "http://127.0.0.1:41234"}
    options = parse_location("az://box/e.lance", env=env).storage_options
    assert options["azure_storage_endpoint"] == "http://127.0.0.1:41234/devstoreaccount1"
    assert options["azure_storage_account_name"] == "devstoreaccount1"
    assert options["azure_storage_account_key"].startswith("Eby8vdM02x")  # Microsoft's published Azurite key
    assert options["allow_http"] == "true" and options["azure_storage_use_emulator"] == "false"
    default = parse_location("az://box/e.lance", env={"AZURE_STORAGE_USE_EMULATOR": "1"}).storage_options
    assert (
        default["azure_storage_endpoint"] == "http://127.0.0.1:10000/devstoreaccount1"
    )  # object_store's default
    with_sas = parse_location("az://box/e.lance", env={**env, "AZURE_STORAGE_SAS_TOKEN": SAS}).storage_options
    assert "azure_storage_account_key" not in with_sas  # a SAS is never widened to the account key


@pytest.mark.parametrize(
    "endpoint, allowed",
    [
        ("http://127.0.0.1:10000/acct", True),
        ("http://localhost:10000/acct", True),
        ("http://10.0.0.5:10000/acct", False),
        ("https://acct.blob.core.windows.net", False),
    ],
)
def test_plain_http_is_allowed_without_a_flag_only_on_loopback(endpoint, allowed):
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ENDPOINT": endpoint}
    assert ("allow_http" in parse_location("az://box/e.lance", env=env).storage_options) is allowed


@pytest.mark.parametrize(
    "bad", ["az://Big_Box/e.lance", "az://ab/e.lance", "az://a--b/e.lance", "az://-ab/x"]
)
def test_a_bad_container_name_is_a_usage_error_naming_the_rule(bad):
    with pytest.raises(UsageError, match="container name"):
        parse_location(bad, env={})


def test_tags_pin_an_azure_snapshot():
    loc = parse_location("az://box/e.lance@paper-v1", env={})
    assert (loc.uri, loc.tag, loc.describe()) == ("az://box/e.lance", "paper-v1", "az://box/e.lance@paper-v1")


def test_abfs_urls_reach_the_container_named_before_the_at():
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "lab", "AZURE_STORAGE_ACCOUNT_KEY": KEY}
    fs, path = parse_location("abfs://box@lab.dfs.core.windows.net/e.lance", env=env).filesystem()
    assert isinstance(fs, pafs.AzureFileSystem) and path == "box/e.lance"
    with pytest.raises(UsageError, match="container name"):
        parse_location("abfs://Box@lab.dfs.core.windows.net/e.lance", env=env)


def test_secrets_are_redacted_in_repr_options_messages_and_the_environment():
    env = {
        "AZURE_STORAGE_ACCOUNT_NAME": "acct",
        "AZURE_STORAGE_ACCOUNT_KEY": KEY,
        "AZURE_STORAGE_SAS_TOKEN": SAS,
        "AZURE_CLIENT_SECRET": "sp-secret-value",
    }
    loc = parse_location("az://box/e.lance", env=env)
    shown = f"{loc!r} {loc.describe()} {loc.public_options()}"
    assert KEY not in shown and SAS not in shown and "sp-secret-value" not in shown
    assert loc.public_options()["azure_storage_account_name"] == "acct"
    message = f"GET http://h/box?{SAS} failed; signature {SIGNATURE}; key {KEY}; secret sp-secret-value"
    for text in (loc.redact(message), redact_environment(message, env)):
        assert KEY not in text and "AbC%2Bd3f%3D" not in text and SIGNATURE not in text
        assert "sp-secret-value" not in text and "GET http://h/box?" in text
    connection = f"AccountName=acct;AccountKey={KEY}"
    said = redact_environment(f"bad {connection} and {KEY}", {"AZURE_STORAGE_CONNECTION_STRING": connection})
    assert said == "bad *** and ***"


def test_sidecar_files_reach_azure_with_the_same_account_endpoint_and_credential():
    env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": "http://127.0.0.1:41234"}
    fs, path = parse_location("az://box/team/e.lance", env=env).filesystem()
    assert isinstance(fs, pafs.AzureFileSystem) and path == "box/team/e.lance"
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ENDPOINT": "https://other.example.net/x"}
    with pytest.raises(StoreError, match="azure_storage_endpoint"):
        parse_location("az://box/e.lance", env=env).filesystem()
    with pytest.raises(StoreError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        parse_location("az://box/e.lance", env={}).filesystem()


def test_a_library_warning_that_quotes_a_secret_reaches_stderr_redacted(monkeypatch, capsys):
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", SAS)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # the CLI as run from a shell: no logging set up

    @guarded
    def command() -> None:
        log = logging.getLogger("mvh.store.writer")
        log.warning("optimisation skipped (PUT http://h/b?%s: 403) %s", SAS, KEY)

    command()
    said = capsys.readouterr().err
    assert said.startswith("optimisation skipped (PUT http://h/b?***: 403) ***")
    assert SIGNATURE not in said and "AbC%2Bd3f%3D" not in said and KEY not in said
    assert logging.getLogger().handlers == []  # the command's handler is gone with the command
