"""Where a store lives: a local directory or an object-store URI, how to reach it, and which snapshot.

`--store` accepts a path, `s3://bucket/prefix/name.lance`, `az://container/name.lance`, `gs://bucket/...`,
optionally pinned to a tag with `URI@TAG` (or to a version with `--store-version N`). Credentials and the
endpoint come from the standard places (AWS_* variables and profiles, AZURE_STORAGE_* variables, GOOGLE_*
variables) plus `--storage-option KEY=VALUE`; they are passed to LanceDB under the option names of its object
store and never appear in `repr`, `mvh info`, results or error messages.
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlparse

from mvh.errors import UsageError
from mvh.store.credentials import azure_options, environment_secrets, google_options

REMOTE_SCHEMES = ("s3", "s3+ddb", "gs", "az", "abfs", "abfss", "memory")
AZURE_SCHEMES = ("az", "abfs", "abfss")
# Set by the CLI's --storage-option / --read-only / --store-version for the command it runs (or by a user).
ENV_OPTIONS = "MVH_STORAGE_OPTIONS"
ENV_READ_ONLY = "MVH_READ_ONLY"
ENV_VERSION = "MVH_STORE_VERSION"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SECRET_KEYS = ("secret", "token", "password", "key", "credential", "sas", "signature", "connection_string")
# AWS environment variables -> LanceDB/object_store option names
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
_AZURE_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# AWS shared config/credentials file keys -> option names
_PROFILE_KEYS = {
    "aws_access_key_id": "aws_access_key_id",
    "aws_secret_access_key": "aws_secret_access_key",
    "aws_session_token": "aws_session_token",
    "region": "aws_region",
    "endpoint_url": "aws_endpoint",
}


def is_secret_option(key: str) -> bool:
    """Whether a storage option carries a credential (its value is never shown).

    Identifiers that name a credential but are not one (`aws_access_key_id`) count as secret too: they
    identify an account, and hiding them costs nothing.
    """
    k = key.lower()
    return any(word in k for word in _SECRET_KEYS)


def _secret_parts(key: str, value: str) -> list[str]:
    """The pieces of a secret that an error message may quote on their own, the whole value first."""
    parts = [value]
    if "sas" in key or "signature" in key:  # an HTTP client quotes the SAS's signature in URLs, maybe encoded
        signature = dict(parse_qsl(value.lstrip("?"))).get("sig", "")
        parts += [signature, quote(signature, safe="")]
    elif key == "google_service_account_key":  # a service-account JSON: its private key is the secret
        try:
            fields = json.loads(value)
        except ValueError:
            fields = {}
        if isinstance(fields, dict):
            parts += [str(fields.get("private_key", "")), str(fields.get("private_key_id", ""))]
    return parts


def redact(text: str, options: Mapping[str, str]) -> str:
    """`text` with the value of every secret option replaced by `***`."""
    parts = {p for k, v in options.items() if v and is_secret_option(k) for p in _secret_parts(k.lower(), v)}
    for part in sorted(parts, key=len, reverse=True):  # longest first: a secret may hold another one
        if len(part) >= 4:
            text = text.replace(part, "***")
    return text


def redact_environment(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` with the environment's credentials (AWS_*, AZURE_*, GOOGLE_*, MVH_STORAGE_OPTIONS) as `***`."""
    env = os.environ if env is None else env
    secrets = {name: env[var] for var, name in _AWS_ENV.items() if env.get(var)}
    secrets.update(environment_secrets(env))
    for line in env.get(ENV_OPTIONS, "").split("\n"):
        key, sep, value = line.partition("=")
        if sep and is_secret_option(key):
            secrets[key] = value
    return redact(text, secrets)


class RedactingFilter(logging.Filter):
    """A logging filter that writes a record's message with the environment's credentials as `***`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the formatted message in place; never drops a record."""
        record.msg, record.args = redact_environment(record.getMessage()), None
        return True


def _scheme(uri: str) -> str:
    return urlparse(uri).scheme.lower() if "://" in uri else ""


def _split_tag(text: str) -> tuple[str, str | None]:
    """`URI@TAG` -> (URI, TAG); a local path that exists as written is never split."""
    if "@" not in text or (not _scheme(text) and Path(text).exists()):
        return text, None
    uri, tag = text.rsplit("@", 1)
    if "/" in tag or not uri:
        return text, None
    if not _TAG.match(tag):
        raise UsageError(f"--store {text}: tag {tag!r} is not a valid name (letters, digits, . _ -)")
    return uri, tag


def _env_version(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--store-version {text!r} is not a whole number (`mvh info` lists them)") from None


def check_tag_name(name: str) -> str:
    """`name` if it is a valid tag name (letters, digits, `.`, `_`, `-`), else a UsageError."""
    if not _TAG.match(name or ""):
        raise UsageError(f"tag {name!r} is not a valid name: use letters, digits, '.', '_' and '-'")
    return name


def parse_storage_options(items: Sequence[str] | None) -> dict[str, str]:
    """Repeated `--storage-option KEY=VALUE` -> dict (values kept as text, as LanceDB expects)."""
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"--storage-option {key.strip()!r}: write KEY=VALUE, e.g. aws_region=eu-west-1"
            )
        options[key.strip().lower()] = value
    return options


def _profile_options(env: Mapping[str, str]) -> dict[str, str]:
    """Credentials and region of the AWS profile named by AWS_PROFILE (shared credentials/config files)."""
    profile = env.get("AWS_PROFILE")
    if not profile:
        return {}
    home = Path(env.get("HOME", str(Path.home())))
    found: dict[str, str] = {}
    creds_file = Path(env.get("AWS_SHARED_CREDENTIALS_FILE", home / ".aws" / "credentials"))
    config_file = Path(env.get("AWS_CONFIG_FILE", home / ".aws" / "config"))
    for path, section in ((config_file, f"profile {profile}" if profile != "default" else "default"),
                          (creds_file, profile)):
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


def _is_loopback_http(endpoint: str) -> bool:
    parsed = urlparse(endpoint)
    if parsed.scheme != "http" or not parsed.hostname:
        return False
    if parsed.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.hostname).is_loopback
    except ValueError:
        return False


def azure_container_path(uri: str) -> tuple[str, str | None, str]:
    """`az://container/path` or `abfs[s]://container@account.dfs.core.windows.net/path` -> (container,
    account named in the URI or None, path inside the container)."""
    parsed = urlparse(uri)
    container, _, host = parsed.netloc.partition("@")
    account = host.split(".", 1)[0] if host else None
    return container, account, parsed.path.strip("/")


def _azure_options(uri: str, given: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Options for an Azure store (see mvh.store.credentials), once its container name is checked."""
    container, account, _ = azure_container_path(uri)
    if not _AZURE_CONTAINER.match(container):
        raise UsageError(
            f"--store {uri}: {container!r} is not an Azure container name (3-63 lowercase letters, digits "
            "and single hyphens); write az://container/path.lance"
        )
    options = azure_options(account, given, env)
    if _is_loopback_http(options.get("azure_storage_endpoint", "")) and "allow_http" not in options:
        options["allow_http"] = "true"  # as for S3: plain HTTP without a flag only to this machine
    return options


def _google_options(uri: str, given: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Options for a GCS store (see mvh.store.credentials), once its bucket name is checked."""
    bucket = urlparse(uri).netloc
    if not _GCS_BUCKET.match(bucket):
        raise UsageError(
            f"--store {uri}: {bucket!r} is not a GCS bucket name (lowercase letters, digits, '-', '_', '.'); "
            "write gs://bucket/path.lance"
        )
    return google_options(given, env)


def resolve_storage_options(uri: str, given: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Storage options for `uri` from its backend's standard places, `--storage-option` last (it wins)."""
    scheme = _scheme(uri)
    if scheme in AZURE_SCHEMES:
        return _azure_options(uri, given, env)
    if scheme == "gs":
        return _google_options(uri, given, env)
    if scheme not in ("s3", "s3+ddb"):
        return dict(given)
    options = _profile_options(env)
    for var, key in _AWS_ENV.items():
        if env.get(var):
            options[key] = env[var]
    options.update(given)
    endpoint = options.get("aws_endpoint", "")
    if _is_loopback_http(endpoint) and "allow_http" not in options:
        options["allow_http"] = "true"  # plain HTTP is allowed without a flag only to this machine
    return options


@dataclass(frozen=True)
class StoreLocation:
    """A store's URI, how to reach it, and which snapshot to open (`tag` or `version`, else the latest)."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict, repr=False)
    tag: str | None = None
    version: int | None = None
    read_only: bool = False

    @property
    def is_remote(self) -> bool:
        """Whether the store is in an object store (not a local directory)."""
        return _scheme(self.uri) in REMOTE_SCHEMES

    @property
    def local_path(self) -> Path | None:
        """The directory of a local store; None for an object-store URI."""
        if self.is_remote:
            return None
        return Path(self.uri.removeprefix("file://"))

    @property
    def pinned(self) -> bool:
        """Whether a past snapshot was asked for (a tag or a version): such a store is read-only."""
        return self.tag is not None or self.version is not None

    def describe(self) -> str:
        """`URI`, `URI@tag` or `URI (version N)`: for messages and results (no secrets)."""
        if self.tag is not None:
            return f"{self.uri}@{self.tag}"
        if self.version is not None:
            return f"{self.uri} (version {self.version})"
        return self.uri

    def redact(self, text: str) -> str:
        """`text` with this location's secrets replaced by `***`."""
        return redact(text, self.storage_options)

    def public_options(self) -> dict[str, str]:
        """Storage options safe to show: secret values replaced by `***`."""
        return {k: ("***" if is_secret_option(k) else v) for k, v in sorted(self.storage_options.items())}


def parse_location(
    text: str | Path,
    *,
    storage_options: Sequence[str] | Mapping[str, str] | None = None,
    version: int | None = None,
    read_only: bool = False,
    env: Mapping[str, str] | None = None,
) -> StoreLocation:
    """`--store TEXT [--storage-option K=V ...] [--store-version N] [--read-only]` -> a StoreLocation."""
    text = str(text)
    env = os.environ if env is None else env
    if not text.strip():
        raise UsageError("--store is empty; give a directory or an object-store URI such as s3://bucket/x.lance")
    uri, tag = _split_tag(text)
    if version is None and tag is None and env.get(ENV_VERSION):
        version = _env_version(env[ENV_VERSION])
    read_only = read_only or env.get(ENV_READ_ONLY, "") == "1"
    if tag is not None and version is not None:
        raise UsageError(f"--store {text} names a tag and --store-version {version}: give one of them")
    if version is not None and version < 1:
        raise UsageError(f"--store-version {version}: versions start at 1 (see `mvh info --store {uri}`)")
    scheme = _scheme(uri)
    if scheme and scheme not in REMOTE_SCHEMES and scheme != "file":
        raise UsageError(
            f"--store {uri}: scheme {scheme!r} is not supported; use a path or s3://, gs://, az://"
        )
    if isinstance(storage_options, Mapping):
        given = {str(k).lower(): str(v) for k, v in storage_options.items()}
    else:
        given = parse_storage_options(storage_options)
    given = {**parse_storage_options(env.get(ENV_OPTIONS, "").split("\n") if env.get(ENV_OPTIONS) else []),
             **given}
    options = resolve_storage_options(uri, given, env)
    return StoreLocation(uri=uri, storage_options=options, tag=tag, version=version, read_only=read_only)
