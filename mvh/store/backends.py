"""The object stores a store may live in: one `Backend` record per kind, and nothing else knows them.

A record says which URI schemes it serves, which environment variables carry its options (credentials,
region, endpoint), where else credentials come from (the AWS profile files), how options are finished
(plain HTTP allowed only to this machine), whether the service honours the conditional put that Lance
commits rely on for concurrent writers, and how to reach the plain files beside the tables (pyarrow).
`mvh.store.location` picks the record by scheme. Adding a backend is one record in `BACKENDS`.
"""

from __future__ import annotations

import configparser
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from mvh.errors import StoreError, UsageError

Options = dict[str, str]


def _no_files(env: Mapping[str, str]) -> Options:
    return {}


def _unchanged(options: Options) -> Options:
    return options


@dataclass(frozen=True)
class Backend:
    """One kind of object store: its schemes, where its options come from, and what it guarantees."""

    name: str
    schemes: tuple[str, ...]
    # environment variable -> storage option name, in rising precedence (a later variable wins)
    env_options: Mapping[str, str] = field(default_factory=dict)
    # Lance commits a table version with a put-if-absent; without it, two writers can lose a commit.
    conditional_put: bool = True
    # options read from credential files named by the environment (lowest precedence)
    file_options: Callable[[Mapping[str, str]], Options] = _no_files
    # the resolved options, adjusted (e.g. plain HTTP allowed to a loopback endpoint)
    finish: Callable[[Options], Options] = _unchanged
    # options -> a pyarrow filesystem for the files beside the tables (paths `bucket/key`); None: pyarrow's
    # own `FileSystem.from_uri`
    filesystem: Callable[[Options], pafs.FileSystem] | None = None
    # (pattern, what it means) a bucket or container name must match; None: LanceDB's errors say it
    container: tuple[str, str] | None = None

    def options(self, given: Mapping[str, str], env: Mapping[str, str]) -> Options:
        """Storage options: credential files < environment < `given` (`--storage-option`), finished."""
        options = self.file_options(env)
        for var, key in self.env_options.items():
            if env.get(var):
                options[key] = env[var]
        options.update(given)
        return self.finish(options)


# ---------------------------------------------------------------- Amazon S3 and S3-compatible servers
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_REGION": "aws_region",
    "AWS_DEFAULT_REGION": "aws_region",
    "AWS_ENDPOINT_URL": "aws_endpoint",
    "AWS_ENDPOINT_URL_S3": "aws_endpoint",
    "AWS_ENDPOINT": "aws_endpoint",
}
# AWS shared config/credentials file keys -> option names
_PROFILE_KEYS = {
    "aws_access_key_id": "aws_access_key_id",
    "aws_secret_access_key": "aws_secret_access_key",
    "aws_session_token": "aws_session_token",
    "region": "aws_region",
    "endpoint_url": "aws_endpoint",
}


def _aws_profile(env: Mapping[str, str]) -> Options:
    """Credentials and region of the AWS profile named by AWS_PROFILE (shared credentials/config files)."""
    profile = env.get("AWS_PROFILE")
    if not profile:
        return {}
    home = Path(env.get("HOME", str(Path.home())))
    found: Options = {}
    creds_file = Path(env.get("AWS_SHARED_CREDENTIALS_FILE", home / ".aws" / "credentials"))
    config_file = Path(env.get("AWS_CONFIG_FILE", home / ".aws" / "config"))
    sections = (
        (config_file, f"profile {profile}" if profile != "default" else "default"),
        (creds_file, profile),
    )
    for path, section in sections:
        parser = configparser.ConfigParser()
        if not path.is_file() or not parser.read(path) or not parser.has_section(section):
            continue
        for key, name in _PROFILE_KEYS.items():
            if parser.has_option(section, key):
                found[name] = parser.get(section, key)
    if not found:
        raise UsageError(
            f"AWS_PROFILE={profile}: no such profile in {creds_file} or {config_file}; "
            "fix the profile name or unset AWS_PROFILE"
        )
    return found


def is_loopback_http(endpoint: str) -> bool:
    """Whether `endpoint` is plain HTTP to this machine (the only plain HTTP allowed without a flag)."""
    parsed = urlparse(endpoint)
    if parsed.scheme != "http" or not parsed.hostname:
        return False
    if parsed.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.hostname).is_loopback
    except ValueError:
        return False


def _s3_finish(options: Options) -> Options:
    if is_loopback_http(options.get("aws_endpoint", "")) and "allow_http" not in options:
        options["allow_http"] = "true"
    return options


def _s3_filesystem(options: Options) -> pafs.FileSystem:
    endpoint = options.get("aws_endpoint") or options.get("endpoint")
    kwargs: dict[str, object] = {}
    if options.get("aws_access_key_id"):
        kwargs["access_key"] = options["aws_access_key_id"]
        kwargs["secret_key"] = options.get("aws_secret_access_key", "")
        if options.get("aws_session_token"):
            kwargs["session_token"] = options["aws_session_token"]
    if options.get("aws_region"):
        kwargs["region"] = options["aws_region"]
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or endpoint
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


S3 = Backend(
    name="Amazon S3 or an S3-compatible server",
    schemes=("s3", "s3+ddb"),
    env_options=_AWS_ENV,
    conditional_put=True,  # AWS S3 honours If-None-Match; so does SeaweedFS (tests/sharing/test_s3_server.py)
    file_options=_aws_profile,
    finish=_s3_finish,
    filesystem=_s3_filesystem,
)
# ---------------------------------------------------------------- Azure Blob Storage
# environment variables -> option names, lowest first (the *_NAME/_KEY forms win over the az CLI's)
_AZURE_ENV = {
    "AZURE_STORAGE_CONNECTION_STRING": "azure_storage_connection_string",
    "AZURE_STORAGE_ACCOUNT": "azure_storage_account_name",
    "AZURE_STORAGE_ACCOUNT_NAME": "azure_storage_account_name",
    "AZURE_STORAGE_KEY": "azure_storage_account_key",
    "AZURE_STORAGE_ACCOUNT_KEY": "azure_storage_account_key",
    "AZURE_STORAGE_SAS_TOKEN": "azure_storage_sas_token",
    "AZURE_STORAGE_ENDPOINT": "azure_storage_endpoint",
    "AZURE_CLIENT_ID": "azure_client_id",
    "AZURE_CLIENT_SECRET": "azure_client_secret",
    "AZURE_TENANT_ID": "azure_tenant_id",
    "AZURE_STORAGE_USE_EMULATOR": "azure_storage_use_emulator",
    "AZURITE_BLOB_STORAGE_URL": "azurite_blob_storage_url",
}
# object_store's other spellings of those options (only `--storage-option` brings them) -> the names used here
_AZURE_ALIASES = {
    alias: name
    for name, aliases in {
        "azure_storage_account_name": "account_name",
        "azure_storage_account_key": "account_key access_key master_key azure_storage_access_key "
        "azure_storage_master_key",
        "azure_storage_sas_token": "sas_token sas_key azure_storage_sas_key",
        "azure_storage_endpoint": "endpoint azure_endpoint",
        "azure_storage_use_emulator": "use_emulator",
        "azure_client_id": "client_id azure_storage_client_id",
        "azure_client_secret": "client_secret azure_storage_client_secret",
        "azure_tenant_id": "tenant_id azure_storage_tenant_id",
    }.items()
    for alias in aliases.split()
}
# connection-string fields -> option names (the queue, table and file endpoints are not the blob service's)
_AZURE_CONNECTION = {
    "accountname": "azure_storage_account_name",
    "accountkey": "azure_storage_account_key",
    "sharedaccesssignature": "azure_storage_sas_token",
    "blobendpoint": "azure_storage_endpoint",
    "usedevelopmentstorage": "azure_storage_use_emulator",
}
# Azurite's well-known account and key, published by Microsoft for the emulator only; LanceDB's object store
# uses the same pair when AZURE_STORAGE_USE_EMULATOR is set without credentials.
EMULATOR_ACCOUNT = "devstoreaccount1"
_EMULATOR_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_EMULATOR_URL = "http://127.0.0.1:10000"  # object_store's default for AZURITE_BLOB_STORAGE_URL


def connection_string_options(text: str, *, check_fields: bool = True) -> Options:
    """`AccountName=..;AccountKey=..;BlobEndpoint=..` (an Azure connection string) -> option names."""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep and check_fields:
            raise UsageError(
                f"AZURE_STORAGE_CONNECTION_STRING: {key!r} is not KEY=VALUE; copy the string from the portal"
            )
        fields[key.strip().lower()] = value.strip()
    options = {_AZURE_CONNECTION[k]: v for k, v in fields.items() if k in _AZURE_CONNECTION}
    suffix = fields.get("endpointsuffix", "core.windows.net")
    if "blobendpoint" not in fields and suffix != "core.windows.net" and "accountname" in fields:
        scheme = fields.get("defaultendpointsprotocol", "https")
        options["azure_storage_endpoint"] = f"{scheme}://{fields['accountname']}.blob.{suffix}"
    return options


def _azure_finish(options: Options) -> Options:
    """Connection string < variables < `--storage-option` (aliases included); the emulator made explicit."""
    aliased = {_AZURE_ALIASES[k]: v for k, v in options.items() if k in _AZURE_ALIASES}
    plain = {k: v for k, v in options.items() if k not in _AZURE_ALIASES}
    connection = connection_string_options(plain.pop("azure_storage_connection_string", ""))
    options = {**connection, **plain, **aliased}
    if options.get("azure_storage_sas_token", "").startswith("?"):
        options["azure_storage_sas_token"] = options["azure_storage_sas_token"][1:]
    url = options.pop("azurite_blob_storage_url", "") or _EMULATOR_URL
    if options.get("azure_storage_use_emulator", "").lower() in ("true", "1", "yes"):
        name = options.setdefault("azure_storage_account_name", EMULATOR_ACCOUNT)
        if name == EMULATOR_ACCOUNT and not options.get("azure_storage_sas_token"):
            options.setdefault("azure_storage_account_key", _EMULATOR_KEY)
        options["azure_storage_endpoint"] = f"{url.rstrip('/')}/{name}"
        # the endpoint is now explicit; LanceDB's emulator mode would read its URL from the process
        # environment only and ignore it, so it is switched off (the pyarrow side reads the same endpoint)
        options["azure_storage_use_emulator"] = "false"
    if is_loopback_http(options.get("azure_storage_endpoint", "")) and "allow_http" not in options:
        options["allow_http"] = "true"
    return options
def _azure_filesystem(options: Options) -> pafs.FileSystem:
    """Arrow's Azure filesystem for these options: account key, SAS token or a service principal."""
    account = options.get("azure_storage_account_name")
    if not account:
        raise StoreError(
            "an az:// store needs its account: set AZURE_STORAGE_ACCOUNT_NAME "
            "or --storage-option azure_storage_account_name=NAME"
        )
    kwargs: dict[str, str] = {}
    if options.get("azure_storage_account_key"):
        kwargs["account_key"] = options["azure_storage_account_key"]
    elif options.get("azure_storage_sas_token"):
        kwargs["sas_token"] = "?" + options["azure_storage_sas_token"]  # Arrow appends it to URLs as written
    elif options.get("azure_client_secret"):
        kwargs.update(
            client_id=options.get("azure_client_id", ""),
            client_secret=options["azure_client_secret"],
            tenant_id=options.get("azure_tenant_id", ""),
        )
    endpoint = options.get("azure_storage_endpoint")
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.path.strip("/") == account:  # path-style (Azurite, a proxy): the account leads the path
            authority = parsed.netloc
            kwargs.update(dfs_storage_authority=authority, dfs_storage_scheme=parsed.scheme)
        elif (parsed.hostname or "").startswith(f"{account}.") and not parsed.path.strip("/"):
            authority = parsed.netloc[len(account) :]  # Arrow puts the account in front of ".host"
        else:
            raise StoreError(
                f"azure_storage_endpoint {endpoint}: write https://{account}.HOST or http(s)://HOST/{account}"
            )
        kwargs.update(blob_storage_authority=authority, blob_storage_scheme=parsed.scheme or "https")
    return pafs.AzureFileSystem(account, **kwargs)


AZURE = Backend(
    name="Azure Blob Storage",
    schemes=("az", "abfs"),
    env_options=_AZURE_ENV,
    conditional_put=True,  # Blob Storage honours If-None-Match: *, so does Azurite (test_azure_store.py)
    finish=_azure_finish,
    filesystem=_azure_filesystem,
    container=(
        r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]",
        "an Azure container name (3-63 lowercase letters, digits and single hyphens); write "
        "az://container/path.lance",
    ),
)


# ---------------------------------------------------------------- Google Cloud Storage (untested end to end)
_GOOGLE_ENV = {
    "GOOGLE_SERVICE_ACCOUNT": "google_service_account",
    "GOOGLE_SERVICE_ACCOUNT_PATH": "google_service_account",
    "GOOGLE_SERVICE_ACCOUNT_KEY": "google_service_account_key",
    "GOOGLE_APPLICATION_CREDENTIALS": "google_application_credentials",
}


def _gcs_filesystem(options: Options) -> pafs.FileSystem:
    """Arrow's GCS filesystem, which takes Google's Application Default Credentials only."""
    given = sorted(k for k in ("google_service_account", "google_service_account_key") if options.get(k))
    if given:
        raise StoreError(
            f"files beside a gs:// store cannot use {', '.join(given)}: point GOOGLE_APPLICATION_CREDENTIALS "
            "at the service-account file instead"
        )
    return pafs.GcsFileSystem()


GCS = Backend(
    name="Google Cloud Storage (untested: no emulator works with LanceDB here)",
    schemes=("gs",),
    env_options=_GOOGLE_ENV,
    filesystem=_gcs_filesystem,
    container=(
        r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]",
        "a GCS bucket name (lowercase letters, digits, '-', '_', '.'); write gs://bucket/path.lance",
    ),
)
MEMORY = Backend(name="in-memory (tests)", schemes=("memory",))
BACKENDS = (S3, GCS, AZURE, MEMORY)


def backend_for(scheme: str) -> Backend | None:
    """The backend serving URI `scheme` (None when no backend does)."""
    for backend in BACKENDS:
        if scheme in backend.schemes:
            return backend
    return None


def secret_env_values(env: Mapping[str, str], is_secret: Callable[[str], bool]) -> Options:
    """option name -> value of every credential that the environment holds for any backend."""
    return {
        key: env[var]
        for backend in BACKENDS
        for var, key in backend.env_options.items()
        if env.get(var) and is_secret(key)
    }
