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

from mvh.errors import UsageError

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
# LanceDB's object store reads the GOOGLE_* variables itself; mvh passes `--storage-option`s on.
GCS = Backend(name="Google Cloud Storage (untested: no emulator works with LanceDB here)", schemes=("gs",))
# LanceDB's object store reads the AZURE_STORAGE_* variables itself; mvh passes `--storage-option`s on.
AZURE = Backend(name="Azure Blob Storage", schemes=("az", "abfs"))
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
