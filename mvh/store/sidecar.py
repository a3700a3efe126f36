"""Files beside a store's tables (the FAISS index, the dataset card), wherever the store lives.

LanceDB reads and writes the tables; plain files next to them go through pyarrow's filesystems with the
same storage options, so a store in `s3://bucket/x.lance` keeps `s3://bucket/x.lance/_mvh/...` and a
local store keeps `x.lance/_mvh/...`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from mvh.errors import StoreError
from mvh.store.location import AZURE_SCHEMES, StoreLocation, azure_container_path

SIDECAR = "_mvh"


def _s3_filesystem(options: dict[str, str]) -> pafs.S3FileSystem:
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


def _azure_filesystem(options: dict[str, str]) -> pafs.AzureFileSystem:
    """Arrow's Azure filesystem for the seam's options: account key, SAS token or a service principal."""
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
            authority = parsed.netloc[len(account):]  # Arrow puts the account in front of ".host"
        else:
            raise StoreError(
                f"azure_storage_endpoint {endpoint}: write https://{account}.HOST or http(s)://HOST/{account}"
            )
        kwargs.update(blob_storage_authority=authority, blob_storage_scheme=parsed.scheme or "https")
    return pafs.AzureFileSystem(account, **kwargs)


def _gcs_filesystem(options: dict[str, str]) -> pafs.GcsFileSystem:
    """Arrow's GCS filesystem, which takes Google's Application Default Credentials only."""
    given = sorted(k for k in ("google_service_account", "google_service_account_key") if options.get(k))
    if given:
        raise StoreError(
            f"files beside a gs:// store cannot use {', '.join(given)}: point GOOGLE_APPLICATION_CREDENTIALS "
            "at the service-account file instead"
        )
    return pafs.GcsFileSystem()


def filesystem(location: StoreLocation) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path of the store inside it) for `location`."""
    uri = location.uri
    scheme = urlparse(uri).scheme if "://" in uri else ""
    if scheme in ("", "file"):
        return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).resolve())
    parsed = urlparse(uri)
    try:
        if scheme in ("s3", "s3+ddb"):
            return _s3_filesystem(location.storage_options), f"{parsed.netloc}{parsed.path}".rstrip("/")
        if scheme in AZURE_SCHEMES:
            container, _, path = azure_container_path(uri)
            return _azure_filesystem(location.storage_options), f"{container}/{path}".rstrip("/")
        if scheme == "gs":
            return _gcs_filesystem(location.storage_options), f"{parsed.netloc}{parsed.path}".rstrip("/")
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as exc:
        said = location.redact(str(exc))
        raise StoreError(f"cannot reach files beside {location.describe()}: {said}") from exc


class SidecarFiles:
    """The `_mvh/<area>/` folder beside a store's tables: put, get, delete small files by name."""

    def __init__(self, location: StoreLocation, area: str) -> None:
        self.location = location
        self.fs, root = filesystem(location)
        self.root = f"{root}/{SIDECAR}/{area}"

    def _path(self, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise StoreError(f"sidecar file name {name!r} is not a plain name")
        return f"{self.root}/{name}"

    def _error(self, what: str, exc: Exception) -> StoreError:
        said = self.location.redact(str(exc))
        return StoreError(f"cannot {what} beside {self.location.describe()}: {said}")

    def exists(self, name: str) -> bool:
        """Whether the file is there."""
        try:
            return self.fs.get_file_info(self._path(name)).type == pafs.FileType.File
        except OSError as exc:
            raise self._error(f"look up {name}", exc) from exc

    def get(self, name: str) -> bytes:
        """The file's bytes (StoreError when absent or unreadable)."""
        try:
            with self.fs.open_input_stream(self._path(name)) as stream:
                return stream.read()
        except (OSError, FileNotFoundError) as exc:
            raise self._error(f"read {name}", exc) from exc

    def put(self, name: str, data: bytes) -> None:
        """Write the file (local stores: through a temporary name and an atomic rename)."""
        path = self._path(name)
        try:
            if isinstance(self.fs, pafs.LocalFileSystem):
                Path(self.root).mkdir(parents=True, exist_ok=True)
                tmp = f"{self.root}/.{name}.{uuid.uuid4().hex}.tmp"
                Path(tmp).write_bytes(data)
                os.replace(tmp, path)
                return
            with self.fs.open_output_stream(path) as stream:  # an object PUT is atomic
                stream.write(data)
        except OSError as exc:
            raise self._error(f"write {name}", exc) from exc

    def delete(self, name: str) -> None:
        """Remove the file if it is there."""
        try:
            if self.exists(name):
                self.fs.delete_file(self._path(name))
        except OSError as exc:
            raise self._error(f"delete {name}", exc) from exc
