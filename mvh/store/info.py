"""`StoreInfo`: what `mvh info` and the web app say about a store, as one typed record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mvh.jobs import jsonable
from mvh.store.schema import StoreFingerprint


@dataclass(frozen=True)
class StoreInfo:
    """A store's description: where and how it was opened, its versions, fingerprint, counts and schemas."""

    uri: str
    opened_as: str  # URI, URI@tag or "URI (version N)"
    read_only: bool
    storage_options: dict[str, str]  # secret values as ***
    version: int  # slides-table version
    table_versions: dict[str, int]
    tags: dict[str, dict[str, int]]  # tag -> table -> version
    card_fields: dict[str, str] | None  # the owner's fields of the dataset card (None: no card)
    card: dict[str, Any] | None  # the dataset card as stored (None: no card)
    fingerprint: StoreFingerprint
    mvh_version: str | None  # the mvh that created the store
    created: str | None  # ISO time of creation
    n_slides: int
    slides_by_status: dict[str, int]
    n_tiles: int  # tiles of done slides
    writable_layout: bool  # False: written by an mvh before commit ids (readable, not writable)
    schema: dict[str, list[str]]  # table -> "name: type" per column

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (`mvh info --json`)."""
        return jsonable(self)
