"""A dataset card for a store: what is in it, how it was made, and who owns it.

The card is human-readable Markdown with a YAML front matter that machines read back. It is built from
the store itself (fingerprint, slides table, meta), plus fields the owner fills in (`--set owner=...
--set license=...`); `mvh card` writes it beside the tables (the store's `meta` table, key `card`) and to
a file, and `mvh info` prints it.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from mvh.errors import UsageError
from mvh.jobs import JobResult, check_out_folder, jsonable, out_folder
from mvh.store.location import StoreLocation
from mvh.store.schema import DONE, FAILED, RANDOM_INIT, StoreFingerprint
from mvh.store.sidecar import SidecarFiles

if TYPE_CHECKING:  # the store writes its first card at creation (`connect`): no import of it at run time
    from mvh.store.store import EmbeddingStore

USER_FIELDS = ("owner", "license", "contact", "description", "cohort", "citation")
_TOOLS = ("mvh", "lancedb", "pyarrow", "torch", "timm", "openslide-python")


def parse_card_fields(items: list[str] | None) -> dict[str, str]:
    """`--set owner=Lab A --set license=CC-BY-4.0` -> dict; only the known user fields are accepted."""
    fields: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in USER_FIELDS:
            raise UsageError(f"--set {item!r}: write FIELD=VALUE with FIELD one of {', '.join(USER_FIELDS)}")
        fields[key] = value.strip()
    return fields


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class CardSlide:
    """One slide line of the card."""

    slide_id: str
    status: str
    n_tiles: int
    file_hash: str | None
    size: int | None
    mpp: float | None
    mpp_source: str | None


@dataclass
class DatasetCard(JobResult):
    """The card's content (to_dict is the front matter; `to_markdown` the whole file)."""

    store: str
    store_version: int
    model: str
    model_config: dict[str, Any]
    weights_sha256: str
    trained_weights: bool
    embedding_dim: int
    embedding_dtype: str
    tile_px: int
    mpp: float
    mean: list[float] | None
    std: list[float] | None
    n_slides_done: int
    n_slides_failed: int
    n_tiles: int
    slides: list[CardSlide]
    created: str | None
    created_with_mvh: str | None
    card_written: str
    tool_versions: dict[str, str | None]
    fields: dict[str, str] = field(default_factory=dict)

    def to_markdown(self) -> str:
        """YAML front matter (machine-readable) + a short human summary and the slide table."""
        front = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        weights = self.weights_sha256 if self.trained_weights else "random-init (NOT trained weights)"
        lines = [
            "---", front.rstrip(), "---", "",
            f"# Embedding store {self.store}", "",
            *(f"- **{k}**: {v}" for k, v in self.fields.items()),
            f"- **model**: {self.model} ({self.embedding_dim}-d {self.embedding_dtype}), weights {weights}",
            f"- **tiles**: {self.tile_px} px at {self.mpp:g} um/px, mean {self.mean} std {self.std}",
            f"- **content**: {self.n_slides_done} slides done, {self.n_slides_failed} failed, "
            f"{self.n_tiles} tiles (store version {self.store_version})",
            f"- **made**: {self.created} with mvh {self.created_with_mvh}; card written {self.card_written}",
            "", "| slide | status | tiles | file hash | um/px (source) |", "|---|---|---:|---|---|",
        ]
        for s in self.slides:
            mpp = "-" if s.mpp is None else f"{s.mpp:g} ({s.mpp_source})"
            lines.append(f"| {s.slide_id} | {s.status} | {s.n_tiles} | {s.file_hash or '-'} | {mpp} |")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_markdown(cls, text: str) -> DatasetCard:
        """Read a card back from its Markdown (the front matter)."""
        if not text.startswith("---\n"):
            raise UsageError("not an mvh dataset card: it has no YAML front matter")
        front = text.split("\n---\n", 1)[0].removeprefix("---\n")
        return cls.from_dict(yaml.safe_load(front))


def _int_or_none(value: Any) -> int | None:
    return None if value is None or value != value else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def _shared_name(location: StoreLocation) -> str:
    """The store as a card names it: a remote URI as it is, a local store by its folder's name (a card is
    shared; the local path is not)."""
    local = location.local_path
    return location.uri if local is None else local.name


def card_of(
    location: StoreLocation,
    version: int,
    fp: StoreFingerprint,
    slides: pd.DataFrame,
    meta: dict[str, Any],
    fields: dict[str, str] | None = None,
) -> DatasetCard:
    """The card of a store at `location` and `version` holding `slides`; `fields` (owner, license, ...)
    override those of the card in `meta`."""
    card = meta.get("card")
    previous = card.get("fields", {}) if isinstance(card, dict) else {}
    rows = [
        CardSlide(
            slide_id=str(r["slide_id"]), status=str(r["status"]), n_tiles=int(r.get("n_tiles") or 0),
            file_hash=r.get("file_hash") or None, size=_int_or_none(r.get("size")),
            mpp=_float_or_none(r.get("mpp")), mpp_source=r.get("mpp_source") or None,
        )
        for r in slides.to_dict("records")
    ]
    done = [r for r in rows if r.status == DONE]
    return DatasetCard(
        store=_shared_name(location), store_version=version, model=fp.model,
        model_config=jsonable(fp.model_config),
        weights_sha256=fp.weights_sha256, trained_weights=fp.weights_sha256 != RANDOM_INIT,
        embedding_dim=fp.embed_dim, embedding_dtype=fp.embedding_dtype, tile_px=fp.tile_px, mpp=fp.mpp,
        mean=None if fp.mean is None else list(fp.mean), std=None if fp.std is None else list(fp.std),
        n_slides_done=len(done), n_slides_failed=sum(r.status == FAILED for r in rows),
        n_tiles=sum(r.n_tiles for r in done), slides=rows, created=meta.get("created"),
        created_with_mvh=meta.get("mvh_version"),
        card_written=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tool_versions={name: _version(name) for name in _TOOLS},
        fields={**previous, **(fields or {})},
    )


def build_card(store: EmbeddingStore, fields: dict[str, str] | None = None) -> DatasetCard:
    """The card of `store` now; `fields` (owner, license, ...) override those of a previous card."""
    return card_of(store.location, store.version, store.fingerprint, store.slides(), store.meta, fields)


CARD_FILE = "CARD.md"


def write_card(
    store: EmbeddingStore, fields: dict[str, str] | None = None, out: Path | None = None
) -> tuple[DatasetCard, list[str]]:
    """Build the card, keep it in the store (meta `card` + `_mvh/card/CARD.md`) and optionally in the
    folder `out` (`out`/CARD.md; a file name there, the old form, is a UsageError)."""
    if out is not None:
        out = out_folder(out, CARD_FILE)
    card = build_card(store, fields)
    text = card.to_markdown()
    store.set_meta("card", card.to_dict())
    SidecarFiles(store.location, "card").put(CARD_FILE, text.encode())
    written = [f"{store.location.describe()} (meta table and _mvh/card/{CARD_FILE})"]
    if out is not None:
        check_out_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / CARD_FILE).write_text(text)
        written.append(str(out / CARD_FILE))
    return card, written
