"""Where a store lives: a local directory or an object-store URI, how to reach it, and which snapshot.

`--store` accepts a path, `s3://bucket/prefix/name.lance`, `az://container/name.lance`, `gs://bucket/...`
(the schemes of `mvh.store.backends`), optionally pinned to a tag with `URI@TAG` (or to a version with
`--store-version N`). Credentials and the endpoint come from the standard places of the backend (AWS_*
variables and profiles, AZURE_STORAGE_*, GOOGLE_*) plus `--storage-option KEY=VALUE`; they are passed to
LanceDB and never appear in `repr`, `mvh info`, results, log lines or error messages.

This module and `mvh.store.backends` are the location seam: no other module parses a store URI. A
`StoreLocation` answers what the rest of mvh asks: is it local (and where), which backend serves it, its
options and their redaction, whether concurrent writers are safe there, the pyarrow filesystem of the
files beside its tables, and its folder in the local cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from mvh.errors import StoreError, UsageError
from mvh.store.backends import Backend, backend_for, connection_string_options, secret_env_values

LOCAL_SCHEME = "file"
# Set by the CLI's --storage-option / --read-only / --store-version for the command it runs (or by a user).
ENV_OPTIONS = "MVH_STORAGE_OPTIONS"
ENV_READ_ONLY = "MVH_READ_ONLY"
ENV_VERSION = "MVH_STORE_VERSION"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SECRET_KEYS = ("secret", "token", "password", "key", "credential", "sas", "signature", "connection_string")


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """`$MVH_CACHE_DIR`, else `$XDG_CACHE_HOME/mvh`, else `~/.cache/mvh`."""
    env = os.environ if env is None else env
    if env.get("MVH_CACHE_DIR"):
        return Path(env["MVH_CACHE_DIR"])
    return Path(env.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mvh"


def is_secret_option(key: str) -> bool:
    """Whether a storage option carries a credential (its value is never shown).

    Identifiers that name a credential but are not one (`aws_access_key_id`) count as secret too: they
    identify an account, and hiding them costs nothing.
    """
    k = key.lower()
    return any(word in k for word in _SECRET_KEYS)


def _secret_parts(key: str, value: str) -> list[str]:
    """The pieces of a secret that a message may quote on their own, the whole value first."""
    parts = [value]
    if "connection_string" in key:  # an Azure connection string holds an account key or a SAS
        inner = connection_string_options(value, check_fields=False)
        for name in ("azure_storage_account_key", "azure_storage_sas_token"):
            parts += _secret_parts(name, inner[name]) if inner.get(name) else []
    elif "sas" in key or "signature" in key:  # HTTP errors quote a SAS's signature in URLs, maybe encoded
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
    """`text` with the credentials of the environment (every backend's, MVH_STORAGE_OPTIONS) as `***`."""
    env = os.environ if env is None else env
    secrets = secret_env_values(env, is_secret_option)
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


def uri_scheme(uri: str) -> str:
    """The scheme of a store URI, lower case ("" for a plain path)."""
    return urlparse(uri).scheme.lower() if "://" in uri else ""


def _split_tag(text: str) -> tuple[str, str | None]:
    """`URI@TAG` -> (URI, TAG); a local path that exists as written is never split."""
    if "@" not in text or (not uri_scheme(text) and Path(text).exists()):
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


def resolve_storage_options(uri: str, given: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Storage options for `uri` from its backend's places (e.g. AWS profile < AWS_* < `--storage-option`)."""
    backend = backend_for(uri_scheme(uri))
    return dict(given) if backend is None else backend.options(given, env)


@dataclass(frozen=True)
class StoreLocation:
    """A store's URI, how to reach it, and which snapshot to open (`tag` or `version`, else the latest)."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict, repr=False)
    tag: str | None = None
    version: int | None = None
    read_only: bool = False

    @property
    def scheme(self) -> str:
        """The URI scheme ("" for a plain path, "file" for file://)."""
        return uri_scheme(self.uri)

    @property
    def backend(self) -> Backend | None:
        """The object store serving this location (None for a local directory)."""
        return backend_for(self.scheme)

    @property
    def is_remote(self) -> bool:
        """Whether the store is in an object store (not a local directory)."""
        return self.backend is not None

    @property
    def local_path(self) -> Path | None:
        """The directory of a local store; None for an object-store URI."""
        if self.is_remote:
            return None
        return Path(self.uri.removeprefix(f"{LOCAL_SCHEME}://"))

    @property
    def conditional_put(self) -> bool:
        """Whether concurrent writers are safe here (Lance's commits need put-if-absent)."""
        return True if self.backend is None else self.backend.conditional_put

    def cache_dir(self, area: str) -> Path:
        """This location's folder under `area` of the local cache (e.g. fetched index files)."""
        return cache_root() / area / hashlib.sha256(self.uri.encode()).hexdigest()[:16]

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, path of the store inside it), for the plain files beside the tables."""
        local = self.local_path
        if local is not None:
            return pafs.LocalFileSystem(), str(local.resolve())
        backend = self.backend
        try:
            if backend is not None and backend.filesystem is not None:
                parsed = urlparse(self.uri)
                bucket = parsed.netloc.partition("@")[0]  # abfs://container@account.host/path
                return backend.filesystem(self.storage_options), f"{bucket}{parsed.path}".rstrip("/")
            return pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"cannot reach files beside {self.describe()}: {self.redact(str(exc))}") from exc

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
    scheme = uri_scheme(uri)
    backend = backend_for(scheme)
    if scheme and scheme != LOCAL_SCHEME and backend is None:
        raise UsageError(
            f"--store {uri}: scheme {scheme!r} is not supported; use a path or s3://, gs://, az://"
        )
    if backend is not None and backend.container is not None:
        pattern, rule = backend.container
        bucket = urlparse(uri).netloc.partition("@")[0]
        if not re.fullmatch(pattern, bucket):
            raise UsageError(f"--store {uri}: {bucket!r} is not {rule}")
    if isinstance(storage_options, Mapping):
        given = {str(k).lower(): str(v) for k, v in storage_options.items()}
    else:
        given = parse_storage_options(storage_options)
    given = {**parse_storage_options(env.get(ENV_OPTIONS, "").split("\n") if env.get(ENV_OPTIONS) else []),
             **given}
    options = resolve_storage_options(uri, given, env)
    return StoreLocation(uri=uri, storage_options=options, tag=tag, version=version, read_only=read_only)
