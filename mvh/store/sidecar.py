"""Files beside a store's tables (the FAISS index, the dataset card), wherever the store lives.

LanceDB reads and writes the tables; plain files next to them go through pyarrow's filesystems with the
same storage options, so a store in `s3://bucket/x.lance` keeps `s3://bucket/x.lance/_mvh/...` and a
local store keeps `x.lance/_mvh/...`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from mvh.errors import StoreError
from mvh.store.location import StoreLocation

SIDECAR = "_mvh"


class SidecarFiles:
    """The `_mvh/<area>/` folder beside a store's tables: put, get, delete small files by name."""

    def __init__(self, location: StoreLocation, area: str) -> None:
        self.location = location
        self.fs, root = location.filesystem()
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
